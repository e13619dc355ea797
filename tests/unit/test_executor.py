"""The lean executor, the post-processing variants and the load tools.

One real server holds the same ensemble three times: ``lean`` (gtcrec's executor file, operator
chain on arrays), ``merlin`` (gtcrec's file, Merlin's LocalExecutor) and ``stock`` (Merlin's own
executor file). They must answer byte for byte alike, and like the in-process graph.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec.serving import client as cl
from gtcrec.serving import executor_model, load
from gtcrec.serving import operators as ops
from gtcrec.serving import postprocess as pp
from gtcrec.serving.export import (build_ensemble, example_clicks, export_ensemble, lean_transform,
                                   lean_transform_batch, reference_outputs)

VOCAB = [f"T{i:04d}" for i in range(80)]


class Scorer(torch.nn.Module):
    def __init__(self, n_codes: int, k: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(n_codes, 6, generator=torch.Generator().manual_seed(1)))
        self.k = k

    def forward(self, inputs):
        values, offsets = inputs["item_id-list__values"], inputs["item_id-list__offsets"]
        lengths = offsets[1:] - offsets[:-1]
        seg = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
        real = (values != 0).to(self.table.dtype)  # code 0 is padding
        summed = torch.zeros(lengths.shape[0], 6).index_add_(0, seg, self.table[values] * real[:, None])
        top = torch.topk(summed @ self.table.t(), self.k, dim=1)
        return top.values, top.indices


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("exec") / "m.pt"
    example = {"item_id-list__values": torch.tensor([3, 4, 5]), "item_id-list__offsets": torch.tensor([0, 1, 3])}
    with torch.no_grad():
        torch.jit.trace(Scorer(len(VOCAB) + 3, 14).eval(), (example,), strict=False).save(str(path))
    return path


@pytest.fixture(scope="module")
def clicks() -> pd.DataFrame:
    return pd.concat([example_clicks(VOCAB, n_sessions=15, max_clicks=10, seed=s) for s in (3, 4)],
                     ignore_index=True)


def test_lean_chain_equals_merlin_executor_in_process(model_path, clicks):
    ensemble = build_ensemble(VOCAB, model_path, max_len=5, k=4, popularity=np.arange(len(VOCAB) + 3))
    chain = executor_model.lean_chain(ensemble)
    assert [type(op).__name__ for op in chain] == ["SessionizeClicks", "TorchScriptTopK", "DecodeTopK"]
    request = cl.request_arrays(clicks)
    merlin = reference_outputs(ensemble, request).outputs
    lean = lean_transform(ensemble, request)
    assert list(lean) == list(merlin) == ["session_ids", "talk_ids", "scores"]
    for name in merlin:
        np.testing.assert_array_equal(lean[name], merlin[name])
    # per-code popularity (reserved rows first) is the same as per-talk popularity
    per_talk = build_ensemble(VOCAB, model_path, max_len=5, k=4, popularity=np.arange(len(VOCAB)))
    np.testing.assert_array_equal(reference_outputs(per_talk, request).outputs["talk_ids"], merlin["talk_ids"])


def test_a_graph_that_is_not_a_chain_uses_merlins_executor(model_path):
    from merlin.systems.dag import Ensemble

    from gtcrec.serving.export import request_schema

    pre = ["session_id", "talk_id", "timestamp"] >> ops.SessionizeClicks(VOCAB, max_len=5)
    model = pre >> ops.TorchScriptTopK(model_path, passthrough=False)
    branched = (model + pre[[ops.SESSIONS, ops.CLICKED, ops.MODEL_ROW]]) >> ops.DecodeTopK(VOCAB, k=3)
    assert executor_model.lean_chain(Ensemble(branched, request_schema())) is None


@pytest.fixture(scope="module")
def served(model_path, clicks, tmp_path_factory):
    from gtcrec.serving.server import TritonServer

    repo = tmp_path_factory.mktemp("exec-repo")
    refs = {}
    for mode in ("lean", "merlin", "stock"):
        _, refs[mode] = export_ensemble(VOCAB, model_path, repo / mode, max_len=5, k=4, name=f"rec_{mode}",
                                        request=clicks, executor=mode, instance_count=1)
    export_ensemble(VOCAB, model_path, repo / "batched", max_len=5, k=4, name="rec_batched", request=clicks,
                    instance_count=1, dynamic_batching=True, max_batch_size=8, batch_delay_us=50_000)
    repos = [repo / m for m in refs] + [repo / "batched"]
    with TritonServer(repos, load_models=[f"rec_{m}" for m in refs] + ["rec_batched"], startup_timeout=120) as s:
        yield s, refs, repo


@pytest.mark.server
def test_the_three_executors_answer_alike(served, clicks):
    server, refs, repo = served
    config = (repo / "lean" / "rec_lean" / "config.pbtxt").read_text()
    assert 'key: "executor"' in config and 'string_value: "lean"' in config
    assert "executor" not in (repo / "stock" / "rec_stock" / "config.pbtxt").read_text().split("backend")[-1]
    assert "gtcrec" in (repo / "lean" / "rec_lean" / "1" / "model.py").read_text()
    assert "gtcrec" not in (repo / "stock" / "rec_stock" / "1" / "model.py").read_text()
    client = server.grpc_client()
    try:
        for mode, ref in refs.items():
            out = cl.infer_arrays(client, ref.request, model_name=f"rec_{mode}")
            for name, want in refs["lean"].outputs.items():
                np.testing.assert_array_equal(out[name], want, err_msg=f"{mode} {name}")
    finally:
        client.close()
    log = server.log_path.read_text()
    assert "rec_lean v1: lean executor (SessionizeClicks >> TorchScriptTopK >> DecodeTopK)" in log
    assert "rec_merlin v1: merlin executor (Merlin LocalExecutor)" in log


@pytest.mark.server
def test_closed_loop_and_latency_on_the_server(served, clicks):
    server, _, _ = served
    requests = load.requests_of(clicks, 3, limit=4)
    assert [load.n_sessions(r) for r in requests] == [3, 3, 3, 3]
    result = load.closed_loop(server.grpc_url, requests, concurrency=2, seconds=0.5, model_name="rec_lean")
    assert result.errors == 0 and result.requests > 5
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
    assert result.sessions_per_s == pytest.approx(3 * result.requests_per_s, rel=0.01)
    assert 0.4 < result.seconds < 3
    # a failing request is counted, not fatal
    bad = {**requests[0], "timestamp": -requests[0]["timestamp"] - 1}
    failing = load.closed_loop(server.http_url, [bad], concurrency=1, seconds=0.3, protocol="http",
                               model_name="rec_lean", warmup=0)
    assert failing.errors > 0 and failing.requests == 0
    lat = load.latency_ms(server.http_url, requests[0], n=20, warmup=2, protocol="http", model_name="rec_lean")
    assert len(lat) == 20 and (np.diff(lat) >= 0).all() and lat[0] > 0


def test_bare_forward_ms(model_path):
    lat = load.bare_forward_ms(model_path, np.array([3, 4, 5]), np.array([0, 3]), n=10, warmup=1)
    assert len(lat) == 10 and lat[0] > 0 and torch.get_num_threads() >= 1


def test_perf_analyzer_status_and_input_file(tmp_path, clicks):
    status = load.perf_analyzer_status()
    assert set(status) == {"available", "binary", "missing", "reason", "env"}
    if not status["available"]:
        assert status["reason"]  # says why (missing libraries, no binary)
    requests = load.requests_of(clicks, 2, limit=2)
    doc = json.loads(load.perf_analyzer_input(requests, tmp_path / "in.json").read_text())
    first = doc["data"][0]
    assert first["session_id"]["shape"] == [len(requests[0]["session_id"])]
    assert first["timestamp"]["content"] == requests[0]["timestamp"].tolist()
    assert all(isinstance(t, str) for t in first["talk_id"]["content"])


@pytest.mark.server
def test_perf_analyzer_runs_when_available(served, clicks):
    if not load.perf_analyzer_status()["available"]:
        pytest.skip(load.perf_analyzer_status()["reason"])
    server, _, _ = served
    rows = load.run_perf_analyzer(server.grpc_url, load.requests_of(clicks, 2, limit=3), concurrency=(1,),
                                  seconds=0.5, model_name="rec_lean", strict=True, control_key=server.control_key)
    assert rows[0]["concurrency"] == 1 and rows[0]["requests_per_s"] > 0 and rows[0]["p50_ms"] > 0


# ------------------------------------------------------------------------------------------------
# post-processing variants
# ------------------------------------------------------------------------------------------------

def test_postprocess_variants_agree_and_time(model_path, clicks):
    op = pp.plain_decoder(VOCAB, k=4)
    request = cl.request_arrays(clicks)
    model, sessionize = ops.TorchScriptTopK(model_path), ops.SessionizeClicks(VOCAB, max_len=5)
    inputs = {n: pp.model_candidates(model, sessionize, request, n) for n in (1, 7, 50)}
    for n, args in inputs.items():
        assert len(args[1]) == n + 1
        assert pp.agree(op, *args) == {name: True for name in pp.variants()}
    table = pp.time_variants(op, {1: inputs[1], 50: inputs[50]}, repeats=3)
    assert list(table.index) == [1, 50] and {"numpy", "torch", "pandas"} <= set(table.columns)
    assert (table.to_numpy() > 0).all()


def test_postprocess_variants_on_a_hand_made_case():
    op = pp.plain_decoder(VOCAB[:6], k=3)  # codes 3..8
    codes = np.array([[5, 2, 7, 4, 9, 8], [3, 3, 8, 0, 6, 1]], dtype=np.int64)  # 9 is out of range
    scores = np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::-1].copy()
    clicked_values, clicked_offsets = np.array([7, 4, 3]), np.array([0, 2, 3])
    want_ids = np.array([[b"T0002", b"T0005", b""], [b"T0005", b"T0003", b""]], dtype=object)
    want_scores = np.array([[5, 0, np.nan], [9, 7, np.nan]], dtype=np.float32)
    for name, fn in pp.variants().items():
        ids, sc = fn(op, clicked_values, clicked_offsets, scores, codes)
        np.testing.assert_array_equal(ids, want_ids, err_msg=name)
        np.testing.assert_array_equal(sc, want_scores, err_msg=name)


# ------------------------------------------------------------------------------------------------
# choosing the backend, finding server processes
# ------------------------------------------------------------------------------------------------

def test_choose_backend(tmp_path, monkeypatch):
    from gtcrec.serving.export import choose_backend
    from gtcrec.serving.server import find_tritonserver

    assert choose_backend("python") == ("python", "forced by the caller")
    assert choose_backend("pytorch")[0] == "pytorch"
    with pytest.raises(ValueError):
        choose_backend("tensorflow")
    binary = find_tritonserver()
    backend, why = choose_backend("auto")
    assert backend == ("pytorch" if binary.has_backend("pytorch") else "python") and why
    # a server laid out like NVIDIA's containers: <install>/bin/tritonserver, <install>/backends/*
    fake = tmp_path / "opt" / "tritonserver"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "tritonserver").write_text("#!/bin/sh\n")
    (fake / "bin" / "tritonserver").chmod(0o755)
    for name in ("python", "pytorch"):
        (fake / "backends" / name).mkdir(parents=True)
    assert choose_backend("auto", tritonserver=fake / "bin" / "tritonserver")[0] == "pytorch"
    (fake / "backends" / "pytorch").rmdir()
    backend, why = choose_backend("auto", tritonserver=fake / "bin" / "tritonserver")
    assert backend == "python" and "backends: python" in why


@pytest.mark.server
def test_server_processes_finds_a_running_server_by_id(served):
    from gtcrec.serving.server import server_processes

    server, _, _ = served
    assert server_processes(server.server_id) == [server.pid]
    assert server_processes("no-such-server-id") == []


# ------------------------------------------------------------------------------------------------
# dynamic batching
# ------------------------------------------------------------------------------------------------

def test_batched_chain_in_process_equals_one_request_at_a_time(model_path, clicks):
    ensemble = build_ensemble(VOCAB, model_path, max_len=5, k=4, popularity=np.arange(len(VOCAB)))
    requests = load.requests_of(clicks, 4)
    bad = {**requests[1], "timestamp": -requests[1]["timestamp"]}
    empty = {name: arr[:0] for name, arr in requests[0].items()}
    batch = [requests[0], bad, empty] + requests[2:]
    results = lean_transform_batch(ensemble, batch)
    assert isinstance(results[1], ops.BadRequest) and "negative" in str(results[1])
    for request, got in zip(batch, results):
        if request is bad:
            continue
        want = lean_transform(ensemble, request)
        np.testing.assert_array_equal(got["session_ids"], want["session_ids"])
        np.testing.assert_array_equal(got["talk_ids"], want["talk_ids"])
        # one model call over more sessions: float sums in another order (last bits differ)
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5)


@pytest.mark.server
def test_dynamic_batching_on_the_server(served, clicks):
    import threading

    server, refs, repo = served
    config = (repo / "batched" / "rec_batched" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in config and "allow_ragged_batch: true" in config
    assert "max_queue_delay_microseconds: 50000" in config
    requests = load.requests_of(clicks, 3)[:6]
    requests[4] = {**requests[4], "timestamp": -requests[4]["timestamp"] - 1}  # one bad request among them
    results: dict = {}

    def send(i):
        client = server.grpc_client()
        try:
            results[i] = cl.infer_arrays(client, requests[i], model_name="rec_batched", batched=True)
        except Exception as exc:  # noqa: BLE001
            results[i] = exc
        finally:
            client.close()

    with server.control_client() as control:  # statistics: a control API
        stats0 = control.get_inference_statistics("rec_batched", as_json=True)["model_stats"][0]
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with server.control_client() as control:
        stats = control.get_inference_statistics("rec_batched", as_json=True)["model_stats"][0]
    client = server.grpc_client()
    try:
        for i, request in enumerate(requests):
            if i == 4:
                assert "bad request" in str(results[i]) and "INVALID_ARGUMENT" in str(results[i])
                continue
            want = cl.infer_arrays(client, request, model_name="rec_lean")
            np.testing.assert_array_equal(results[i]["session_ids"], want["session_ids"])
            np.testing.assert_array_equal(results[i]["talk_ids"], want["talk_ids"])
            np.testing.assert_allclose(results[i]["scores"], want["scores"], rtol=1e-5)
    finally:
        client.close()
    inferences = int(stats["inference_count"]) - int(stats0.get("inference_count", 0))
    executions = int(stats["execution_count"]) - int(stats0.get("execution_count", 0))
    assert inferences == len(requests) and executions < inferences  # requests shared executions
    assert "rec_batched v1: lean executor (SessionizeClicks >> TorchScriptTopK >> DecodeTopK), dynamic batching" \
        in server.log_path.read_text()


def test_dynamic_batching_needs_the_lean_executor(model_path, tmp_path):
    with pytest.raises(ValueError, match="dynamic_batching needs"):
        export_ensemble(VOCAB, model_path, tmp_path / "r", max_len=5, k=4, executor="stock", dynamic_batching=True)


# ------------------------------------------------------------------------------------------------
# warm-up before a version is ready
# ------------------------------------------------------------------------------------------------

def test_warmup_requests_cover_several_session_counts(clicks):
    request = cl.request_arrays(clicks)
    parts = executor_model.warmup_requests(request)
    n_sessions = len(set(request["session_id"].tolist()))
    assert [len(set(p["session_id"].tolist())) for p in parts] == [n_sessions, 1, 2, 4]
    first = request["session_id"][0]
    np.testing.assert_array_equal(parts[1]["talk_id"], request["talk_id"][request["session_id"] == first])
    assert all(len(p["talk_id"]) == len(p["timestamp"]) == len(p["session_id"]) for p in parts)


@pytest.mark.server
def test_each_version_is_warmed_up_on_its_reference_request_before_it_is_ready(served):
    server, refs, repo = served
    for mode in ("lean", "merlin"):
        saved = executor_model.read_warmup_request(repo / mode / f"rec_{mode}" / "1")
        for name, want in refs[mode].request.items():
            np.testing.assert_array_equal(saved[name], want)
    assert not (repo / "stock" / "rec_stock" / "1" / executor_model.WARMUP_FILE).exists()  # Merlin's own file
    calls = executor_model.WARMUP_ROUNDS * len(executor_model.warmup_requests(refs["lean"].request))
    log = server.log_path.read_text()
    assert f"rec_lean v1: warmed up with {calls} calls" in log
    assert f"rec_batched v1: warmed up with {calls} calls" in log
    assert "rec_merlin v1: the merlin executor is not warmed up" in log


@pytest.mark.server
def test_a_version_that_fails_its_warm_up_is_refused_and_the_old_one_serves(served):
    import shutil

    from tritonclient.utils import InferenceServerException

    server, refs, repo = served
    folder = repo / "lean" / "rec_lean"
    broken = folder / "2"
    shutil.copytree(folder / "1", broken)
    request = {**refs["lean"].request, "timestamp": -refs["lean"].request["timestamp"] - 1}  # a bad request
    executor_model.write_warmup_request(broken, request)
    try:
        with pytest.raises(InferenceServerException, match="warm-up request failed"):
            server.load_model("rec_lean")
    finally:
        shutil.rmtree(broken)
    client = server.grpc_client()
    try:
        assert client.is_model_ready("rec_lean", "1") and not client.is_model_ready("rec_lean", "2")
        out = cl.infer_arrays(client, refs["lean"].request, model_name="rec_lean")
    finally:
        client.close()
    np.testing.assert_array_equal(out["talk_ids"], refs["lean"].outputs["talk_ids"])
