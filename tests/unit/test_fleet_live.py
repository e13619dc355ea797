"""The live event across a fleet: two real tritonservers behind a real HAProxy log every vouched click into
one shared folder, and one adaptation cycle (``gtcrec-adapt --fleet``) reads them all, chooses and exports
once, and loads the version on every replica, all or none.

One fleet serves the module's three cycles, in order: a version one replica refuses (every replica stays
on the old one), a replica killed during the cycle (the same, and the replica comes back on the old one),
and a cycle from the command line while a client sends requests through the balancer (0 failed, every
replica on the new version). Each cycle reads the same log: the clicks every replica wrote, each once.

The world is test_serve's, smaller: a 60-talk catalog served as trained (no swap), a tiny untrained
Transformers4Rec model with per-talk parts, random unit vectors in the text cache. Needs HAProxy (``make
env`` unpacks it into the venv): without it the module is skipped with the reason.
"""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

from gtcrec import data, embeddings, etl, live, swap
from gtcrec import model as gm
from gtcrec.representation import DEFAULT_SETTINGS, settings_for
from gtcrec.serving import balancer as lb
from gtcrec.serving import client as cl
from gtcrec.serving.export import export_ensemble
from gtcrec.trace import trace_topk

HAVE_HAPROXY, HAPROXY_WHY = lb.haproxy_available()
pytestmark = [pytest.mark.xdist_group("fleet-live"),  # the cycles build on each other: one worker, in order
              pytest.mark.skipif(not HAVE_HAPROXY, reason=f"no load balancer: {HAPROXY_WHY}")]
NAME = "executor_model"
MAX_LEN, K_MODEL, K = 8, 30, 10
N_SESSIONS, SESSIONS_PER_REQUEST = 260, 10
BUDGET_S = 1.0  # seconds of fine-tuning per cycle (one epoch each): the untrained model loses to the pairs anyway


def build_world(root):
    """A catalog, a tiny model with per-talk parts, its ensemble exported as version 1 (no text encoder)."""
    cache = root / "cache"
    catalog, _ = data.generate_catalog(60, seed=2, event="fall", id_prefix="F", id_start=30001)
    catalog.to_csv(root / "catalog.csv", index=False)
    rng = np.random.default_rng(0)
    texts = embeddings.talk_text(catalog)
    vectors = rng.normal(size=(len(texts), embeddings.DIM)).astype(np.float32)
    embeddings.EmbeddingCache(cache).add([embeddings.text_key(t) for t in texts],
                                         vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    table = etl.item_table(embeddings.embed_catalog(catalog, cache, progress=False)[0])
    model = gm.build_model(gm.make_schema(len(table), MAX_LEN), table, d_model=16, n_layer=1, n_head=2,
                           max_len=MAX_LEN, arch="gpt2", masking="clm", seed=0,
                           item_repr=settings_for(DEFAULT_SETTINGS, catalog))  # per-talk parts: the cycle needs them
    model_dir = gm.save_model(model, root / "model")
    traced = trace_topk(model, gm.sessions_to_batch(swap.example_sessions(len(table), MAX_LEN), MAX_LEN), k=K_MODEL)
    traced.save(str(root / "topk.pt"))
    export_ensemble(catalog["talk_id"].tolist(), root / "topk.pt", root / "repo", max_len=MAX_LEN, k=K, name=NAME,
                    instance_count=1)
    return {"root": root, "cache": cache, "catalog": catalog, "catalog_csv": root / "catalog.csv",
            "model_dir": model_dir, "repo": root / "repo", "click_log": root / "clicklog"}


def event_clicks(ids, n_sessions: int = N_SESSIONS, seed: int = 3) -> pd.DataFrame:
    """Sessions of 4 clicks that walk pairs the talks' text does not show (what the cycle can learn)."""
    follow = np.random.default_rng(seed).permutation(len(ids))
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i in range(n_sessions):
        walk = [int(rng.integers(len(ids)))]
        for _ in range(3):
            walk.append(int(follow[walk[-1]]))
        rows += [(f"live-{i}", ids[j], 1_730_000_000_000 + 600_000 * i + 60_000 * n) for n, j in enumerate(walk)]
    return pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp"]).astype({"timestamp": np.int64})


def send_through(grpc_url: str, clicks: pd.DataFrame, log_key: str) -> None:
    """The app: the sessions' clicks through the balancer, vouched for (the logging key), several sessions
    a request; the balancer hands the requests to the replicas in turn."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        sessions = clicks["session_id"].unique()
        for start in range(0, len(sessions), SESSIONS_PER_REQUEST):
            part = clicks[clicks["session_id"].isin(sessions[start:start + SESSIONS_PER_REQUEST])]
            cl.infer_arrays(client, cl.request_arrays(part), model_name=NAME,
                            parameters=cl.log_parameters(log_key, ""))
    finally:
        client.close()


def wait_for_log(folder, n_clicks: int, timeout: float = 30.0) -> dict:
    """The log's report once it holds ``n_clicks`` clicks (segments are written every half second)."""
    deadline = time.monotonic() + timeout
    while True:
        _, report = live.read_click_log(folder)
        if report["clicks"] >= n_clicks or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("fleet-live"))


