"""Serving graph: operators, export, client, and parity of the served answer with the in-process one.

The model is a tiny stand-in traced with torch.jit.trace that has the trained model's interface:
one dict argument with ``item_id-list__values`` (int64, n) and ``item_id-list__offsets`` (int64,
n_sessions + 1), returning ``(scores float32 (n_sessions, K), codes int64 (n_sessions, K))``.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict

import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec.serving import client as cl
from gtcrec.serving import executor_model
from gtcrec.serving import operators as ops
from gtcrec.serving.export import build_ensemble, example_clicks, export_ensemble, reference_outputs

VOCAB = [f"S{1000 + i}" for i in range(40)]
N_CODES = len(VOCAB) + 3


class TinyTopK(torch.nn.Module):
    """Mean of the session's item vectors, dot product with every item, top-K."""

    def __init__(self, n_codes: int, k: int, dim: int = 8, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(n_codes, dim, generator=gen))
        self.k = k

    def scores(self, values, offsets):  # code 0 is padding and ignored, as Transformers4Rec does
        lengths = offsets[1:] - offsets[:-1]
        segment = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
        real = (values != 0).to(self.table.dtype)
        summed = torch.zeros(lengths.shape[0], self.table.shape[1]).index_add_(0, segment, self.table[values] * real[:, None])
        counts = torch.zeros(lengths.shape[0]).index_add_(0, segment, real).clamp(min=1)
        return (summed / counts.unsqueeze(1)) @ self.table.t()

    def forward(self, inputs: Dict[str, torch.Tensor]):
        top = torch.topk(self.scores(inputs["item_id-list__values"], inputs["item_id-list__offsets"]), self.k, dim=1)
        return top.values, top.indices


class TinyTopKPositional(TinyTopK):
    def forward(self, values, offsets):  # type: ignore[override]
        top = torch.topk(self.scores(values, offsets), self.k, dim=1)
        return top.values, top.indices


EXAMPLE = (torch.tensor([3, 4, 5, 6], dtype=torch.int64), torch.tensor([0, 1, 4], dtype=torch.int64))


def trace(path: Path, k: int = 16, positional: bool = False) -> TinyTopK:
    module = (TinyTopKPositional if positional else TinyTopK)(N_CODES, k).eval()
    with torch.no_grad():
        if positional:
            traced = torch.jit.trace(module, EXAMPLE)
        else:
            traced = torch.jit.trace(module, ({"item_id-list__values": EXAMPLE[0],
                                               "item_id-list__offsets": EXAMPLE[1]},), strict=False)
    traced.save(str(path))
    return module


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    trace(path, k=16)
    return path


@pytest.fixture(scope="module")
def popularity() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 100, len(VOCAB)).astype(np.float64)


def b(*items):
    return np.array([s.encode() for s in items], dtype=object)


# ------------------------------------------------------------------------------------------------
# SessionizeClicks
# ------------------------------------------------------------------------------------------------

def test_sessionize_groups_sorts_maps_drops_unknown_and_keeps_the_last_clicks():
    op = ops.SessionizeClicks(VOCAB, max_len=3)
    out = op.sessionize(
        session_ids=b("y", "x", "y", "z", "x", "y", "y", "y", "x"),
        talk_ids=b("S1001", "S1000", "S1002", "BAD", "NOPE", "S1003", "S1004", "S1039", "S1005"),
        timestamps=np.array([50, 10, 20, 5, 30, 40, 10, 60, 20], dtype=np.int64))
    # sessions in order of first appearance
    assert list(out[ops.SESSIONS]) == [b"y", b"x", b"z"]
    # y by time: S1004(10) S1002(20) S1003(40) S1001(50) S1039(60) -> codes 7 5 6 4 42
    # x by time: S1000(10) S1005(20) NOPE(30, dropped) -> 3 8 ; z: only unknown -> no model row
    np.testing.assert_array_equal(out[f"{ops.CLICKED}__values"], [7, 5, 6, 4, 42, 3, 8])
    np.testing.assert_array_equal(out[f"{ops.CLICKED}__offsets"], [0, 5, 7, 7])
    np.testing.assert_array_equal(out[f"{ops.ITEM_LIST}__values"], [6, 4, 42, 3, 8])  # last 3 of y
    np.testing.assert_array_equal(out[f"{ops.ITEM_LIST}__offsets"], [0, 3, 5])
    np.testing.assert_array_equal(out[ops.MODEL_ROW], [0, 1, -1])
    assert out[f"{ops.ITEM_LIST}__offsets"].dtype == np.int64


