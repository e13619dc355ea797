"""Short GPU check of the notebook series: notebooks 00-06 at the small CI sizes, timed, on the GPU
when there is one (the package picks CUDA by itself: gtcrec.model.get_device, the text encoder,
T4R's Trainer), with the metrics that say whether the GPU path gives the same answers.

    python benchmarks/gpu_check.py                       # 00-06, small sizes, into a temporary folder
    python benchmarks/gpu_check.py --preflight           # only the environment (seconds)
    python benchmarks/gpu_check.py --only 00-data --json out.json
    python benchmarks/gpu_check.py --cpu                 # the same on the CPU (hides the GPU)
    python benchmarks/gpu_check.py --scale-out           # only the ETL on a LocalCUDACluster and NCCL torchrun
    python benchmarks/gpu_check.py --retrieval           # only the search of 1,000,000 items, GPU and CPU

Prints the card's name (or that no GPU was found), then one JSON document: the environment, seconds
per notebook, 04's recall@10 of the model and of the oracle, 05's parity and one-session p50 latency,
the devices baked into 04's TorchScript (a trace made on CUDA keeps CUDA device constants, and the
serving steps load it on the CPU), and the error of a notebook that failed (the later ones are then
not run: each needs the one before). The JSON is also rewritten after every notebook (``--json``),
so a run stopped by a time limit still leaves what it measured. About 8 minutes at most is the aim
on one GPU; ``--budget-s`` stops starting notebooks after that many seconds.

Needs the project's environment (``make env``, or the GPU compose container). Run it from anywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STEMS = ["00-data", "01-etl", "02-dataloader", "03-train", "04-item-representation", "05-ensemble", "06-serve"]
PACKAGES = ["torch", "numpy", "pandas", "merlin-core", "nvtabular", "merlin-dataloader", "merlin-systems",
            "transformers4rec", "transformers", "tritonclient", "nvidia-pytriton", "cudf-cu12", "cudf"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 all requested notebooks ran, 1 one failed, 4 the environment is not usable, "
               "3 the budget ran out before the last notebook.")
    parser.add_argument("--artifacts-dir", type=Path, default=None,
                        help="ARTIFACTS_DIR for the notebooks (default: a new temporary folder)")
    parser.add_argument("--only", nargs="+", metavar="STEM", default=None,
                        help=f"notebooks to run, in series order (default: {' '.join(DEFAULT_STEMS)}); "
                             "a later one needs the earlier ones' outputs in the same --artifacts-dir")
    parser.add_argument("--size", choices=["small", "default"], default="small",
                        help="small: gtcrec.series.SMALL, the CI sizes (default); default: the notebooks' own")
    parser.add_argument("--json", type=Path, default=None, dest="json_path",
                        help="also write the report here, after every notebook (default: ARTIFACTS_DIR/gpu_check.json)")
    parser.add_argument("--embed-cache", type=Path, default=None,
                        help="text-embedding cache for 00 (default: inside ARTIFACTS_DIR, so texts are encoded afresh)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="start no further notebook once this many seconds have passed (default 480)")
    parser.add_argument("--seed", type=int, default=None, help="SEED for every notebook (default: theirs)")
    parser.add_argument("--cpu", action="store_true", help="hide any GPU (CUDA_VISIBLE_DEVICES='') for a CPU run")
    parser.add_argument("--preflight", action="store_true", help="report the environment only and exit")
    parser.add_argument("--retrieval", type=int, nargs="?", const=1_000_000, default=None, metavar="ITEMS",
                        help="only the retrieval check at ITEMS items (default 1,000,000): exact search on the GPU "
                             "and the CPU, faiss's GPU index where built, HNSW; needs numpy, torch and faiss only")
    parser.add_argument("--scale-out", action="store_true",
                        help="only the scale-out check: ETL on a LocalCUDACluster, torchrun with NCCL (scale_out_check)")
    args = parser.parse_args(argv)
    if args.only:
        unknown = [s for s in args.only if s not in DEFAULT_STEMS and s != "07-catalog-swap"]
        if unknown:
            parser.error(f"unknown notebook stem(s) {unknown}; choose from {DEFAULT_STEMS + ['07-catalog-swap']}")
        order = DEFAULT_STEMS + ["07-catalog-swap"]
        args.only = sorted(set(args.only), key=order.index)
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    return args


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Python, package versions, the GPU as torch sees it, cudf, and the tritonserver the series would use."""
    env: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                           "machine": platform.machine(), "cpus": os.cpu_count(),
                           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                           "packages": {p: v for p in PACKAGES if (v := _version(p))}}
    import torch

    env["torch_cuda_build"] = torch.version.cuda
    env["cuda_available"] = bool(torch.cuda.is_available())
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env["device"] = "cuda"
        env["gpu"] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                      "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}"}
    else:
        env["device"] = "cpu"
        env["gpu"] = None
    try:
        import cudf  # noqa: F401

        env["cudf"] = True
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA error
        env["cudf"] = False
    from gtcrec import model as gm

    env["gtcrec_device"] = str(gm.get_device())
    env["merlin_gpu_dataframes"] = bool(gm._gpu_dataframes())
    try:
        from gtcrec.serving.server import find_tritonserver

        binary = find_tritonserver()
        env["tritonserver"] = {"path": str(binary.executable), "source": binary.source,
                               "pytorch_backend": bool(binary.has_backend("pytorch"))}
    except Exception as exc:  # noqa: BLE001 - reported, 04/05 will say more
        env["tritonserver"] = {"error": f"{type(exc).__name__}: {exc}"}
    return env


