"""Notebooks 05 (ensemble export) and 05 (serving) under papermill at small sizes."""
import json

import numpy as np
import pandas as pd
import pytest

from gtcrec.serving import client as cl
from gtcrec.serving import export as ex
from gtcrec.serving.server import server_processes

pytestmark = [pytest.mark.notebooks, pytest.mark.xdist_group("notebooks")]  # one xdist worker runs them all, in order


def test_ensemble_notebook_exports_a_repository_and_a_reference(series):
    manifest = series.run("05-ensemble")
    m = manifest["metrics"]
    assert m["graph"] == ["SessionizeClicks", "TorchScriptTopK", "DecodeTopK"]
    assert m["backend"] in ("python", "pytorch") and m["executor"] == manifest["parameters"]["EXECUTOR"]
    assert m["k"] == manifest["parameters"]["TOP_K"] and m["k_model"] >= m["k"] + m["max_len"]
    assert m["reference_sessions"] == manifest["parameters"]["N_REFERENCE_SESSIONS"] + 1
    assert m["reference_fallback_sessions"] >= 1  # the unknown-talks session
    assert m["popularity_codes"] == m["n_talks"] + 3
    assert m["batched_same_answers"] is True or m["batched_model_name"] is None

    repo = series.path("05-ensemble", "model_repository")
    config = (repo / m["model_name"] / "config.pbtxt").read_text()
    assert f"dims: {m['k']}" in config and "TYPE_STRING" in config
    assert (repo / m["model_name"] / "1" / "ensemble" / "ensemble.pkl").is_file()
    if manifest["parameters"]["DYNAMIC_BATCHING"] and m["backend"] == "python":
        batched = (repo / m["batched_model_name"] / "config.pbtxt").read_text()
        assert "dynamic_batching" in batched and "allow_ragged_batch: true" in batched
    # padding every session to MAX_LEN makes its scores independent of the other sessions
    padded = m["padding_effect"]["padded to MAX_LEN"]
    assert padded["max |score difference|"] < 1e-5 and padded["same top-K codes in order"] is True

    answer = pd.read_parquet(series.path("05-ensemble", "reference_answer"))
    request = pd.read_parquet(series.path("05-ensemble", "reference_request"))
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
    manifest = series.run("06-serve")
    m, run, params = manifest["metrics"], manifest["run"], manifest["parameters"]

    # parity: the reference request over both protocols (the offline ranking: the test below)
    assert m["parity"] is True
    assert m["parity_reference_http"] is True and m["parity_reference_grpc"] is True
    if series.manifest("05-ensemble")["metrics"]["batched_model_name"]:
        assert m["parity_reference_batched"] is True

    # latencies within bands: measured at this size 1.75 ms served, 0.57 ms bare (3.1x), 580 single-session
    # requests/s with one client; the bands are ~10x wide for a shared CI machine, and catch a path that got
    # an order of magnitude slower (a cold model per request, a thread pool per call, a lost pad)
    one = run["one_session"]
    assert 0.05 < one["bare_p50_ms"] < 10 and 0.05 < one["bare_unpadded_p50_ms"] < 10
    assert one["served_p50_ms"] < 20 and one["ratio_p50"] < 20
    assert one["served_p50_ms_worst_round"] >= one["served_p50_ms"]
    # a round trip through gRPC, Triton and the python backend costs more than the model alone
    assert one["ratio_p50"] > 1 and one["ratio_p50_vs_unpadded"] > 1
    assert 0 < run["startup_seconds"] < 120 and run["reference_http_ms"] < 1000 and run["reference_grpc_ms"] < 1000
    load = pd.read_csv(series.path("06-serve", "load_test"))
    assert len(load) == len(params["CONCURRENCY"]) * len(params["SESSIONS_PER_REQUEST"])
    assert (load["errors"] == 0).all() and (load["requests"] > 0).all()
    assert (load["p50_ms"] > 0).all() and (load["sessions_per_s"] > 0).all()
    single = load[(load["sessions_per_request"] == 1) & (load["concurrency"] == 1)]["sessions_per_s"]
    assert single.iloc[0] > 50  # measured 580
    assert (load["p95_ms"] >= load["p50_ms"]).all()
    # a request of many sessions moves more sessions per second than single-session requests
    per_size = load.groupby("sessions_per_request")["sessions_per_s"].max()
    assert per_size.iloc[-1] > per_size.iloc[0]

    # the server is gone: no process of it is left
    assert m["server_stopped"] is True and run["server_exit_code"] is not None
    assert server_processes(run["server_id"]) == []