def test_sessionize_equal_times_are_ordered_by_talk_id_text_and_str_equals_bytes():
    op = ops.SessionizeClicks(VOCAB, max_len=20)
    sessions, talks, times = ["a", "a", "a", "a"], ["S1002", "S1010", "S1000", "S1001"], np.array([7, 7, 7, 3])
    out_str = op.sessionize(np.array(sessions, dtype=object), np.array(talks, dtype=object), times)
    out_bytes = op.sessionize(b(*sessions), b(*talks), times)
    # S1001 (3), then the tie at 7 by talk id: S1000, S1002, S1010 -> codes 4, 3, 5, 13
    np.testing.assert_array_equal(out_str[f"{ops.ITEM_LIST}__values"], [4, 3, 5, 13])
    for key in out_bytes:
        np.testing.assert_array_equal(out_str[key], out_bytes[key])
    reversed_request = op.sessionize(b(*sessions[::-1]), b(*talks[::-1]), times[::-1])
    for key in out_bytes:  # any request order, the same model input
        np.testing.assert_array_equal(reversed_request[key], out_bytes[key])
    # an unpickled operator (self-contained exports) rebuilds its tie keys
    again = pickle.loads(pickle.dumps(op))
    assert again._text_ranks is None
    np.testing.assert_array_equal(again.sessionize(b(*sessions), b(*talks), times)[f"{ops.ITEM_LIST}__values"],
                                  [4, 3, 5, 13])


def test_sessionize_pads_every_session_to_max_len_when_asked():
    args = (b("a", "a", "b", "c", "b", "b"), b("S1001", "S1002", "S1003", "?", "S1004", "S1005"),
            np.array([1, 2, 1, 1, 2, 3]))
    ragged = ops.SessionizeClicks(VOCAB, max_len=4).sessionize(*args)
    padded = ops.SessionizeClicks(VOCAB, max_len=4, pad=True).sessionize(*args)
    np.testing.assert_array_equal(padded[f"{ops.ITEM_LIST}__values"], [4, 5, 0, 0, 6, 7, 8, 0])
    np.testing.assert_array_equal(padded[f"{ops.ITEM_LIST}__offsets"], [0, 4, 8])
    for key in (ops.SESSIONS, f"{ops.CLICKED}__values", f"{ops.CLICKED}__offsets", ops.MODEL_ROW):
        np.testing.assert_array_equal(padded[key], ragged[key])
    # a session's model input does not depend on the other sessions of the request
    alone = ops.SessionizeClicks(VOCAB, max_len=4, pad=True).sessionize(b("a", "a"), b("S1001", "S1002"), np.array([1, 2]))
    np.testing.assert_array_equal(alone[f"{ops.ITEM_LIST}__values"], padded[f"{ops.ITEM_LIST}__values"][:4])
    empty = ops.SessionizeClicks(VOCAB, max_len=4, pad=True).sessionize(b(), b(), np.array([], np.int64))
    assert len(empty[f"{ops.ITEM_LIST}__values"]) == 0 and list(empty[f"{ops.ITEM_LIST}__offsets"]) == [0]


def test_sessionize_rejects_bad_input():
    with pytest.raises(ValueError, match="duplicate"):
        ops.SessionizeClicks(["S1", "S2", "S1"])
    with pytest.raises(ValueError, match="differ in length"):
        ops.SessionizeClicks(VOCAB).sessionize(b("a", "b"), b("S1000"), np.array([1, 2]))


