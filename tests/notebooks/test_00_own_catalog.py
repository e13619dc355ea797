"""Notebook 00 (and 01) with a catalog of your own that has only some columns: only ``talk_id``
(or ``id``) and ``title`` are required, the rest is optional, extra columns are kept."""
import json

import numpy as np
import pandas as pd
import pytest

from gtcrec import data, embeddings, etl
from gtcrec.series import run_notebook

pytestmark = pytest.mark.notebooks  # its own folders, not the shared series: any xdist worker may run it

N_TALKS, N_SESSIONS = 24, 40


def own_files(root, kind: str):
    generated, _ = data.generate_catalog(N_TALKS, seed=11, id_prefix="X", id_start=100)
    ids = generated["talk_id"].tolist()
    if kind == "title_only":
        catalog = generated[["talk_id", "title"]]
    else:  # the columns of a real conference catalog
        catalog = pd.DataFrame({"id": ids, "title": generated["title"], "abstract": generated["abstract"],
                                "speakers": [f"Speaker {i}; Co-speaker {i}" for i in range(N_TALKS)],
                                "tags": generated["track"].str.lower(),
                                "recording time": [f"2025-03-{18 + i % 4}T10:00:00" for i in range(N_TALKS)]})
    rng = np.random.default_rng(0)
    rows = [(f"s{s:03d}", ids[int(rng.integers(N_TALKS))], f"2025-03-18T{9 + s // 20:02d}:{s % 20:02d}:{(j // 2) * 20:02d}")
            for s in range(N_SESSIONS) for j in range(int(rng.integers(2, 7)))]  # pairs of tied timestamps
    clicks = pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp"])
    root.mkdir(parents=True, exist_ok=True)
    catalog.to_csv(root / "catalog.csv", index=False)
    clicks.to_csv(root / "clicks.csv", index=False)
    return catalog, clicks


@pytest.mark.parametrize("kind", ["title_only", "real_world"])
def test_data_notebook_takes_a_catalog_with_only_some_columns(tmp_path, kind):
    own, clicks = own_files(tmp_path / "own", kind)
    cache = tmp_path / "cache"
    art = tmp_path / "artifacts"
    run_notebook("00-data", art, {"CATALOG_FILE": str(tmp_path / "own" / "catalog.csv"),
                                  "CLICKS_FILE": str(tmp_path / "own" / "clicks.csv"), "EMBED_CACHE": str(cache)})
    manifest = json.loads((art / "00-data" / "manifest.json").read_text())
    m = manifest["metrics"]
    assert m["spring"]["talks"] == N_TALKS and m["spring"]["sessions"] == N_SESSIONS
    assert m["spring"]["tracks"] == 0 and "cosine_same_track" not in m  # no tracks: no track comparison
    catalog = data.load_catalog(art / manifest["outputs"]["spring_catalog"])
    id_col = "talk_id" if kind == "title_only" else "id"
    assert catalog["talk_id"].tolist() == own[id_col].tolist()
    extra = [] if kind == "title_only" else ["speakers", "tags", "recording time"]
    assert list(catalog.columns) == data.CATALOG_COLUMNS + extra
    assert catalog["day"].isna().all() and catalog["track"].eq("").all()
    # the vectors are those of the text without empty fragments: the title alone for title_only
    texts = embeddings.talk_text(catalog)
    if kind == "title_only":
        assert texts == own["title"].tolist()
    else:
        assert texts == [f"{t}. {a}" for t, a in zip(own["title"], own["abstract"])]
    vectors, n_new = embeddings.embed_texts(texts, cache, progress=False)
    assert n_new == 0
    np.testing.assert_array_equal(np.load(art / manifest["outputs"]["spring_embeddings"]), vectors)
    if kind == "real_world":  # and the ETL takes it (missing days, no tracks)
        run_notebook("01-etl", art)
        etl_manifest = json.loads((art / "01-etl" / "manifest.json").read_text())
        assert etl_manifest["metrics"]["row_check_max_abs_diff"] == 0.0
        assert etl_manifest["metrics"]["n_talks"] == N_TALKS
        test = etl.read_split(art / etl_manifest["outputs"]["test"])
        assert len(test) > 0 and test["item_id-list"].map(len).min() >= 2
