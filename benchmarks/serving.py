"""Serving benchmark: ratios measured in ONE run on this machine (not a test; nothing is asserted).

    python benchmarks/serving.py --artifacts-dir artifacts [--seconds 3] [--json out.json]

Needs notebooks 01 (vocabulary, test clicks) and 04 (TorchScript model, popularity) in
ARTIFACTS_DIR. It exports its own repositories into a temporary folder — the lean executor
(``executor="lean"``) and Merlin's stock executor file (``"stock"``), ``--instances`` CPU instances
each, and the lean executor with Triton dynamic batching (``--batch-instances``, queue delay
``--batch-delay-us``: 0 batches only the requests that queued while the instance was busy) — starts
one real Triton server holding all of them, and measures:

1. one session: the bare TorchScript forward in this process (one torch thread, as served; on the
   session padded to MAX_LEN as the server feeds it, and at its own length), the graph in process
   (Merlin's executor and the lean chain), and the served p50 through gRPC and HTTP with the
   python client, and through perf_analyzer when its libraries are present.
   Target: served p50 <= 3x the bare forward.
2. throughput in sessions/s for every (sessions per request, concurrency) pair, python client in a
   closed loop (and perf_analyzer), plus single-session requests to the batched model and to the
   no-work floor (below), which is the most any model of this contract can answer on this machine.
   Targets: >= 1,000 sessions/s on 2 cores; >= 1,500 single-session requests/s at 8 clients and
   >= 8,000 sessions/s with 100 sessions per request (the summary prints the floor beside them).
3. where the milliseconds of one served session go (``--no-breakdown`` skips it), in interleaved
   rounds over gRPC with the python client: the client's total per request; Triton's own
   statistics for the model (its statistics extension: queue, compute_input, compute_infer,
   compute_output, per request); what is left for the client library and Triton's frontend; the
   lean chain in process, step by step (sessionize, model, decode) in a hot loop, and as a whole
   when each call follows one served request to the floor model, which leaves the chain's caches
   as cold as they are in the stub between two requests; and the same measures for a trivial
   python-backend model with the same inputs and outputs that does no work (the floor of a
   python-backend model answering this contract). Target: served p50 <= 1.3x (floor p50 + chain).
4. post-processing (in process, no server): the step after the model (drop clicked talks, keep k,
   codes to talk ids) written in numpy (the served operator), torch, pandas and, with a GPU, cudf,
   on real model outputs for test sessions, timed per request size; every variant must agree with
   numpy. ``--postprocess-only`` runs just this part (it moved here from notebook 06).

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


FLOOR_MODEL = "rec_floor"
FLOOR_MODEL_PY = '''import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The serving contract with no work: one fixed answer per request (the floor of the backend)."""

    def initialize(self, args):
        self.talks = np.array([[b"T%d" % i for i in range(K)]], dtype=object)
        self.scores = np.zeros((1, K), np.float32)

    def execute(self, requests):
        out = []
        for request in requests:
            sessions = pb_utils.get_input_tensor_by_name(request, "session_id").as_numpy()
            pb_utils.get_input_tensor_by_name(request, "talk_id").as_numpy()
            pb_utils.get_input_tensor_by_name(request, "timestamp").as_numpy()
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("session_ids", sessions[:1]), pb_utils.Tensor("talk_ids", self.talks),
                pb_utils.Tensor("scores", self.scores)]))
        return out
