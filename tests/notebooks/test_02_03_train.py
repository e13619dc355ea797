"""Notebooks 02 (dataloader) and 03 (training and evaluation) under papermill at small sizes."""
import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec import data, metrics, model as m, transfer
from gtcrec.live import adapt
from gtcrec.representation import DEFAULT_SETTINGS, settings_for

pytestmark = pytest.mark.notebooks


def test_dataloader_notebook(series):
    manifest = series.run("02-dataloader")
    assert manifest["metrics"]["joined_max_abs_diff"] == 0.0
    assert manifest["metrics"]["vector_dim"] == 384
    speed = manifest["run"]["throughput"]
    # measured 71,000 and 58,000 sessions/s at this size: a loader an order of magnitude slower fails
    assert speed["codes only"]["sessions_per_s"] > 5000 and speed["codes + joined vectors"]["sessions_per_s"] > 5000
    assert speed["codes + joined vectors"]["sessions"] == speed["codes only"]["sessions"] > 0


def test_training_beats_baselines_and_stays_below_the_oracle(series):
    manifest = series.run("03-train")
    test = manifest["metrics"]["test"]
    ours = test[manifest["metrics"]["model_key"]]
    assert manifest["metrics"]["frozen_table_unchanged"] is True
    # the item representation wins the validation comparison clearly (0.795 vs 0.625 measured)
    selection = manifest["metrics"]["selection"]
    assert manifest["metrics"]["chosen"] == "item representation"
    assert selection["item representation"]["recall@10"] >= selection["frozen text table"]["recall@10"] + 0.05
    # one schedule, no epoch trained twice: the loser stopped after SELECTION_EPOCHS, the winner's run is the model
    params = manifest["parameters"]
    curves = manifest["metrics"]["validation_recall@10_per_epoch"]
    assert len(curves["frozen text table"]) == params["SELECTION_EPOCHS"] < params["EPOCHS"]
    assert len(curves["item representation"]) == params["EPOCHS"]
    assert curves["item representation"][params["SELECTION_EPOCHS"] - 1] == selection["item representation"]["recall@10"]
    assert curves["item representation"][-1] > curves["item representation"][0]  # it went on learning
    # bands at the CI size (400 test sessions, one SE of recall@10 is ~0.02); measured: model 0.800,
    # learned ids 0.785, item-kNN 0.780, best text similarity 0.618, oracle 0.853
    for text in ("text: last click", "text: session mean", "text: recency-weighted"):
        assert ours["recall@10"] >= 1.15 * test[text]["recall@10"], text
    assert ours["recall@10"] >= 0.95 * test["item-knn"]["recall@10"]
    assert ours["recall@10"] >= 0.95 * test["learned ids"]["recall@10"]
    assert ours["recall@10"] >= 0.85 * test["oracle"]["recall@10"]
    # co-occurrence in the residuals is kept only with a gain of more than one SE on validation
    # (measured at this size: alpha 0.1, 0.8275 -> 0.835, 1.7 SE)
    cooc = manifest["metrics"]["cooccurrence"]
    recall_by_alpha = {float(a): r for a, r in cooc["valid_recall@10"].items()}
    assert set(recall_by_alpha) == {0.0, *adapt.WARM_COOCCURRENCE_WEIGHTS}
    if cooc["alpha"]:
        assert cooc["standard_errors"] > adapt.WARM_GUARD_Z
        assert recall_by_alpha[cooc["alpha"]] == max(recall_by_alpha.values()) > recall_by_alpha[0.0]
    else:
        assert cooc["standard_errors"] <= adapt.WARM_GUARD_Z
    # the transfer check ran on held-out talks, and its decision lies beside the saved model
    check = manifest["metrics"]["transfer"]
    assert check["sessions"] > 50
    assert check["talks"]["old"] + check["talks"]["new"] == series.manifest("01-etl")["metrics"]["n_talks"]
    recall = check["recall@10"]
    assert set(recall) == {transfer.MODEL, transfer.BLEND, transfer.TEXT}
    assert recall[check["serves"]] == max(recall.values())  # the best of the model, a blend and text similarity
    assert recall[transfer.BLEND] == max(check["blend_recall@10"].values())
    assert transfer.serves(series.path("03-train", "model")) == check["serves"]
    # learning works: far above popularity and random
    assert ours["recall@10"] > 3 * test["popularity"]["recall@10"]
    assert ours["recall@10"] > 5 * test["random"]["recall@10"]
    # the oracle knows the generating process: nothing beats it by more than sampling noise
    for name, values in test.items():
        assert values["recall@10"] <= test["oracle"]["recall@10"] + 0.03, name
    for name in test:
        r10, r20, n10 = test[name]["recall@10"], test[name]["recall@20"], test[name]["ndcg@10"]
        assert 0 <= n10 <= r10 <= r20 <= 1, name
    assert manifest["metrics"]["trace_max_score_diff"] < 1e-4


def test_saved_trace_matches_saved_model(series):
    manifest = series.run("03-train")
    traced = torch.jit.load(str(series.path("03-train", "torchscript")))
    model = m.load_model(series.path("03-train", "model"))
    sessions = metrics.read_sessions(series.path("01-etl", "test"))[:32]
    batch = m.sessions_to_batch(sessions, manifest["parameters"]["MAX_LEN"])
    with torch.no_grad():
        scores, codes = traced(batch)
    assert codes.shape == (32, manifest["metrics"]["trace_topk"])
    assert (codes >= 3).all()
    eager = m.score_sessions(model, sessions)
    np.testing.assert_array_equal(codes[:, 0].numpy(), eager.argmax(1))
    popularity = np.load(series.path("03-train", "popularity"))
    assert popularity[:3].sum() == 0 and popularity.sum() == sum(
        len(s) for s in metrics.read_sessions(series.path("01-etl", "train")))


def test_notebook_model_is_the_package_model(series):
    """Notebook 03 builds its T4R model on screen; the swap and the tests use gtcrec.model.build_model.
    Both must be the same model: the package's, given the saved model's settings and weights, scores alike."""
    series.run("03-train")
    saved = m.load_model(series.path("03-train", "model"))
    settings = m.describe(saved)
    catalog = data.load_catalog(series.path("00-data", "spring_catalog"))
    table = np.load(series.path("01-etl", "item_table"))
    train = metrics.read_sessions(series.path("01-etl", "train"))
    warm = np.bincount(np.concatenate(train), minlength=len(table)) > 0
    warm[:3] = False
    package = m.build_model(m.load_schema(series.path("01-etl", "train")), table,
                            item_repr=settings_for(settings["item_repr"], catalog, warm),
                            **{k: settings[k] for k in ("arch", "masking", "d_model", "n_layer", "n_head",
                                                        "max_len", "dropout")})
    package.load_state_dict(saved.state_dict())  # strict: the same modules with the same shapes
    assert m.describe(package) == settings
    sessions = metrics.read_sessions(series.path("01-etl", "test"))[:64]
    np.testing.assert_allclose(m.score_sessions(package, sessions), m.score_sessions(saved, sessions), atol=1e-5)


def test_notebook_settings_are_the_package_defaults(series):
    """Benchmarks and tests build notebook 03's model from ``representation.DEFAULT_SETTINGS``; the
    notebook's default ``REPRESENTATION`` (run here unchanged: the CI size does not set it) is the same."""
    params = series.run("03-train")["parameters"]
    assert params["REPRESENTATION"] == DEFAULT_SETTINGS
