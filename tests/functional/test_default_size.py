"""The functional tier (`make test-full`): the series at its DEFAULT size, with bands around the figures the
docs quote for it (docs/results.md, docs/live-event.md). It needs the artifacts of `make run`: it reads
them from $GTCREC_FULL_ARTIFACTS when that is set (the Makefile sets it after `make run`), and otherwise
runs the whole series at the default size first (about 15-20 minutes on 2 cores). Nothing here is skipped.

Bands: one standard error of recall@10 is about 0.007 on the 5,000 test sessions of the spring event and
about 0.015 on the 1,000 of the fall event; training on CPU is deterministic on one machine but not across
machines, so each band is about three of those SEs around the figure measured, or the issue's target
where that is the claim."""
import json
import os
from pathlib import Path

import pytest

from gtcrec.series import run_series

pytestmark = [pytest.mark.functional, pytest.mark.server]  # the series it may run starts servers


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    given = os.environ.get("GTCREC_FULL_ARTIFACTS")
    if given:
        root = Path(given)
        assert (root / "11-large-catalogs" / "manifest.json").is_file(), f"{root} holds no complete default-size run"
        return root
    root = tmp_path_factory.mktemp("default-size")
    run_series("default", root)
    return root


def manifest(root: Path, stem: str) -> dict:
    return json.loads((root / stem / "manifest.json").read_text())


def test_the_series_ran_at_the_default_size(artifacts):
    data = manifest(artifacts, "00-data")
    assert data["parameters"]["N_TALKS"] == 5000 and data["parameters"]["N_SESSIONS"] == 50000
    assert manifest(artifacts, "01-etl")["metrics"]["test_sessions"] == 5000


def test_warm_model_beats_every_simple_method(artifacts):
    test = manifest(artifacts, "04-item-representation")["metrics"]["test"]
    ours = test["T4R, item representation"]["recall@10"]
    # measured 0.404 and 0.397 against learned ids 0.356, item-kNN 0.336, best text 0.216, oracle 0.442
    assert 0.38 <= ours <= 0.43
    assert ours >= 1.05 * max(test["learned ids"]["recall@10"], test["item-knn"]["recall@10"])  # the target
    assert ours >= 1.6 * test["text: last click"]["recall@10"]
    assert ours <= test["oracle"]["recall@10"] + 0.01


def test_the_stock_model_is_reported_as_measured(artifacts):
    """docs/results.md: stock T4R over the frozen text table 0.307, below learned ids and item-kNN."""
    stock = manifest(artifacts, "03-train")["metrics"]["test"]
    ours = stock["T4R, frozen text table"]["recall@10"]
    assert 0.285 <= ours <= 0.33
    assert ours < stock["learned ids"]["recall@10"]  # the loss the docs report
    served = manifest(artifacts, "04-item-representation")["metrics"]["test"]["T4R, item representation"]["recall@10"]
    assert served >= 1.15 * ours  # measured 1.29 x


def test_the_swap_serves_at_least_text_similarity(artifacts):
    m = manifest(artifacts, "07-catalog-swap")["metrics"]
    assert m["traffic"]["failed"] == 0 and m["rollback"]["failed"] == 0
    ratios = m["ratios"]
    # measured on every session of the fall event: served 1.08 x, swapped 1.06 x the best text baseline
    assert ratios["served_over_best_text_every_session_recall@10"] >= 1.0
    assert ratios["swapped_over_best_text_every_session_recall@10"] >= 0.97
    assert 0.6 <= ratios["served_over_retrained_recall@10"] <= 0.8  # measured 0.69


def test_the_live_event_learns_from_its_clicks(artifacts):
    m = manifest(artifacts, "10-live-event")["metrics"]
    assert m["traffic"]["failed"] == 0
    zero, retrained = m["zero_shot"], m["retrained"]
    served = [o["served"] for o in m["offline"]]
    # docs/live-event.md: after 10 % the cycles serve 0.76 x retrained (1.16 x zero-shot), after 50 % 0.90 x
    assert all(s >= zero - 0.02 for s in served), served
    assert served[-1] >= zero + 0.05 and served[-1] >= 0.85 * retrained, (zero, served, retrained)
    assert m["cycles"][-1]["published"], m["cycles"][-1]["reason"]


def test_the_retrieval_path_at_a_million_items(artifacts):
    """docs/serving.md: at 1,000,000 items HNSW reached recall@10 0.964 / 0.981 at efSearch 64 / 128 in
    0.22 / 0.32 ms per query, built in 105 s; exact search took 64 ms; the flat index was exact; served from
    Triton after a swap under traffic."""
    m = manifest(artifacts, "11-large-catalogs")
    assert m["metrics"]["same_top10_share"]["flat"] == 1.0 and m["metrics"]["served"]["same_up_to_ties"]
    large = m["metrics"]["large"]
    assert large["items"] == 1_000_000
    by_ef = {row["efSearch"]: row for row in large["sweep"]}
    assert by_ef[128]["recall@10 vs exact"] >= 0.95  # the target
    assert by_ef[128]["p50 ms"] <= 10 and large["encoder_p50_ms"] + by_ef[128]["p50 ms"] <= 10
    assert large["exact_p50_ms"] >= 10 * by_ef[128]["p50 ms"]
    assert m["run"]["hnsw_build_seconds"] <= 600  # the target: 10 minutes
    # served: the million items swapped into the running server under traffic (1,636 requests, 0 failed, one
    # switch), answering as the notebook's search does; one session 3.08 ms p50 against the 10 ms target
    big = m["metrics"]["large_served"]
    assert big["items"] == 1_000_000 and big["swap"]["failed"] == 0 and big["swap"]["ordered"]
    assert big["swap"]["before_only"] and big["swap"]["after_only"] and big["same_as_offline_share"] == 1.0
    assert big["p50_ms"] <= 10