'''


def export_floor_model(repo: Path, like: Path, k: int, instances: int, name: str = FLOOR_MODEL) -> str:
    """A python-backend model with the config (inputs, outputs, instances) of the exported model at
    ``like`` that answers every request with a fixed answer: what serving this contract costs
    without any work."""
    import tritonclient.grpc.model_config_pb2 as model_config
    from google.protobuf import text_format

    config = text_format.Parse((like / "config.pbtxt").read_text(), model_config.ModelConfig())
    config.name = name
    config.platform = ""
    config.backend = "python"
    config.parameters.clear()
    del config.instance_group[:]
    config.instance_group.append(model_config.ModelInstanceGroup(
        kind=model_config.ModelInstanceGroup.Kind.KIND_CPU, count=int(instances)))
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    (repo / name / "1" / "model.py").write_text(FLOOR_MODEL_PY.replace("K)", f"{int(k)})"))
    return name


STAT_KEYS = ("queue", "compute_input", "compute_infer", "compute_output")


def triton_stats(client, model_name: str) -> dict:
    """Triton's cumulative statistics of a model: {key: (count, ns)} (success, queue, compute_*)."""
    stats = client.get_inference_statistics(model_name, as_json=True)["model_stats"]
    out: dict = {}
    for entry in stats:  # one per version
        for key, value in entry["inference_stats"].items():
            count, ns = out.get(key, (0, 0))
            out[key] = (count + int(value.get("count", 0)), ns + int(value.get("ns", 0)))
    return out


def served_breakdown_ms(server, arrays: dict, model_name: str, n: int) -> dict:
    """One client sends ``n`` requests in turn (gRPC); returns the mean ms per request of the client's
    total and of Triton's statistics over exactly those requests (a control API: the server's key), and
    the client's p50."""
    url = server.grpc_url
    stats_client = server.control_client()
    try:
        load.latency_ms(url, arrays, n=5, warmup=0, model_name=model_name)
        before = triton_stats(stats_client, model_name)
        latencies = load.latency_ms(url, arrays, n=n, warmup=0, model_name=model_name)
        after = triton_stats(stats_client, model_name)
    finally:
        stats_client.close()
    done = after["success"][0] - before["success"][0]
    out = {"client_total": float(latencies.mean()), "client_p50": float(np.median(latencies)),
           "server_total": (after["success"][1] - before["success"][1]) / done / 1e6}
    for key in STAT_KEYS:
        out[key] = (after[key][1] - before[key][1]) / done / 1e6
    out["client_and_frontend"] = out["client_total"] - out["server_total"]
    return out


def chain_steps_ms(ensemble, arrays: dict, n: int) -> dict:
    """Median ms of each step of the lean chain in process (hot loop), on the request ``arrays``."""
    from gtcrec.serving.executor_model import lean_chain

    chain = lean_chain(ensemble)
    out, x = {}, {k: np.asarray(v) for k, v in arrays.items()}
    for op in chain:
        y = op.transform_arrays(x)
        out[type(op).__name__] = in_process_ms(lambda op=op, x=x: op.transform_arrays(x), n)
        x = y
    return out


def chain_between_requests_ms(server, chain, arrays: dict, n: int, model_name: str = FLOOR_MODEL) -> float:
    """Median ms of the lean ``chain`` in process when each call follows one served request to the no-work
    model (client library, Triton's frontend and a stub run in between, as they do between two requests
    of a served session), instead of the chain's own previous call: the chain's working set (caches,
    branch predictors) is then as cold as in the stub."""
    import tritonclient.grpc as grpcclient

    from gtcrec.serving.executor_model import run_chain

    x = {k: np.asarray(v) for k, v in arrays.items()}
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs, outputs = cl.make_inputs(arrays, "grpc"), cl.make_outputs("grpc")
    times = []
    try:
        for i in range(n + 10):
            client.infer(model_name, inputs, outputs=outputs)
            started = time.perf_counter()
            run_chain(chain, dict(x))
            if i >= 10:
                times.append(time.perf_counter() - started)
    finally:
        client.close()
    return float(np.median(times) * 1e3)


def print_breakdown(rounds: pd.DataFrame, steps: dict, between: float) -> dict:
    """The breakdown table (median over rounds of the per-round means) and its derived lines."""
    med = rounds.median()
    chain = sum(steps.values())
    lean = {k.split("/", 1)[1]: med[k] for k in med.index if k.startswith("lean/")}
    floor = {k.split("/", 1)[1]: med[k] for k in med.index if k.startswith("floor/")}
    lines = [
        ("client total (mean per request)", lean["client_total"], floor.get("client_total")),
        ("  client library + Triton frontend (total - Triton's request time)", lean["client_and_frontend"],
         floor.get("client_and_frontend")),
        ("  Triton request time (statistics 'success')", lean["server_total"], floor.get("server_total")),
        ("    queue", lean["queue"], floor.get("queue")),
        ("    compute_input (inputs to the backend)", lean["compute_input"], floor.get("compute_input")),
        ("    compute_infer (python backend: IPC + stub + execute)", lean["compute_infer"], floor.get("compute_infer")),
        ("      the chain in process, hot loop: " + " + ".join(f"{k} {v:.3f}" for k, v in steps.items()),
         chain, None),
        ("      rest of compute_infer (IPC, conversions, chain slower in the stub)", lean["compute_infer"] - chain,
         None),
        ("      the chain in process, each call after one served request to the floor (as cold as served)",
         between, None),
        ("      rest of compute_infer beyond that chain", lean["compute_infer"] - between, None),
        ("    compute_output (answer tensors back)", lean["compute_output"], floor.get("compute_output")),
        ("client p50", lean["client_p50"], floor.get("client_p50")),
    ]
    print("\nwhere one session's milliseconds go (gRPC python client, mean ms per request, median over rounds;"
          "\n'floor' = a python-backend model with the same contract that does no work):")
    for label, value, fl in lines:
        print(f"  {label:92s} {value:7.3f}" + (f"   floor {fl:7.3f}" if fl is not None else ""), flush=True)
    floor_p50 = floor["client_p50"]
    ratios = {"served_p50_over_floor_plus_hot_chain": float(lean["client_p50"] / (floor_p50 + chain)),
              "served_p50_over_floor_plus_cold_chain": float(lean["client_p50"] / (floor_p50 + between))}
    print(f"  served p50 / (floor p50 + chain in a hot loop)          {ratios['served_p50_over_floor_plus_hot_chain']:.2f}"
          f"\n  served p50 / (floor p50 + chain after a served request) {ratios['served_p50_over_floor_plus_cold_chain']:.2f}"
          "  (target <= 1.3)", flush=True)
    return {"served": {k: float(v) for k, v in lean.items()}, "floor": {k: float(v) for k, v in floor.items()},
            "chain_steps_in_process": steps, "chain_in_process": chain, "chain_after_a_served_request": between,
            "compute_infer_minus_chain": float(lean["compute_infer"] - chain), **ratios}


def postprocess_comparison(vocab, torchscript, clicks: pd.DataFrame, max_len: int, k: int, sizes) -> dict:
    """Median ms per call of each post-processing variant per request size, on real model outputs for
    test sessions (one process, no server); every variant must give numpy's answer."""
    from gtcrec.serving import postprocess as pp

    model_op = ops.TorchScriptTopK(torchscript)
    sessionize = ops.SessionizeClicks(vocab, max_len=max_len)
    decoder = pp.plain_decoder(vocab, k)
    all_test = cl.request_arrays(clicks)
    inputs = {n: pp.model_candidates(model_op, sessionize, all_test, n) for n in sizes}
    agreement = {n: pp.agree(decoder, *args) for n, args in inputs.items()}
    if not all(all(a.values()) for a in agreement.values()):
        raise AssertionError(f"post-processing variants disagree: {agreement}")
    table = pp.time_variants(decoder, inputs)
    relative = table.div(table["numpy"], axis=0)
    print("\npost-processing, median ms per call (x numpy), every variant agrees with numpy:")
    print((table.round(3).astype(str) + " ms (" + relative.round(1).astype(str) + "x)").to_string(), flush=True)
    fastest = table.idxmin(axis=1)
    print("fastest per size:", ", ".join(f"{n} session(s) -> {v}" for n, v in fastest.items()),
          "" if "cudf" in table else "(cudf not installed: no GPU)", flush=True)
    return {"ms": {str(n): row for n, row in table.to_dict(orient="index").items()},
            "relative_to_numpy": {str(n): row for n, row in relative.to_dict(orient="index").items()},
            "fastest": {str(n): v for n, v in fastest.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--seconds", type=float, default=3.0, help="per load point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 100], help="sessions per request")
    parser.add_argument("--instances", type=int, default=2, help="CPU instances of each executor model")
    parser.add_argument("--batch-delay-us", type=int, default=0,
                        help="queue delay of the batched model (0: batch only what queued while the instance was busy)")
    parser.add_argument("--batch-instances", type=int, default=1, help="CPU instances of the batched model")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--latency-requests", type=int, default=500, help="per one-session measure, all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the one-session measures")
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-request breakdown")
    parser.add_argument("--compare-instances", type=int, default=1,
                        help="also measure the lean model with this many instances (0: no)")
    parser.add_argument("--no-response-cache", action="store_true",
                        help="do not measure the lean model behind Triton's response cache")
    parser.add_argument("--postprocess-sizes", type=int, nargs="+", default=[1, 10, 100, 1000],
                        help="sessions per request for the post-processing comparison")
    parser.add_argument("--postprocess-only", action="store_true", help="only the post-processing comparison")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)

    etl_out = read_manifest(args.artifacts_dir, "01-etl")
    train_out = read_manifest(args.artifacts_dir, "04-item-representation")
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

    # -- post-processing: numpy, torch, pandas (cudf) ------------------------------------------
    report["postprocess"] = postprocess_comparison(vocab, torchscript, clicks, max_len, args.k, args.postprocess_sizes)
    if args.postprocess_only:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=float))
        return 0

    # -- in process ---------------------------------------------------------------------------
    from merlin.table import TensorTable

    ensemble = ex.build_ensemble(vocab, torchscript, max_len=max_len, k=args.k, popularity=popularity)
    report["in_process_ms"] = {
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
        ex.export_ensemble(vocab, torchscript, Path(tmp) / "batched", max_len=max_len, k=args.k,
                           popularity=popularity, name="rec_batched", request=one, instance_count=args.batch_instances,
                           dynamic_batching=True, batch_delay_us=args.batch_delay_us)
        extras = {}  # label -> model name: measured beside the lean model, kept out of the summary's targets
        if args.compare_instances and args.compare_instances != args.instances:
            label = f"lean_{args.compare_instances}inst"
            ex.export_ensemble(vocab, torchscript, Path(tmp) / label, max_len=max_len, k=args.k,
                               popularity=popularity, name=f"rec_{label}", request=one,
                               instance_count=args.compare_instances)
            extras[label] = f"rec_{label}"
        cache_args = []
        if not args.no_response_cache:
            ex.export_ensemble(vocab, torchscript, Path(tmp) / "cached", max_len=max_len, k=args.k,
                               popularity=popularity, name="rec_cached", request=one, instance_count=args.instances)
            config = Path(tmp) / "cached" / "rec_cached" / "config.pbtxt"
            config.write_text(config.read_text() + "\nresponse_cache {\n  enable: true\n}\n")
            extras["cached"] = "rec_cached"
            cache_args = [f"--cache-config=local,size={64 << 20}"]
        floor = [] if args.no_breakdown else [export_floor_model(Path(tmp) / "floor", Path(tmp) / "lean" / names["lean"],
                                                                   args.k, args.instances)]
        with TritonServer([Path(tmp) / e for e in names] + [Path(tmp) / "batched"] + [Path(tmp) / e for e in extras]
                          + ([Path(tmp) / "floor"] if floor else []),
                          load_models=list(names.values()) + ["rec_batched"] + list(extras.values()) + floor,
                          startup_timeout=240, extra_args=cache_args) as server:
            report["startup_seconds"] = server.startup_seconds
            # -- one session: every measure in turn, per round; ratios within a round -----------
            padded = ops.SessionizeClicks(vocab, max_len=max_len, pad=True).sessionize(
                one["session_id"], one["talk_id"], one["timestamp"])
            unpadded = ops.SessionizeClicks(vocab, max_len=max_len).sessionize(
                one["session_id"], one["talk_id"], one["timestamp"])
            per_round = max(20, n_lat // args.rounds)
            measures = {
                "bare": lambda: load.bare_forward_ms(torchscript, padded["item_id-list__values"],
                                                     padded["item_id-list__offsets"], n=per_round, warmup=5),
                "bare_unpadded": lambda: load.bare_forward_ms(torchscript, unpadded["item_id-list__values"],
                                                              unpadded["item_id-list__offsets"], n=per_round, warmup=5),
            }
            for executor, name in names.items():
                for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
                    measures[f"{executor}/{protocol}/python"] = (
                        lambda url=url, protocol=protocol, name=name:
                        load.latency_ms(url, one, n=per_round, warmup=5, protocol=protocol, model_name=name))
                if use_pa:
                    measures[f"{executor}/grpc/perf_analyzer"] = (
                        lambda name=name: np.array([load.run_perf_analyzer(
                            server.grpc_url, [one], concurrency=(1,), seconds=1.0, model_name=name,
                            strict=True, control_key=server.control_key)[0]["p50_ms"]]))
            for label, name in extras.items():
                measures[f"{label}/grpc/python"] = (lambda name=name: load.latency_ms(
                    server.grpc_url, one, n=per_round, warmup=5, model_name=name))
                if use_pa and label != "cached":
                    measures[f"{label}/grpc/perf_analyzer"] = (
                        lambda name=name: np.array([load.run_perf_analyzer(
                            server.grpc_url, [one], concurrency=(1,), seconds=1.0, model_name=name,
                            strict=True, control_key=server.control_key)[0]["p50_ms"]]))
            if "cached" in extras:  # the cache must give the model's answer
                import tritonclient.grpc as grpcclient

                check = grpcclient.InferenceServerClient(server.grpc_url)
                try:
                    answers = [cl.infer_arrays(check, one, model_name=m) for m in (names["lean"], "rec_cached", "rec_cached")]
                finally:
                    check.close()
                for other in answers[1:]:
                    if not all(np.array_equal(answers[0][n], other[n], equal_nan=n == "scores") for n in cl.OUTPUTS):
                        raise AssertionError("the response cache answered differently from the model")
            rounds = load.interleaved(measures, rounds=args.rounds)
            report["one_session_rounds_p50_ms"] = rounds.to_dict(orient="list")
            served = {}
            for key in rounds.columns:
                if key.startswith("bare"):
                    continue
                served[key] = {"p50_ms": float(rounds[key].median()),
                               "ratio_to_bare_p50": float((rounds[key] / rounds["bare"]).median()),
                               "ratio_to_unpadded_bare_p50": float((rounds[key] / rounds["bare_unpadded"]).median())}
            report["in_process_ms"]["bare_forward_p50"] = float(rounds["bare"].median())
            report["in_process_ms"]["bare_forward_unpadded_p50"] = float(rounds["bare_unpadded"].median())
            report["one_session_served"] = served
            table = pd.DataFrame(served).T
            print(f"\none session, {args.rounds} interleaved rounds of {per_round} requests (median of per-round "
                  f"p50s; ratios taken within each round). Bare forward {rounds['bare'].median():.3f} ms as served "
                  f"(padded to MAX_LEN), {rounds['bare_unpadded'].median():.3f} ms unpadded. Target ratio <= 3:\n"
                  f"{table.round(3).to_string()}", flush=True)
            if extras:
                print("(" + "; ".join(
                    [f"{label}: the lean model with {args.compare_instances} instance(s) instead of {args.instances}"
                     for label in extras if label != "cached"]
                    + (["cached: the lean model behind Triton's response cache, the same session repeated, so every "
                        "request after the first is a cache hit (answers checked equal to the model's)"]
                       if "cached" in extras else [])) + ")", flush=True)

            # -- breakdown: where the milliseconds of one session go --------------------------
            if not args.no_breakdown:
                from gtcrec.serving.executor_model import lean_chain

                steps = chain_steps_ms(ensemble, one, max(50, n_lat // 2))
                chain, rows_b, between = lean_chain(ensemble), [], []
                for _ in range(args.rounds):
                    row = {}
                    for label, model in (("lean", names["lean"]), ("floor", FLOOR_MODEL)):
                        for key, value in served_breakdown_ms(server, one, model, per_round).items():
                            row[f"{label}/{key}"] = value
                    rows_b.append(row)
                    between.append(chain_between_requests_ms(server, chain, one, per_round))
                breakdown = pd.DataFrame(rows_b)
                report["breakdown_ms"] = print_breakdown(breakdown, steps, float(np.median(between)))
                report["breakdown_ms"]["bare_forward_p50"] = float(rounds["bare"].median())
                report["breakdown_ms"]["rounds"] = breakdown.to_dict(orient="list")

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
                if n == 1:  # single sessions: the other settings, the no-work floor (the ceiling of them all)
                    # and dynamic batching (the case it is for)
                    single_models = [(label, name, False) for label, name in extras.items() if label != "cached"]
                    single_models += [("no-work floor", FLOOR_MODEL, False)] if floor else []
                    single_models += [("dynamic batching", "rec_batched", True)]
                    for label, name, batched in single_models:
                        for c in args.concurrency:
                            r = load.closed_loop(server.grpc_url, requests, concurrency=c, seconds=args.seconds,
                                                 model_name=name, batched=batched).as_dict()
                            rows.append({**r, "tool": f"python client, {label}"})
                            print(f"  python client, {label:18s}   1 session/request   {c:2d} clients: "
                                  f"{r['sessions_per_s']:9,.0f} sessions/s  p50 {r['p50_ms']:7.2f} ms  errors {r['errors']}",
                                  flush=True)
                if use_pa:
                    for r in load.run_perf_analyzer(server.grpc_url, requests, concurrency=args.concurrency,
                                                    seconds=args.seconds, model_name=names["lean"],
                                                    control_key=server.control_key):
                        if "error" in r:
                            print(f"  perf_analyzer  {n:4d} sessions/request  {r['concurrency']:2d} clients: {r['error']}")
                            continue
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
    single = [r for r in report["throughput"] if r["sessions_per_request"] == 1 and r["tool"] == "python client"]
    single_batched = [r for r in report["throughput"] if r["tool"] == "python client, dynamic batching"]
    single_floor = [r for r in report["throughput"] if r["tool"] == "python client, no-work floor"]
    at8 = [r["sessions_per_s"] for r in single + single_batched if r["concurrency"] == 8]
    floor8 = [r["sessions_per_s"] for r in single_floor if r["concurrency"] == 8]
    per100 = [r["sessions_per_s"] for r in report["throughput"] if r["sessions_per_request"] == 100]
    ratio = report.get("breakdown_ms", {}).get("served_p50_over_floor_plus_cold_chain")
    summary = {
        "served_p50_over_bare_lean_grpc_python": lean_grpc["ratio_to_bare_p50"],
        "served_p50_over_unpadded_bare_lean_grpc_python": lean_grpc["ratio_to_unpadded_bare_p50"],
        "served_p50_over_bare_best_client": one_best,
        "stock_over_lean_p50": stock_grpc["p50_ms"] / lean_grpc["p50_ms"],
        "best_sessions_per_s": best["sessions_per_s"],
        "best_at": f"{int(best['sessions_per_request'])} sessions/request, {best['concurrency']} clients, {best['tool']}",
        "best_single_session_requests_per_s": max(r["sessions_per_s"] for r in single) if single else None,
        "best_single_session_requests_per_s_batched": (max(r["sessions_per_s"] for r in single_batched)
                                                       if single_batched else None),
        "target_latency_ratio_met": one_best <= 3.0,
        "target_throughput_met": best["sessions_per_s"] >= 1000,
        # issue 22's serving targets, each beside what the no-work floor reaches on the same machine
        "served_p50_over_floor_plus_cold_chain": ratio,
        "target_p50_within_1.3x_floor_plus_chain_met": None if ratio is None else ratio <= 1.3,
        "single_session_per_s_at_8_clients": max(at8) if at8 else None,
        "no_work_floor_per_s_at_8_clients": max(floor8) if floor8 else None,
        "target_1500_per_s_at_8_clients_met": bool(at8) and max(at8) >= 1500,
        "sessions_per_s_at_100_per_request": max(per100) if per100 else None,
        "target_8000_sessions_per_s_met": bool(per100) and max(per100) >= 8000,
    }
    report["summary"] = summary
    print("\nsummary (one run, this machine):")
    for key, value in summary.items():
        print(f"  {key:46s} {value:,.2f}" if isinstance(value, float) else f"  {key:46s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
