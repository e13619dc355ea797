"""Data-parallel training (gtcrec.ddp): 2 processes under torchrun with gloo, against one process.

The data is the CI size of the series (gtcrec.series.SMALL: 400 talks, 4,000 sessions)
from the generator, through the ETL of notebook 01; the model is notebook 04's (GPT-2, causal LM, the item
representation with fields, warm residuals, bias and the last-click skip). The item table stands in for
the text vectors: the talks' latent vectors projected to 384 dimensions, plus noise (no text encoder here).

Each of the 2 ranks trains with batch 64 (a global batch of 128, notebook 03's), for one epoch: what is
checked here is the mechanics (DDP wrapping, disjoint parts that cover the split, ranks in step, unequal
shards). The quality band, 2 ranks against one process, is notebook 08's (tests/notebooks/
test_08_09_scale_out.py), which trains both on the same split; it was also held here until the CI's
12-minute budget on 2 cores needed the minute.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gtcrec import ddp, etl, metrics
from gtcrec import model as M
from gtcrec.data.generator import generate_catalog, generate_sessions
from gtcrec.representation import DEFAULT_SETTINGS, settings_for, warm_codes
from gtcrec.series import SMALL

N_TALKS, N_SESSIONS = SMALL["00-data"]["N_TALKS"], SMALL["00-data"]["N_SESSIONS"]
EPOCHS, BATCH, LR, SEED, WORLD = 1, 128, 3e-3, 42, 2
REPRESENTATION = DEFAULT_SETTINGS  # notebook 04's item representation


def stand_in_table(latent, seed=0):
    rng = np.random.default_rng(seed)
    z = latent.z @ rng.normal(size=(latent.z.shape[1], 384)) + 0.3 * rng.normal(size=(len(latent.z), 384))
    return etl.item_table((z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from merlin.core.utils import Serial

    root = tmp_path_factory.mktemp("ddp")
    catalog, latent = generate_catalog(N_TALKS, seed=1)
    clicks = generate_sessions(catalog, latent, N_SESSIONS, seed=2)
    with Serial():
        result = etl.run_etl(clicks, catalog, root / "etl")
    table = stand_in_table(latent)
    train_sessions = metrics.read_sessions(result.split_dirs["train"])
    build = dict(d_model=64, n_layer=2, n_head=4, max_len=20, seed=SEED,
                 item_repr=settings_for(REPRESENTATION, catalog, warm_codes(train_sessions, len(table))))
    prefixes, targets = metrics.sessions_to_prefixes(metrics.read_sessions(result.split_dirs["test"]))
    return {"root": root, "result": result, "table": table, "build": build, "train": train_sessions,
            "prefixes": prefixes, "targets": targets}


@pytest.fixture(scope="module")
def distributed(setup):
    report = ddp.train_distributed(setup["result"].split_dirs["train"], setup["table"], setup["root"] / "ddp",
                                   nproc=WORLD, build=setup["build"], epochs=EPOCHS, batch_size=BATCH // WORLD,
                                   lr=LR, seed=SEED, timeout_s=600)
    return report


def out_dir(report):
    return Path(report["model"]).parent


def test_two_gloo_ranks_wrap_the_model_in_ddp(distributed):
    report = distributed
    assert report["world_size"] == WORLD and report["backend"] == "gloo"
    assert [r["wrapped"] for r in report["ranks"]] == ["DistributedDataParallel"] * WORLD
    assert [r["rank"] for r in report["ranks"]] == list(range(WORLD))
    assert len(set(report["steps_per_rank"])) == 1 and report["steps_per_rank"][0] > 0  # in step: no rank waits
    saved = json.loads((out_dir(report) / "ddp.json").read_text())
    assert saved["steps_per_rank"] == report["steps_per_rank"]
    assert (out_dir(report) / "model" / "gtcrec_config.json").exists()  # rank 0 saved it


def test_ranks_train_on_disjoint_parts_that_cover_the_split(distributed, setup):
    report, out = distributed, out_dir(distributed)
    n_train = len(setup["train"])
    assert sum(report["partition_rows"]) == n_train and max(report["partition_rows"]) - min(report["partition_rows"]) <= 1
    division = ddp.data_division(report, out)
    assert division["partitions_disjoint"] and division["rows_match"]  # the rows measured in the batches
    assert division["rows"] == [n_train] * EPOCHS
    for epoch in range(EPOCHS):
        assert sum(report["rows_per_rank"][r][epoch] for r in range(WORLD)) == n_train


def test_unequal_shards_take_the_same_number_of_steps(setup, tmp_path):
    """Three files for two ranks: rank 0 reads two, rank 1 one. Both must stop after the same number of
    steps and log at the same steps (else a collective waits forever: the launch is killed at the timeout)."""
    frame = etl.read_split(setup["result"].split_dirs["train"])
    folder = tmp_path / "three"
    folder.mkdir()
    for i, idx in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[idx].to_parquet(folder / f"part_{i}.parquet", index=False)
    (folder / "schema.pbtxt").write_bytes((setup["result"].split_dirs["train"] / "schema.pbtxt").read_bytes())
    spec = ddp.write_spec(tmp_path / "spec.pkl", folder, setup["table"], tmp_path / "out",
                          dict(d_model=16, n_layer=1, n_head=2, max_len=20), epochs=2, batch_size=64,
                          fingerprints=False)
    ddp.launch(spec, nproc=WORLD, timeout_s=240)
    report = json.loads((tmp_path / "out" / "ddp.json").read_text())
    batches = [r["batches_per_epoch"] for r in report["ranks"]]
    assert batches[0] > batches[1]  # unequal shards
    assert report["partitions_per_rank"][0][0] == [0, 1] and report["partitions_per_rank"][1][0] == [2]
    assert report["steps_per_rank"] == [2 * batches[1]] * WORLD


def test_sample_split_draws_rows_in_order_with_the_schema(setup, tmp_path):
    src = setup["result"].split_dirs["train"]
    frame = etl.read_split(src)
    sample = ddp.sample_split(src, tmp_path / "sample", 500, seed=3)
    got = etl.read_split(sample)
    assert len(got) == 500 and (sample / "schema.pbtxt").read_bytes() == (src / "schema.pbtxt").read_bytes()
    ids = got["session_id"].tolist()
    assert ids == sorted(set(ids)) and set(ids) <= set(frame["session_id"])  # drawn rows, in the split's order
    again = ddp.sample_split(src, tmp_path / "again", 500, seed=3)
    assert etl.read_split(again)["session_id"].tolist() == ids  # the same seed draws the same rows
    assert etl.read_split(ddp.sample_split(src, tmp_path / "other", 500, seed=4))["session_id"].tolist() != ids
    merged = got.merge(frame, on="session_id", suffixes=("", "_split"))
    assert all(list(a) == list(b) for a, b in zip(merged[etl.ITEM_LIST], merged[etl.ITEM_LIST + "_split"]))
    assert ddp.sample_split(src, tmp_path / "all", len(frame), seed=3) == src  # not smaller: the split itself
    assert ddp.sample_split(src, tmp_path / "none", None) == src
    with pytest.raises(ValueError, match="n_rows"):
        ddp.sample_split(src, tmp_path / "zero", 0)
