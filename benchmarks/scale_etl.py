"""The ETL of notebook 01 on a Dask cluster (gtcrec.cluster): 1 worker against 2, and how time and memory
grow with the click log. One run measures everything and prints the ratios.

    python benchmarks/scale_etl.py                              # 3 sizes x (1, 2) workers, about 1-2 minutes
    python benchmarks/scale_etl.py --sessions 1000000 --workers 2 --sessions-per-part 50000   # a large log
    python benchmarks/scale_etl.py --json scale_etl.json

For every size the generator writes the log once, in parquet partitions (gtcrec.cluster.write_clicks_partitioned,
one partition in memory at a time); then for every worker count a fresh ``LocalCluster`` (processes, one thread
each, ``--memory-limit`` per worker, spilling to a temporary folder) runs
:func:`gtcrec.cluster.run_etl_on_cluster`. A thread of this process samples the resident memory (RSS, psutil) of
every worker process every 20 ms; "peak" is the largest sample of a worker, "rise" that peak less the worker's
RSS before the ETL started (after the worker imported NVTabular, merlin and gtcrec, so the rise is the data). Clicks/s counts the clicks of the log over the ETL's
wall time (cluster start not included).

Ratios printed: throughput of 2 workers over 1 at every size; and, per worker count, seconds and peak memory of
the largest log over the smallest next to the ratio of their sizes (time growing like the log and peak memory
growing much less is what out-of-core means here).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from gtcrec import cluster
from gtcrec.data.generator import generate_catalog


class MemorySampler:
    """Samples the RSS of a set of processes in a background thread; keeps each one's peak."""

    def __init__(self, pids: list[int], every_s: float = 0.02):
        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.every_s = every_s
        self.start_rss = {pid: p.memory_info().rss for pid, p in self.procs.items()}
        self.peak = dict(self.start_rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, proc in self.procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], proc.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def warm_worker() -> int:
    """Import what the ETL imports, so that a worker's memory before the ETL includes its libraries."""
    import dask.dataframe  # noqa: F401
    import merlin.io  # noqa: F401
    import nvtabular  # noqa: F401

    import gtcrec.etl  # noqa: F401
    import gtcrec.serving.operators  # noqa: F401  (the click order the workflow calls)

    return os.getpid()


def run_one(clicks_dir: Path, catalog, out_dir: Path, n_workers: int, memory_limit: str, space: Path) -> dict[str, Any]:
    dask_cluster = client = None
    try:
        dask_cluster, client = cluster.local_cluster(n_workers, memory_limit, local_directory=space)
        client.wait_for_workers(n_workers)
        pids = list(client.run(warm_worker).values())
        with MemorySampler(pids) as sampler:
            start = time.perf_counter()
            result = cluster.run_etl_on_cluster(clicks_dir, catalog, out_dir, client)
            seconds = time.perf_counter() - start
    finally:
        cluster.close(dask_cluster, client)
    mib = 2.0 ** 20
    return {"workers": n_workers, "seconds": seconds,
            "peak_rss_mib": [sampler.peak[p] / mib for p in pids],
            "rise_mib": [(sampler.peak[p] - sampler.start_rss[p]) / mib for p in pids],
            "counts": result.counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[25_000, 50_000, 100_000],
                        help="log sizes in sessions (default 25000 50000 100000; about 6.5 clicks per session)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sessions-per-part", type=int, default=12_500, help="sessions per parquet file of the log")
    parser.add_argument("--talks", type=int, default=2000)
    parser.add_argument("--memory-limit", default="2GiB", help="per worker (default 2GiB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the logs and outputs go (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, default=None, dest="json_path")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale-etl-"))
    catalog, latent = generate_catalog(args.talks, seed=args.seed)
    runs: list[dict[str, Any]] = []
    try:
        for n_sessions in sorted(args.sessions):
            clicks_dir = workdir / f"clicks-{n_sessions}"
            started = time.perf_counter()
            log = cluster.write_clicks_partitioned(clicks_dir, catalog, latent, n_sessions, seed=args.seed + 1,
                                                   sessions_per_part=args.sessions_per_part)
            written = time.perf_counter() - started
            print(f"log: {n_sessions:,} sessions, {log['clicks']:,} clicks, {len(log['files'])} files "
                  f"written in {written:.1f} s", flush=True)
            for n_workers in args.workers:
                run = run_one(clicks_dir, catalog, workdir / f"out-{n_sessions}-{n_workers}", n_workers,
                              args.memory_limit, workdir / "dask-space")
                run.update(sessions=n_sessions, clicks=log["clicks"], clicks_per_s=log["clicks"] / run["seconds"])
                runs.append(run)
                print(f"  {n_workers} worker(s): {run['seconds']:6.1f} s, {run['clicks_per_s']:9,.0f} clicks/s, "
                      f"peak RSS per worker {', '.join(f'{m:.0f}' for m in run['peak_rss_mib'])} MiB "
                      f"(rise {', '.join(f'{m:.0f}' for m in run['rise_mib'])} MiB)", flush=True)
                shutil.rmtree(workdir / f"out-{n_sessions}-{n_workers}", ignore_errors=True)
            shutil.rmtree(clicks_dir, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    def find(n_sessions, n_workers):
        return next((r for r in runs if r["sessions"] == n_sessions and r["workers"] == n_workers), None)

    sizes, ratios = sorted(args.sessions), {"throughput_2_over_1": {}, "growth": {}}
    print("\nratios (one run)")
    if 1 in args.workers and 2 in args.workers:
        for n in sizes:
            r = find(n, 2)["clicks_per_s"] / find(n, 1)["clicks_per_s"]
            ratios["throughput_2_over_1"][n] = r
            print(f"  {n:>9,} sessions: clicks/s with 2 workers / with 1 = {r:.2f}")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for w in args.workers:
            a, b = find(small, w), find(large, w)
            growth = {"log": b["clicks"] / a["clicks"], "seconds": b["seconds"] / a["seconds"],
                      "peak_rss": max(b["peak_rss_mib"]) / max(a["peak_rss_mib"]),
                      "rise": max(b["rise_mib"]) / max(max(a["rise_mib"]), 1.0)}
            ratios["growth"][w] = growth
            print(f"  {w} worker(s), log x{growth['log']:.1f} ({small:,} -> {large:,} sessions): "
                  f"seconds x{growth['seconds']:.2f}, peak RSS per worker x{growth['peak_rss']:.2f}, "
                  f"rise over idle x{growth['rise']:.2f}")
    if args.json_path:
        args.json_path.write_text(json.dumps({"runs": runs, "ratios": ratios, "memory_limit": args.memory_limit,
                                              "cpu_count": os.cpu_count()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
