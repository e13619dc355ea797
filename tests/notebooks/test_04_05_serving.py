"""Notebooks 04 (ensemble export) and 05 (serving) under papermill at small sizes."""
import json

import numpy as np
import pandas as pd
import pytest

from gtcrec.serving import client as cl
from gtcrec.serving import export as ex
from gtcrec.serving.server import server_processes

pytestmark = pytest.mark.notebooks


def test_ensemble_notebook_exports_a_repository_and_a_reference(series):
    manifest = series.run("04-ensemble")
    m = manifest["metrics"]
    assert m["graph"] == ["SessionizeClicks", "TorchScriptTopK", "DecodeTopK"]
    assert m["backend"] in ("python", "pytorch") and m["executor"] == manifest["parameters"]["EXECUTOR"]
    assert m["k"] == manifest["parameters"]["TOP_K"] and m["k_model"] >= m["k"] + m["max_len"]
    assert m["reference_sessions"] == manifest["parameters"]["N_REFERENCE_SESSIONS"] + 1
    assert m["reference_fallback_sessions"] >= 1

    repo = series.path("04-ensemble", "model_repository")
    config = (repo / m["model_name"] / "config.pbtxt").read_text()
    assert f"dims: {m['k']}" in config and "TYPE_STRING" in config
    assert (repo / m["model_name"] / "1" / "ensemble" / "ensemble.pkl").is_file()
    if manifest["parameters"]["DYNAMIC_BATCHING"] and m["backend"] == "python":
        batched = (repo / m["batched_model_name"] / "config.pbtxt").read_text()
        assert "dynamic_batching" in batched and "allow_ragged_batch: true" in batched
    # padding every session to MAX_LEN makes its scores independent of the other sessions
    padded = m["padding_effect"]["padded to MAX_LEN"]
    assert padded["max |score difference|"] < 1e-5 and padded["same top-K codes in order"] is True

    answer = pd.read_parquet(series.path("04-ensemble", "reference_answer"))
    request = pd.read_parquet(series.path("04-ensemble", "reference_request"))
    assert len(answer) == m["reference_sessions"] * m["k"]
    assert answer.groupby("session_id")["rank"].apply(list).map(lambda r: r == list(range(1, m["k"] + 1))).all()
    # the unknown-talks session falls back (NaN scores); no session is recommended a talk it clicked
    assert answer.loc[answer["session_id"] == "unknown-talks-only", "score"].isna().all()
    clicked = request.groupby("session_id")["talk_id"].apply(set)
    assert not any(row.talk_id in clicked[row.session_id] for row in answer.itertuples())
    vocab = set(pd.read_parquet(series.path("01-etl", "vocab"))["talk_id"])
    assert set(answer["talk_id"]) <= vocab
    model_rows = answer[answer["session_id"] != "unknown-talks-only"]
    assert model_rows["score"].notna().all()
    assert (model_rows.groupby("session_id")["score"].apply(lambda s: (np.diff(s.to_numpy()) <= 0).all())).all()


def test_serving_notebook_parity_latency_and_shutdown(series):
    manifest = series.run("05-serve")
    m, run, params = manifest["metrics"], manifest["run"], manifest["parameters"]

    # parity: reference over both protocols, serving's inputs == ETL lists, top-k == offline ranking
    assert m["parity"] is True
    assert m["parity_reference_http"] is True and m["parity_reference_grpc"] is True
    pre, off = m["parity_preprocessing"], m["parity_offline"]
    test_sessions = series.manifest("01-etl")["metrics"]["test_sessions"]
    expected = test_sessions if params["N_PARITY_SESSIONS"] is None else min(params["N_PARITY_SESSIONS"], test_sessions)
    assert pre["parity"] and pre["equal"] == pre["sessions"] == expected and pre["unpaired"] == 0
    assert off["parity"] and off["sessions"] == expected and off["different"] == 0
    assert off["identical"] + off["tie_swaps"] == expected and off["identical"] >= 0.95 * expected
    assert off["max_score_diff"] < 1e-3
    alone = m["parity_alone_vs_in_request"]
    assert alone["parity"] and alone["sessions"] == min(20, expected) and alone["different"] == 0
    if series.manifest("04-ensemble")["metrics"]["batched_model_name"]:
        assert m["parity_reference_batched"] is True

    # latencies present and positive
    one = run["one_session"]
    assert one["served_p50_ms"] > 0 and one["bare_p50_ms"] > 0 and one["bare_unpadded_p50_ms"] > 0
    assert one["served_p50_ms_worst_round"] >= one["served_p50_ms"]
    # a round trip through gRPC, Triton and the python backend costs more than the model alone
    assert one["ratio_p50"] > 1 and one["ratio_p50_vs_unpadded"] > 1
    assert run["startup_seconds"] > 0 and run["reference_http_ms"] > 0 and run["reference_grpc_ms"] > 0
    load = pd.read_csv(series.path("05-serve", "load_test"))
    assert len(load) == len(params["CONCURRENCY"]) * len(params["SESSIONS_PER_REQUEST"])
    assert (load["errors"] == 0).all() and (load["requests"] > 0).all()
    assert (load["p50_ms"] > 0).all() and (load["sessions_per_s"] > 0).all()
    assert (load["p95_ms"] >= load["p50_ms"]).all()
    # a request of many sessions moves more sessions per second than single-session requests
    per_size = load.groupby("sessions_per_request")["sessions_per_s"].max()
    assert per_size.iloc[-1] > per_size.iloc[0]

    # the server is gone: no process of it is left
    assert m["server_stopped"] is True and run["server_exit_code"] is not None
    assert server_processes(run["server_id"]) == []


def test_serving_manifest_is_plain_json(series):
    series.run("05-serve")
    text = (series.root / "05-serve" / "manifest.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


def test_serving_notebook_widget_answers_like_the_ensemble(series):
    """The widget's callback ran in the notebook (its buttons pressed from code) against the live
    server: each answer equals the package's ensemble answering the same clicks in process."""
    manifest = series.run("05-serve")
    widget = manifest["metrics"]["widget"]
    k = manifest["metrics"]["k"]
    assert len(widget["clicks"]) == len(widget["answers"]) == 2 and widget["cleared"] is True
    assert widget["titles_shown"] is True
    ens = series.manifest("04-ensemble")["metrics"]
    vocab = pd.read_parquet(series.path("01-etl", "vocab"))["talk_id"].astype(str).tolist()
    ensemble = ex.build_ensemble(vocab, series.path("03-train", "torchscript"), max_len=ens["max_len"], k=k,
                                 popularity=np.load(series.path("03-train", "popularity")))
    for n, answer in enumerate(widget["answers"], start=1):
        talks = widget["clicks"][:n]
        clicks = pd.DataFrame({"session_id": widget["session_id"], "talk_id": talks,
                               "timestamp": pd.Timestamp(widget["start"]) + pd.to_timedelta(np.arange(n), unit="min")})
        expected = cl.to_frame(ex.reference_outputs(ensemble, cl.request_arrays(clicks)).outputs)
        assert answer == expected["talk_id"].tolist()
        assert len(answer) == k and not set(answer) & set(talks)
    assert widget["answers"][0] != widget["answers"][1]  # a second click changes the recommendations
