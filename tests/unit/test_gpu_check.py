"""The standalone retrieval check of benchmarks/gpu_check.py, run small on the CPU: the exact product the GPU
runs (here on the CPU) must give faiss's exact top 10, and HNSW's recall must be reported against it."""
import importlib.util
from pathlib import Path

import numpy as np

SPEC = importlib.util.spec_from_file_location(
    "gpu_check", Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)


def test_agreement_counts_sets_not_order():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert gpu_check._agreement(np.array([[3, 2, 1], [4, 5, 7]]), exact) == 0.5


def test_retrieval_check_small_on_cpu():
    out = gpu_check.retrieval_check(n_items=3_000, dim=33, n_queries=200, ef_search=(16, 256), torch_device="cpu")
    exact = out["gpu_torch_exact"]
    assert exact["device"] == "cpu"
    assert exact["top10_same_as_cpu_flat"] >= 0.99  # float rounding may swap a tie at the 10th place
    assert exact["max_abs_score_diff"] < 1e-4
    by_ef = out["hnsw"]["by_ef_search"]
    assert 0.5 < by_ef[16]["recall_at_10_vs_exact"] <= by_ef[256]["recall_at_10_vs_exact"] <= 1.0
    assert by_ef[256]["recall_at_10_vs_exact"] >= 0.95
    assert "skipped" in out["gpu_faiss_flat"] or out["gpu_faiss_flat"]["top10_same_as_cpu_flat"] >= 0.99