# ------------------------------------------------------------------------------------------------
# DecodeTopK
# ------------------------------------------------------------------------------------------------

def test_decode_removes_clicked_and_reserved_codes_and_keeps_k():
    op = ops.DecodeTopK(VOCAB, k=3)
    scores = np.array([[9, 8, 7, 6, 5, 4], [3, 2, 1, 0, -1, -2]], dtype=np.float32)
    codes = np.array([[5, 2, 7, 4, 9, 10], [3, 8, 0, 4, 6, 12]], dtype=np.int64)
    out = op.decode(sessions=b("s1", "s2"), clicked_values=np.array([7, 4, 3]),
                    clicked_offsets=np.array([0, 2, 3]), model_row=np.array([0, 1]), scores=scores, codes=codes)
    # s1 clicked 7 and 4; code 2 is OOV -> 5, 9, 10 ; s2 clicked 3; code 0 is padding -> 8, 4, 6
    np.testing.assert_array_equal(out["talk_ids"], [[b"S1002", b"S1006", b"S1007"], [b"S1005", b"S1001", b"S1003"]])
    np.testing.assert_array_equal(out["scores"], [[9, 5, 4], [2, 0, -1]])
    assert list(out["session_ids"]) == [b"s1", b"s2"]


def test_decode_fallback_for_unknown_sessions_and_short_answers(popularity):
    op = ops.DecodeTopK(VOCAB, k=4, popularity=popularity)
    ranking = list(np.argsort(-popularity, kind="stable") + 3)
    scores = np.array([[1.0, 0.5]], dtype=np.float32)
    codes = np.array([[ranking[0], 20]], dtype=np.int64)
    out = op.decode(sessions=b("unknown", "short"), clicked_values=np.array([ranking[1]]),
                    clicked_offsets=np.array([0, 0, 1]), model_row=np.array([-1, 0]), scores=scores, codes=codes)
    ids = np.array(VOCAB)
    # unknown session: the 4 most popular talks, NaN scores
    assert [t.decode() for t in out["talk_ids"][0]] == list(ids[np.array(ranking[:4]) - 3])
    assert np.isnan(out["scores"][0]).all()
    # short answer: the model's 2 candidates, then popular talks that are neither clicked nor repeated
    fill = [c for c in ranking if c not in (ranking[0], 20, ranking[1])][:2]
    assert [t.decode() for t in out["talk_ids"][1]] == list(ids[np.array([ranking[0], 20] + fill) - 3])
    np.testing.assert_array_equal(out["scores"][1][:2], [1.0, 0.5])
    assert np.isnan(out["scores"][1][2:]).all()


def test_decode_checks_its_parameters():
    with pytest.raises(ValueError, match="k must be"):
        ops.DecodeTopK(VOCAB, k=len(VOCAB) + 1)
    with pytest.raises(ValueError, match="one value per talk"):
        ops.DecodeTopK(VOCAB, k=2, popularity=[1.0, 2.0])


def test_decode_fallback_hook_can_be_overridden():
    class NewestFirst(ops.DecodeTopK):
        def fallback(self, exclude, n):
            codes = np.arange(self.n_codes - 1, 2, -1)
            codes = codes[~np.isin(codes, exclude)][:n]
            return codes, np.zeros(len(codes), np.float32)

    out = NewestFirst(VOCAB, k=2).decode(b("u"), np.array([], np.int64), np.array([0, 0]), np.array([-1]),
                                         np.zeros((0, 5), np.float32), np.zeros((0, 5), np.int64))
    assert list(out["talk_ids"][0]) == [VOCAB[-1].encode(), VOCAB[-2].encode()]
    np.testing.assert_array_equal(out["scores"][0], [0, 0])


# ------------------------------------------------------------------------------------------------
# TorchScriptTopK
# ------------------------------------------------------------------------------------------------