@pytest.fixture(scope="module")
def fleet(world):
    with swap.Fleet(world["repo"], n_replicas=2, model_name=NAME, check_interval=0.2, click_log=world["click_log"],
                    click_log_seconds=0.5) as f:
        yield f


@pytest.fixture(scope="module")
def logged(world, fleet):
    """The event's clicks, sent through the balancer and logged by both replicas into the shared folder."""
    clicks = event_clicks(world["catalog"]["talk_id"].tolist())
    send_through(fleet.grpc_url, clicks, fleet.log_key)
    report = wait_for_log(world["click_log"], len(clicks))
    return clicks, report


def cycle(world, fleet, **kwargs) -> dict:
    return live.run_cycle(world["repo"], fleet.replicas, world["model_dir"], world["cache"], world["click_log"],
                          NAME, catalog=world["catalog_csv"], budget_s=BUDGET_S, timeout=120, **kwargs)


def on_every_replica(fleet, version: int) -> bool:
    return fleet.serving() == {r.grpc_url: [version] for r in fleet.replicas}


@pytest.mark.server
def test_every_replica_logs_into_the_shared_folder_and_the_reader_counts_each_click_once(world, fleet, logged):
    clicks, report = logged
    sent = set(zip(clicks["session_id"], clicks["talk_id"], clicks["timestamp"]))
    read, _ = live.read_click_log(world["click_log"], catalog_ids=world["catalog"]["talk_id"])
    ms = read["timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    assert set(zip(read["session_id"], read["talk_id"], ms.tolist())) == sent and len(read) == len(sent)
    writers = report["writers"]["by_writer"].values()
    assert len({w["pid"] for w in writers}) == 2, writers  # both replicas wrote (one instance each)
    assert all(w["clicks_logged"] > 0 for w in writers)
    assert report["writers_dropped_clicks"] == report["writers_lost_clicks"] == 0


@pytest.mark.server
def test_a_version_one_replica_refuses_leaves_every_replica_on_the_old_one(world, fleet, logged):
    def break_for_replica_1(index, folder):
        if index == 1:  # replica 0 serves the version already; replica 1 finds a truncated model file
            artifact = folder / "ensemble" / "topk_model.pt"
            artifact.write_bytes(artifact.read_bytes()[:1024])

    t = swap.Traffic(fleet.balancer, swap.probe_request(world["catalog"]["talk_id"], []), [], [], model_name=NAME,
                     pause=0.01, max_requests=5000, max_seconds=120).start()
    t.wait_for(5)
    done = cycle(world, fleet, _before_replica_load=break_for_replica_1)
    frame = t.stop()
    assert done["serving_before"] == 1 and not done["published"], done
    assert "refused version 2" in done["error"] and fleet.replicas[1].grpc_url in done["error"]
    assert on_every_replica(fleet, 1) and done["replicas"] == fleet.serving()
    assert not (world["repo"] / NAME / "2").exists()  # archived, never served again
    assert int((~frame["ok"]).sum()) == 0, frame[~frame["ok"]]["error"].head().tolist()
    assert done["log"]["clicks"] == len(logged[0])


@pytest.mark.server
def test_a_replica_killed_during_the_cycle_leaves_every_replica_on_the_old_one(world, fleet, logged):
    victim = fleet.replicas[1]

    def kill_replica_1(index, folder):
        if index == 1:  # replica 0 serves the version already; replica 1 dies before its load
            os.kill(victim.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while victim.is_running() and time.monotonic() < deadline:
                time.sleep(0.1)

    done = cycle(world, fleet, _before_replica_load=kill_replica_1)
    assert not done["published"] and "does not answer" in done["error"], done
    serving = done["replicas"]
    assert serving[fleet.replicas[0].grpc_url] == [1] and serving[victim.grpc_url].startswith("unreachable")
    assert not (world["repo"] / NAME / "3").exists()
    victim.start()  # it comes back on the newest version folder: the old one
    fleet.balancer.wait_for_state("r1", "UP")
    assert on_every_replica(fleet, 1)


@pytest.mark.server
def test_a_fleet_cycle_from_the_command_line_serves_the_new_version_everywhere_without_failures(
        world, fleet, logged, tmp_path, capsys):
    key_file = tmp_path / "control.key"  # one key on every replica, in a file as a deployment's secret
    key_file.write_text(fleet.control_key)
    urls = [a for r in fleet.replicas for a in ("--url", r.grpc_url)]
    common = ["--repository", str(world["repo"]), "--model-name", NAME, "--control-key-file", str(key_file)]
    t = swap.Traffic(fleet.balancer, swap.probe_request(world["catalog"]["talk_id"], []), [], [], model_name=NAME,
                     pause=0.01, max_requests=5000, max_seconds=120).start()
    t.wait_for(5)
    code = live.cycle.main(["--fleet", *urls, *common, "--model-dir", str(world["model_dir"]), "--click-log",
                            str(world["click_log"]), "--catalog", str(world["catalog_csv"]), "--cache",
                            str(world["cache"]), "--budget", str(BUDGET_S), "--timeout", "120", "--json", "-"])
    ended = len(t.rows)
    t.wait_for(ended + 20)  # answered by the new version on both replicas
    frame = t.stop()
    assert code == 0, capsys.readouterr().err[-3000:]
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["published"] and done["version"] == 4, done  # 2 and 3 were refused: numbers are never reused
    assert done["log"]["clicks"] == len(logged[0])  # every replica's clicks, each once
    assert set(done["load_seconds"]) == {r.grpc_url for r in fleet.replicas}
    assert on_every_replica(fleet, 4) and done["replicas"] == fleet.serving()
    assert int((~frame["ok"]).sum()) == 0, (frame[~frame["ok"]]["error"].head().tolist(), fleet.balancer.log_tail(100))
    assert len(frame) >= ended + 20
    assert (world["repo"] / NAME / live.LIVE_MODELS / "4").is_dir()
    # --status: the recorded cycles and every replica's version
    assert live.cycle.main(["--status", "--fleet", *urls, *common]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["consistent"] and set(map(tuple, status["serving"].values())) == {(4,)}
    assert [c["published"] for c in status["cycles"]] == [False, False, True]
    print(f"\nfleet cycle: {done['seconds']:.1f} s (steps {done['steps']}), {len(frame)} requests, 0 failed")


@pytest.mark.server
def test_a_catalog_update_on_the_fleet_keeps_what_was_learned_on_every_replica(world, fleet, tmp_path, capsys):
    """``gtcrec-swap --fleet --update`` after the cycle above (version 4 on both replicas, with what it learned):
    two talks added, one cancelled; every replica serves the update, under traffic, 0 failed."""
    ids = world["catalog"]["talk_id"].tolist()
    cancelled = ids[5]
    added, _ = data.generate_catalog(2, seed=9, event="fall", id_prefix="F", id_start=39001)
    texts = embeddings.talk_text(added)  # their text vectors: random, as the world's are (no encoder here)
    vectors = np.random.default_rng(1).normal(size=(len(texts), embeddings.DIM)).astype(np.float32)
    embeddings.EmbeddingCache(world["cache"]).add([embeddings.text_key(t) for t in texts],
                                                  vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    updated = pd.concat([world["catalog"][world["catalog"]["talk_id"] != cancelled], added], ignore_index=True)
    updated.to_csv(tmp_path / "catalog-v2.csv", index=False)
    new_ids, added = updated["talk_id"].tolist(), added["talk_id"].tolist()
    key_file = tmp_path / "control.key"
    key_file.write_text(fleet.control_key)
    args = ["--repository", str(world["repo"]), "--model-name", NAME, "--control-key-file", str(key_file),
            *[a for r in fleet.replicas for a in ("--url", r.grpc_url)], "--fleet"]
    request = swap.probe_request([cancelled, ids[0]], added, n_clicks=2)
    t = swap.Traffic(fleet.balancer, request, ids, new_ids, model_name=NAME, pause=0.01, max_requests=5000,
                     max_seconds=120).start()
    t.wait_for(5)
    code = swap.main([str(tmp_path / "catalog-v2.csv"), "--update", "--model-dir", str(world["model_dir"]),
                      "--cache", str(world["cache"]), "--timeout", "120", "--json", "-", *args])
    t.wait_for(len(t.rows) + 20)  # answered by the update on both replicas
    frame = t.stop()
    assert code == 0, capsys.readouterr().err[-3000:]
    result = json.loads(capsys.readouterr().out)
    assert result["action"] == "fleet-update" and (result["previous_version"], result["version"]) == (4, 5)
    assert (result["changes"]["added"], result["changes"]["cancelled"]) == (added, [cancelled])
    assert on_every_replica(fleet, 5) and result["replicas"] == fleet.serving()
    assert int((~frame["ok"]).sum()) == 0, frame[~frame["ok"]]["error"].head().tolist()
    # every replica: a session of added talks answered by the model (the version before knew none of them: its
    # fallback, no scores), the cancelled talk never answered, a session of only that talk still answered
    for replica in fleet.replicas:
        client = replica.grpc_client()
        try:
            got = cl.recommend(client, pd.DataFrame({"session_id": ["a", "a", "c"], "talk_id": [added[0], added[1],
                                                     cancelled], "timestamp": np.array([0, 60_000, 0], np.int64)}),
                               model_name=NAME)
        finally:
            client.close()
        assert cancelled not in set(got["talk_id"]) and set(got["talk_id"]) <= set(new_ids)
        assert (got["session_id"] == "a").sum() == K and got.loc[got["session_id"] == "a", "score"].notna().all()
        assert (got["session_id"] == "c").sum() == K
    # what the cycle learned for the talks that stay is carried into the update, talk by talk
    before = swap.per_talk_parts(gm.load_model(world["repo"] / NAME / live.LIVE_MODELS / "4"))
    after = swap.per_talk_parts(gm.load_model(world["repo"] / NAME / live.LIVE_MODELS / "5"))
    assert before["warm"].sum() > 0
    for j, talk in enumerate(new_ids):
        for part in swap.update.PER_TALK:
            expected = before[part][3 + ids.index(talk)] if talk in ids else np.zeros_like(before[part][0])
            np.testing.assert_array_equal(after[part][3 + j], expected, err_msg=f"{part} of {talk}")
