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


@pytest.mark.parametrize("item_repr,blend", [(True, 0.0), (True, 0.7), (False, 0.0)],
                         ids=["item representation", "with a text blend", "stock T4R table"])
def test_the_served_encoder_takes_the_clicked_rows_and_holds_no_item(item_repr, blend):
    """The traced encoder reads the clicked items' rows from the request (as FaissTopK gathers them from the
    index): its scores equal the model's, and nothing in it grows with the catalog."""
    model = _model(item_repr, blend)
    traced = R.trace_query(model, M.sessions_to_batch(_sessions(16), SMALL["max_len"], pad=True))
    batch = M.sessions_to_batch(_sessions(40, seed=7), SMALL["max_len"], pad=True)
    assert R.check_query(traced, model, batch)["max_score_diff"] <= 1e-4
    held = sum(t.numel() for t in traced.state_dict().values())
    weights = sum(p.numel() for name, p in model.named_parameters() if "item_id" not in name and "residual" not in name
                  and "item_bias" not in name)
    assert held < weights + 10 * 3 * 800, (held, weights)  # the model's own weights and the reserved rows only
    assert held < N_ITEMS * DIM  # the text table alone would be N_ITEMS x DIM


def test_gather_rows_renumbers_a_requests_items_and_keeps_reserved_codes():
    from gtcrec.serving.operators import gather_rows

    vectors = np.arange(40, dtype=np.float32).reshape(10, 4)  # id i: row i
    local, rows = gather_rows(np.array([9, 3, 0, 12, 9, 1, 0]), lambda ids: vectors[ids])
    # codes 3, 9, 12 (ids 0, 6, 9) become 3, 4, 5; padding 0 and unknown 1 stay
    np.testing.assert_array_equal(local, [4, 3, 0, 5, 4, 1, 0])
    np.testing.assert_array_equal(rows, vectors[[0, 6, 9]])
    local, rows = gather_rows(np.array([0, 1, 2]), lambda ids: vectors[ids])
    np.testing.assert_array_equal(local, [0, 1, 2])
    assert rows.shape == (0, 4)