def test_torchscript_op_runs_persists_and_reloads(model_path, tmp_path):
    op = ops.TorchScriptTopK(model_path)
    assert op.k_model == 16
    values, offsets = np.array([3, 4, 5, 9, 9]), np.array([0, 2, 5])
    scores, codes = op.predict(values, offsets)
    assert scores.shape == codes.shape == (2, 16) and scores.dtype == np.float32 and codes.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 0).all()

    op.load_artifacts("")  # what Graph() does: must keep the model
    np.testing.assert_array_equal(op.predict(values, offsets)[1], codes)

    op.save_artifacts(str(tmp_path))
    assert (tmp_path / op.artifact_name).is_file()
    clone = pickle.loads(pickle.dumps(op))
    assert clone._model is None  # the model travels as an artifact, not in the pickle
    with pytest.raises(RuntimeError, match="load_artifacts"):
        clone.predict(values, offsets)
    clone.load_artifacts(str(tmp_path))
    np.testing.assert_array_equal(clone.predict(values, offsets)[0], scores)
    with pytest.raises(FileNotFoundError):
        pickle.loads(pickle.dumps(op)).load_artifacts(str(tmp_path / "elsewhere"))
    # zero sessions: no model call, empty (0, K) answers
    s0, c0 = op.predict(np.array([], np.int64), np.array([0]))
    assert s0.shape == c0.shape == (0, 16)


def test_torchscript_op_positional_call(tmp_path):
    module = trace(tmp_path / "pos.pt", k=5, positional=True)
    op = ops.TorchScriptTopK(tmp_path / "pos.pt", call="positional")
    values, offsets = np.array([3, 7, 8]), np.array([0, 1, 3])
    scores, codes = op.predict(values, offsets)
    with torch.no_grad():
        want_scores, want_codes = module(torch.from_numpy(values), torch.from_numpy(offsets))
    np.testing.assert_array_equal(codes, want_codes.numpy())
    np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# The ensemble in-process, against an independent pandas + eager-torch computation
# ------------------------------------------------------------------------------------------------

def expected_answer(clicks: pd.DataFrame, module: TinyTopK, max_len: int, k: int, popularity) -> pd.DataFrame:
    code_of = {t: i + 3 for i, t in enumerate(VOCAB)}
    ranking = list(np.argsort(-np.asarray(popularity), kind="stable") + 3)
    df = clicks.assign(ts=cl.timestamps_ms(clicks["timestamp"]), order=np.arange(len(clicks)))
    df["code"] = df["talk_id"].map(code_of)
    rows = []
    for session in pd.unique(df["session_id"]):
        s = df[df["session_id"] == session].sort_values(["ts", "order"])
        known = [int(c) for c in s["code"].dropna()]
        picked: list[tuple[int, float]] = []
        if known:
            seq = torch.tensor(known[-max_len:], dtype=torch.int64)
            with torch.no_grad():
                sc, cd = module({"item_id-list__values": seq, "item_id-list__offsets": torch.tensor([0, len(seq)])})
            for c, v in zip(cd[0].tolist(), sc[0].tolist()):
                if c >= 3 and c not in known and len(picked) < k:
                    picked.append((c, v))
        for c in ranking:
            if len(picked) >= k:
                break
            if c not in known and c not in [p[0] for p in picked]:
                picked.append((c, float("nan")))
        rows += [(session, r + 1, VOCAB[c - 3], v) for r, (c, v) in enumerate(picked)]
    return pd.DataFrame(rows, columns=["session_id", "rank", "talk_id", "score"])


def test_ensemble_in_process_matches_an_independent_computation(tmp_path, popularity):
    module = trace(tmp_path / "m.pt", k=8)
    clicks = pd.concat([example_clicks(VOCAB, n_sessions=12, max_clicks=9, seed=s) for s in (1, 2)],
                       ignore_index=True)
    ensemble = build_ensemble(VOCAB, tmp_path / "m.pt", max_len=5, k=3, popularity=popularity)
    assert ensemble.input_schema.column_names == ["session_id", "talk_id", "timestamp"]
    assert ensemble.output_schema.column_names == ["session_ids", "talk_ids", "scores"]
    got = cl.to_frame(reference_outputs(ensemble, cl.request_arrays(clicks)).outputs)
    want = expected_answer(clicks, module, max_len=5, k=3, popularity=popularity)
    pd.testing.assert_frame_equal(got[["session_id", "rank", "talk_id"]], want[["session_id", "rank", "talk_id"]])
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5)  # NaN where both fall back
    assert got["score"].isna().any() and got["score"].notna().any()


