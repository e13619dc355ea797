"""The whole series on your own event, as `make run CATALOG=... CLICKS=... NEW_CATALOG=... NEW_CLICKS=...` runs
it (``gtcrec.series.run_series`` with files), on files written the way users write them: CSV, a catalog of
only ``id,title`` (``id`` is the talk id's accepted alias; some titles repeated, as in real catalogs), a new
event with ``id,title,abstract``, clicks with ISO-8601 timestamps with an offset and a column the series does
not use. Tiny sizes: this is the smoke test of the path, the generated run holds the bands. The same
invariants as the generated run are asserted on the manifests; the new event's clicks are then left out,
and notebook 07 runs without them while the series skips notebook 10 and says why."""
import json

import numpy as np
import pandas as pd
import pytest

from gtcrec import data
from gtcrec.series import notebook_stems, run_series

pytestmark = [pytest.mark.notebooks, pytest.mark.server, pytest.mark.xdist_group("own-event")]  # its own folder

TINY = {
    "03-train": {"EPOCHS": 1},
    "04-item-representation": {"TRANSFER_EPOCHS": 1},
    "06-serve": {"LOAD_TEST_SECONDS": 0.5, "CONCURRENCY": [2], "SESSIONS_PER_REQUEST": [10]},
    "07-catalog-swap": {"EPOCHS_RETRAINED": 1},
    "08-scale-out": {"LOG_SESSIONS": 1000, "SESSIONS_PER_PART": 500, "DDP_SESSIONS": None},
    "09-fleet": {"LOAD_SECONDS": 0.5},
    "10-live-event": {"FRACTIONS": [0.5], "BUDGET_S": 5.0},
    "11-large-catalogs": {"N_ITEMS": 2000, "QUERIES": 50, "EF_SEARCH": [32], "LATENCY_SECONDS": 0.3},
}


def user_files(folder):
    """Two events from the generator (its structure makes a model worth training), written as a user would."""
    events = data.generate_events(seed=5, n_talks=120, n_sessions=1200, n_sessions_new_event=600)
    old, new = events.spring, events.fall
    catalog = pd.DataFrame({"id": old.catalog["talk_id"], "title": old.catalog["title"]})
    catalog.loc[:4, "title"] = "Poster session"  # the same text five times: equal vectors, equal scores
    new_catalog = new.catalog[["talk_id", "title", "abstract"]].rename(columns={"talk_id": "id"})

    def as_user_clicks(clicks):
        stamps = pd.to_datetime(clicks["timestamp"]).dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")
        return pd.DataFrame({"session_id": clicks["session_id"], "talk_id": clicks["talk_id"],
                             "timestamp": stamps.map(pd.Timestamp.isoformat), "device": "web"})

    folder.mkdir(parents=True)
    files = {"catalog": folder / "catalog.csv", "clicks": folder / "clicks.csv",
             "new_catalog": folder / "new_catalog.csv", "new_clicks": folder / "new_clicks.csv"}
    catalog.to_csv(files["catalog"], index=False)
    as_user_clicks(old.clicks).to_csv(files["clicks"], index=False)
    new_catalog.to_csv(files["new_catalog"], index=False)
    as_user_clicks(new.clicks).to_csv(files["new_clicks"], index=False)
    return files, catalog, new_catalog


