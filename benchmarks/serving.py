"""Serving benchmark: ratios measured in ONE run on this machine (not a test; nothing is asserted).

    python benchmarks/serving.py --artifacts-dir artifacts [--seconds 3] [--json out.json]

Needs notebooks 01 (vocabulary, test clicks) and 03 (TorchScript model, popularity) in
ARTIFACTS_DIR. It exports its own repositories into a temporary folder — the lean executor
(``executor="lean"``) and Merlin's stock executor file (``"stock"``), ``--instances`` CPU instances
each — starts one real Triton server holding both, and measures:

1. one session: the bare TorchScript forward in this process (one torch thread, as served), the
   graph in process (Merlin's executor and the lean chain), and the served p50 through gRPC and
   HTTP with the python client, and through perf_analyzer when its libraries are present.
   Target: served p50 <= 3x the bare forward.
2. throughput in sessions/s for every (sessions per request, concurrency) pair, python client in a
   closed loop (and perf_analyzer). Target: >= 1,000 sessions/s on 2 cores.

The client runs on the same machine as the server and takes CPU from it; perf_analyzer (C++)
takes less than the python client.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gtcrec.manifest import read_manifest
from gtcrec.serving import client as cl
from gtcrec.serving import export as ex
from gtcrec.serving import load
from gtcrec.serving import operators as ops
from gtcrec.serving.server import TritonServer


def in_process_ms(fn, n: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--seconds", type=float, default=3.0, help="per load point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 100], help="sessions per request")
    parser.add_argument("--instances", type=int, default=2, help="CPU instances of each executor model")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--latency-requests", type=int, default=500)
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)

    etl_out = read_manifest(args.artifacts_dir, "01-etl")
    train_out = read_manifest(args.artifacts_dir, "03-train")
    max_len = int(etl_out["parameters"]["MAX_LEN"])
    vocab = pd.read_parquet(etl_out.path("vocab"))["talk_id"].astype(str).tolist()
    popularity = np.load(train_out.path("popularity"))
    torchscript = train_out.path("torchscript")
    clicks = pd.read_parquet(etl_out.path("test_clicks"))
    sizes = clicks.groupby("session_id").size()
    one_key = sizes.index[np.argmin(np.abs(sizes.to_numpy() - sizes.median()))]  # a typical session
    one = cl.request_arrays(clicks[clicks["session_id"] == one_key])
    n_lat = args.latency_requests
    report: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1min_at_start": os.getloadavg()[0]},
                    "talks": len(vocab), "max_len": max_len, "k": args.k, "one_session_clicks": len(one["talk_id"])}
    print(f"{len(vocab):,} talks, MAX_LEN {max_len}, k {args.k}; one session = {len(one['talk_id'])} clicks; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)

    # -- in process ---------------------------------------------------------------------------
    from merlin.table import TensorTable

    ensemble = ex.build_ensemble(vocab, torchscript, max_len=max_len, k=args.k, popularity=popularity)
    pre = ops.SessionizeClicks(vocab, max_len=max_len).sessionize(one["session_id"], one["talk_id"], one["timestamp"])
    bare = load.bare_forward_ms(torchscript, pre["item_id-list__values"], pre["item_id-list__offsets"], n=n_lat)
    report["in_process_ms"] = {
        "bare_forward_p50": float(np.median(bare)),
        "graph_merlin_executor_p50": in_process_ms(lambda: ensemble.transform(TensorTable(one)), n_lat // 2),
        "graph_lean_chain_p50": in_process_ms(lambda: ex.lean_transform(ensemble, one), n_lat // 2),
    }
    print("in process, one session (ms):", {k: round(v, 3) for k, v in report["in_process_ms"].items()}, flush=True)

    pa = load.perf_analyzer_status()
    use_pa = pa["available"] and not args.no_perf_analyzer
    report["perf_analyzer"] = {"used": use_pa, "reason": pa["reason"] or ("--no-perf-analyzer" if not use_pa else "")}
    if not use_pa:
        print(f"perf_analyzer not used: {report['perf_analyzer']['reason']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gtcrec-bench-") as tmp:
        names = {}
        for executor in ("lean", "stock"):
            name = f"rec_{executor}"
            ex.export_ensemble(vocab, torchscript, Path(tmp) / executor, max_len=max_len, k=args.k,
                               popularity=popularity, name=name, request=one, executor=executor,
                               instance_count=args.instances)
            names[executor] = name
        with TritonServer([Path(tmp) / e for e in names], load_models=list(names.values()),
                          startup_timeout=180) as server:
            report["startup_seconds"] = server.startup_seconds
            # -- one session ------------------------------------------------------------------
            served = {}
            for executor, name in names.items():
                for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
                    lat = load.latency_ms(url, one, n=n_lat, protocol=protocol, model_name=name)
                    served[f"{executor}/{protocol}/python"] = {"p50_ms": float(np.median(lat)),
                                                               "p95_ms": float(np.percentile(lat, 95))}
                if use_pa:
                    row = load.run_perf_analyzer(server.grpc_url, [one], concurrency=(1,), seconds=args.seconds,
                                                 model_name=name)[0]
                    served[f"{executor}/grpc/perf_analyzer"] = {"p50_ms": row["p50_ms"], "p95_ms": row["p95_ms"]}
            bare_p50 = report["in_process_ms"]["bare_forward_p50"]
            for v in served.values():
                v["ratio_to_bare_p50"] = v["p50_ms"] / bare_p50
            report["one_session_served"] = served
            table = pd.DataFrame(served).T
            print("\none session served vs bare TorchScript forward "
                  f"({bare_p50:.3f} ms p50), target ratio <= 3:\n{table.round(3).to_string()}", flush=True)

            # -- throughput -------------------------------------------------------------------
            rows = []
            for n in args.sessions:
                requests = load.requests_of(clicks, n, limit=50)
                for c in args.concurrency:
                    r = load.closed_loop(server.grpc_url, requests, concurrency=c, seconds=args.seconds,
                                         model_name=names["lean"]).as_dict()
                    rows.append({**r, "tool": "python client"})
                    print(f"  python client  {n:4d} sessions/request  {c:2d} clients: {r['sessions_per_s']:9,.0f} "
                          f"sessions/s  p50 {r['p50_ms']:7.2f} ms  errors {r['errors']}", flush=True)
                if use_pa:
                    for r in load.run_perf_analyzer(server.grpc_url, requests, concurrency=args.concurrency,
                                                    seconds=args.seconds, model_name=names["lean"]):
                        rows.append({"tool": "perf_analyzer", "sessions_per_request": float(n),
                                     "concurrency": r["concurrency"], "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
                                     "requests_per_s": r["requests_per_s"], "sessions_per_s": r["sessions_per_s"]})
                        print(f"  perf_analyzer  {n:4d} sessions/request  {r['concurrency']:2d} clients: "
                              f"{r['sessions_per_s']:9,.0f} sessions/s  p50 {r['p50_ms']:7.2f} ms", flush=True)
            report["throughput"] = rows

    best = max(report["throughput"], key=lambda r: r["sessions_per_s"])
    one_best = min(v["ratio_to_bare_p50"] for k, v in served.items() if k.startswith("lean/"))
    lean_grpc = served["lean/grpc/python"]
    stock_grpc = served["stock/grpc/python"]
    single = [r for r in report["throughput"] if r["sessions_per_request"] == 1]
    summary = {
        "served_p50_over_bare_lean_grpc_python": lean_grpc["ratio_to_bare_p50"],
        "served_p50_over_bare_best_client": one_best,
        "stock_over_lean_p50": stock_grpc["p50_ms"] / lean_grpc["p50_ms"],
        "best_sessions_per_s": best["sessions_per_s"],
        "best_at": f"{int(best['sessions_per_request'])} sessions/request, {best['concurrency']} clients, {best['tool']}",
        "best_single_session_requests_per_s": max(r["sessions_per_s"] for r in single) if single else None,
        "target_latency_ratio_met": one_best <= 3.0,
        "target_throughput_met": best["sessions_per_s"] >= 1000,
    }
    report["summary"] = summary
    print("\nsummary (one run, this machine):")
    for key, value in summary.items():
        print(f"  {key:42s} {value:,.2f}" if isinstance(value, float) else f"  {key:42s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