def test_model_with_too_few_candidates_is_refused(tmp_path):
    trace(tmp_path / "small.pt", k=4)
    with pytest.raises(ValueError, match="fewer than k"):
        build_ensemble(VOCAB, tmp_path / "small.pt", max_len=3, k=5)
    with pytest.warns(UserWarning, match="top_k >= k"):
        build_ensemble(VOCAB, tmp_path / "small.pt", max_len=3, k=2)


# ------------------------------------------------------------------------------------------------
# Export and client helpers
# ------------------------------------------------------------------------------------------------

def test_non_ascii_talk_ids_round_trip(model_path):
    vocab = VOCAB[:-1] + ["Sé-ü"]
    ensemble = build_ensemble(vocab, model_path, max_len=4, k=3, popularity=np.arange(len(vocab)))
    clicks = pd.DataFrame({"session_id": ["ß", "ß", "n"], "talk_id": ["Sé-ü", "S1000", "?"],
                           "timestamp": [1, 2, 3]})
    frame = cl.to_frame(reference_outputs(ensemble, cl.request_arrays(clicks)).outputs)
    assert list(frame["session_id"].unique()) == ["ß", "n"]
    assert "Sé-ü" not in set(frame.loc[frame["session_id"] == "ß", "talk_id"])  # clicked: removed
    assert frame.loc[frame["session_id"] == "n", "talk_id"].tolist() == ["Sé-ü", VOCAB[-2], VOCAB[-3]]


def test_export_writes_the_requested_version_and_refuses_to_overwrite(model_path, tmp_path):
    repo = tmp_path / "repo"
    ensemble, ref = export_ensemble(VOCAB, model_path, repo, max_len=4, k=5, version=3, instance_count=2)
    model_dir = repo / "executor_model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["3", "config.pbtxt"]
    assert sorted(p.name for p in (model_dir / "3" / "ensemble").iterdir()) == [
        "ensemble.pkl", "metadata.json", "topk_model.pt"]
    assert (model_dir / "3" / "model.py").is_file()
    config = (model_dir / "config.pbtxt").read_text()
    assert 'name: "talk_ids"' in config and "TYPE_STRING" in config and "dims: 5" in config
    assert "KIND_CPU" in config and "count: 2" in config
    assert ref.outputs["talk_ids"].shape == (len(ref.outputs["session_ids"]), 5)
    # the python graph still answers in-process after export
    again = reference_outputs(ensemble, ref.request).outputs
    np.testing.assert_array_equal(again["talk_ids"], ref.outputs["talk_ids"])
    with pytest.raises(FileExistsError):
        export_ensemble(VOCAB, model_path, repo, max_len=4, k=5, version=3)
    export_ensemble(VOCAB, model_path, repo, max_len=4, k=5, version=3, overwrite=True)


def test_pytorch_backend_export_writes_a_libtorch_model(model_path, tmp_path):
    _, ref = export_ensemble(VOCAB, model_path, tmp_path / "repo", max_len=4, k=5, backend="pytorch")
    torch_dir = tmp_path / "repo" / "0_predictpytorchtriton"
    config = (torch_dir / "config.pbtxt").read_text()
    assert 'platform: "pytorch_libtorch"' in config
    assert 'name: "item_id-list__values"' in config and 'name: "item_id-list__offsets"' in config
    assert 'name: "topk_scores__0"' in config and "dims: 16" in config
    assert torch.jit.load(str(torch_dir / "1" / "model.pt")) is not None
    assert ref.extra["backend"] == "pytorch" and len(ref.extra["configs"]) == 2


