import numpy as np
import pandas as pd
import pytest

from gtcrec import etl, loader


def make_loader(folder, batch_size, shuffle=False, seed=0, item_table=None):
    """The Loader as notebook 02 builds it on screen (item list only, seeded shuffle, optional join)."""
    from merlin.dataloader.ops.embeddings import EmbeddingOperator
    from merlin.dataloader.torch import Loader
    from merlin.io import Dataset

    ds = Dataset(str(folder), engine="parquet", cpu=True)
    ds.schema = ds.schema.select_by_name([etl.ITEM_LIST])
    transforms = None if item_table is None else [
        EmbeddingOperator(item_table, lookup_key=etl.ITEM_LIST, embedding_name=loader.VECTORS)]
    return Loader(ds, batch_size=batch_size, shuffle=shuffle, seed_fn=loader.shuffle_seeds(seed), transforms=transforms)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    rng = np.random.default_rng(3)
    catalog = pd.DataFrame({"talk_id": [f"T{i}" for i in range(20)]})
    rows = [(f"s{s}", f"T{int(rng.integers(0, 20))}", pd.Timestamp("2026-01-01") + pd.Timedelta(minutes=s, seconds=j))
            for s in range(200) for j in range(int(rng.integers(2, 9)))]
    clicks = pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp"])
    result = etl.run_etl(clicks, catalog, tmp_path_factory.mktemp("loader"))
    table = rng.normal(size=(23, 8)).astype(np.float32)
    return result.split_dirs["train"], table


def test_batches_are_ragged_and_complete(split):
    folder, _ = split
    expected = etl.read_split(folder)["item_id-list"]
    seen = []
    for inputs, _ in make_loader(folder, batch_size=32):
        offsets = inputs["item_id-list__offsets"].numpy()
        assert offsets[0] == 0 and offsets[-1] == len(inputs["item_id-list__values"])
        seen.extend(loader.session_lists(inputs))
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):  # unshuffled: same order as the files
        np.testing.assert_array_equal(got, want)


def test_joined_vectors_equal_table_rows(split):
    folder, table = split
    inputs, _ = next(iter(make_loader(folder, batch_size=64, item_table=table)))
    assert loader.joined_rows_match(inputs, table) == 0.0
    wrong = table + 1.0
    assert loader.joined_rows_match(inputs, wrong) == pytest.approx(1.0)


def test_shuffle_is_seeded(split):
    folder, _ = split

    def first_codes(seed):
        inputs, _ = next(iter(make_loader(folder, batch_size=16, shuffle=True, seed=seed)))
        return inputs["item_id-list__values"].numpy()

    np.testing.assert_array_equal(first_codes(5), first_codes(5))
    assert not np.array_equal(first_codes(5), first_codes(6))
