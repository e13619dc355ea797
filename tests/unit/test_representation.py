"""The item representation inside T4R: frozen text part, warm-only residuals, the last-click skip,
swap, trace and save/load. Tiny synthetic data from test_model's helpers.

Precision: trained once per precision (the ``precision`` fixture); why the tolerances are float32's:
tests/conftest.py.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec import baselines
from gtcrec import model as M
from gtcrec import trace as T
from gtcrec.representation import ItemRepresentation, LastClickSkip, catalog_fields, settings_for, warm_codes

from test_model import DIM, N_ITEMS, N_TOPICS, SMALL, make_sessions, make_table, write_parquet

SETTINGS = {"adapter": True, "fields": ["track", "day"], "residual": True, "bias": True, "drop": 0.5,
            "skip": True, "gain": 10.0}


def make_catalog(n_items, prefix="S"):
    return pd.DataFrame({"talk_id": [f"{prefix}{i}" for i in range(n_items)],
                         "track": [f"track {i % N_TOPICS}" for i in range(n_items)],
                         "day": [1 + i % 3 for i in range(n_items)]})


@pytest.fixture(scope="module")
def world(tmp_path_factory, precision):  # trained once per precision (tests/conftest.py)
    root = tmp_path_factory.mktemp("repr")
    train = make_sessions(384, seed=1)
    # talks 3..7 (codes) never clicked in training: cold
    train = [s[s > 7] if (s > 7).sum() >= 2 else np.array([8, 12], dtype=np.int64) for s in train]
    table, catalog = make_table(N_ITEMS, seed=0), make_catalog(N_ITEMS)
    warm = np.bincount(np.concatenate(train), minlength=N_ITEMS + 3) > 0
    warm[:3] = False
    model = M.build_model(M.make_schema(N_ITEMS + 3), table, seed=0,
                          item_repr=settings_for(SETTINGS, catalog, warm), **SMALL)
    untrained_scores = M.score_sessions(model, make_sessions(16, seed=5))
    M.train(model, write_parquet(train, root / "train"), epochs=3, batch_size=64, lr=3e-2, seed=3,
            output_dir=root / "out")
    return {"model": model.cpu().eval(), "table": table, "catalog": catalog, "warm": warm,
            "train": train, "root": root, "untrained_scores": untrained_scores}


def test_it_sits_where_t4r_keeps_its_table(world):
    model = world["model"]
    rep = M.item_embedding(model)
    assert isinstance(rep, ItemRepresentation)
    task = M._task(model)
    assert task.item_embedding_table is rep  # the tied output reads the same module
    assert isinstance(task.task_block, LastClickSkip)
    assert task.task_block._source[0] is M._input_block(model).categorical_module
    assert tuple(rep.weight.shape) == (N_ITEMS + 3, DIM + 1)  # item vectors + the bias column
    described = M.describe(model)  # read from the modules, as build_model takes it
    assert {k: v for k, v in described["item_repr"].items() if k != "gain"} == {
        k: v for k, v in SETTINGS.items() if k != "gain"}
    assert described["item_repr"]["gain"] != SETTINGS["gain"]  # trained
    assert {k: described[k] for k in SMALL} == SMALL and described["arch"] == "gpt2" and described["pretrained"]
    plain = M.describe(M.build_model(M.make_schema(13), make_table(10, 0), arch="xlnet", masking="mlm", **SMALL))
    assert plain["item_repr"] is None and plain["arch"] == "xlnet" and plain["masking"] == "mlm"
    assert {k: plain[k] for k in SMALL} == SMALL and plain["n_codes"] == 13 and plain["pretrained"]


def test_training_leaves_the_text_unchanged_and_cold_talks_without_residual(world):
    rep = M.item_embedding(world["model"])
    assert torch.equal(M.text_table(world["model"]), torch.from_numpy(world["table"]))
    assert not rep.text.requires_grad
    cold = ~world["warm"]
    assert cold[3:8].all() and world["warm"][8:].any()
    assert torch.count_nonzero(rep.residual[torch.from_numpy(cold)]) == 0
    assert torch.count_nonzero(rep.item_bias[torch.from_numpy(cold)]) == 0
    # warm talks did learn something, and so did the shared parts
    assert torch.count_nonzero(rep.residual[torch.from_numpy(world["warm"])]) > 0
    assert torch.count_nonzero(rep.adapter) > 0 and torch.count_nonzero(rep.fields["track"].weight) > 0
    # row 0 of a field table (absent, or a value the training catalog never had) stays no vector
    assert torch.count_nonzero(rep.fields["track"].weight[0]) == 0 and torch.count_nonzero(rep.fields["day"].weight[0]) == 0


def test_untrained_model_ranks_by_text_similarity_to_the_last_click(world):
    prefixes = make_sessions(16, seed=5)
    text = baselines.TextSimilarityBaseline(world["table"], "last").fit([]).scores(prefixes)
    untrained = world["untrained_scores"]
    finite = np.isfinite(text)
    np.testing.assert_allclose(untrained[finite], 10.0 * text[finite], atol=1e-4)


def test_eval_is_deterministic_and_uses_warm_residuals(world):
    model, prefixes = world["model"], make_sessions(8, seed=6)
    a, b = M.score_sessions(model, prefixes), M.score_sessions(model, prefixes)
    np.testing.assert_array_equal(a, b)  # no random drop outside training
    rep = M.item_embedding(model)
    with torch.no_grad():
        full = rep.table()
        without = full - rep.residual * rep.warm[:, None]
    assert not torch.allclose(full, without)


def test_swap_replaces_the_text_part_only(world, tmp_path):
    model = M.load_model(M.save_model(world["model"], tmp_path / "saved"))
    rep = M.item_embedding(model)
    adapter, track = rep.adapter.detach().clone(), rep.fields["track"].weight.detach().clone()
    gain = float(M._task(model).task_block.gain.detach())
    n_new = 25
    new_table = make_table(n_new, seed=9)
    new_catalog = make_catalog(n_new, prefix="F")
    new_catalog.loc[0, "track"] = "a track the old event never had"
    M.swap_item_table(model, new_table, fields=catalog_fields(new_catalog, rep.field_names))
    assert M.n_codes(model) == n_new + 3 and rep.num_embeddings == n_new + 3
    assert torch.equal(rep.text, torch.from_numpy(new_table))
    assert torch.equal(rep.adapter, adapter) and torch.equal(rep.fields["track"].weight, track)
    assert float(M._task(model).task_block.gain.detach()) == gain
    assert torch.count_nonzero(rep.residual) == 0 and torch.count_nonzero(rep.item_bias) == 0
    assert rep.field_codes[3, 0] == 0  # an unknown track gets no field vector
    assert M._task(model).target_dim == n_new + 3
    prefixes = [np.array([3, 4], dtype=np.int64), np.array([10, 11, 12], dtype=np.int64)]
    scores = M.score_sessions(model, prefixes)
    assert scores.shape == (2, n_new + 3) and np.isfinite(scores[:, 3:]).all()
    # the trace of the swapped model agrees with the eager one
    traced = T.trace_topk(model, M.sessions_to_batch(prefixes, 20, pad=True), k=10)
    others = [np.array([5, 6, 7, 8], dtype=np.int64), np.array([27], dtype=np.int64), np.arange(3, 23)]
    check = T.check_traced(traced, model, M.sessions_to_batch(others, 20, pad=True))
    assert check["max_score_diff"] < 1e-4


def test_save_load_keeps_the_scores(world, tmp_path):
    prefixes = make_sessions(8, seed=8)
    loaded = M.load_model(M.save_model(world["model"], tmp_path / "m"))
    np.testing.assert_allclose(M.score_sessions(loaded, prefixes), M.score_sessions(world["model"], prefixes),
                               atol=1e-5)


def test_bad_settings_are_refused():
    table = make_table(10, seed=0)
    with pytest.raises(ValueError, match="causal"):
        M.build_model(M.make_schema(13), table, arch="xlnet", masking="mlm", item_repr={"skip": True}, **SMALL)
    with pytest.raises(ValueError, match="drop"):
        ItemRepresentation(table, drop=1.0)
    with pytest.raises(ValueError, match="field 'track'"):
        ItemRepresentation(table, fields={"track": ["a", "b"]})


def test_catalog_fields_handle_absent_and_float_values():
    catalog = pd.DataFrame({"talk_id": ["a", "b", "c"], "day": [2.0, np.nan, 3.0], "track": ["x", None, " "],
                            "level": pd.Series([pd.NA, "Advanced", ""], dtype="string")})
    fields = catalog_fields(catalog, ["track", "day", "level", "format"])
    assert fields == {"track": ["", "", "", "x", "", ""], "day": ["", "", "", "2", "", "3"],
                      "level": ["", "", "", "", "Advanced", ""]}
    nullable_day = pd.DataFrame({"talk_id": ["a", "b"], "day": pd.array([1, None], dtype="Int64")})
    assert catalog_fields(nullable_day, ["day"]) == {"day": ["", "", "", "1", ""]}
    assert settings_for(None, catalog) is None
    # warm codes: clicked in training, never a reserved code
    assert warm_codes([np.array([3, 5]), np.array([5, 0])], 7).tolist() == [False, False, False, True, False, True, False]


def test_skip_recency_weights_and_a_decay_below_zero():
    skip = LastClickSkip(4, 8)
    assert torch.equal(skip.recency_weights(3), torch.eye(3))  # decay 0 at the start: the last click only
    with torch.no_grad():
        skip.decay.fill_(0.5)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]])
    torch.testing.assert_close(skip.recency_weights(3), expected)
    with torch.no_grad():
        skip.decay.fill_(-0.2)
    weights = skip.recency_weights(3)
    assert torch.equal(weights, torch.eye(3))  # used as 0 below 0 ...
    weights.sum().backward()
    assert float(skip.decay.grad) == pytest.approx(2.0)  # ... but its gradient still flows: it can come back