def torchscript_devices(path: Path) -> dict[str, Any]:
    """Device constants inside a traced model's graph. A trace records the device of every tensor
    it creates (``torch.arange(..., device=x.device)``) as a constant: a model traced on CUDA
    keeps creating CUDA tensors when loaded with ``map_location="cpu"``."""
    import re

    import torch

    traced = torch.jit.load(str(path), map_location="cpu")
    graph = str(traced.inlined_graph)
    constants = re.findall(r'Device = prim::Constant\[value="([^"]+)"\]', graph)
    params = sorted({str(p.device) for p in traced.parameters()} | {str(b.device) for b in traced.buffers()})
    return {"device_constants": sorted(set(constants)), "n_cuda_constants": sum(c.startswith("cuda") for c in constants),
            "weights_loaded_on": params}


def _get(doc: dict, *keys, default=None):
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return default
        doc = doc[key]
    return doc


def notebook_metrics(artifacts: Path, stem: str) -> dict[str, Any]:
    """The few numbers of a notebook's manifest that the check reports."""
    from gtcrec.manifest import read_manifest

    man = read_manifest(artifacts, stem)
    m, run = man["metrics"], man["run"]
    if stem == "00-data":
        return {"talks": _get(m, "spring", "talks"), "sessions": _get(m, "spring", "sessions"),
                "embed_seconds": run.get("embed_seconds"), "texts_encoded": run.get("embed_newly_encoded"),
                "cosine_same_track": m.get("cosine_same_track"), "cosine_other_track": m.get("cosine_other_track")}
    if stem == "01-etl":
        return {"etl_seconds": run.get("etl_seconds"), "n_talks": m.get("n_talks"),
                "row_check_max_abs_diff": m.get("row_check_max_abs_diff")}
    if stem == "02-dataloader":
        return {"joined_max_abs_diff": m.get("joined_max_abs_diff"),
                "sessions_per_s": {k: _get(v, "sessions_per_s") for k, v in (run.get("throughput") or {}).items()}}
    if stem == "04-item-representation":
        test = m.get("test") or {}
        out = {"device": run.get("device"), "chosen": m.get("chosen"),
               "recall@10_model": _get(test, m.get("model_key", ""), "recall@10"),
               "recall@10_oracle": _get(test, "oracle", "recall@10"),
               "recall@10_item_knn": _get(test, "item-knn", "recall@10"),
               "model_over_oracle": _get(m, "ratios", "model_over_oracle_recall@10"),
               "train_seconds": run.get("train_seconds"), "learned_train_seconds": run.get("learned_train_seconds"),
               "trace_max_score_diff": m.get("trace_max_score_diff")}
        try:
            out["torchscript"] = torchscript_devices(man.path("torchscript"))
        except Exception as exc:  # noqa: BLE001 - reported
            out["torchscript"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
    if stem == "05-ensemble":
        return {"backend": m.get("backend"), "executor": m.get("executor"), "export_seconds": run.get("export_seconds"),
                "reference_ms": run.get("reference_ms"), "backend_reason": run.get("backend_reason")}
    if stem == "06-serve":
        one = run.get("one_session") or {}
        return {"parity": m.get("parity"), "served_p50_ms": one.get("served_p50_ms"),
                "bare_p50_ms": one.get("bare_p50_ms"), "ratio_p50": one.get("ratio_p50"),
                "startup_seconds": run.get("startup_seconds"), "perf_analyzer": _get(run, "perf_analyzer", "note"),
                "server_stopped": m.get("server_stopped")}
    return {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))}


