"""Tied timestamps: ONE click order (time, then talk id text) on the ETL path and the serving path.

Real logs have many clicks with the same timestamp. The ETL (NVTabular workflow) and serving's
``SessionizeClicks`` both order clicks with ``gtcrec.order.click_order``; these tests
check that the same clicks, in any order, give the same model input on both paths.
"""
import numpy as np
import pandas as pd
import pytest

from gtcrec import data, etl
from gtcrec.serving import client as cl
from gtcrec.serving import operators as ops
from gtcrec.serving import parity

VOCAB = ["S30", "S1", "S2", "S10", "é9", "S100"]  # catalog order differs from text order on purpose


def test_text_rank_orders_like_python_str_and_treats_str_and_bytes_alike():
    ids = ["S30", "S1", "é9", "S2", "S1", "S10"]
    ranks = ops.text_rank(ids)
    assert ranks.dtype == np.int64
    assert [ids[i] for i in np.argsort(ranks, kind="stable")] == sorted(ids)
    assert ranks[1] == ranks[4]  # equal ids, equal ranks
    np.testing.assert_array_equal(ops.text_rank([s.encode() for s in ids]), ranks)
    np.testing.assert_array_equal(ops.text_rank(np.array(ids, dtype=object)), ranks)
    assert len(ops.text_rank([])) == 0


def test_click_order_sorts_by_session_time_then_talk_text():
    sessions = np.array([1, 0, 0, 0, 1, 0])
    times = np.array([5, 7, 3, 7, 5, 7])
    talks = np.array(["b", "c", "z", "a", "a", "b"], dtype=object)
    order = ops.click_order(sessions, times, ops.text_rank(talks))
    assert [(sessions[i], times[i], talks[i]) for i in order] == [
        (0, 3, "z"), (0, 7, "a"), (0, 7, "b"), (0, 7, "c"), (1, 5, "a"), (1, 5, "b")]


def tied_request(seed: int, n_sessions: int = 40):
    """Clicks with few distinct times per session (many ties), repeats and an unknown talk."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        for _ in range(int(rng.integers(2, 12))):
            rows.append((f"s{s}", VOCAB[int(rng.integers(0, len(VOCAB)))] if rng.random() > 0.05 else "??",
                         1_000 * int(rng.integers(0, 3))))
    return pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp"])


def sessionized(op, frame):
    out = op.sessionize(frame["session_id"].to_numpy(object), frame["talk_id"].to_numpy(object),
                        frame["timestamp"].to_numpy(np.int64))
    values, offsets = out[f"{ops.ITEM_LIST}__values"], out[f"{ops.ITEM_LIST}__offsets"]
    return {key: values[offsets[row]:offsets[row + 1]].tolist()
            for key, row in zip(out[ops.SESSIONS], out[ops.MODEL_ROW]) if row >= 0}


def test_serving_input_does_not_depend_on_the_order_clicks_arrive_in():
    op = ops.SessionizeClicks(VOCAB, max_len=5)
    clicks = tied_request(0)
    first = sessionized(op, clicks)
    assert len(first) >= 35
    for seed in range(1, 6):
        assert sessionized(op, clicks.sample(frac=1.0, random_state=seed)) == first
    # and it is the rule: by time, then talk id text; the last max_len known clicks
    code = {t: i + ops.FIRST_CODE for i, t in enumerate(VOCAB)}
    for key, frame in clicks.groupby("session_id"):
        known = frame[frame["talk_id"].isin(code)].sort_values(["timestamp", "talk_id"])
        want = known["talk_id"].map(code).tolist()[-5:]
        assert first.get(key.encode(), []) == want, key


class RequestOrderTies(ops.SessionizeClicks):
    """The behaviour before the rule: ties kept the request order."""

    @property
    def text_ranks(self):
        return np.zeros(self.n_codes, dtype=np.int64)


@pytest.fixture(scope="module")
def tied_series(tmp_path_factory):
    """A generated event whose clocks tick every 10 minutes, through notebook 00's and 01's path:
    written, read back with load_clicks, then the ETL."""
    root = tmp_path_factory.mktemp("ties")
    event = data.generate_events(7, n_talks=80, n_sessions=600, n_sessions_new_event=10,
                                 time_resolution_s=600).spring
    paths = data.write_event(event, root / "00")
    catalog = data.load_catalog(paths["catalog"])
    clicks, _ = data.load_clicks(paths["clicks"], catalog)
    result = etl.run_etl(clicks, catalog, root / "01", max_len=20)
    return catalog, clicks, result


def test_generated_log_has_many_tied_timestamps(tied_series):
    _, clicks, _ = tied_series
    tied = clicks.duplicated(["session_id", "timestamp"], keep=False)
    assert tied.mean() > 0.5, tied.mean()
    assert (clicks["timestamp"].astype("int64") % (600 * 10**9) == 0).all()


@pytest.mark.parametrize("split", etl.SPLITS)
def test_etl_lists_equal_serving_input_for_every_session_with_tied_timestamps(tied_series, split):
    catalog, clicks, result = tied_series
    vocab = etl.vocabulary(catalog).tolist()
    processed = etl.read_split(result.split_dirs[split])
    numbered = etl.number_sessions(clicks)  # how notebook 01 keeps the raw test clicks
    raw = numbered[numbered["session_id"].isin(set(processed["session_id"]))][["session_key", "talk_id", "timestamp"]]
    raw = raw.rename(columns={"session_key": "session_id"})
    link = parity.link_sessions(raw, processed)
    lists = dict(zip(processed["session_id"], processed["item_id-list"]))
    key_to_list = {k: lists[i] for k, i in zip(link["session_key"], link["session_id"])}
    n = len(processed)
    assert n >= 40
    broken = 0
    for seed in range(3):  # as clicks might arrive: in any order
        request = cl.request_arrays(raw.sample(frac=1.0, random_state=seed))
        got = parity.preprocessing_parity(ops.SessionizeClicks(vocab, max_len=20), request, key_to_list)
        assert got == {"sessions": n, "equal": n, "unpaired": 0, "parity": True}, got
        padded = parity.preprocessing_parity(ops.SessionizeClicks(vocab, max_len=20, pad=True), request, key_to_list)
        assert padded["parity"], padded
        broken += n - parity.preprocessing_parity(RequestOrderTies(vocab, max_len=20), request, key_to_list)["equal"]
    assert broken > n  # without the rule, ties in request order: parity fails for many sessions


def test_etl_output_does_not_depend_on_the_order_of_its_input(tied_series, tmp_path):
    catalog, clicks, result = tied_series
    shuffled = etl.run_etl(clicks.sample(frac=1.0, random_state=3), catalog, tmp_path, max_len=20)
    for split in etl.SPLITS:
        a, b = etl.read_split(result.split_dirs[split]), etl.read_split(shuffled.split_dirs[split])
        assert a["session_id"].tolist() == b["session_id"].tolist()
        assert [list(x) for x in a["item_id-list"]] == [list(x) for x in b["item_id-list"]]
