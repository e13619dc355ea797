"""The retrieval path: session encoder . item vectors is the model's score, and a flat index returns the
model's own top k (HNSW an approximation of it)."""
import numpy as np
import pytest
import torch

from gtcrec import model as M
from gtcrec.representation import DEFAULT_SETTINGS
from gtcrec.serving import retrieval as R

import faiss  # noqa: E402,F401  (requirements.lock: faiss-cpu; no skip, a missing install fails here)

N_ITEMS, DIM = 300, 384
SMALL = dict(d_model=16, n_layer=1, n_head=2, max_len=20)


def _table(seed=0):
    rng = np.random.default_rng(seed)
    table = np.zeros((N_ITEMS + 3, DIM), dtype=np.float32)
    vecs = rng.normal(size=(N_ITEMS, DIM))
    table[3:] = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return table


def _sessions(n, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, N_ITEMS + 3, size=int(rng.integers(1, 12))).astype(np.int64) for _ in range(n)]


def _model(item_repr, blend=0.0):
    table = _table()
    if item_repr:
        warm = np.zeros(len(table), dtype=bool)
        warm[3::2] = True
        settings = {**DEFAULT_SETTINGS, "fields": None, "warm": warm}
    else:
        settings = None
    model = M.build_model(M.make_schema(len(table)), table, seed=0, item_repr=settings, **SMALL)
    with torch.no_grad():  # trained-looking weights: every learned part away from its zero start
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    if blend:
        M._task(model).item_embedding_table.set_text_blend(blend, 0.5)
    return model.eval()


@pytest.mark.parametrize("item_repr,blend", [(True, 0.0), (True, 0.7), (False, 0.0)],
                         ids=["item representation", "with a text blend", "stock T4R table"])
def test_encoder_times_item_vectors_is_the_models_score(item_repr, blend):
    model = _model(item_repr, blend)
    sessions = _sessions(64)
    queries = R.encode(R.session_encoder(model), sessions, SMALL["max_len"])
    items = R.item_vectors(model)
    assert items.shape[0] == N_ITEMS and queries.shape[1] == items.shape[1]
    scores = M.score_sessions(model, sessions)
    np.testing.assert_allclose(queries @ items.T, scores[:, 3:], rtol=1e-4, atol=1e-4)
    # the flat index returns the model's own top 10, in order, clicked talks left out as served
    _, codes = R.search(R.build_index(items, "flat"), queries, 10, exclude=sessions)
    for i, session in enumerate(sessions):
        row = scores[i].copy()
        row[session] = -np.inf
        expected = np.argsort(-row, kind="stable")[:10]
        assert np.array_equal(np.sort(codes[i]), np.sort(expected)), i
        assert not set(codes[i]) & set(session.tolist())


def test_the_encoder_leaves_the_model_alone():
    model = _model(True)
    sessions = _sessions(8)
    before = M.score_sessions(model, sessions)
    R.session_encoder(model)
    np.testing.assert_array_equal(M.score_sessions(model, sessions), before)


def test_hnsw_approximates_the_flat_index():
    rng = np.random.default_rng(3)
    items = rng.normal(size=(5000, 32)).astype(np.float32)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    _, exact = R.search(R.build_index(items, "flat"), queries, 10)
    _, approx = R.search(R.build_index(items, "hnsw", hnsw_m=16, ef_search=128), queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9
    assert R.describe_index(R.build_index(items[:100], "hnsw", hnsw_m=8))["kind"] == "IndexHNSWFlat"
    with pytest.raises(ValueError, match="flat"):
        R.build_index(items, "ivf")