def test_serving_manifest_is_plain_json(series):
    series.run("06-serve")
    text = (series.root / "06-serve" / "manifest.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


def test_serving_notebook_widget_answers_like_the_ensemble(series):
    """The widget's callbacks ran in the notebook (the functions its buttons call, called from code) against
    the live server: each answer equals the package's ensemble answering the same clicks in process."""
    manifest = series.run("06-serve")
    widget = manifest["metrics"]["widget"]
    k = manifest["metrics"]["k"]
    assert len(widget["clicks"]) == len(widget["answers"]) == 2 and widget["cleared"] is True
    assert widget["titles_shown"] is True and widget["clicked_returned"] == 0
    ens = series.manifest("05-ensemble")["metrics"]
    vocab = pd.read_parquet(series.path("01-etl", "vocab"))["talk_id"].astype(str).tolist()
    ensemble = ex.build_ensemble(vocab, series.path("04-item-representation", "torchscript"), max_len=ens["max_len"], k=k,
                                 popularity=np.load(series.path("04-item-representation", "popularity")))
    for n, answer in enumerate(widget["answers"], start=1):
        talks = widget["clicks"][:n]
        clicks = pd.DataFrame({"session_id": widget["session_id"], "talk_id": talks,
                               "timestamp": pd.Timestamp(widget["start"]) + pd.to_timedelta(np.arange(n), unit="min")})
        expected = cl.to_frame(ex.reference_outputs(ensemble, cl.request_arrays(clicks)).outputs)
        assert answer == expected["talk_id"].tolist()
        assert len(answer) == k and not set(answer) & set(talks)
    assert widget["answers"][0] != widget["answers"][1]  # a second click changes the recommendations


@pytest.mark.server
def test_served_top_k_equals_the_eager_models_offline_ranking(series):
    """300 test sessions, their clicks shuffled, in one request to a server on notebook 05's repository:
    serving's own sessionization gives exactly the ETL's lists, and the served top-k equals the eager
    Transformers4Rec model's ranking of those lists (ties aside), a path that shares nothing with serving
    but the weights; 20 of them sent alone get the same answer as inside the big request."""
    from gtcrec import etl
    from gtcrec import model as gm
    from gtcrec.serving import operators as ops
    from gtcrec.serving import parity
    from gtcrec.serving.server import TritonServer

    series.run("05-ensemble")
    ens = series.manifest("05-ensemble")
    k, max_len, name = ens["metrics"]["k"], ens["metrics"]["max_len"], ens["metrics"]["model_name"]
    vocab = pd.read_parquet(series.path("01-etl", "vocab"))["talk_id"].astype(str).tolist()
    code_of = {talk: i + ops.FIRST_CODE for i, talk in enumerate(vocab)}
    test_clicks = pd.read_parquet(series.path("01-etl", "test_clicks"))
    processed = etl.read_split(series.path("01-etl", "test"))
    link = parity.link_sessions(test_clicks, processed)
    lists = dict(zip(processed["session_id"], processed["item_id-list"]))
    keys = np.random.default_rng(0).choice(link["session_key"].to_numpy(), size=min(300, len(link)), replace=False)
    key_to_list = {key: lists[i] for key, i in zip(link["session_key"], link["session_id"]) if key in set(keys)}
    clicks = test_clicks[test_clicks["session_id"].astype(str).isin(set(keys))].sample(frac=1.0, random_state=0)
    request = cl.request_arrays(clicks)

    pre = parity.preprocessing_parity(ops.SessionizeClicks(vocab, max_len=max_len), request, key_to_list)
    assert pre["parity"] and pre["equal"] == pre["sessions"] == len(keys) and pre["unpaired"] == 0

    def codes_of(talk_ids):
        return np.array([[code_of.get(t.decode(), 0) for t in row] for row in talk_ids], dtype=np.int64)

    with TritonServer(series.path("05-ensemble", "model_repository"), model_control="explicit", load_models=[name],
                      startup_timeout=180) as server:
        client = server.grpc_client()
        answer = cl.infer_arrays(client, request, model_name=name)
        order = [s.decode() for s in answer["session_ids"]]
        alone = [cl.infer_arrays(client, cl.request_arrays(clicks[clicks["session_id"].astype(str) == key]),
                                 model_name=name) for key in order[:20]]
        client.close()
    full_scores = gm.score_sessions(gm.load_model(series.path("04-item-representation", "model")), [key_to_list[s] for s in order])
    code = clicks["talk_id"].map(code_of)
    clicked = {key: part.dropna().astype(np.int64).unique() for key, part in code.groupby(clicks["session_id"].astype(str))}
    offline_codes, _ = parity.offline_topk(full_scores, [clicked[s] for s in order], k)
    served_codes = codes_of(answer["talk_ids"])
    off = parity.compare_rankings(served_codes, answer["scores"], offline_codes, full_scores)
    assert off["parity"] and off["sessions"] == len(keys) and off["different"] == 0, off
    assert off["identical"] + off["tie_swaps"] == len(keys) and off["identical"] >= 0.95 * len(keys)
    assert off["max_score_diff"] < 1e-3
    composition = parity.compare_rankings(codes_of(np.concatenate([a["talk_ids"] for a in alone])),
                                          np.concatenate([a["scores"] for a in alone]), served_codes[:20],
                                          full_scores[:20])
    assert composition["parity"] and composition["sessions"] == 20 and composition["different"] == 0