def test_self_contained_export_loads_without_gtcrec(model_path, tmp_path):
    _, ref = export_ensemble(VOCAB, model_path, tmp_path / "repo", max_len=4, k=5, self_contained=True)
    ensemble_dir = tmp_path / "repo" / "executor_model" / "1" / "ensemble"
    np.save(tmp_path / "talk_ids.npy", ref.outputs["talk_ids"], allow_pickle=True)
    request = {k: v for k, v in ref.request.items()}
    pd.to_pickle(request, tmp_path / "request.pkl")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["gtcrec"] = None  # importing gtcrec now fails
        import numpy as np, pandas as pd
        from merlin.dag import postorder_iter_nodes
        from merlin.systems.dag import Ensemble
        from merlin.table import TensorTable
        ens = Ensemble.load({str(ensemble_dir)!r})
        for node in postorder_iter_nodes(ens.graph.output_node, flatten_subgraphs=True):
            node.op.load_artifacts({str(ensemble_dir)!r})
        out = ens.transform(TensorTable(pd.read_pickle({str(tmp_path / 'request.pkl')!r})))
        want = np.load({str(tmp_path / 'talk_ids.npy')!r}, allow_pickle=True)
        assert (out["talk_ids"].values == want).all()
        assert sys.modules["gtcrec"] is None and "gtcrec.serving" not in sys.modules
        print("OK")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "OK" in run.stdout