def _error_text(exc: BaseException) -> str:
    name = getattr(exc, "ename", None) or type(exc).__name__
    value = getattr(exc, "evalue", None) or str(exc)
    return f"{name}: {value}"[-3000:]


def scale_out_check(workdir: Path, n_sessions: int = 20_000, n_talks: int = 400, epochs: int = 1) -> dict[str, Any]:
    """The scale-out paths on GPUs (gtcrec.cluster, gtcrec.ddp): the notebook-01 ETL on a
    ``dask_cuda.LocalCUDACluster`` (one worker per GPU, at most 2) against the single-process ``run_etl``
    on the same generated log (cudf partitions when cudf imports, else pandas on the CUDA workers), then
    the notebook-03 model trained by ``torchrun`` with NCCL on up to 2 GPUs and scored on the test split.
    Returns ``{"status": "skipped", ...}`` without CUDA; errors are reported in the dict, not raised."""
    import torch

    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA device"}
    import numpy as np
    import pandas as pd
    from merlin.core.utils import Serial

    from gtcrec import cluster, ddp, etl, metrics
    from gtcrec import model as gm
    from gtcrec.data.generator import generate_catalog
    from gtcrec.representation import DEFAULT_SETTINGS, settings_for, warm_codes

    n_gpus = min(2, torch.cuda.device_count())
    out: dict[str, Any] = {"status": "ok", "gpus": n_gpus}
    workdir = Path(workdir)
    catalog, latent = generate_catalog(n_talks, seed=1)
    log = cluster.write_clicks_partitioned(workdir / "clicks", catalog, latent, n_sessions, seed=2,
                                           sessions_per_part=max(1, n_sessions // 4), time_resolution_s=60)
    clicks = pd.concat([pd.read_parquet(f) for f in log["files"]], ignore_index=True)
    with Serial():
        reference = etl.run_etl(clicks, catalog, workdir / "etl-single")
    try:
        import cudf  # noqa: F401

        gpu_frames = True
    except Exception:  # noqa: BLE001
        gpu_frames = False
    dask_cluster = client = None
    try:
        t0 = time.perf_counter()
        dask_cluster, client = cluster.local_cluster(n_workers=n_gpus, memory_limit="8GiB", cuda=True,
                                                     local_directory=workdir / "dask-space")
        result = cluster.run_etl_on_cluster(workdir / "clicks", catalog, workdir / "etl-cluster", client,
                                            cpu=not gpu_frames)
        out["etl"] = {"cluster": type(dask_cluster).__name__, "cudf_partitions": gpu_frames,
                      "seconds": round(time.perf_counter() - t0, 2), "clicks": log["clicks"],
                      "same_as_single_process": cluster.compare_etl(reference, result)["equal"]}
    except Exception as exc:  # noqa: BLE001
        out["status"], out["etl"] = "failed", {"error": _error_text(exc)}
    finally:
        cluster.close(dask_cluster, client)
    try:
        rng = np.random.default_rng(0)
        z = latent.z @ rng.normal(size=(latent.z.shape[1], 384))
        table = etl.item_table((z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32))
        train = metrics.read_sessions(reference.split_dirs["train"])
        build = dict(d_model=64, n_layer=2, n_head=4, max_len=20, seed=42,
                     item_repr=settings_for(DEFAULT_SETTINGS, catalog, warm_codes(train, len(table))))
        report = ddp.train_distributed(reference.split_dirs["train"], table, workdir / "ddp", nproc=n_gpus,
                                       build=build, epochs=epochs, batch_size=128 // n_gpus, seed=42,
                                       fingerprints=False, timeout_s=600)
        prefixes, targets = metrics.sessions_to_prefixes(metrics.read_sessions(reference.split_dirs["test"]))
        scores = gm.score_sessions(gm.load_model(report["model"]), prefixes)
        out["ddp"] = {"backend": report["backend"], "world_size": report["world_size"],
                      "devices": [r["device"] for r in report["ranks"]], "steps_per_rank": report["steps_per_rank"],
                      "seconds": round(report["seconds"], 2),
                      "recall@10": metrics.evaluate_scores(scores, targets, exclude=prefixes)["recall@10"]}
        if report["backend"] != "nccl":
            out["status"] = "failed"
    except Exception as exc:  # noqa: BLE001
        out["status"], out["ddp"] = "failed", {"error": _error_text(exc)}
    return out


def _synthetic_catalog(n_items: int, dim: int, n_queries: int, seed: int = 0):
    """Items and queries drawn around shared centres (a clustered catalog, as text vectors are), float32;
    the last coordinate of an item is its bias and of a query a constant 1, as in the served index."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2_000, dim - 1)).astype(np.float32)
    items = np.empty((n_items, dim), np.float32)
    for start in range(0, n_items, 100_000):
        stop = min(n_items, start + 100_000)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block = block + 0.8 * rng.standard_normal(block.shape).astype(np.float32)
        items[start:stop, :-1] = block / np.linalg.norm(block, axis=1, keepdims=True)
        items[start:stop, -1] = 0.05 * rng.standard_normal(stop - start)
    queries = centres[rng.integers(0, len(centres), n_queries)]
    queries = queries + 0.8 * rng.standard_normal(queries.shape).astype(np.float32)
    queries = np.hstack([queries / np.linalg.norm(queries, axis=1, keepdims=True), np.ones((n_queries, 1), np.float32)])
    return items, np.ascontiguousarray(queries, dtype=np.float32)


def _per_query_ms(search, queries, batch: int, calls: int) -> float:
    """Median ms per call of ``search`` on ``batch`` queries at a time (``calls`` calls after 3 warm-ups)."""
    import numpy as np

    times = []
    for i in range(calls + 3):
        q = queries[(i * batch) % len(queries):][:batch]
        started = time.perf_counter()
        search(q)
        if i >= 3:
            times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def _agreement(ids, exact_ids) -> float:
    """Share of queries whose top-k holds the same items as the exact search's (order aside: ties)."""
    return float(sum(set(a) == set(b) for a, b in zip(ids.tolist(), exact_ids.tolist())) / len(exact_ids))


def retrieval_check(n_items: int = 1_000_000, dim: int = 385, n_queries: int = 1_000, k: int = 10,
                    hnsw_m: int = 32, ef_construction: int = 64, ef_search=(64, 128, 256),
                    torch_device: str | None = None) -> dict[str, Any]:
    """The retrieval path's search at ``n_items`` items, on this machine's GPU and CPU, standalone (numpy,
    torch and faiss only: it runs where the Merlin stack does not install). Exact search on the CPU (a
    flat inner-product index, every core) is the reference; measured beside it: the exact product and
    top-k on the GPU (torch, float32: the exact graph's cost at this size when the model runs on a GPU),
    faiss's own GPU flat index where this faiss build has GPU support, and the HNSW index of notebook 11
    (build time with every core, recall@10 against exact, and per-query ms with one thread, as served).
    Latencies are per call at 1 and 100 queries per call, answers copied back to the host included.
    ``torch_device``: where the exact product runs (default: CUDA when torch sees it, else skipped)."""
    import faiss
    import numpy as np
    import torch

    out: dict[str, Any] = {"items": n_items, "dim": dim, "queries": n_queries, "k": k, "cpus": os.cpu_count(),
                           "faiss": getattr(faiss, "__version__", "?"), "torch": torch.__version__}
    started = time.perf_counter()
    items, queries = _synthetic_catalog(n_items, dim, n_queries)
    out["draw_s"] = round(time.perf_counter() - started, 1)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    flat = faiss.IndexFlatIP(dim)
    flat.add(items)
    started = time.perf_counter()
    exact_scores, exact_ids = flat.search(queries, k)
    out["cpu_flat"] = {"all_queries_s": round(time.perf_counter() - started, 2), "threads": os.cpu_count(),
                       "ms_per_call_1": _per_query_ms(lambda q: flat.search(q, k), queries, 1, 50),
                       "ms_per_call_100": _per_query_ms(lambda q: flat.search(q, k), queries, 100, 10)}
    if torch_device is None and torch.cuda.is_available():
        torch_device = "cuda"
    if torch_device is not None:
        torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 products
        device = torch.device(torch_device)
        table = torch.from_numpy(items).to(device)

        def exact_search(q):
            scores, ids = torch.topk(torch.from_numpy(q).to(device) @ table.T, k, dim=1)
            return scores.cpu().numpy(), ids.cpu().numpy()

        scores, ids = exact_search(queries)
        out["gpu_torch_exact"] = {
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else str(device),
            "top10_same_as_cpu_flat": _agreement(ids, exact_ids),
            "max_abs_score_diff": float(np.abs(scores - exact_scores).max()),
            "ms_per_call_1": _per_query_ms(exact_search, queries, 1, 200),
            "ms_per_call_100": _per_query_ms(exact_search, queries, 100, 50),
            "table_gib": round(items.nbytes / 2**30, 2)}
        del table
        if device.type == "cuda":
            torch.cuda.empty_cache()
    else:
        out["gpu_torch_exact"] = {"skipped": "torch sees no CUDA device"}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus:
        gpu_flat = faiss.index_cpu_to_all_gpus(flat)
        scores, ids = gpu_flat.search(queries, k)
        out["gpu_faiss_flat"] = {"gpus": gpus, "top10_same_as_cpu_flat": _agreement(ids, exact_ids),
                                 "ms_per_call_1": _per_query_ms(lambda q: gpu_flat.search(q, k), queries, 1, 200),
                                 "ms_per_call_100": _per_query_ms(lambda q: gpu_flat.search(q, k), queries, 100, 50)}
        del gpu_flat
    else:
        out["gpu_faiss_flat"] = {"skipped": "this faiss build has no GPU support (faiss-gpu-cu12 needs CUDA 12's "
                                            "cuBLAS and runtime beside it)"}
    flat.reset()  # frees its vectors before the HNSW build
    hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    started = time.perf_counter()
    hnsw.add(items)
    out["hnsw"] = {"m": hnsw_m, "ef_construction": ef_construction, "threads_build": os.cpu_count(),
                   "build_s": round(time.perf_counter() - started, 1), "by_ef_search": {}}
    faiss.omp_set_num_threads(1)
    for ef in ef_search:
        hnsw.hnsw.efSearch = int(ef)
        _, ids = hnsw.search(queries, k)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids.tolist(), exact_ids.tolist())]))
        out["hnsw"]["by_ef_search"][int(ef)] = {
            "recall_at_10_vs_exact": round(recall, 4),
            "ms_per_call_1_one_thread": _per_query_ms(lambda q: hnsw.search(q, k), queries, 1, 200)}
    return out


