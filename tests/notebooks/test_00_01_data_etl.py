"""Notebooks 00 (data, embeddings) and 01 (ETL) under papermill at small sizes."""
import json

import numpy as np
import pandas as pd
import pytest

from gtcrec import data, embeddings, etl
from gtcrec.series import SMALL, run_notebook

pytestmark = [pytest.mark.notebooks, pytest.mark.xdist_group("notebooks")]  # one xdist worker runs them all, in order


def test_data_notebook(series):
    manifest = series.run("00-data")
    m = manifest["metrics"]
    assert m["spring"]["talks"] == SMALL["00-data"]["N_TALKS"] == m["fall"]["talks"]
    assert m["spring"]["sessions"] > 0.9 * SMALL["00-data"]["N_SESSIONS"]
    assert 3 <= m["spring"]["mean_session_length"] <= 12
    # the text embeddings carry topic signal
    assert m["cosine_same_track"] > m["cosine_other_track"] + 0.1
    spring = pd.read_parquet(series.path("00-data", "spring_catalog"))
    fall = pd.read_parquet(series.path("00-data", "fall_catalog"))
    assert not set(spring["talk_id"]) & set(fall["talk_id"])
    assert manifest["parameters"]["SEED"] == 42


def test_etl_notebook_rows_equal_codes(series):
    manifest = series.run("01-etl")
    m = manifest["metrics"]
    assert m["row_check_max_abs_diff"] == 0.0 and m["codes_are_rows"] is True
    assert m["table_rows"] == m["n_talks"] + 3 and m["table_dim"] == 384
    assert m["train_sessions"] > 5 * m["test_sessions"] > 0
    # independent of the notebook: every talk's Categorify code indexes its own embedding
    catalog = data.load_catalog(series.path("00-data", "spring_catalog"))
    table = np.load(series.path("01-etl", "item_table"))
    vectors, n_new = embeddings.embed_catalog(catalog, series.cache, progress=False)
    assert n_new == 0  # the notebook filled the cache
    codes = etl.encode_talk_ids(series.path("01-etl", "workflow"), list(catalog["talk_id"]))
    np.testing.assert_array_equal(table[codes], vectors)
    train = etl.read_split(series.path("01-etl", "train"))
    assert train["item_id-list"].map(len).max() <= manifest["parameters"]["MAX_LEN"]


def test_rerun_gives_the_same_manifests(series, tmp_path):
    series.run("01-etl")
    for stem in ("00-data", "01-etl"):
        run_notebook(stem, tmp_path, series.params(stem))
        first, second = series.manifest(stem), json.loads((tmp_path / stem / "manifest.json").read_text())
        first.pop("run"), second.pop("run")
        assert first == second, stem
