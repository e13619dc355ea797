import numpy as np
import pandas as pd
import pytest

from gtcrec import etl


def make_clicks(n_sessions=120, n_talks=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        start = pd.Timestamp("2026-03-01") + pd.Timedelta(minutes=int(s * 7))  # session s starts s-th
        for j in range(int(rng.integers(1, 30))):
            rows.append((f"u{s:04d}", f"T{int(rng.integers(0, n_talks))}", start + pd.Timedelta(seconds=30 * j)))
    clicks = pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp"])
    return clicks.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # any order


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    catalog = pd.DataFrame({"talk_id": [f"T{i}" for i in range(30)]})
    clicks = make_clicks()
    clicks.loc[0, "talk_id"] = "NOT-IN-CATALOG"
    out = tmp_path_factory.mktemp("etl")
    result = etl.run_etl(clicks, catalog, out, max_len=20)
    return catalog, clicks, result


def test_item_table_reserves_three_rows():
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = etl.item_table(vectors)
    assert table.shape == (7, 3)
    assert not table[:3].any()
    np.testing.assert_array_equal(table[3:], vectors)


def test_vocabulary_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicate talk ids"):
        etl.vocabulary(pd.DataFrame({"talk_id": ["A", "B", "A"]}))


def test_codes_follow_catalog_order(processed):
    catalog, _, result = processed
    codes = etl.encode_talk_ids(result.workflow_dir, list(catalog["talk_id"]) + ["unknown"])
    np.testing.assert_array_equal(codes, np.r_[np.arange(len(catalog)) + 3, 2])


def test_sessions_sorted_sliced_and_filtered(processed):
    catalog, clicks, result = processed
    code_of = {t: i + 3 for i, t in enumerate(catalog["talk_id"])}
    numbered = etl.number_sessions(clicks[clicks["talk_id"].isin(code_of)])
    for split in etl.SPLITS:
        frame = etl.read_split(result.split_dirs[split])
        assert frame["item_id-list"].map(len).between(2, 20).all()
        for _, row in frame.head(15).iterrows():
            expected = numbered[numbered["session_id"] == row["session_id"]].sort_values("ts")["talk_id"].map(code_of)
            np.testing.assert_array_equal(row["item_id-list"], expected.to_numpy()[-20:])  # the last 20, in time order


def test_split_is_by_time_and_disjoint(processed):
    _, _, result = processed
    frames = {s: etl.read_split(result.split_dirs[s]) for s in etl.SPLITS}
    assert frames["train"]["ts-first"].max() <= frames["valid"]["ts-first"].min()
    assert frames["valid"]["ts-first"].max() <= frames["test"]["ts-first"].min()
    ids = [set(f["session_id"]) for f in frames.values()]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    assert result.counts["unknown_clicks_dropped"] == 1


def test_schema_tags_for_transformers4rec(processed):
    from merlin.schema import Tags
    from merlin.io import Dataset

    schema = Dataset(str(processed[2].split_dirs["train"]), engine="parquet", cpu=True).schema
    assert schema.select_by_tag(Tags.ITEM_ID).column_names == ["item_id-list"]
    col = schema["item_id-list"]
    assert Tags.CATEGORICAL in col.tags and Tags.LIST in col.tags
    assert col.int_domain.max == 30 + 2


def test_filter_and_click_order_are_named_functions():
    import nvtabular as nvt

    workflow = etl.build_workflow(pd.Series(["A", "B"], name="talk_id"), "/tmp/gtcrec-test-cat")
    node = etl.find_node(workflow.output_node, type(workflow.output_node.op))
    assert node.op.f is etl.at_least_two_items
    assert etl.find_node(workflow.output_node, nvt.ops.LambdaOp).op.f is etl.click_position
    assert etl.find_node(workflow.output_node, nvt.ops.Groupby).op.sort_cols == [etl.CLICK_POSITION]


def test_click_position_numbers_clicks_by_time_then_talk_id_text():
    frame = pd.DataFrame({"session_id": [1, 0, 0, 0, 1], "ts": [9, 5, 5, 2, 9], "talk_id": ["b", "c", "a", "z", "a"]},
                         index=[10, 11, 12, 13, 14])
    got = etl.click_position(frame["ts"], frame)
    # order: (0, 2, z) (0, 5, a) (0, 5, c) (1, 9, a) (1, 9, b)
    assert got.tolist() == [4, 2, 1, 0, 3] and got.index.tolist() == [10, 11, 12, 13, 14]


def test_tied_clicks_come_out_in_talk_id_order_whatever_the_input_order(tmp_path):
    catalog = pd.DataFrame({"talk_id": ["T2", "T10", "T1", "T3"]})  # codes 3, 4, 5, 6
    rows = [(f"u{s}", t, pd.Timestamp("2026-03-01") + pd.Timedelta(minutes=s))
            for s in range(10) for t in ["T3", "T1", "T10", "T2"]]  # four clicks at one time
    clicks = pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp"])
    for seed in (0, 1):
        result = etl.run_etl(clicks.sample(frac=1.0, random_state=seed), catalog, tmp_path / str(seed))
        for split in etl.SPLITS:
            lists = etl.read_split(result.split_dirs[split])["item_id-list"]
            assert len(lists) and all(list(x) == [5, 4, 3, 6] for x in lists)  # T1 < T10 < T2 < T3 as text