@pytest.fixture(scope="module")
def own_event(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-event")
    files, catalog, new_catalog = user_files(root / "files")
    params = {stem: dict(p) for stem, p in TINY.items()}
    for stem in ("00-data", "07-catalog-swap", "10-live-event", "09-fleet"):
        params.setdefault(stem, {})["EMBED_CACHE"] = str(root / "cache")
    art = root / "artifacts"
    times = run_series("small", art, files=files, parameters=params, progress_every=None)
    manifests = {stem: json.loads((art / stem / "manifest.json").read_text()) for stem in notebook_stems()}
    return {"root": root, "art": art, "files": files, "catalog": catalog, "new_catalog": new_catalog,
            "times": times, "manifests": manifests, "params": params}


def test_every_notebook_runs_on_your_files(own_event):
    m = {stem: manifest["metrics"] for stem, manifest in own_event["manifests"].items()}
    assert list(own_event["times"]) == notebook_stems()
    # 00: your catalog, no generated event, no oracle
    outputs = own_event["manifests"]["00-data"]["outputs"]
    assert m["00-data"]["spring"]["talks"] == len(own_event["catalog"]) and "fall_catalog" not in outputs
    assert not any("oracle" in name for name in outputs)
    # 01-04: the table rows are the codes, the loader joins them, the text table stays frozen
    assert m["01-etl"]["row_check_max_abs_diff"] == 0.0 and m["01-etl"]["codes_are_rows"] is True
    assert m["02-dataloader"]["joined_max_abs_diff"] == 0.0
    assert m["03-train"]["frozen_table_unchanged"] is True and "oracle" not in m["03-train"]["test"]
    assert m["04-item-representation"]["catalog_in_vocabulary_order"] is True
    assert m["04-item-representation"]["ratios"]["model_over_oracle_recall@10"] is None
    # 05-06: the export answers unknown talks by the fallback; served, nothing failed, the server stopped
    assert m["05-ensemble"]["reference_fallback_sessions"] >= 1
    assert m["05-ensemble"]["popularity_codes"] == len(own_event["catalog"]) + 3
    assert all(row["errors"] == 0 for row in own_event["manifests"]["06-serve"]["run"]["load_test"])
    assert m["06-serve"]["server_stopped"] is True and m["06-serve"]["widget"]["clicked_returned"] == 0
    # 07: your new event swapped in under traffic, measured on your new clicks (no oracle ratio)
    assert m["07-catalog-swap"]["traffic"] == {"failed": 0, "before_only": True, "after_only": True, "ordered": True}
    new = pd.read_parquet(own_event["art"] / own_event["manifests"]["07-catalog-swap"]["outputs"]["new_catalog"])
    assert sorted(new["talk_id"]) == sorted(own_event["new_catalog"]["id"])
    assert m["07-catalog-swap"]["ratios"]["swapped_over_retrained_recall@10"] > 0
    assert not m["07-catalog-swap"]["ratios"].get("swapped_over_oracle_recall@10")
    # 08-09: the cluster's ETL equals one process's; the fleet swapped your new event with nothing failed
    assert m["08-scale-out"]["etl"]["equal"] is True
    assert m["09-fleet"]["fleet_load"]["errors"] == 0 and m["09-fleet"]["fleet_swap"]["failed"] == 0
    # 10: your new event's clicks replayed and logged, one cycle, no failed request
    live = m["10-live-event"]
    assert live["log"]["clicks_sent"] == live["log"]["clicks_sent_and_logged"] > 0
    assert live["traffic"]["failed"] == 0 and len(live["cycles"]) == 1
    # 11: the retrieval graph answers like the full product, up to talks of equal score (the repeated title)
    served = m["11-large-catalogs"]["served"]
    assert served["same_up_to_ties"] is True and served["different"] == 0


def test_without_the_new_events_clicks(own_event):
    """07 swaps and says it cannot measure quality; the series skips 10 and says why."""
    files = {k: v for k, v in own_event["files"].items() if k != "new_clicks"}
    times = run_series("small", own_event["art"], only=["07-catalog-swap", "10-live-event"], files=files,
                       parameters=own_event["params"], progress_every=None)
    assert list(times) == ["07-catalog-swap"]
    manifest = json.loads((own_event["art"] / "07-catalog-swap" / "manifest.json").read_text())
    assert manifest["metrics"]["quality"] is None and "new_clicks" not in manifest["outputs"]
    assert manifest["metrics"]["traffic"]["failed"] == 0
