"""Notebook 07 (catalog swap into a running Triton server) under papermill at small sizes."""
import pandas as pd
import pytest

from gtcrec import transfer
from gtcrec.swap import served_row
from gtcrec.serving.server import server_processes

pytestmark = [pytest.mark.notebooks, pytest.mark.xdist_group("notebooks")]  # one xdist worker runs them all, in order


def test_catalog_swap_notebook(series):
    manifest = series.run("07-catalog-swap")
    m, run, params = manifest["metrics"], manifest["run"], manifest["parameters"]

    # the swap: version 2 = the new catalog, served with the old version's settings and 04's K
    swap = m["swap"]
    assert swap["previous_version"] == 1 and swap["version"] == 2
    assert swap["k_model"] == series.manifest("04-item-representation")["metrics"]["trace_topk"] == params["K_MODEL"]
    assert swap["n_talks"] == series.manifest("00-data")["metrics"]["fall"]["talks"]
    assert swap["trace_max_score_diff"] < 1e-3
    # the new event as notebooks 09 and 10 read it: 00's fall event, catalog and clicks
    new_catalog = pd.read_parquet(series.path("07-catalog-swap", "new_catalog"))
    fall = pd.read_parquet(series.path("00-data", "fall_catalog"))
    assert sorted(new_catalog["talk_id"]) == sorted(fall["talk_id"]) and len(new_catalog) == swap["n_talks"]
    new_clicks = pd.read_parquet(series.path("07-catalog-swap", "new_clicks"))
    assert len(new_clicks) == len(pd.read_parquet(series.path("00-data", "fall_clicks")))

    # a client sent requests throughout: none failed, old catalog before, new catalog after, one switch
    assert m["traffic"] == {"failed": 0, "before_only": True, "after_only": True, "ordered": True}
    traffic = pd.read_csv(series.path("07-catalog-swap", "traffic_swap"))
    assert len(traffic) == run["swap_traffic"]["requests"] and traffic["ok"].all()
    assert set(traffic["catalog"]) == {"old", "new"}
    first_new = traffic.loc[traffic["catalog"] == "new", "received"].min()
    assert (traffic.loc[traffic["received"] > first_new, "catalog"] == "new").all()
    assert run["swap_traffic"]["requests_before"] > 0 and run["swap_traffic"]["requests_after"] > 0
    assert 0 < run["swap_traffic"]["switch_seconds"] <= run["swap_total_seconds"]
    assert run["swap_seconds_without_encoding"] <= run["swap_total_seconds"]
    assert m["answers_in_new_catalog"] and m["answers_exclude_clicked"]

    # before / after: the old event's session gets the new catalog's fallback once the swap is served
    assert m["old_session_after_swap"] == {"new_catalog": True, "fallback": True}

    # rollback returns to version 1 with no failed request, and the old answer comes back exactly.
    # (Bad catalog files and a broken version are checked against a running server in
    # tests/unit/test_swap.py and tests/unit/test_catalog.py; the gtcrec-swap command in
    # tests/unit/test_swap.py and tests/unit/test_serve.py.)
    rollback = m["rollback"]
    assert rollback["from"] == 2 and rollback["to"] == 1 and rollback["serving_after"] == [1]
    assert rollback["failed"] == 0 and rollback["before_only"] and rollback["after_only"] and rollback["ordered"]
    assert rollback["old_session_answer_restored"] is True
    assert m["server_stopped"] and not server_processes(run.get("server_id", "none"))

    # quality on the new event: every method on the same test sessions, ratios present
    q, ratios = m["quality"], m["ratios"]
    n = {values["n"] for values in q.values()}
    assert len(n) == 1 and n.pop() == m["new_event"]["test_sessions"] > 0
    for key in ("swapped_over_retrained_recall@10", "swapped_over_retrained_ndcg@10",
                "swapped_over_oracle_recall@10", "swapped_over_untrained_recall@10"):
        assert ratios[key] is not None and ratios[key] > 0, key
    swapped = q["swapped (zero-shot)"]["recall@10"]
    assert ratios["swapped_over_retrained_recall@10"] == pytest.approx(
        swapped / q["retrained on the new event"]["recall@10"], rel=1e-3)
    # the swapped model learned something that transfers: far above what never saw a new talk
    assert swapped > 3 * q["popularity (old event)"]["recall@10"]
    # untrained, the model ranks exactly by text similarity to the last click (its skip path)
    assert q["untrained, new table"]["recall@10"] == pytest.approx(q["text: last click"]["recall@10"], abs=1e-9)
    # bands at the CI size: the lowest ratio of four runs (seeds 42, 1, 2; seed 42 in float32 and bfloat16;
    # docs/testing.md) less two SE of recall@10, rounded down. On the 150 test sessions one SE is ~0.037 (5.3 % of
    # it): swapped / best text 0.925-1.010 keeps 0.85 (two SE below 0.925 is 0.83), served / best text 1.009-1.089
    # gives 0.90. On every session of the new event (1,500, one SE 1.9 %): swapped 0.977-1.005 gives 0.93,
    # served 1.033-1.050 gives 0.99.
    best_text = max(q[name]["recall@10"] for name in ("text: last click", "text: session mean",
                                                        "text: recency-weighted"))
    assert swapped >= 0.85 * best_text
    # the zero-shot methods on every session of the new event (they saw none of its clicks): same band
    every = m["every_session"]
    assert every["sessions"] > 5 * m["new_event"]["test_sessions"] and m["new_event"]["every_sessions"] == every["sessions"]
    every_best = max(every["quality"][name]["recall@10"] for name in ("text: last click", "text: session mean",
                                                                     "text: recency-weighted"))
    assert every["quality"]["swapped (zero-shot)"]["recall@10"] >= 0.93 * every_best
    assert ratios["swapped_over_best_text_every_session_recall@10"] == pytest.approx(
        every["quality"]["swapped (zero-shot)"]["recall@10"] / every_best, rel=1e-3)
    assert ratios["swapped_over_best_text_recall@10"] == pytest.approx(swapped / best_text, rel=1e-3)
    # what the swap serves is notebook 04's transfer decision
    decision = series.manifest("04-item-representation")["metrics"]["transfer"]
    assert m["served"] == served_row(decision) and m["served"] in q and m["served"] in every["quality"]
    if decision["serves"] == transfer.BLEND:  # the blend's row is named by its weight and text mode
        assert m["served"] == (f"swapped (zero-shot) + {decision['blend']['text_weight']:g} x "
                               f"{transfer.TEXT_NAMES[decision['blend']['text_decay']]}")
        assert q[m["served"]]["recall@10"] >= 0.90 * best_text
        assert every["quality"][m["served"]]["recall@10"] >= 0.99 * every_best
    assert ratios["served_over_best_text_recall@10"] == pytest.approx(q[m["served"]]["recall@10"] / best_text, rel=1e-3)
    # the old event's baselines only tie on new talks: about chance (k / catalog size)
    chance = 10 / m["new_event"]["n_talks"]
    for name in ("popularity (old event)", "item-kNN (old event)"):
        assert q[name]["recall@10"] == pytest.approx(chance, rel=0.5), name
    for name, values in q.items():
        assert values["recall@10"] <= q["oracle"]["recall@10"] + 0.05, name
