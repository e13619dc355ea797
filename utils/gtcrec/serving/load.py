"""Measuring the served recommender: latency, closed-loop load, perf_analyzer, the bare model.

* ``latency_ms``: one client, one request at a time -> sorted latencies in ms.
* ``closed_loop``: ``concurrency`` threads, each with its own client, send requests back to back
  for ``seconds`` -> p50/p95/p99 latency, requests/s and sessions/s. The client runs in this
  process and shares the CPU with the server: on a small machine the numbers include that cost.
* ``perf_analyzer_status`` / ``run_perf_analyzer``: Triton's own load generator, shipped in the
  tritonclient wheel. On a CPU machine it still needs ``libb64.so.0d`` (Debian ``libb64-0d``) and
  ``libcudart.so.12`` (PyPI ``nvidia-cuda-runtime-cu12``); the status says what is missing.
* ``bare_forward_ms``: the TorchScript model alone, in process, on the same input.
* ``interleaved``: several measurements in alternating rounds (fair ratios on a shared machine).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gtcrec.serving import client as cl


def _client(url: str, protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as mod
    elif protocol == "http":
        import tritonclient.http as mod
    else:
        raise ValueError("protocol must be 'http' or 'grpc'")
    return mod.InferenceServerClient(url)


def n_sessions(arrays: dict[str, np.ndarray]) -> int:
    return len(set(arrays["session_id"].tolist()))


def latency_ms(url: str, arrays: dict[str, np.ndarray], n: int = 200, warmup: int = 20,
               protocol: str = "grpc", model_name: str = cl.DEFAULT_MODEL_NAME, batched: bool = False) -> np.ndarray:
    """Latencies (ms, sorted) of ``n`` requests sent one after another by one client."""
    client = _client(url, protocol)
    try:
        inputs, outputs = cl.make_inputs(arrays, protocol, batched), cl.make_outputs(protocol)
        for _ in range(warmup):
            client.infer(model_name, inputs, outputs=outputs)
        times = np.empty(n)
        for i in range(n):
            started = time.perf_counter()
            client.infer(model_name, inputs, outputs=outputs)
            times[i] = time.perf_counter() - started
    finally:
        client.close()
    return np.sort(times) * 1e3


@dataclass
class LoadResult:
    protocol: str
    concurrency: int
    sessions_per_request: float
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_s: float
    sessions_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def closed_loop(url: str, requests: Sequence[dict[str, np.ndarray]], concurrency: int = 1,
                seconds: float = 3.0, protocol: str = "grpc", warmup: int = 3,
                model_name: str = cl.DEFAULT_MODEL_NAME, batched: bool = False) -> LoadResult:
    """``concurrency`` threads send ``requests`` (cycled) back to back for ``seconds``.

    Each thread has its own client and first sends ``warmup`` unmeasured requests. A request
    that fails counts as an error (its latency is not recorded)."""
    if not requests:
        raise ValueError("no requests")
    prepared = [(cl.make_inputs(r, protocol, batched), n_sessions(r)) for r in requests]
    outputs = cl.make_outputs(protocol)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    sessions = [0] * concurrency
    errors = [0] * concurrency
    stop_at = [0.0]
    began = [0.0]

    def open_gate() -> None:  # runs once, when every thread has warmed up
        began[0] = time.perf_counter()
        stop_at[0] = began[0] + seconds

    start_gate = threading.Barrier(concurrency + 1, action=open_gate)

    def worker(i: int) -> None:
        client = _client(url, protocol)
        try:
            for j in range(warmup):
                client.infer(model_name, prepared[(i + j) % len(prepared)][0], outputs=outputs)
            start_gate.wait()
            j = i
            while True:
                inputs, count = prepared[j % len(prepared)]
                j += 1
                started = time.perf_counter()
                if started >= stop_at[0]:
                    break
                try:
                    client.infer(model_name, inputs, outputs=outputs)
                except Exception:  # noqa: BLE001 - counted, the load goes on
                    errors[i] += 1
                    continue
                latencies[i].append(time.perf_counter() - started)
                sessions[i] += count
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began[0]
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1e3 if any(latencies) else np.array([np.nan])
    n_req = sum(len(x) for x in latencies)
    return LoadResult(
        protocol=protocol, concurrency=concurrency,
        sessions_per_request=float(np.mean([p[1] for p in prepared])), requests=n_req,
        errors=sum(errors), seconds=elapsed, p50_ms=float(np.percentile(lat, 50)),
        p95_ms=float(np.percentile(lat, 95)), p99_ms=float(np.percentile(lat, 99)),
        requests_per_s=n_req / elapsed, sessions_per_s=sum(sessions) / elapsed)


def requests_of(clicks, sessions_per_request: int, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Request arrays of ``sessions_per_request`` whole sessions each (at most ``limit`` requests)."""
    out = []
    for part in cl.split_sessions(clicks, sessions_per_request):
        if limit is not None and len(out) >= limit:
            break
        out.append(cl.request_arrays(part))
    return out