def test_the_lean_chain_answers_without_merlin_or_gtcrec(model_path, tmp_path):
    """A version's lean_chain.pkl (the operators as their cores) loads and answers in a process where importing
    merlin or gtcrec fails, exactly as the in-process graph does, and starts faster than importing Merlin."""
    _, ref = export_ensemble(VOCAB, model_path, tmp_path / "repo", max_len=4, k=5)
    version = tmp_path / "repo" / "executor_model" / "1"
    assert (version / "lean_chain.pkl").is_file()
    np.save(tmp_path / "talk_ids.npy", ref.outputs["talk_ids"], allow_pickle=True)
    pd.to_pickle(dict(ref.request), tmp_path / "request.pkl")
    assert (version / "model.py").read_bytes() == Path(executor_model.__file__).read_bytes()
    script = textwrap.dedent(f"""
        import importlib.util, pickle, sys, time
        started = time.perf_counter()
        for name in ("merlin", "gtcrec", "nvtabular", "dask"):
            sys.modules[name] = None  # importing them now fails
        sys.path.append({str(version)!r})  # as the python backend does: model.py imports its click log from there
        spec = importlib.util.spec_from_file_location("model", {str(version / "model.py")!r})
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)  # the version's model.py, as the python backend loads it
        chain, inputs, names = model.load_lean_chain({str(version)!r})
        import numpy as np
        with open({str(tmp_path / 'request.pkl')!r}, "rb") as f:
            request = pickle.load(f)
        out = model.run_chain(chain, {{k: request[k] for k in inputs}})
        want = np.load({str(tmp_path / 'talk_ids.npy')!r}, allow_pickle=True)
        assert (out["talk_ids"] == want).all(), (out["talk_ids"], want)
        assert names == ["SessionizeClicks", "TorchScriptTopK", "DecodeTopK"], names
        assert not any(m.startswith(("merlin.", "gtcrec.", "dask.")) for m in sys.modules)
        print("OK", round(time.perf_counter() - started, 2))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("OK")


def test_client_timestamps_and_request_arrays():
    iso = pd.Series(["2024-03-18T09:00:00", "2024-03-18T09:00:01.5"])
    np.testing.assert_array_equal(cl.timestamps_ms(iso), [1710752400000, 1710752401500])
    np.testing.assert_array_equal(cl.timestamps_ms(pd.to_datetime(iso)), [1710752400000, 1710752401500])
    aware = pd.to_datetime(iso).dt.tz_localize("Europe/Paris")
    np.testing.assert_array_equal(cl.timestamps_ms(aware), [1710748800000, 1710748801500])
    np.testing.assert_array_equal(cl.timestamps_ms(pd.Series([5, 7])), [5, 7])
    arrays = cl.request_arrays(pd.DataFrame({"session_id": ["a", 3], "talk_id": ["S1000", "x"],
                                             "timestamp": iso}))
    assert list(arrays["session_id"]) == [b"a", b"3"] and arrays["timestamp"].dtype == np.int64
    with pytest.raises(KeyError):
        cl.request_arrays(pd.DataFrame({"session_id": ["a"]}))
    parts = list(cl.split_sessions(pd.DataFrame({"session_id": list("aabcc"), "talk_id": list("vwxyz"),
                                                 "timestamp": range(5)}), 2))
    assert [list(p["session_id"]) for p in parts] == [list("aab"), list("cc")]


# ------------------------------------------------------------------------------------------------
# Served answer == in-process answer, on a real Triton
# ------------------------------------------------------------------------------------------------

@pytest.mark.server
def test_served_answer_equals_in_process_answer(model_path, tmp_path, popularity):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from gtcrec.serving.server import TritonServer

    repo = tmp_path / "repo"
    clicks = example_clicks(VOCAB, n_sessions=8, max_clicks=12, seed=5)
    ensemble, ref = export_ensemble(VOCAB, model_path, repo, max_len=6, k=4, popularity=popularity,
                                    version=2, request=clicks)
    export_ensemble(VOCAB, model_path, tmp_path / "pt_repo", max_len=6, k=4, backend="pytorch")
    (repo / "0_predictpytorchtriton").symlink_to(tmp_path / "pt_repo" / "0_predictpytorchtriton")
    unknown_only = pd.DataFrame({"session_id": ["u1", "u1", "u2"], "talk_id": ["X", "Y", "Z"],
                                 "timestamp": [3, 1, 2]})
    ref_unknown = reference_outputs(ensemble, cl.request_arrays(unknown_only))
    # tied timestamps: 9 clicks at one time, more than max_len=6: which 6 reach the model is decided
    # by the tie rule (talk id text), not by the request order
    tied = pd.DataFrame({"session_id": ["t"] * 9, "talk_id": VOCAB[20:29], "timestamp": [7] * 9})
    ref_tied = reference_outputs(ensemble, cl.request_arrays(tied))

    with TritonServer(repo, model_control="explicit", load_models=["executor_model"], startup_timeout=120) as server:
        for mod, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
            client = mod.InferenceServerClient(url)
            try:
                served = cl.infer_arrays(client, ref.request)
                assert set(served) == set(ref.outputs)
                for name, want in ref.outputs.items():
                    assert served[name].dtype == want.dtype and served[name].shape == want.shape, name
                    np.testing.assert_array_equal(served[name], want)  # NaNs compare equal here
                frame = cl.recommend(client, clicks)
                pd.testing.assert_frame_equal(frame, cl.to_frame(ref.outputs))
                assert frame.groupby("session_id").size().eq(4).all()
                assert frame["session_id"].nunique() == clicks["session_id"].nunique()
                served_unknown = cl.infer_arrays(client, ref_unknown.request)
                np.testing.assert_array_equal(served_unknown["talk_ids"], ref_unknown.outputs["talk_ids"])
                assert np.isnan(served_unknown["scores"]).all()
                for order in (tied, tied[::-1], tied.sample(frac=1.0, random_state=1)):
                    served_tied = cl.infer_arrays(client, cl.request_arrays(order))
                    np.testing.assert_array_equal(served_tied["talk_ids"], ref_tied.outputs["talk_ids"])
                    np.testing.assert_array_equal(served_tied["scores"], ref_tied.outputs["scores"])
            finally:
                client.close()
        # the stock PredictPyTorch export needs the PyTorch backend, which the wheel's Triton lacks
        if server.binary.bundled:
            with pytest.raises(InferenceServerException, match="backend 'pytorch'"):
                server.load_model("0_predictpytorchtriton")
