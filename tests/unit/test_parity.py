"""gtcrec.serving.parity: pairing raw and processed sessions, offline top-k, ranking comparison."""
import numpy as np
import pandas as pd
import pytest

from gtcrec.serving import operators as ops
from gtcrec.serving import parity

VOCAB = ["A", "B", "C", "D", "E", "F"]  # codes 3..8


def test_link_sessions_orders_by_start_time_then_id():
    raw = pd.DataFrame({"session_id": ["z", "z", "a", "m", "m"],
                        "timestamp": pd.to_datetime([5, 9, 7, 5, 1], unit="s")})
    processed = pd.DataFrame({"session_id": [42, 17, 30]})
    link = parity.link_sessions(raw, processed)
    # start times: m 1 s, z 5 s, a 7 s -> numbers 17, 30, 42
    assert link.to_dict("list") == {"session_key": ["m", "z", "a"], "session_id": [17, 30, 42]}
    with pytest.raises(ValueError, match="cannot be paired"):
        parity.link_sessions(raw, processed.iloc[:2])


def test_preprocessing_parity_counts_equal_and_different_lists():
    request = {"session_id": np.array([b"s1", b"s1", b"s2", b"s2", b"s3"], dtype=object),
               "talk_id": np.array([b"B", b"A", b"C", b"X", b"D"], dtype=object),
               "timestamp": np.array([2, 1, 1, 2, 1])}
    sz = ops.SessionizeClicks(VOCAB, max_len=5)
    got = parity.preprocessing_parity(sz, request, {"s1": [3, 4], "s2": [5]})
    assert got == {"sessions": 2, "equal": 2, "unpaired": 1, "parity": True}
    got = parity.preprocessing_parity(sz, request, {"s1": [4, 3], "s2": [5]})
    assert got["equal"] == 1 and not got["parity"]


def test_offline_topk_excludes_reserved_and_clicked():
    scores = np.array([[9, 9, 9, 1, 5, 4, 3, 2, 6], [0, 0, 0, 1, 1, 1, 2, 0, 0]], dtype=np.float32)
    codes, top = parity.offline_topk(scores, [np.array([8]), np.array([])], k=3)
    np.testing.assert_array_equal(codes, [[4, 5, 6], [6, 3, 4]])  # ties: lower code first
    np.testing.assert_array_equal(top, [[5, 4, 3], [2, 1, 1]])


def test_compare_rankings_identical_tie_swap_different_and_fallback():
    full = np.array([[0, 0, 0, 3.0, 2.0, 2.00001, 1.0],
                     [0, 0, 0, 3.0, 2.0, 1.0, 0.5],
                     [0, 0, 0, 3.0, 2.0, 1.0, 0.5]], dtype=np.float32)
    offline, _ = parity.offline_topk(full, [[], [], []], k=3)
    served = np.array([[3, 4, 5], [3, 4, 5], [3, 5, 4]])  # row 0: swap within 1e-5; row 2: real swap
    scores = np.take_along_axis(full, served, axis=1)
    got = parity.compare_rankings(served, scores, offline, full)
    assert (got["identical"], got["tie_swaps"], got["different"]) == (1, 1, 1) and not got["parity"]
    # fallback slots (NaN) are not compared
    scores_fb = np.take_along_axis(full, offline, axis=1)
    scores_fb[:, 2] = np.nan
    served_fb = offline.copy()
    served_fb[:, 2] = 6
    got = parity.compare_rankings(served_fb, scores_fb, offline, full)
    assert got["parity"] and got["fallback_slots"] == 3 and got["identical"] == 3
    # a served score far from the eager one breaks parity even with the same codes
    bad = np.take_along_axis(full, offline, axis=1) + np.float32(0.01)
    assert not parity.compare_rankings(offline, bad, offline, full)["parity"]


def test_compare_answers_tells_ties_from_differences():
    from gtcrec.serving.parity import compare_answers

    ids = np.array([["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"], ["", "", ""]])
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 2.0], [3.0, 2.0, 1.0], [np.nan] * 3])
    other = np.array([["a", "b", "c"], ["a", "c", "b"], ["a", "c", "b"], ["", "", ""]])
    other_scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0 + 1e-6, 2.0], [3.0, 1.0, 2.0], [np.nan] * 3])
    out = compare_answers(ids, scores, other, other_scores)
    assert (out["identical"], out["tie_swaps"], out["different"]) == (2, 1, 1)
    assert out["same_up_to_ties"] is False and out["max_score_diff"] == 1.0
    same = compare_answers(ids[:2], scores[:2], other[:2], other_scores[:2])
    assert same["same_up_to_ties"] is True
    # a fallback slot (NaN) against a model slot is a difference
    fallback = compare_answers(ids[3:], scores[3:], ids[:1], scores[:1])
    assert fallback["different"] == 1


def test_frame_parity_says_what_differs_instead_of_stopping():
    want = pd.DataFrame({"session_id": ["a", "a"], "talk_id": ["T1", "T2"], "score": [0.5, np.nan]})
    assert parity.frame_parity(want.copy(), want) == {"equal": True, "difference": ""}  # NaN equals NaN
    nudged = want.assign(score=[0.5 * (1 + 1e-7), np.nan])
    assert not parity.frame_parity(nudged, want)["equal"]  # exact by default
    assert parity.frame_parity(nudged, want, exact=False, rtol=1e-5)["equal"]
    swapped = want.assign(talk_id=["T2", "T1"])
    check = parity.frame_parity(swapped, want)
    assert not check["equal"] and "talk_id" in check["difference"]
