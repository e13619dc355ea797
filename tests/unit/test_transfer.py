"""The transfer check: halves of the talks, sessions cut to them, text-similarity mode, the blend, the
decision the swap reads. Tiny synthetic data from test_model's helpers.

Precision: trained once per precision (the ``precision`` fixture); why the tolerances are float32's:
tests/conftest.py.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec import baselines, transfer
from gtcrec import model as M
from gtcrec import trace as T
from gtcrec.representation import settings_for
from gtcrec.swap import swapped_model

from gtcrec.metrics import evaluate_scores, sessions_to_prefixes
from test_model import N_ITEMS, N_TOPICS, SMALL, make_sessions, make_table, write_parquet

SETTINGS = {"adapter": True, "fields": ["track"], "residual": True, "bias": True, "drop": 0.5, "skip": True,
            "gain": 5.0}


def catalog_of(n):
    return pd.DataFrame({"talk_id": [f"S{i}" for i in range(n)], "track": [f"t{i % N_TOPICS}" for i in range(n)]})


def build(schema, table, catalog, warm):
    return M.build_model(schema, table, seed=0, item_repr=settings_for(SETTINGS, catalog, warm), **SMALL)


def fit(model, folder):
    M.train(model, folder, epochs=2, batch_size=64, lr=3e-2, seed=3, output_dir=folder.parent / "out")


def trained_model(tmp_path, sessions=None):
    """``(table, model)``: the test architecture on every talk (all warm), trained on ``sessions``."""
    table, catalog = make_table(N_ITEMS, seed=0), catalog_of(N_ITEMS)
    warm = np.ones(N_ITEMS + 3, dtype=bool)
    warm[:3] = False
    model = build(M.make_schema(N_ITEMS + 3), table, catalog, warm)
    fit(model, write_parquet(make_sessions(200, seed=1) if sessions is None else sessions, tmp_path / "train"))
    return table, model


def test_halves_and_restricted_sessions():
    old, new = transfer.split_talks(10, seed=1)
    assert len(old) == 5 and len(new) == 5 and not set(old) & set(new) and set(old) | set(new) == set(range(10))
    assert list(old) == sorted(old) and list(new) == sorted(new)
    np.testing.assert_array_equal(transfer.split_talks(10, seed=1)[0], old)  # seeded
    positions = np.array([0, 2, 5])  # codes 3, 5, 8 -> 3, 4, 5
    cut = transfer.restrict([np.array([3, 4, 5, 8]), np.array([4, 6, 3]), np.array([8, 8])], positions, 13)
    assert [c.tolist() for c in cut] == [[3, 4, 5], [5, 5]]  # one click left: dropped


def test_text_similarity_mode_ranks_by_the_last_click(tmp_path, precision):
    table, model = trained_model(tmp_path)
    prefixes = make_sessions(12, seed=4)
    trained = M.score_sessions(model, prefixes)
    text = baselines.TextSimilarityBaseline(table, "last").scores(prefixes)
    assert not np.allclose(trained[:, 3:], 5.0 * text[:, 3:], atol=1e-3)  # training moved it away
    transfer.text_similarity_mode(model)
    gain = float(M._task(model).task_block.gain.detach())
    np.testing.assert_allclose(M.score_sessions(model, prefixes)[:, 3:], gain * text[:, 3:], atol=1e-4)
    with pytest.raises(ValueError, match="ItemRepresentation"):
        transfer.text_similarity_mode(M.build_model(M.make_schema(N_ITEMS + 3), table, **SMALL))


def test_transfer_check_and_the_decision_the_swap_reads(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(transfer, "CHUNK_SESSIONS", 64)  # several chunks: their counts must add up
    table, catalog = make_table(N_ITEMS, seed=0), catalog_of(N_ITEMS)
    train, valid = make_sessions(400, seed=1), make_sessions(120, seed=2)
    check = transfer.transfer_check(train, valid, table[3:], catalog, build, fit, seed=0)
    assert check["talks"] == {"old": N_ITEMS // 2, "new": N_ITEMS - N_ITEMS // 2}
    recall = check["recall@10"]
    assert check["sessions"] > 3 * 64 and set(recall) == {transfer.MODEL, transfer.BLEND, transfer.TEXT}
    assert recall[check["serves"]] == max(recall.values())  # the best of the three serves
    for name in (transfer.MODEL, transfer.BLEND):  # ties go to the simpler one, listed first
        if recall[name] == max(recall.values()):
            assert check["serves"] == name
            break
    blend = check["blend"]
    assert blend["text_weight"] in transfer.BLEND_WEIGHTS and blend["text_decay"] in transfer.TEXT_NAMES
    assert recall[transfer.BLEND] == max(check["blend_recall@10"].values())
    assert len(check["blend_recall@10"]) == len(transfer.BLEND_WEIGHTS) * 2
    # the text-similarity side is the text baseline on the new half, recomputed here
    _, new = transfer.split_talks(N_ITEMS, 0)
    cut = transfer.restrict([*train, *valid], new, N_ITEMS + 3)
    prefixes, targets = sessions_to_prefixes(cut)
    new_table = np.zeros((len(new) + 3, table.shape[1]), dtype=np.float32)
    new_table[3:] = table[3:][new]
    expected = {name: evaluate_scores(baseline.scores(prefixes), targets, exclude=prefixes)["recall@10"]
                for name, baseline in baselines.text_baselines(new_table).items() if name != "text: session mean"}
    assert check["text_recall@10"] == pytest.approx(expected)
    assert check["recall@10"][transfer.TEXT] == pytest.approx(max(expected.values()))  # the better text mode
    assert transfer.TEXT_NAMES[check["text_decay"]] == max(expected, key=expected.get)

    # the decision saved beside a model decides what swapped_model gives
    _, model = trained_model(tmp_path, train)
    folder = M.save_model(model, tmp_path / "model")
    assert transfer.serves(folder) == transfer.MODEL  # no check saved: the model serves
    new_table, prefixes = make_table(20, seed=7), [np.array([3, 4]), np.array([10, 11, 12])]
    as_trained = M.score_sessions(swapped_model(folder, new_table, catalog_of(20)), prefixes)
    transfer.save_decision(folder, {**check, "serves": transfer.TEXT})
    assert transfer.serves(folder) == transfer.TEXT
    for decay, mode in ((0.0, "last"), (transfer.RECENCY_DECAY, "recency")):  # the text mode the check chose
        transfer.save_decision(folder, {**check, "serves": transfer.TEXT, "text_decay": decay})
        text_mode = swapped_model(folder, new_table, catalog_of(20))
        gain = float(M._task(text_mode).task_block.gain.detach())
        text = baselines.TextSimilarityBaseline(new_table, mode).scores(prefixes)
        np.testing.assert_allclose(M.score_sessions(text_mode, prefixes)[:, 3:], gain * text[:, 3:], atol=1e-4)
    for decay, mode in ((0.0, "last"), (transfer.RECENCY_DECAY, "recency")):  # a blend: the model + w x text
        transfer.save_decision(folder, {**check, "serves": transfer.BLEND,
                                        "blend": {"text_weight": 2.0, "text_decay": decay}})
        assert transfer.serves(folder) == transfer.BLEND
        blended = M.score_sessions(swapped_model(folder, new_table, catalog_of(20)), prefixes)
        text = baselines.TextSimilarityBaseline(new_table, mode).scores(prefixes)
        np.testing.assert_allclose(blended[:, 3:], as_trained[:, 3:] + 2.0 * text[:, 3:], atol=1e-4)
    measured = M.score_sessions(swapped_model(folder, new_table, catalog_of(20), decided=False), prefixes)
    np.testing.assert_allclose(measured, as_trained, atol=1e-5)  # decided=False: the model as trained
    with pytest.raises(ValueError, match="unknown choice"):
        transfer.serve_as_decided(model, {"serves": "popularity"})


def test_a_blend_is_one_product_in_the_trace_and_can_be_switched_off(tmp_path, precision):
    table, model = trained_model(tmp_path)
    model.eval()
    prefixes = make_sessions(12, seed=4)
    alone = M.score_sessions(model, prefixes)
    rep = M.item_embedding(model)
    rep.set_text_blend(3.0, transfer.RECENCY_DECAY)
    text = baselines.TextSimilarityBaseline(table, "recency").scores(prefixes)
    np.testing.assert_allclose(M.score_sessions(model, prefixes)[:, 3:], alone[:, 3:] + 3.0 * text[:, 3:], atol=1e-4)
    assert rep.weight.shape == (N_ITEMS + 3, 2 * rep.embedding_dim + 1) == (N_ITEMS + 3, rep.output_dim)
    # the serving trace carries the blend: its top-k are the blended scores' top-k
    batch = M.sessions_to_batch(prefixes, int(model.max_sequence_length), pad=True)
    traced = T.trace_topk(model, batch, k=5)
    T.check_traced(traced, model, batch)
    with torch.no_grad():
        top_scores, _ = traced(batch)
    expected = np.sort(alone[:, 3:] + 3.0 * text[:, 3:], axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(top_scores.numpy(), expected, atol=1e-4)
    rep.set_text_blend(0.0)  # off: the model alone again, the output table as before
    np.testing.assert_allclose(M.score_sessions(model, prefixes), alone, atol=1e-5)
    assert rep.weight.shape == (N_ITEMS + 3, rep.embedding_dim + 1)
    for weight, decay in ((-1.0, 0.0), (1.0, 1.0), (float("nan"), 0.0)):
        with pytest.raises(ValueError, match="text blend"):
            rep.set_text_blend(weight, decay)


def test_the_served_row_names_what_the_check_chose():
    from gtcrec.swap import SWAPPED, served_row

    assert served_row({}) == served_row({"serves": transfer.MODEL}) == SWAPPED
    assert served_row({"serves": transfer.TEXT, "text_decay": transfer.RECENCY_DECAY}) == "text: recency-weighted"
    blend = {"serves": transfer.BLEND, "blend": {"text_weight": 4.0, "text_decay": 0.0}}
    assert served_row(blend) == f"{SWAPPED} + 4 x text: last click"