def bare_forward_ms(torchscript, values: np.ndarray, offsets: np.ndarray, n: int = 200,
                    warmup: int = 20, num_threads: int = 1) -> np.ndarray:
    """Latencies (ms, sorted) of the TorchScript model alone on one ragged input, in process,
    with ``num_threads`` torch threads (as the served operator uses)."""
    import torch

    model = torch.jit.load(str(torchscript), map_location="cpu") if isinstance(torchscript, (str, os.PathLike)) \
        else torchscript
    batch = {"item_id-list__values": torch.from_numpy(np.asarray(values, dtype=np.int64)),
             "item_id-list__offsets": torch.from_numpy(np.asarray(offsets, dtype=np.int64))}
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(batch)
            times = np.empty(n)
            for i in range(n):
                started = time.perf_counter()
                model(batch)
                times[i] = time.perf_counter() - started
    finally:
        torch.set_num_threads(before)
    return np.sort(times) * 1e3


def interleaved(measures: dict, rounds: int = 5) -> pd.DataFrame:
    """Run every measurement once per round, in turn, and return their per-round medians.

    ``measures``: name -> callable returning latencies (ms). On a shared machine the background
    load drifts; measuring A, B, A, B, ... and comparing within a round keeps a ratio honest
    where one long run of A then one of B would not. Returns a DataFrame (rounds x names)."""
    rows = []
    for _ in range(rounds):
        rows.append({name: float(np.median(fn())) for name, fn in measures.items()})
    return pd.DataFrame(rows, index=pd.RangeIndex(1, rounds + 1, name="round"))


# ----------------------------------------------------------------------------------------------
# perf_analyzer
# ----------------------------------------------------------------------------------------------

ENV_LIBS = "GTCREC_PERF_ANALYZER_LIBS"  # extra folders for LD_LIBRARY_PATH (libb64, libcudart)


def _cudart_dirs() -> list[str]:
    dirs = []
    try:
        import nvidia.cuda_runtime as cr  # PyPI nvidia-cuda-runtime-cu12

        for root in getattr(cr, "__path__", []):
            if (Path(root) / "lib").is_dir():
                dirs.append(str(Path(root) / "lib"))
    except ImportError:
        pass
    return dirs


def _libb64_dirs() -> list[str]:
    """Where ``make env`` unpacks Debian's libb64-0d inside the environment."""
    return [str(p) for p in sorted((Path(sys.prefix) / "opt" / "libb64").glob("usr/lib/*")) if p.is_dir()]


def perf_analyzer_status() -> dict:
    """Whether ``perf_analyzer`` can run here: ``{"available", "binary", "missing", "reason", "env"}``."""
    binary = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    status = {"available": False, "binary": binary, "missing": [], "reason": "", "env": {}}
    if not Path(binary).is_file():
        status["reason"] = "no perf_analyzer binary (it ships in the tritonclient wheel)"
        return status
    extra = [d for d in os.environ.get(ENV_LIBS, "").split(os.pathsep) if d] + _libb64_dirs() + _cudart_dirs()
    env = {"LD_LIBRARY_PATH": os.pathsep.join(extra + [os.environ.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)}
    status["env"] = env
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30,
                             env={**os.environ, **env}).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        status["reason"] = f"ldd failed: {exc}"
        return status
    missing = sorted({line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line})
    status["missing"] = missing
    if missing:
        hints = []
        if any("libb64" in m for m in missing):
            hints.append("libb64.so.0d: install the Debian/Ubuntu package libb64-0d")
        if any("libcudart" in m for m in missing):
            hints.append("libcudart.so.12: pip install nvidia-cuda-runtime-cu12 (found automatically), "
                         f"or put its folder in ${ENV_LIBS}")
        status["reason"] = "missing shared libraries: " + ", ".join(missing) + (" (" + "; ".join(hints) + ")")
        return status
    status["available"] = True
    return status


