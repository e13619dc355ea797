"""The retrieval graph, SessionizeClicks >> FaissTopK (session encoder + Faiss index) >> DecodeTopK, in process
against the exact graph (the traced model's full product). On a real tritonserver it is checked by notebook
11's test (the same answers as the exact graph) and by tests/unit/test_swap.py (a swap on this path)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec import model as M
from gtcrec.representation import DEFAULT_SETTINGS
from gtcrec.serving import client as cl
from gtcrec.serving import executor_model
from gtcrec.serving import retrieval as R
from gtcrec.serving.export import build_ensemble, example_clicks, reference_outputs
from gtcrec.trace import trace_topk

N_TALKS, MAX_LEN, K = 120, 8, 5
VOCAB = [f"T{i:04d}" for i in range(N_TALKS)]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A small T4R model with the item representation, its exact trace, its encoder and a flat index."""
    root = tmp_path_factory.mktemp("retrieval")
    rng = np.random.default_rng(0)
    table = np.zeros((N_TALKS + 3, 384), dtype=np.float32)
    vecs = rng.normal(size=(N_TALKS, 384))
    table[3:] = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    warm = np.zeros(len(table), dtype=bool)
    warm[3::2] = True
    model = M.build_model(M.make_schema(len(table)), table, seed=0, d_model=16, n_layer=1, n_head=2, max_len=MAX_LEN,
                          item_repr={**DEFAULT_SETTINGS, "fields": None, "warm": warm})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    example = M.sessions_to_batch([[3, 4, 5], [6, 7]], MAX_LEN, pad=True)
    trace_topk(model, example, k=K + MAX_LEN).save(str(root / "topk.pt"))
    R.trace_query(model, example).save(str(root / "encoder.pt"))
    R.save_index(R.build_index(R.item_vectors(model), "flat"), root / "items.faiss")
    clicks = pd.concat([example_clicks(VOCAB, n_sessions=20, max_clicks=12, seed=s) for s in (1, 2)],
                       ignore_index=True)
    trace_topk(model, example, k=K + 3 * MAX_LEN).save(str(root / "topk_deep.pt"))
    return {"root": root, "clicks": clicks, "request": cl.request_arrays(clicks)}


def _graphs(parts):
    root = parts["root"]
    exact = build_ensemble(VOCAB, root / "topk.pt", max_len=MAX_LEN, k=K)
    retrieval = build_ensemble(VOCAB, root / "encoder.pt", max_len=MAX_LEN, k=K, index=root / "items.faiss")
    return exact, retrieval


def test_the_flat_index_answers_like_the_full_product_in_process(parts):
    exact, retrieval = _graphs(parts)
    chain = executor_model.lean_chain(retrieval)
    assert [type(op).__name__ for op in chain] == ["SessionizeClicks", "FaissTopK", "DecodeTopK"]
    want = reference_outputs(exact, parts["request"]).outputs
    got = reference_outputs(retrieval, parts["request"]).outputs
    np.testing.assert_array_equal(got["session_ids"], want["session_ids"])
    np.testing.assert_array_equal(got["talk_ids"], want["talk_ids"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-4, atol=1e-4)


def test_a_long_session_is_answered_alike_when_both_graphs_return_as_many_candidates(parts):
    """A session that clicked most of its best candidates: each graph fills what runs short from popularity,
    so the exact and the retrieval graph agree when they return the same number of candidates (K), and not
    otherwise (the retrieval graph's default, k + max_len, against a deeper exact trace)."""
    root = parts["root"]
    exact = build_ensemble(VOCAB, root / "topk_deep.pt", max_len=MAX_LEN, k=K)
    talks = VOCAB[:100]  # a session that clicked 100 of the 120 talks: few of its best candidates are left
    clicks = pd.DataFrame({"session_id": "long", "talk_id": talks,
                           "timestamp": pd.Timestamp("2025-03-18") + pd.to_timedelta(np.arange(len(talks)), unit="min")})
    request = cl.request_arrays(pd.concat([parts["clicks"], clicks], ignore_index=True))
    want = reference_outputs(exact, request).outputs
    same_k = build_ensemble(VOCAB, root / "encoder.pt", max_len=MAX_LEN, k=K, index=root / "items.faiss",
                            k_model=K + 3 * MAX_LEN)
    got = reference_outputs(same_k, request).outputs
    np.testing.assert_array_equal(got["talk_ids"], want["talk_ids"])
    default = reference_outputs(build_ensemble(VOCAB, root / "encoder.pt", max_len=MAX_LEN, k=K,
                                               index=root / "items.faiss"), request).outputs
    assert (default["talk_ids"] != want["talk_ids"]).any(axis=1).sum() >= 1


def test_faiss_top_k_checks_its_k(parts):
    from gtcrec.serving.operators import FaissTopK

    with pytest.raises(ValueError, match="k_model must be in 1..120"):
        FaissTopK(parts["root"] / "encoder.pt", parts["root"] / "items.faiss", k_model=500)


def test_building_the_graph_leaves_faiss_threads_alone(parts):
    """Only the serving process (load_artifacts) sets Faiss's threads: a notebook that builds the graph
    in process keeps its own (it once left a million-item build on one thread)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)
    try:
        _graphs(parts)
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(before)
