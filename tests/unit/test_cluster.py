"""The ETL on a 2-worker Dask cluster (gtcrec.cluster) against the single-process path (gtcrec.etl.run_etl).

A small generated log (3,000 sessions in 4 parquet files, timestamps rounded to a minute so that clicks of
a session tie, a catalog that lacks some clicked talks) goes through both paths; every split must hold the
same sessions with the same codes, lists and first times, and the counts must agree.
"""
import numpy as np
import pandas as pd
import pytest

from gtcrec import cluster, etl
from gtcrec.data.generator import generate_catalog

N_TALKS, N_SESSIONS, PER_PART = 200, 3000, 800


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    catalog, latent = generate_catalog(N_TALKS, seed=1)
    info = cluster.write_clicks_partitioned(root / "clicks", catalog, latent, N_SESSIONS, seed=3,
                                            sessions_per_part=PER_PART, time_resolution_s=60)
    known = catalog.iloc[:N_TALKS - 10].reset_index(drop=True)  # clicks on the last 10 talks are unknown
    return root, known, info


@pytest.fixture(scope="module")
def both(log):
    from merlin.core.utils import Serial

    root, catalog, info = log
    clicks = pd.concat([pd.read_parquet(f) for f in info["files"]], ignore_index=True)
    with Serial():  # no Dask client: the single-process path of notebook 01
        reference = etl.run_etl(clicks, catalog, root / "single")
    dask_cluster, client = cluster.local_cluster(n_workers=2, memory_limit="1GiB",
                                                 local_directory=root / "dask-space")
    try:
        assert len(client.scheduler_info()["workers"]) == 2
        distributed = cluster.run_etl_on_cluster(root / "clicks", catalog, root / "cluster", client)
    finally:
        cluster.close(dask_cluster, client)
    return reference, distributed, clicks, catalog


def test_partitioned_log_is_written_part_by_part(log):
    root, _, info = log
    assert [p.name for p in info["files"]] == [f"part_{i:05d}.parquet" for i in range(4)]
    parts = [pd.read_parquet(p) for p in info["files"]]
    assert [p["session_id"].nunique() for p in parts] == [800, 800, 800, 600]
    ids = pd.concat([p["session_id"] for p in parts])
    assert ids.nunique() == N_SESSIONS and sum(len(p) for p in parts) == info["clicks"]
    assert not set(parts[0]["session_id"]) & set(parts[1]["session_id"])
    assert (parts[0]["timestamp"].dt.second == 0).all()  # rounded to the minute: tied clicks
    again = cluster.write_clicks_partitioned(root / "again", *generate_catalog(N_TALKS, seed=1), 900, seed=3,
                                             sessions_per_part=800, time_resolution_s=60)
    pd.testing.assert_frame_equal(pd.read_parquet(again["files"][0]), parts[0])  # seeded per part


def test_two_workers_give_the_same_splits_as_one_process(both):
    reference, distributed, _, _ = both
    report = cluster.compare_etl(reference, distributed)
    assert report["equal"], report
    for name in etl.SPLITS:
        one, two = cluster.sorted_split(reference.split_dirs[name]), cluster.sorted_split(distributed.split_dirs[name])
        assert len(one) > 0 and len(one) == len(two)
        np.testing.assert_array_equal(one["session_id"].to_numpy(), two["session_id"].to_numpy())
        np.testing.assert_array_equal(one["ts-first"].to_numpy(), two["ts-first"].to_numpy())
        for a, b in zip(one[etl.ITEM_LIST], two[etl.ITEM_LIST]):
            np.testing.assert_array_equal(a, b)
        assert two["session_id"].is_unique  # no session was cut in two by a partition boundary
    assert len(list(distributed.split_dirs["train"].glob("*.parquet"))) > 1  # written by the workers, in parts


def test_counts_and_codes_agree(both):
    reference, distributed, clicks, catalog = both
    assert {k: distributed.counts[k] for k in reference.counts} == reference.counts
    assert distributed.counts["unknown_clicks_dropped"] == int((~clicks["talk_id"].isin(catalog["talk_id"])).sum()) > 0
    assert distributed.counts["sessions"] == sum(distributed.counts[f"{s}_sessions_in"] for s in etl.SPLITS)
    talks = list(catalog["talk_id"]) + ["NOT-A-TALK"]
    np.testing.assert_array_equal(etl.encode_talk_ids(distributed.workflow_dir, talks),
                                  etl.encode_talk_ids(reference.workflow_dir, talks))


def test_split_bounds_follow_split_by_time():
    assert cluster.split_bounds(2990) == {"train": (0, 2392), "valid": (2392, 2691), "test": (2691, 2990)}
    assert cluster.split_bounds(10, 0.0, 0.0) == {"train": (0, 10), "valid": (10, 10), "test": (10, 10)}


def test_compare_finds_a_changed_list(both, tmp_path):
    reference, distributed, _, _ = both
    frame = etl.read_split(distributed.split_dirs["test"])
    frame.at[0, etl.ITEM_LIST] = np.asarray(frame.at[0, etl.ITEM_LIST])[::-1].copy()
    (tmp_path / "test").mkdir()
    frame.to_parquet(tmp_path / "test" / "part_0.parquet")
    changed = etl.EtlResult(distributed.workflow_dir, {**distributed.split_dirs, "test": tmp_path / "test"},
                            distributed.counts)
    report = cluster.compare_etl(reference, changed)
    assert not report["equal"] and report["splits"]["test"]["differences"] == [f"column {etl.ITEM_LIST} differs"]
