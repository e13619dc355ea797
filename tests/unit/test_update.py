"""gtcrec.swap.update: a new version of the catalog being served (talks added, cancelled, retitled) served
during the event, keeping what the live loop learned for the talks that stay; against ONE real Triton server.

The world is small: the fall event's catalog of 40 talks (F30001...) served as version 1 by a tiny untrained
Transformers4Rec model with per-talk parts (the serving path does not care that it is untrained), its text
vectors written straight into the embedding cache (random unit vectors); the update's new texts (three added
talks, one retitled) go through the real text encoder, as a swap's do.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gtcrec import data, embeddings, etl, swap
from gtcrec import model as gm
from gtcrec.data import DataValidationError
from gtcrec.live import adapt, cycle
from gtcrec.representation import DEFAULT_SETTINGS, settings_for
from gtcrec.serving import client as cl
from gtcrec.serving.export import export_ensemble
from gtcrec.serving.repository import record_event
from gtcrec.serving.server import TritonServer
from gtcrec.swap.switch import publish
from gtcrec.trace import trace_topk

MAX_LEN, K_MODEL, K = 8, 14, 5
NAME = "executor_model"


# ------------------------------------------------------------------------------------ the pure parts

def test_catalog_changes_and_rows_carried_by_talk_id():
    old, new = ["A", "B", "C", "D"], ["D", "B", "X", "C"]  # A cancelled, X added, the rest reordered
    old_rows = np.eye(4, dtype=np.float32)
    new_rows = np.stack([old_rows[3], old_rows[1], np.ones(4, np.float32), 0.5 * old_rows[2]])  # C retitled
    changes = swap.catalog_changes(old, new, old_rows, new_rows)
    assert (changes.added, changes.cancelled, changes.changed_text, changes.kept) == (["X"], ["A"], ["C"],
                                                                                      ["D", "B", "C"])
    assert changes.summary() == {"added": 1, "cancelled": 1, "changed_text": 1, "kept": 3}
    rows = np.arange(7 * 2, dtype=np.float32).reshape(7, 2) + 1  # 3 reserved codes, then A B C D
    carried = swap.carry_by_id(rows, old, new)
    np.testing.assert_array_equal(carried, [rows[0], rows[1], rows[2], rows[6], rows[4], [0, 0], rows[5]])
    bias = np.array([0, 0, 0, 1.5, 2.5, 3.5, 4.5])  # 1-D rows too (biases, warm flags), reserved rows kept
    np.testing.assert_array_equal(swap.carry_by_id(bias, old, new), [0, 0, 0, 4.5, 2.5, 0, 3.5])
    np.testing.assert_array_equal(swap.carry_by_id(np.array([4.0, 3, 2, 1]), old, new, reserved=0), [1, 3, 0, 2])
    with pytest.raises(ValueError, match="rows for 4 talks"):
        swap.carry_by_id(rows[:5], old, new)


def test_an_update_must_share_talks_with_the_catalog_served(tmp_path):
    fall, _ = data.generate_catalog(20, seed=2, event="fall", id_prefix="F", id_start=30001)
    other, _ = data.generate_catalog(20, seed=3, event="spring", id_prefix="S", id_start=50001)
    other.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataValidationError, match="no talk id in common .* use a swap instead"):
        swap.validate_catalog(tmp_path / "other.csv", fall["talk_id"], update=True)
    dup = fall.copy()
    dup.loc[4, "talk_id"] = dup.loc[1, "talk_id"]
    dup.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DataValidationError) as info:
        swap.validate_catalog(tmp_path / "dup.csv", fall["talk_id"], update=True)
    assert any("rows 2 and 5, column 'talk_id': duplicate talk id" in p for p in info.value.problems)
    # the served ids are allowed in an update (a swap refuses them)
    assert len(swap.validate_catalog(tmp_path / "other.csv", ["F30001", "S50001"], update=True)) == 20


# ------------------------------------------------------------------------------------ real server

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("update")
    cache = root / "cache"
    fall, _ = data.generate_catalog(40, seed=2, event="fall", id_prefix="F", id_start=30001)
    fall.to_csv(root / "fall.csv", index=False)
    texts = embeddings.talk_text(fall)
    vectors = np.random.default_rng(0).normal(size=(len(texts), embeddings.DIM)).astype(np.float32)
    embeddings.EmbeddingCache(cache).add([embeddings.text_key(t) for t in texts],
                                         vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    table = etl.item_table(embeddings.embed_catalog(fall, cache, progress=False)[0])
    model = gm.build_model(gm.make_schema(len(table), MAX_LEN), table, d_model=16, n_layer=1, n_head=2,
                           max_len=MAX_LEN, arch="gpt2", masking="clm", seed=0,
                           item_repr=settings_for(DEFAULT_SETTINGS, fall))  # per-talk parts, as the live loop needs
    model_dir = gm.save_model(model, root / "model")
    trace_topk(model, gm.sessions_to_batch(swap.example_sessions(len(table), MAX_LEN), MAX_LEN),
               k=K_MODEL).save(str(root / "topk.pt"))
    repo = root / "repo"
    export_ensemble(fall["talk_id"].tolist(), root / "topk.pt", repo, max_len=MAX_LEN, k=K, name=NAME,
                    instance_count=1)
    # the update: three talks added, one cancelled, one retitled, the rest as they were
    ids = fall["talk_id"].tolist()
    added, _ = data.generate_catalog(3, seed=9, event="fall", id_prefix="F", id_start=39001)
    updated = pd.concat([fall[fall["talk_id"] != ids[5]], added], ignore_index=True)
    updated.loc[updated["talk_id"] == ids[7], "title"] = "Moved and retitled: scaling inference on CPUs"
    updated.to_csv(root / "fall-v2.csv", index=False)
    return {"root": root, "cache": cache, "fall": fall, "ids": ids, "model_dir": model_dir, "repo": repo,
            "updated": root / "fall-v2.csv", "new_ids": updated["talk_id"].tolist(), "added": added["talk_id"].tolist(),
            "cancelled": ids[5], "retitled": ids[7], "model": model}


def answers(server, sessions: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(name, t, 60_000 * i) for name, talks in sessions.items() for i, t in enumerate(talks)]
    clicks = pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp"]).astype({"timestamp": np.int64})
    client = server.grpc_client()
    try:
        return cl.recommend(client, clicks, model_name=NAME)
    finally:
        client.close()


def learned_version(world, server) -> int:
    """Version 2: what an adaptation cycle publishes (popularity + co-occurrence in the per-talk parts of the
    served model, the observed popularity as fallback, the eager model in live/2, an "adapt" event), made
    here directly from sessions that click the talk the update cancels and talks that stay."""
    ids, repo = world["ids"], world["repo"]
    rng = np.random.default_rng(1)
    sessions = [np.array([3 + 5, 3 + int(rng.integers(0, 12)), 3 + 7], dtype=np.int64) for _ in range(30)]
    learned = adapt.closed_form(world["model"], sessions, weight=1.0, alpha=1.0)
    popularity = adapt.click_counts(sessions, len(ids) + 3)[3:]
    settings = swap.read_version(repo, 1, NAME)
    done = publish(learned, ids, repo, server, 1, settings, K_MODEL, NAME, popularity=popularity, action="adapt")
    gm.save_model(learned, repo / NAME / cycle.LIVE_MODELS / str(done.version))
    record_event(repo, NAME, action="adapt", version=done.version, from_version=1, ok=True)
    return done.version


@pytest.mark.server
def test_update_during_the_event_keeps_what_was_learned(world, tmp_path, monkeypatch):
    ids, new_ids, repo = world["ids"], world["new_ids"], world["repo"]
    added, cancelled, retitled = world["added"], world["cancelled"], world["retitled"]
    with TritonServer(repo, load_models=[NAME], startup_timeout=180) as server:
        assert learned_version(world, server) == 2
        # before: the cancelled talk is among the answers (its clicks raised its bias)
        probe = {f"one-{t}": [t] for t in ids if t != cancelled}
        assert cancelled in set(answers(server, probe)["talk_id"])
        monkeypatch.setenv("GTCREC_CONTROL_KEY", server.control_key)  # the command's key, as a deployment passes it
        args = ["--repository", str(repo), "--url", server.grpc_url, "--model-name", NAME]

        # bad input: nothing changes (the row and column are named; ids of another event: use a swap)
        other, _ = data.generate_catalog(20, seed=3, event="spring", id_prefix="S", id_start=50001)
        other.to_csv(tmp_path / "other.csv", index=False)
        update = ["--update", "--model-dir", str(world["model_dir"]), "--cache", str(world["cache"]), *args]
        assert swap.main([str(tmp_path / "other.csv"), *update]) == 2
        assert swap.repository_versions(repo, NAME) == [1, 2] and swap.serving_versions(server, NAME) == [2]

        # the update, while a client sends requests
        request = swap.probe_request([cancelled, ids[0]], added[:2], n_clicks=2)  # the third added talk: an answer
        traffic = swap.Traffic(server, request, ids, new_ids, model_name=NAME, pause=0.01, max_requests=5000,
                               max_seconds=120).start()
        traffic.wait_for(10)
        assert swap.main([str(world["updated"]), *update, "--json", str(tmp_path / "update.json")]) == 0
        traffic.wait_for(len(traffic.rows) + 10)
        frame = traffic.stop()
        result = json.loads((tmp_path / "update.json").read_text())
        assert frame["ok"].all() and len(frame) > 20, frame[~frame["ok"]]["error"].head()  # 0 failed
        assert {"old", "new"} <= set(frame["catalog"])  # answered by the version before, then the update
        assert result["version"] == 3 and result["previous_version"] == 2 and result["serving"] == [3]
        changes = result["changes"]
        assert (changes["added"], changes["cancelled"], changes["changed_text"]) == (added, [cancelled], [retitled])
        assert result["newly_encoded"] == 4  # the added talks and the new title; the rest from the cache
        assert swap.read_version(repo, 3, NAME).vocab == new_ids

        # added talks are answered at once; the cancelled one never, a session that clicked it still is
        got = answers(server, {**{f"one-{t}": [t] for t in new_ids}, "added": added[:2],
                               "clicked-cancelled": [ids[0], cancelled], "only-cancelled": [cancelled]})
        assert cancelled not in set(got["talk_id"]) and set(got["talk_id"]) <= set(new_ids)
        assert added[2] in set(got.loc[got["session_id"] == "added", "talk_id"])
        assert got.loc[got["session_id"] == "added", "score"].notna().all()  # the model's answer, not the fallback
        assert (got["session_id"] == "clicked-cancelled").sum() == K and (got["session_id"] == "only-cancelled").sum() == K

        # what was learned for the talks that stay is kept exactly; added talks start from their text
        before = swap.per_talk_parts(gm.load_model(repo / NAME / cycle.LIVE_MODELS / "2"))
        after_model = gm.load_model(repo / NAME / cycle.LIVE_MODELS / "3")
        after = swap.per_talk_parts(after_model)
        code_before = {t: 3 + i for i, t in enumerate(ids)}
        for name in swap.update.PER_TALK:
            for j, t in enumerate(new_ids):
                expected = before[name][code_before[t]] if t in code_before else np.zeros_like(before[name][0])
                np.testing.assert_array_equal(after[name][3 + j], expected, err_msg=f"{name} of {t}")
        assert before["item_bias"][3 + 7] > 0 and before["warm"].sum() > 0  # there was something to keep
        text_after = gm.text_table(after_model).numpy()
        text_before = gm.text_table(gm.load_model(repo / NAME / cycle.LIVE_MODELS / "2")).numpy()
        assert not np.allclose(text_after[3 + new_ids.index(retitled)], text_before[3 + 7])  # encoded again
        popularity_before = dict(zip(ids, swap.read_version(repo, 2, NAME).popularity))
        assert swap.read_version(repo, 3, NAME).popularity == [popularity_before.get(t, 0.0) for t in new_ids]

        # the status of both commands shows the update
        assert swap.main(["--status", *args, "--json", str(tmp_path / "status.json")]) == 0
        status = json.loads((tmp_path / "status.json").read_text())
        assert status["history"][-1]["action"] == "update" and status["history"][-1]["cancelled"] == [cancelled]
        rows = cycle._status(repo, NAME)
        assert rows[-1]["kind"] == "catalog update" and rows[-1]["added"] == added

        # the next adaptation cycle works on the updated catalog (its clicks: on talks that stay, added, cancelled)
        log_dir = tmp_path / "clicks"
        log_dir.mkdir()
        sessions = [[ids[0], added[0], ids[1]], [cancelled, ids[2]], [added[1], added[2]]] * 4
        pd.DataFrame([(f"s{i}", t, pd.Timestamp("2026-10-01") + pd.Timedelta(minutes=10 * i + j))
                      for i, s in enumerate(sessions) for j, t in enumerate(s)],
                     columns=["session_id", "talk_id", "timestamp"]).to_csv(log_dir / "clicks.csv", index=False)
        done = cycle.run_cycle(repo, server, world["model_dir"], world["cache"], log_dir, NAME)
        assert done["serving_before"] == 3 and done["catalog"] == str(world["updated"].resolve())
        assert done["log"]["clicks"] == 24 and not done["published"]  # the 4 clicks on the cancelled talk dropped
        assert "nothing to learn from yet" in done["reason"]

        # rollback: the catalog before, with its learned parts
        assert swap.main(["--rollback", *args]) == 0
        assert swap.serving_versions(server, NAME) == [2]
        back = answers(server, {"added": added[:2], **probe})
        assert back.loc[back["session_id"] == "added", "score"].isna().all()  # unknown again: the fallback
        assert cancelled in set(back["talk_id"]) and not set(back["talk_id"]) & set(added)
        assert cycle.live_catalog(repo, NAME, world["root"] / "fall.csv", version=2).catalog_file == world["root"] / "fall.csv"
