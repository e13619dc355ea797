"""Notebook 11 (the retrieval path: session encoder + Faiss index) under papermill at the CI size."""
import pytest

pytestmark = [pytest.mark.notebooks, pytest.mark.xdist_group("notebooks")]  # one xdist worker runs them all, in order


def test_large_catalogs_notebook(series):
    manifest = series.run("11-large-catalogs")
    m, run = manifest["metrics"], manifest["run"]
    # the split: query . item vector is the model's score (float rounding only)
    assert m["split_max_abs_diff"] < 1e-4
    # on the series' catalog the flat index gives every session the model's own top 10; HNSW nearly every
    # one (measured 1.0 for both, at the CI and the default size)
    assert m["same_top10_share"]["flat"] == 1.0
    assert m["same_top10_share"]["HNSW"] >= 0.99
    # served by Triton, the retrieval graph answers like the exact graph, session for session
    served = m["served"]
    assert served["same_up_to_ties"] is True and served["different"] == 0 and served["sessions"] > 50
    assert served["identical"] + served["tie_swaps"] == served["sessions"]
    # one-session latency on the server: measured 1.9 ms (retrieval) and 2.4 ms (exact) at the default size;
    # an order of magnitude more fails
    assert all(0 < ms < 25 for ms in served["p50_ms"].values()), served["p50_ms"]
    # the synthetic catalog: recall rises with efSearch, exact search is far slower than HNSW
    large = m["large"]
    assert large["items"] == manifest["parameters"]["N_ITEMS"]
    recalls = [row["recall@10 vs exact"] for row in large["sweep"]]
    assert recalls == sorted(recalls) and recalls[-1] >= 0.9, recalls
    assert large["exact_p50_ms"] > min(row["p50 ms"] for row in large["sweep"])
    assert run["hnsw_build_seconds"] > 0 and run["rss_gib"]["with_index"] >= run["rss_gib"]["with_vectors"]
    # the large catalog swapped into the running server under traffic: nothing failed, one clean switch, and
    # the served answers are the HNSW search of the notebook (the same index, the same sessions)
    big = m["large_served"]
    assert big["items"] == large["items"]
    assert big["swap"]["failed"] == 0 and big["swap"]["requests"] > 20
    assert big["swap"]["before_only"] and big["swap"]["after_only"] and big["swap"]["ordered"], big["swap"]
    assert big["same_as_offline_share"] == 1.0
    assert 0 < big["p50_ms"] < 25  # as above: an order of magnitude over the measured p50 fails
