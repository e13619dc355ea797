"""Notebooks 08 (Dask ETL, DDP training) and 09 (a Triton fleet behind HAProxy) under papermill at the CI size."""
import pandas as pd
import pytest

from gtcrec.serving.server import server_processes

pytestmark = [pytest.mark.notebooks, pytest.mark.xdist_group("notebooks")]  # one xdist worker runs them all, in order

# The 2-process model against the 1-process one trained in the notebook with the same budget (DDP_EPOCHS),
# recall@10 on the same test sessions (150 at the CI size: one SE is ~0.03). Same model, same global batch
# and epochs; the batches differ.
DDP_BAND = 0.08


def test_scale_out_notebook(series):
    manifest = series.run("08-scale-out")
    m, run, params = manifest["metrics"], manifest["run"], manifest["parameters"]

    # the ETL on a 2-worker cluster: the same sessions, codes and splits as one process
    etl = m["etl"]
    assert params["N_WORKERS"] == 2
    assert etl["equal"] and etl["counts_equal"] and all(etl["splits"].values())
    assert set(etl["splits"]) == {"train", "valid", "test"} and min(etl["sessions"].values()) > 0
    assert etl["clicks"] > params["LOG_SESSIONS"]  # every generated session has clicks

    # DDP: 2 ranks, disjoint data that covers the sessions drawn for it (DDP_SESSIONS of the training split:
    # all of it at the CI size), a model that scores like one process's
    ddp = m["ddp"]
    assert ddp["ranks"] == 2 and ddp["partitions_disjoint"] and ddp["rows_match_partitions"]
    drawn = ddp["train_sessions"] if params["DDP_SESSIONS"] is None else min(params["DDP_SESSIONS"], ddp["train_sessions"])
    assert ddp["ddp_sessions"] == drawn and ddp["rows_per_epoch"] == [drawn] * ddp["epochs"]
    assert abs(ddp["recall@10"] - ddp["single_process_recall@10"]) <= DDP_BAND, ddp
    popularity = series.manifest("04-item-representation")["metrics"]["test"]["popularity"]["recall@10"]
    assert ddp["single_process_recall@10"] > 2 * popularity and ddp["recall@10"] > 2 * popularity  # both learned

    # the rates notebook 09's sizing reads: positive, from this run
    rates = m["rates"]
    assert rates["etl_clicks_per_s"] > 0 and rates["ddp_sessions_per_s"] > 0 and rates["clicks_per_session"] > 1
    assert (rates["workers"], rates["processes"]) == (params["N_WORKERS"], params["N_PROCS"])


def test_fleet_notebook(series):
    manifest = series.run("09-fleet")
    m, run = manifest["metrics"], manifest["run"]

    # the fleet: load spread over both replicas, no error
    load = m["fleet_load"]
    assert load["errors"] == 0 and load["requests"] > 0
    assert len(load["per_replica"]) == 2 and all(n > 0 for n in load["per_replica"].values())

    # the fleet swap through the balancer: nothing failed, no answer mixed two catalogs, old before, new after,
    # every replica on the new version when the swap returned
    swap = m["fleet_swap"]
    assert swap["failed"] == 0 and set(swap["answers"]) == {"old", "new"}
    assert swap["before_only"] and swap["after_only"]
    assert swap["version"] == 2 and list(swap["serving"].values()) == [[2], [2]]
    traffic = pd.read_csv(series.path("09-fleet", "traffic_fleet_swap"))
    assert traffic["ok"].all() and set(traffic["catalog"]) == {"old", "new"}
    assert run["fleet_swap"]["requests"] == len(traffic)

    # one live cycle for the fleet: every session the app sent through the balancer read once from the shared
    # log, nothing failed, every replica on one version (the cycle's when it loaded one)
    cycle = m["fleet_cycle"]
    assert cycle["failed"] == 0 and cycle["requests"] > 0
    assert cycle["sessions_read"] == cycle["sessions_sent"] == manifest["parameters"]["CYCLE_SESSIONS"]
    expected = [cycle["version"]] if cycle["published"] else [2]
    assert list(cycle["serving"].values()) == [expected, expected]

    # rollback, fleet-wide, under the same traffic
    back = m["fleet_rollback"]
    assert back["failed"] == 0 and set(back["answers"]) <= {"old", "new"} and back["after_only"]
    assert back["to_version"] == 1 and list(back["serving"].values()) == [[1], [1]]
    assert m["fleet_stopped"] and len(run["replica_ids"]) == 2
    assert not any(server_processes(server_id) for server_id in run["replica_ids"])

    # on paper: a peak that needs more than this machine, one spare
    assert m["paper"]["replicas"] >= 2