def summary(report: dict[str, Any]) -> dict[str, Any]:
    nb = report["notebooks"]
    return {"device": report["environment"].get("device") if report.get("environment") else None,
            "gpu": _get(report, "environment", "gpu", "name"),
            "seconds": {s: v.get("seconds") for s, v in nb.items()},
            "recall@10_model": _get(nb, "04-item-representation", "metrics", "recall@10_model"),
            "recall@10_oracle": _get(nb, "04-item-representation", "metrics", "recall@10_oracle"),
            "torchscript_cuda_constants": _get(nb, "04-item-representation", "metrics", "torchscript", "n_cuda_constants"),
            "parity": _get(nb, "06-serve", "metrics", "parity"),
            "served_p50_ms": _get(nb, "06-serve", "metrics", "served_p50_ms"),
            "failed": [s for s, v in nb.items() if v.get("status") == "failed"]}


def write(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported here or in a kernel
    if args.retrieval:  # before environment(): this check needs no Merlin stack
        result = retrieval_check(n_items=args.retrieval)
        if args.json_path:
            args.json_path.write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result, indent=2, default=str))
        return 0
    started = time.perf_counter()
    artifacts = (args.artifacts_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    json_path = args.json_path or artifacts / "gpu_check.json"
    report: dict[str, Any] = {"artifacts_dir": str(artifacts), "size": args.size, "notebooks": {}, "warnings": []}
    try:
        report["environment"] = environment()
    except Exception as exc:  # noqa: BLE001 - the stack does not import: say so at once
        report["environment"] = None
        report["error"] = f"environment not usable: {_error_text(exc)}"
        write(report, json_path)
        print(json.dumps(report, indent=2, default=str))
        return 4
    env = report["environment"]
    if env["gpu"]:
        print(f"[gpu_check] GPU: {env['gpu']['name']} ({env['gpu']['memory_gib']} GiB, "
              f"capability {env['gpu']['capability']}); torch {env['packages'].get('torch')} CUDA {env['torch_cuda_build']}",
              flush=True)
    else:
        why = "hidden by --cpu" if args.cpu else (
            "torch is a CPU build" if env["torch_cuda_build"] is None else "torch sees no CUDA device")
        print(f"[gpu_check] no GPU found ({why}): running on the CPU", flush=True)
    if not env["cudf"]:
        report["warnings"].append("no cudf: NVTabular, merlin-dataloader and training data stay in pandas on the CPU")
    if args.scale_out:
        report["scale_out"] = scale_out_check(artifacts / "scale-out")
        write(report, json_path)
        print(json.dumps(report["scale_out"], indent=2, default=str))
        return {"ok": 0, "skipped": 0}.get(report["scale_out"]["status"], 1)
    if args.preflight:
        report["summary"] = summary(report)
        write(report, json_path)
        print(json.dumps(report, indent=2, default=str))
        return 0

    from gtcrec.series import SMALL, run_notebook

    embed_cache = (args.embed_cache or artifacts / "embedding-cache").resolve()
    stems = args.only or DEFAULT_STEMS
    failed = None
    for stem in stems:
        elapsed = time.perf_counter() - started
        if failed is not None:
            report["notebooks"][stem] = {"status": "not run", "reason": f"{failed} failed"}
            continue
        if elapsed > args.budget_s:
            report["notebooks"][stem] = {"status": "not run", "reason": f"budget of {args.budget_s:.0f} s spent"}
            continue
        params: dict[str, Any] = dict(SMALL.get(stem, {})) if args.size == "small" else {}
        if stem in ("00-data", "07-catalog-swap"):
            params["EMBED_CACHE"] = str(embed_cache)
        if args.seed is not None:
            params["SEED"] = args.seed
        print(f"[gpu_check] {stem} ...", flush=True)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"parameters": params}
        try:
            run_notebook(stem, artifacts, params)
            entry["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - papermill's error carries the cell's exception
            entry["status"] = "failed"
            entry["error"] = _error_text(exc)
            failed = stem
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        if entry["status"] == "ok":
            try:
                entry["metrics"] = notebook_metrics(artifacts, stem)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                entry["metrics"] = {"error": _error_text(exc)}
        report["notebooks"][stem] = entry
        print(f"[gpu_check] {stem} {entry['status']} in {entry['seconds']:.1f} s", flush=True)
        ts = _get(entry, "metrics", "torchscript")
        if ts and ts.get("n_cuda_constants"):
            report["warnings"].append(
                f"04's TorchScript holds {ts['n_cuda_constants']} CUDA device constant(s) {ts['device_constants']}: "
                "it was traced on the GPU, and the serving steps load it on the CPU (map_location='cpu')")
        report["summary"] = summary(report)
        report["total_seconds"] = round(time.perf_counter() - started, 2)
        write(report, json_path)

    report["summary"] = summary(report)
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    write(report, json_path)
    print("[gpu_check] report:", json_path, flush=True)
    print(json.dumps(report, indent=2, default=str))
    statuses = [v.get("status") for v in report["notebooks"].values()]
    return 1 if "failed" in statuses else 3 if "not run" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