def perf_analyzer_input(requests: Sequence[dict[str, np.ndarray]], path: str | os.PathLike) -> Path:
    """Write requests as perf_analyzer ``--input-data`` JSON (BYTES as text, shapes given)."""
    data = []
    for r in requests:
        entry = {}
        for name in cl.INPUTS:
            arr = np.asarray(r[name])
            if arr.dtype == object:
                content = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
            else:
                content = arr.tolist()
            entry[name] = {"content": content, "shape": list(arr.shape)}
        data.append(entry)
    path = Path(path)
    path.write_text(json.dumps({"data": data}))
    return path


def run_perf_analyzer(url: str, requests: Sequence[dict[str, np.ndarray]], concurrency: Sequence[int] = (1, 2, 4),
                      seconds: float = 3.0, protocol: str = "grpc", model_name: str = cl.DEFAULT_MODEL_NAME,
                      timeout: float | None = None, strict: bool = False, control_key: str | None = None) -> list[dict]:
    """Run perf_analyzer over a concurrency range; one dict per concurrency (its CSV row, with
    ``p50_ms``, ``p95_ms``, ``p99_ms``, ``requests_per_s`` and ``sessions_per_s`` added). A point
    that fails gives ``{"concurrency", "error"}`` instead (``strict=True``: raise).

    perf_analyzer reads the model's configuration and statistics, two control APIs: it sends
    ``control_key`` (default: :func:`gtcrec.serving.access.read_key`) as a header (``-H``), so the key
    is on its command line while it runs; its messages are shown with the key hidden."""
    from gtcrec.serving import access

    key = control_key or access.read_key()
    key_args = [f"-H{name}:{value}" for name, value in access.headers(key, protocol).items()]
    status = perf_analyzer_status()
    if not status["available"]:
        raise RuntimeError(f"perf_analyzer cannot run here: {status['reason']}")
    per_request = float(np.mean([n_sessions(r) for r in requests]))
    results = []
    with tempfile.TemporaryDirectory(prefix="gtcrec-pa-") as tmp:
        data = perf_analyzer_input(requests, Path(tmp) / "input.json")
        for c in concurrency:
            report = Path(tmp) / f"c{c}.csv"
            cmd = [status["binary"], "-m", model_name, "-u", url, "-i", protocol,
                   "--input-data", str(data), "--concurrency-range", f"{c}:{c}",
                   "--measurement-mode", "time_windows",
                   "--measurement-interval", str(int(seconds * 1000)),
                   # a shared machine is never "stable" by the default 10%: accept any variation
                   "--stability-percentage", "1000", "--max-trials", "3", "-f", str(report), *key_args]
            # no --shape: every entry of the input JSON gives its own shapes
            run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **status["env"]},
                                 timeout=timeout or (seconds * 6 + 60))
            if run.returncode != 0 or not report.exists():
                run.stdout, run.stderr = access.redact(run.stdout, key), access.redact(run.stderr, key)
                tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
                if not strict:
                    results.append({"concurrency": c, "error": f"perf_analyzer exit {run.returncode}: " + " ".join(tail)})
                    continue
                raise RuntimeError(f"perf_analyzer failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
            with open(report) as f:
                row = next(csv.DictReader(f))
            row = {k: v for k, v in row.items() if k}
            rps = float(row["Inferences/Second"])
            row.update(concurrency=c, requests_per_s=rps, sessions_per_s=rps * per_request,
                       p50_ms=float(row["p50 latency"]) / 1e3, p95_ms=float(row["p95 latency"]) / 1e3,
                       p99_ms=float(row["p99 latency"]) / 1e3)
            results.append(row)
    return results
