"""Inputs that are not ordinary, against ONE running Triton server (the behaviours documented in
``gtcrec.serving.operators``). After every bad request the server must still be up and answer a
valid request exactly as before.

The model is a small traced stand-in with the trained model's interface (dict of ragged
``item_id-list`` codes -> (scores, codes) of the top K).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict

import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec.serving import client as cl
from gtcrec.serving import operators as ops
from gtcrec.serving.export import build_ensemble, export_ensemble, reference_outputs

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

VOCAB = [f"S{2000 + i}" for i in range(60)]
MAX_LEN, K, MODEL_K = 4, 5, 12
MAX_CLICKS = 150_000


class MeanDotTopK(torch.nn.Module):
    def __init__(self, n_codes: int, k: int, dim: int = 8):
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.table = torch.nn.Parameter(torch.randn(n_codes, dim, generator=gen))
        self.k = k

    def forward(self, inputs: Dict[str, torch.Tensor]):
        values, offsets = inputs["item_id-list__values"], inputs["item_id-list__offsets"]
        lengths = offsets[1:] - offsets[:-1]
        segment = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
        real = (values != 0).to(self.table.dtype)  # code 0 is padding
        summed = torch.zeros(lengths.shape[0], self.table.shape[1]).index_add_(0, segment, self.table[values] * real[:, None])
        counts = torch.zeros(lengths.shape[0]).index_add_(0, segment, real).clamp(min=1)
        scores = (summed / counts.unsqueeze(1)) @ self.table.t()
        top = torch.topk(scores, self.k, dim=1)
        return top.values, top.indices


def trace_model(path: Path, k: int = MODEL_K) -> Path:
    module = MeanDotTopK(len(VOCAB) + 3, k).eval()
    example = {"item_id-list__values": torch.tensor([3, 4, 5]), "item_id-list__offsets": torch.tensor([0, 1, 3])}
    with torch.no_grad():
        torch.jit.trace(module, (example,), strict=False).save(str(path))
    return path


POPULARITY = np.random.default_rng(11).integers(0, 1000, len(VOCAB)).astype(np.float64)
FALLBACK = [VOCAB[i] for i in np.argsort(-POPULARITY, kind="stable")]

VALID = pd.DataFrame({"session_id": ["v1", "v1", "v1", "v2", "v2"],
                      "talk_id": ["S2003", "S2010", "S2011", "S2040", "S2041"],
                      "timestamp": [10, 20, 30, 5, 6]})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    model = trace_model(tmp / "model.pt")
    ensemble, ref = export_ensemble(VOCAB, model, tmp / "repo", max_len=MAX_LEN, k=K, popularity=POPULARITY,
                                    request=VALID, max_clicks=MAX_CLICKS)
    return {"tmp": tmp, "model": model, "ensemble": ensemble, "valid": ref}


@pytest.fixture(scope="module")
def server(setup):
    from gtcrec.serving.server import TritonServer

    with TritonServer(setup["tmp"] / "repo", load_models=["executor_model"], startup_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = tritonclient_grpc.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def raw_infer(client, tensors: dict[str, np.ndarray], dtypes: dict[str, str] | None = None) -> dict:
    """Send arrays as they are (no client-side fixing); ``dtypes`` overrides Triton datatypes."""
    default = {"session_id": "BYTES", "talk_id": "BYTES", "timestamp": "INT64"}
    inputs = []
    for name, arr in tensors.items():
        dtype = (dtypes or {}).get(name, default.get(name, "BYTES"))
        inp = tritonclient_grpc.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = client.infer(cl.DEFAULT_MODEL_NAME, inputs, outputs=cl.make_outputs("grpc"))
    return {name: result.as_numpy(name) for name in cl.OUTPUTS}


def in_process(setup, arrays) -> dict:
    return reference_outputs(setup["ensemble"], arrays).outputs


def assert_still_serving(server, client, setup):
    assert server.is_running(), server.log_tail()
    served = cl.infer_arrays(client, setup["valid"].request)
    for name, want in setup["valid"].outputs.items():
        np.testing.assert_array_equal(served[name], want)


def arrays(sessions, talks, times) -> dict[str, np.ndarray]:
    return {"session_id": np.array([s if isinstance(s, bytes) else s.encode() for s in sessions], dtype=object),
            "talk_id": np.array([t if isinstance(t, bytes) else t.encode() for t in talks], dtype=object),
            "timestamp": np.asarray(times, dtype=np.int64)}


def talks_of(out, row=0) -> list[str]:
    return [t.decode() for t in out["talk_ids"][row]]


# ------------------------------------------------------------------------------------------------
# answered (documented behaviour)
# ------------------------------------------------------------------------------------------------

@pytest.mark.server
def test_empty_request_gets_an_empty_answer(server, client, setup):
    out = raw_infer(client, arrays([], [], []))
    assert out["session_ids"].shape == (0,)
    assert out["talk_ids"].shape == (0, K) and out["scores"].shape == (0, K)
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_session_of_unknown_talks_gets_the_popular_fallback(server, client, setup):
    out = raw_infer(client, arrays(["u", "u"], ["NOPE", "S9999"], [1, 2]))
    assert talks_of(out) == FALLBACK[:K]
    assert np.isnan(out["scores"]).all()
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_unknown_talks_among_known_ones_are_dropped(server, client, setup):
    mixed = raw_infer(client, arrays(["m"] * 4, ["S2001", "???", "S2002", "S2003x"], [1, 2, 3, 4]))
    clean = raw_infer(client, arrays(["m"] * 2, ["S2001", "S2002"], [1, 3]))
    assert talks_of(mixed) == talks_of(clean)
    assert np.isfinite(mixed["scores"]).all()  # the model answered, no fallback
    np.testing.assert_array_equal(mixed["scores"], clean["scores"])
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_repeated_clicks_stay_in_the_input_and_are_never_recommended(server, client, setup):
    req = arrays(["d"] * 4, ["S2005", "S2005", "S2005", "S2006"], [1, 2, 3, 4])
    out = raw_infer(client, req)
    want = in_process(setup, req)
    np.testing.assert_array_equal(out["talk_ids"], want["talk_ids"])
    assert not {"S2005", "S2006"} & set(talks_of(out))
    once = raw_infer(client, arrays(["d"] * 2, ["S2005", "S2006"], [1, 4]))
    assert not np.array_equal(out["scores"], once["scores"])  # the repeats reached the model
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_long_session_keeps_the_last_clicks_and_excludes_all_clicked(server, client, setup):
    talks = [f"S20{i:02d}" for i in range(20, 32)]  # 12 clicks > MAX_LEN = 4
    out = raw_infer(client, arrays(["L"] * 12, talks, range(12)))
    # independently: the model on the last MAX_LEN codes, minus every clicked talk, first K
    codes = torch.tensor([VOCAB.index(t) + 3 for t in talks[-MAX_LEN:]])
    with torch.no_grad():
        scores, cand = torch.jit.load(str(setup["model"]))(
            {"item_id-list__values": codes, "item_id-list__offsets": torch.tensor([0, MAX_LEN])})
    kept = [(VOCAB[c - 3], s) for c, s in zip(cand[0].tolist(), scores[0].tolist())
            if c >= 3 and VOCAB[c - 3] not in talks][:K]
    assert len(kept) == K  # the model had enough candidates: no fallback in this answer
    assert talks_of(out) == [t for t, _ in kept]
    np.testing.assert_allclose(out["scores"][0], [s for _, s in kept], rtol=1e-6)
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_unsorted_timestamps_are_sorted_per_session(server, client, setup):
    ordered = arrays(["a", "a", "a", "b", "b"], ["S2001", "S2002", "S2003", "S2007", "S2008"], [1, 2, 3, 10, 20])
    perm = np.array([4, 2, 0, 3, 1])
    shuffled = {name: arr[perm] for name, arr in ordered.items()}
    out_sorted, out_shuffled = raw_infer(client, ordered), raw_infer(client, shuffled)
    assert list(out_shuffled["session_ids"]) == [b"b", b"a"]  # order of first appearance
    np.testing.assert_array_equal(out_shuffled["talk_ids"][::-1], out_sorted["talk_ids"])
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_non_utf8_bytes(server, client, setup):
    bad_talk = raw_infer(client, arrays(["n"] * 3, [b"S2001", b"\xff\xfeS2002", b"S2004"], [1, 2, 3]))
    clean = raw_infer(client, arrays(["n"] * 2, ["S2001", "S2004"], [1, 3]))
    np.testing.assert_array_equal(bad_talk["talk_ids"], clean["talk_ids"])  # an unknown talk
    bad_session = raw_infer(client, arrays([b"\xc3\x28", b"\xc3\x28"], ["S2001", "S2004"], [1, 3]))
    assert bad_session["session_ids"].tolist() == [b"\xc3\x28"]  # back byte for byte
    assert cl.to_frame(bad_session)["session_id"].iloc[0] == "\\xc3("
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_ten_thousand_sessions_in_one_request(server, client, setup):
    rng = np.random.default_rng(0)
    n_sessions, per = 10_000, 6
    sessions = np.repeat([f"big{i}".encode() for i in range(n_sessions)], per).astype(object)
    talks = np.array([t.encode() for t in rng.choice(VOCAB, n_sessions * per)], dtype=object)
    req = {"session_id": sessions, "talk_id": talks,
           "timestamp": rng.integers(0, 10**9, n_sessions * per).astype(np.int64)}
    started = time.perf_counter()
    out = raw_infer(client, req)
    seconds = time.perf_counter() - started
    assert out["talk_ids"].shape == (n_sessions, K) and len(set(out["session_ids"].tolist())) == n_sessions
    np.testing.assert_array_equal(out["talk_ids"], in_process(setup, req)["talk_ids"])
    assert seconds < 30, seconds
    assert_still_serving(server, client, setup)


# ------------------------------------------------------------------------------------------------
# refused, with a clear message
# ------------------------------------------------------------------------------------------------

def refused(client, tensors, dtypes=None) -> str:
    with pytest.raises(InferenceServerException) as info:
        raw_infer(client, tensors, dtypes)
    return str(info.value)


@pytest.mark.server
def test_missing_input_is_refused_by_triton(server, client, setup):
    req = arrays(["a"], ["S2001"], [1])
    del req["timestamp"]
    msg = refused(client, req)
    assert "timestamp" in msg and "missing" in msg
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_wrong_datatype_is_refused_by_triton(server, client, setup):
    req = arrays(["a"], ["S2001"], [1])
    req["timestamp"] = np.array([1.0], dtype=np.float32)
    msg = refused(client, req, {"timestamp": "FP32"})
    assert "timestamp" in msg and "INT64" in msg and "FP32" in msg
    req = arrays(["a"], ["S2001"], [1])
    req["talk_id"] = np.array([2001], dtype=np.int64)
    assert "talk_id" in refused(client, req, {"talk_id": "INT64"})
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_nan_timestamps_cannot_be_sent(server, client, setup):
    req = arrays(["a", "a"], ["S2001", "S2002"], [1, 2])
    req["timestamp"] = np.array([1.0, np.nan])
    assert "INT64" in refused(client, req, {"timestamp": "FP64"})
    with pytest.raises(ValueError, match="missing values"):  # the client helper refuses first
        cl.request_arrays(pd.DataFrame({"session_id": ["a", "a"], "talk_id": ["S2001", "S2002"],
                                        "timestamp": [pd.Timestamp("2024-03-18"), pd.NaT]}))
    with pytest.raises(ops.BadRequest, match="NaN"):  # and in-process, the operator
        ops.SessionizeClicks(VOCAB).sessionize(req["session_id"], req["talk_id"], req["timestamp"])
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_negative_timestamps_are_refused(server, client, setup):
    msg = refused(client, arrays(["a", "a", "b"], ["S2001", "S2002", "S2003"], [5, -1, -7]))
    assert "bad request" in msg and "2 timestamps are negative" in msg and "click 1" in msg
    assert "INVALID_ARGUMENT" in msg and "Traceback" not in msg
    http = server.http_client()  # the same answer over HTTP: status 400
    try:
        with pytest.raises(InferenceServerException) as info:
            cl.infer_arrays(http, arrays(["a"], ["S2001"], [-3]))
        assert info.value.status() == "400" and "1 timestamps are negative" in str(info.value)
    finally:
        http.close()
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_inputs_of_different_lengths_are_refused(server, client, setup):
    req = arrays(["a", "a"], ["S2001", "S2002"], [1, 2])
    req["timestamp"] = req["timestamp"][:1]
    msg = refused(client, req)
    assert msg.count("bad request") == 1 and "differ in length: 2, 2, 1" in msg and "INVALID_ARGUMENT" in msg
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_two_dimensional_inputs_are_refused_by_triton(server, client, setup):
    req = {name: arr.reshape(1, -1) for name, arr in arrays(["a"], ["S2001"], [1]).items()}
    assert "shape" in refused(client, req)
    assert_still_serving(server, client, setup)


@pytest.mark.server
def test_too_many_clicks_are_refused(server, client, setup):
    n = MAX_CLICKS + 1
    req = {"session_id": np.full(n, b"s", dtype=object), "talk_id": np.full(n, b"S2001", dtype=object),
           "timestamp": np.arange(n, dtype=np.int64)}
    msg = refused(client, req)
    assert "bad request" in msg and "max_clicks=150,000" in msg and "split it" in msg
    assert_still_serving(server, client, setup)


def test_k_beyond_the_catalog_or_the_model_is_refused_at_export(setup, tmp_path):
    with pytest.raises(ValueError, match="k must be in 1..8 "):
        build_ensemble(VOCAB[:8], trace_model(tmp_path / "m.pt", k=12), max_len=2, k=9)
    with pytest.raises(ValueError, match="fewer than k"):
        export_ensemble(VOCAB, setup["model"], tmp_path / "repo", max_len=MAX_LEN, k=MODEL_K + 1)
    assert not (tmp_path / "repo").exists()  # nothing half-exported


@pytest.mark.server
def test_the_server_log_has_no_traceback_for_client_errors(server, setup):
    log = server.log_path.read_text(errors="replace")
    assert "lean executor" in log
    assert "Traceback" not in log  # bad requests are answered, not crashed on
