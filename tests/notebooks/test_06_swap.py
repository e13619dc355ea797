"""Notebook 06 (catalog swap into a running Triton server) under papermill at small sizes."""
import pandas as pd
import pytest

from gtcrec.serving.server import server_processes

pytestmark = pytest.mark.notebooks


def test_catalog_swap_notebook(series):
    manifest = series.run("06-catalog-swap")
    m, run, params = manifest["metrics"], manifest["run"], manifest["parameters"]

    # the swap: version 2 = the new catalog, served with the old version's settings and 03's K
    swap = m["swap"]
    assert swap["previous_version"] == 1 and swap["version"] == 2
    assert swap["k_model"] == series.manifest("03-train")["metrics"]["trace_topk"] == params["K_MODEL"]
    assert swap["n_talks"] == series.manifest("00-data")["metrics"]["fall"]["talks"]
    assert swap["trace_max_score_diff"] < 1e-3

    # a client sent requests throughout: none failed, old catalog before, new catalog after, one switch
    assert m["traffic"] == {"failed": 0, "before_only": True, "after_only": True, "ordered": True}
    traffic = pd.read_csv(series.path("06-catalog-swap", "traffic_swap"))
    assert len(traffic) == run["swap_traffic"]["requests"] and traffic["ok"].all()
    assert set(traffic["catalog"]) == {"old", "new"}
    first_new = traffic.loc[traffic["catalog"] == "new", "received"].min()
    assert (traffic.loc[traffic["received"] > first_new, "catalog"] == "new").all()
    assert run["swap_traffic"]["requests_before"] > 0 and run["swap_traffic"]["requests_after"] > 0
    assert 0 < run["swap_traffic"]["switch_seconds"] <= run["swap_total_seconds"]
    assert run["swap_seconds_without_encoding"] <= run["swap_total_seconds"]
    assert m["answers_in_new_catalog"] and m["answers_exclude_clicked"]

    # bad catalog files: refused with file/row/column, nothing changed
    bad = m["bad_catalogs"]
    assert set(bad) == {"missing column", "duplicate id", "empty text", "id of the old catalog"}
    for case, result in bad.items():
        assert result["refused"] and result["error"] == "DataValidationError", case
        assert result["repository_unchanged"] and result["serving_unchanged"] and result["still_old_answers"], case
        assert ".csv" in result["message"] and "column '" in result["message"], case
    assert "row 4, column 'talk_id'" in bad["id of the old catalog"]["message"]

    # a broken version is refused and the new catalog keeps serving; rollback returns to version 1
    broken = m["broken_version"]
    assert broken["refused"] and broken["kept_serving"] and broken["serving_after"] == [2]
    assert broken["failed_requests"] == 0 and broken["answers"] == ["new"] and broken["archived"]
    assert "could not load" in run["broken_error"]
    rollback = m["rollback"]
    assert rollback["from"] == 2 and rollback["to"] == 1 and rollback["serving_after"] == [1]
    assert rollback["failed"] == 0 and rollback["before_only"] and rollback["after_only"] and rollback["ordered"]

    # the command line did the same swap in its own process
    if params["RUN_CLI"]:
        assert m["cli"]["exit_code"] == 0 and m["cli"]["serving_after"] == [m["cli"]["version"]]
        assert m["cli"]["version"] == 4  # 3 was the broken one: numbers are not reused
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
    # band at the CI size (150 test sessions, one SE of recall@10 is ~0.04): measured swapped 0.693,
    # best text similarity 0.673 (1.03x), retrained on the new event 0.827
    best_text = max(q[name]["recall@10"] for name in ("text: last click", "text: session mean",
                                                        "text: recency-weighted"))
    assert swapped >= 0.95 * best_text
    assert ratios["swapped_over_best_text_recall@10"] == pytest.approx(swapped / best_text, rel=1e-3)
    # the old event's baselines only tie on new talks: about chance (k / catalog size)
    chance = 10 / m["new_event"]["n_talks"]
    for name in ("popularity (old event)", "item-kNN (old event)"):
        assert q[name]["recall@10"] == pytest.approx(chance, rel=0.5), name
    for name, values in q.items():
        assert values["recall@10"] <= q["oracle"]["recall@10"] + 0.05, name
