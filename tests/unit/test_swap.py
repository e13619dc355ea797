"""gtcrec.swap: the new catalog's table and vocabulary, the swapped model, and swaps, failed loads and
rollbacks against ONE real Triton server.

A small world made here: a generated "old" catalog of 40 talks (ids S...) and a "new" one of 60 talks
(ids F...), both embedded with the real MiniLM encoder (cached in a tmp folder), a tiny Transformers4Rec
model over the old table (untrained: the swap does not care), exported as version 1 of a repository.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec import data, embeddings, etl, swap
from gtcrec import model as gm
from gtcrec.trace import trace_topk
from gtcrec.data import DataValidationError
from gtcrec.serving import client as cl
from gtcrec.serving.export import export_ensemble
from gtcrec.serving.server import TritonServer

MAX_LEN, K_MODEL, K = 8, 14, 5
NAME = "executor_model"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    cache = root / "cache"
    old, _ = data.generate_catalog(40, seed=1, event="spring", id_prefix="S")
    new, _ = data.generate_catalog(60, seed=2, event="fall", id_prefix="F", id_start=30001)
    old.to_parquet(root / "old.parquet", index=False)
    new.to_csv(root / "new.csv", index=False)
    old_vectors, _ = embeddings.embed_catalog(old, cache, progress=False)
    old_table = etl.item_table(old_vectors)
    schema = gm.make_schema(len(old_table), MAX_LEN)
    model = gm.build_model(schema, old_table, d_model=16, n_layer=1, n_head=2, max_len=MAX_LEN,
                           arch="gpt2", masking="clm", seed=0)
    model_dir = gm.save_model(model, root / "model")
    traced = trace_topk(model, gm.sessions_to_batch(swap.example_sessions(len(old_table), MAX_LEN), MAX_LEN),
                           k=K_MODEL)
    traced.save(str(root / "topk.pt"))
    repo = root / "repo"
    export_ensemble(old["talk_id"].tolist(), root / "topk.pt", repo, max_len=MAX_LEN, k=K, name=NAME,
                    instance_count=1)
    return {"root": root, "cache": cache, "old": old, "new": new, "old_table": old_table,
            "model_dir": model_dir, "repo": repo, "new_csv": root / "new.csv"}


@pytest.fixture(scope="module")
def server(world):
    with TritonServer(world["repo"], load_models=[NAME], startup_timeout=180) as s:
        yield s


def old_ids(world):
    return world["old"]["talk_id"].tolist()


def new_ids(world):
    return world["new"]["talk_id"].tolist()


# ------------------------------------------------------------------------------------ no server

def test_prepared_catalog_vocabulary_and_table(world):
    prepared = swap.prepare_catalog(world["new_csv"], world["cache"], old_ids(world), min_talks=K_MODEL)
    assert prepared.vocab == new_ids(world)  # catalog order: code = position + 3
    assert prepared.table.shape == (60 + 3, 384) and prepared.table.dtype == np.float32
    assert not prepared.table[:3].any()
    np.testing.assert_allclose(np.linalg.norm(prepared.table[3:], axis=1), 1.0, atol=1e-5)
    vectors, newly = embeddings.embed_catalog(world["new"], world["cache"], progress=False)
    assert newly == 0  # the swap filled the cache
    np.testing.assert_array_equal(prepared.table[3:], vectors)
    # the vocabulary is the one the ETL would use for the new event
    assert etl.vocabulary(prepared.catalog).tolist() == prepared.vocab


def test_swapped_model_has_the_new_table_everywhere(world):
    prepared = swap.prepare_catalog(world["new_csv"], world["cache"], old_ids(world))
    model = swap.swapped_model(world["model_dir"], prepared.table)
    emb = gm.item_embedding(model)
    assert emb.num_embeddings == 63 and tuple(emb.weight.shape) == (63, 384)
    assert torch.equal(emb.weight.detach(), torch.from_numpy(prepared.table))
    assert not emb.weight.requires_grad
    task = gm._task(model)
    assert task.target_dim == 63 and task.pre.module.target_dim == 63
    assert task.item_embedding_table is emb
    assert model.input_schema["item_id-list"].int_domain.max == 62
    scores = gm.score_sessions(model, [[3, 4], [62]])
    assert scores.shape == (2, 63) and np.isinf(scores[:, :3]).all() and np.isfinite(scores[:, 3:]).all()
    traced, check = swap.trace_swapped(model, K_MODEL)
    assert check["max_score_diff"] < 1e-4
    with torch.no_grad():
        _, codes = traced(gm.sessions_to_batch(swap.example_sessions(63, MAX_LEN, n=20, seed=5), MAX_LEN))
    assert codes.shape == (20, K_MODEL) and int(codes.min()) >= 3 and int(codes.max()) <= 62
    # the saved model is untouched: loading it again gives the old catalog's size
    assert gm.n_codes(gm.load_model(world["model_dir"])) == 43


def bad_catalogs(world) -> dict[str, tuple[pd.DataFrame, str]]:
    base = world["new"].head(20).copy()
    dup = base.copy()
    dup.loc[4, "talk_id"] = dup.loc[1, "talk_id"]
    empty = base.copy()
    empty.loc[2, "title"] = ""
    clash = base.copy()
    clash.loc[6, "talk_id"] = old_ids(world)[0]
    return {"missing column": (base.drop(columns=["title"]), "header (line 1), column 'title': missing column"),
            "duplicate id": (dup, "rows 2 and 5, column 'talk_id': duplicate talk id"),
            "empty text": (empty, "row 3, column 'title': empty title"),
            "old id": (clash, f"row 7, column 'talk_id': talk id '{old_ids(world)[0]}' is already in the catalog"),
            "too few talks": (base.head(K_MODEL - 1), f"{K_MODEL - 1} talks, fewer than the {K_MODEL}")}


@pytest.mark.parametrize("case", ["missing column", "duplicate id", "empty text", "old id", "too few talks"])
def test_bad_catalog_files_get_clear_errors(world, tmp_path, case):
    frame, expected = bad_catalogs(world)[case]
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as info:
        swap.validate_catalog(path, old_ids(world), min_talks=K_MODEL)
    assert info.value.path == str(path) and "bad.csv" in str(info.value)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_transfer_scores_and_prefixes_match_talks_by_id():
    old_vocab, new_vocab = ["A", "B", "C"], ["X", "B", "Y", "A"]
    old_scores = np.array([[-np.inf, -np.inf, -np.inf, 5.0, 7.0, 1.0]], dtype=np.float32)
    out = swap.transfer_scores(old_scores, old_vocab, new_vocab)
    assert out.shape == (1, 7) and np.isinf(out[0, :3]).all()
    np.testing.assert_array_equal(out[0, 3:], [0.0, 7.0, 0.0, 5.0])
    prefixes = swap.translate_prefixes([np.array([3, 4, 6])], new_vocab, old_vocab)
    np.testing.assert_array_equal(prefixes[0], [2, 4, 3])  # X unknown -> OOV, B -> 4, A -> 3


def test_traffic_refuses_servers_that_are_not_local():
    with pytest.raises(ValueError, match="loopback"):
        swap.Traffic("10.1.2.3:8001", {}, [], [])


# ------------------------------------------------------------------------------------ real server

def repo_state(repo: Path) -> str:
    files = {str(p.relative_to(repo)): (p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(repo.rglob("*")) if p.is_file() and p.name != swap.LOCK_FILE}
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def served_catalog(server, world) -> str:
    client = server.grpc_client()
    try:
        answer = cl.infer_arrays(client, swap.probe_request(old_ids(world), new_ids(world)), model_name=NAME)
    finally:
        client.close()
    return swap.answer_catalog(answer["talk_ids"], set(old_ids(world)), set(new_ids(world)))


@pytest.mark.server
def test_bad_catalog_leaves_the_serving_version_untouched(world, server, tmp_path):
    before = (repo_state(world["repo"]), swap.serving_versions(server, NAME), served_catalog(server, world))
    assert before[2] == "old"
    for case in ("duplicate id", "old id"):
        frame, _ = bad_catalogs(world)[case]
        path = tmp_path / f"{case.replace(' ', '_')}.csv"
        frame.to_csv(path, index=False)
        with pytest.raises(DataValidationError):
            swap.swap_catalog(path, world["repo"], server, world["model_dir"], world["cache"], model_name=NAME)
        assert (repo_state(world["repo"]), swap.serving_versions(server, NAME), served_catalog(server, world)) == before
    assert swap.main([str(path), "--repository", str(world["repo"]), "--url", server.grpc_url,
                      "--model-dir", str(world["model_dir"]), "--cache", str(world["cache"])]) == 2
    assert repo_state(world["repo"]) == before[0]


@pytest.fixture(scope="module")
def swapped(world, server):
    """The swap to the new catalog, with a client sending requests throughout."""
    assert served_catalog(server, world) == "old"
    request = swap.probe_request(old_ids(world), new_ids(world))
    traffic = swap.Traffic(server, request, old_ids(world), new_ids(world), model_name=NAME, pause=0.01,
                           max_requests=5000, max_seconds=120).start()
    traffic.wait_for(10)
    result = swap.swap_catalog(world["new_csv"], world["repo"], server, world["model_dir"], world["cache"],
                               model_name=NAME)
    traffic.wait_for(len(traffic.rows) + 10)
    frame = traffic.stop()
    summary = swap.traffic_summary(frame, traffic.at(result.load.started), traffic.at(result.load.ended))
    return result, summary


@pytest.mark.server
def test_swap_serves_the_new_catalog_without_failed_requests(world, server, swapped):
    result, summary = swapped
    assert result.previous_version == 1 and result.version == 2 and result.serving == [2]
    assert result.k_model == K_MODEL and result.k == K and result.n_talks == 60  # K of the serving version
    assert summary["failed"] == 0 and summary["requests_before"] > 0 and summary["requests_after"] > 0
    assert summary["before_only"] and summary["after_only"] and summary["ordered"]
    assert set(result.steps) >= {"validate_catalog", "encode_text", "load_and_swap_model", "trace", "export",
                                 "server_load"}
    assert result.seconds_without_encoding <= result.total_seconds
    # answers for new-event sessions: only new talks, never a clicked one, from the model
    new = new_ids(world)
    clicks = pd.DataFrame({"session_id": np.repeat(["a", "b", "c"], 3), "talk_id": [new[i] for i in range(0, 27, 3)],
                           "timestamp": np.arange(9, dtype=np.int64) * 60_000})
    client = server.grpc_client()
    try:
        answer = cl.recommend(client, clicks, model_name=NAME)
    finally:
        client.close()
    assert len(answer) == 3 * K and set(answer["talk_id"]) <= set(new) and answer["score"].notna().all()
    clicked = clicks.groupby("session_id")["talk_id"].apply(set)
    assert not any(r.talk_id in clicked[r.session_id] for r in answer.itertuples())
    # the exported version holds the new vocabulary and the old serving settings
    settings = swap.read_version(world["repo"], 2, NAME)
    assert settings.vocab == new and settings.k == K and settings.max_len == MAX_LEN and settings.k_model == K_MODEL
    history = swap.read_history(world["repo"], NAME)
    assert history["events"][-1]["action"] == "swap" and set(history["configs"]) >= {"1", "2"}


@pytest.mark.server
def test_broken_version_is_refused_and_the_current_one_keeps_serving(world, server, swapped):
    before = swap.serving_versions(server, NAME)
    catalog = served_catalog(server, world)
    config = (world["repo"] / NAME / "config.pbtxt").read_text()
    broken = swap.copy_version(world["repo"], before[-1], NAME)
    artifact = broken / "ensemble" / "topk_model.pt"
    artifact.write_bytes(artifact.read_bytes()[:1024])
    (world["repo"] / NAME / "config.pbtxt").write_text(config.replace("count: 1", "count: 1 "))  # to be restored
    with pytest.raises(swap.SwapError) as info:
        swap.load_version(server, world["repo"], int(broken.name), NAME, restore_config=config)
    assert info.value.serving == before and info.value.version == int(broken.name)
    assert info.value.server_error and "version " + broken.name in str(info.value)
    assert swap.serving_versions(server, NAME) == before and served_catalog(server, world) == catalog
    assert not broken.exists() and any(p.name.startswith(f"{broken.name}-failed")
                                       for p in (world["repo"] / NAME / swap.ARCHIVE).iterdir())
    assert (world["repo"] / NAME / "config.pbtxt").read_text() == config
    assert swap.next_version(world["repo"], NAME) == int(broken.name) + 1  # numbers are never reused
    # Triton keeps listing the refused version; --status says so and lines it up with the archive
    listed = {int(m["version"]): m["state"] for m in swap.server_index(server, NAME)}
    assert listed[int(broken.name)] == "UNAVAILABLE"
    status = swap.status(server, world["repo"], NAME)
    row = next(r for r in status["versions"] if r["version"] == int(broken.name))
    assert row["server"] == "UNAVAILABLE" and row["folder"].startswith(f"{broken.name}-failed-")
    assert row["agrees"] and "refused by the server and archived" in row["meaning"]
    assert status["agree"] and status["notes"] == [swap.REFUSED_STAYS_LISTED]
    served = next(r for r in status["versions"] if r["version"] == before[-1])
    assert served["server"] == "READY" and served["folder"] == "kept" and served["meaning"] == "served"


@pytest.mark.server
def test_rollback_returns_to_the_previous_version_then_refuses(world, server, swapped, monkeypatch):
    current = swap.serving_versions(server, NAME)[-1]
    # the command line is another process in real life: it has the key the server was started with, here
    # through the environment (as a deployment's secret); without it (and no key file), nothing happens
    monkeypatch.setenv("XDG_CONFIG_HOME", str(world["root"] / "no-config"))
    assert swap.main(["--rollback", "--repository", str(world["repo"]), "--url", server.grpc_url,
                      "--model-name", NAME]) == 2
    assert swap.serving_versions(server, NAME)[-1] == current
    monkeypatch.setenv("GTCREC_CONTROL_KEY", server.control_key)
    previous = max(v for v in swap.repository_versions(world["repo"], NAME) if v < current)
    assert swap.main(["--rollback", "--repository", str(world["repo"]), "--url", server.grpc_url,
                      "--model-name", NAME]) == 0
    assert swap.serving_versions(server, NAME) == [previous]
    assert current not in swap.repository_versions(world["repo"], NAME)
    if previous == 1:
        assert served_catalog(server, world) == "old"
        with pytest.raises(swap.SwapError, match="oldest"):
            swap.rollback(server, world["repo"], NAME)
        assert swap.main(["--rollback", "--repository", str(world["repo"]), "--url", server.grpc_url]) == 1
    assert swap.main(["--status", "--repository", str(world["repo"]), "--url", server.grpc_url, "--json",
                      str(world["root"] / "status.json")]) == 0
    status = json.loads((world["root"] / "status.json").read_text())
    assert status["serving"] == [previous] and any(a.startswith(f"{current}-retired") for a in status["archived"])
    assert [e["action"] for e in status["history"]][-1] == "rollback"
    assert status["agree"], status["versions"]
    assert {r["version"]: r["server"] for r in status["versions"]}[previous] == "READY"


def retrieval_repository(world, root):  # noqa: F811
    """The world's old catalog served as session encoder + HNSW index (FaissTopK), model "ann", in
    ``root/repo``."""
    from gtcrec.serving import retrieval

    model = gm.load_model(world["model_dir"])
    batch = gm.sessions_to_batch(swap.example_sessions(len(world["old_table"]), MAX_LEN), MAX_LEN)
    retrieval.trace_query(model, batch).save(str(root / "encoder.pt"))
    retrieval.save_index(retrieval.build_index(retrieval.item_vectors(model), "hnsw", hnsw_m=8, ef_search=64),
                         root / "items.faiss")
    repo = root / "repo"
    export_ensemble(old_ids(world), root / "encoder.pt", repo, max_len=MAX_LEN, k=K, name="ann",
                    instance_count=1, index=root / "items.faiss")
    assert swap.read_version(repo, 1, "ann").index["kind"] == "IndexHNSWFlat"
    return repo


@pytest.mark.server
def test_swap_on_the_retrieval_path_keeps_its_index_kind_and_serves_without_failures(world, tmp_path):
    """A version served as session encoder + HNSW index (FaissTopK) swaps to the new catalog like the exact
    graph does: a new encoder and a new index of the same kind, loaded under traffic, 0 failed, then a
    rollback; the new version answers what the swapped model ranks."""
    repo = retrieval_repository(world, tmp_path)
    with TritonServer(repo, load_models=["ann"], startup_timeout=180) as server:
        request = swap.probe_request(old_ids(world), new_ids(world))
        traffic = swap.Traffic(server, request, old_ids(world), new_ids(world), model_name="ann", pause=0.01,
                               max_requests=5000, max_seconds=120).start()
        traffic.wait_for(10)
        result = swap.swap_catalog(world["new_csv"], repo, server, world["model_dir"], world["cache"], model_name="ann")
        traffic.wait_for(len(traffic.rows) + 10)
        frame = traffic.stop()
        summary = swap.traffic_summary(frame, traffic.at(result.load.started), traffic.at(result.load.ended))
        assert result.version == 2 and result.serving == [2]
        assert summary["failed"] == 0 and summary["before_only"] and summary["after_only"] and summary["ordered"]
        settings = swap.read_version(repo, 2, "ann")
        assert settings.vocab == new_ids(world) and settings.index["kind"] == "IndexHNSWFlat"
        assert settings.index["hnsw_m"] == 8 and settings.index["ef_search"] == 64 and settings.index["items"] == 60
        # the served answer for new-event sessions is the swapped model's own top k (HNSW over 60 items finds it)
        new = new_ids(world)
        sessions = [[new[i], new[i + 1]] for i in (0, 10, 20)]
        clicks = pd.DataFrame({"session_id": np.repeat(["a", "b", "c"], 2), "talk_id": sum(sessions, []),
                               "timestamp": np.arange(6, dtype=np.int64) * 60_000})
        client = server.grpc_client()
        try:
            answer = cl.recommend(client, clicks, model_name="ann")
        finally:
            client.close()
        prepared = swap.prepare_catalog(world["new_csv"], world["cache"], old_vocab=old_ids(world), progress=False)
        swapped = swap.swapped_model(world["model_dir"], prepared.table, prepared.catalog)
        codes = [[prepared.vocab.index(t) + 3 for t in s] for s in sessions]
        scores = gm.score_sessions(swapped, codes)
        for name, session_codes, row in zip("abc", codes, scores):
            row[session_codes] = -np.inf
            expected = [prepared.vocab[c - 3] for c in np.argsort(-row, kind="stable")[:K]]
            assert set(answer[answer["session_id"] == name]["talk_id"]) == set(expected), name
        back = swap.rollback(server, repo, model_name="ann")
        assert back.to_version == 1 and back.load.serving == [1]
