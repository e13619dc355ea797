"""Hand-computed cases for gtcrec.metrics (ranking metrics with one relevant item)."""
import math
from typing import Sequence

import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec.metrics import (DEFAULT_KS, N_RESERVED, _as_codes, _check_ks, _metrics_from_rank_ranges, _summarise,
                            _to_numpy, apply_exclusions, evaluate_scores, format_metrics, read_sessions,
                            sessions_to_prefixes)


def row(*item_scores, reserved_scores=(0.0, 0.0, 0.0)):
    """A score row over codes 0..: three reserved codes then the given item scores."""
    return np.array([list(reserved_scores) + list(item_scores)], dtype=np.float32)


def test_perfect_ranking_scores_one():
    res = evaluate_scores(row(0.1, 0.9, 0.3), [4])
    for k in (10, 20):
        assert res[f"recall@{k}"] == 1.0
        assert res[f"ndcg@{k}"] == pytest.approx(1.0)
        assert res[f"mrr@{k}"] == pytest.approx(1.0)
    assert res["n"] == 1


def test_rank_three_by_hand():
    # codes 3..7 score 5,4,3,2,1: target code 5 is third
    res = evaluate_scores(row(5, 4, 3, 2, 1), [5], ks=(1, 2, 3, 10))
    assert res["recall@1"] == 0.0 and res["recall@2"] == 0.0
    assert res["recall@3"] == 1.0 and res["recall@10"] == 1.0
    assert res["ndcg@10"] == pytest.approx(1 / math.log2(4))  # 0.5
    assert res["mrr@10"] == pytest.approx(1 / 3)
    assert res["mrr@2"] == 0.0 and res["ndcg@2"] == 0.0


def test_mean_over_sessions():
    scores = np.vstack([row(3, 2, 1), row(3, 2, 1)])
    res = evaluate_scores(scores, [3, 4], ks=(1, 10))  # ranks 1 and 2
    assert res["recall@1"] == pytest.approx(0.5)
    assert res["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert res["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_reserved_codes_are_excluded_unless_disabled():
    scores = row(1.0, 0.5, reserved_scores=(9, 9, 9))
    assert evaluate_scores(scores, [3], ks=(1,))["recall@1"] == 1.0
    res = evaluate_scores(scores, [3], ks=(1, 4), reserved=0)
    assert res["recall@1"] == 0.0 and res["mrr@4"] == pytest.approx(1 / 4)


def test_prefix_exclusion_moves_target_up():
    scores = row(0.9, 0.8, 0.7)
    prefixes = [np.array([3, 4])]
    assert evaluate_scores(scores, [5], ks=(1,))["recall@1"] == 0.0
    assert evaluate_scores(scores, [5], ks=(1,), exclude=prefixes)["recall@1"] == 1.0


def test_excluded_target_is_a_miss():
    scores = row(0.9, 0.8, 0.7)
    res = evaluate_scores(scores, [3], exclude=[[3]])
    assert res["recall@20"] == 0.0 and res["mrr@20"] == 0.0 and res["ndcg@20"] == 0.0
    assert evaluate_scores(scores, [1])["recall@20"] == 0.0  # a reserved target can never hit


def test_all_ties_give_expected_value():
    scores = np.zeros((1, 103), dtype=np.float32)  # 100 items, all equal
    res = evaluate_scores(scores, [50])
    assert res["recall@10"] == pytest.approx(0.10)
    assert res["recall@20"] == pytest.approx(0.20)
    assert res["mrr@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 100)
    assert res["ndcg@20"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 21)) / 100)


def test_partial_tie_by_hand():
    # one item above, target tied with three others: rank uniform on 2..5
    scores = row(2.0, 1.0, 1.0, 1.0, 1.0, 0.0)
    res = evaluate_scores(scores, [5], ks=(1, 2, 10))
    assert res["recall@1"] == 0.0
    assert res["recall@2"] == pytest.approx(1 / 4)
    assert res["mrr@2"] == pytest.approx(0.5 / 4)
    assert res["ndcg@2"] == pytest.approx((1 / math.log2(3)) / 4)
    assert res["recall@10"] == 1.0
    assert res["mrr@10"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4)


def test_rank_beyond_k_is_zero():
    scores = row(*np.linspace(1, 0, 30))
    res = evaluate_scores(scores, [3 + 25])  # rank 26
    assert all(res[m] == 0.0 for m in ("recall@20", "ndcg@20", "mrr@20"))


def test_input_not_modified_and_torch_accepted():
    rng = np.random.default_rng(0)
    scores = rng.random((20, 53)).astype(np.float32)
    keep = scores.copy()
    targets = rng.integers(3, 53, 20)
    prefixes = [rng.integers(3, 53, 4) for _ in range(20)]
    a = evaluate_scores(scores, targets, exclude=prefixes)
    np.testing.assert_array_equal(scores, keep)
    b = evaluate_scores(torch.from_numpy(scores), torch.from_numpy(targets), exclude=prefixes)
    assert a == b


def test_chunking_and_per_session():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(57, 40))
    targets = rng.integers(3, 40, 57)
    a = evaluate_scores(scores, targets, chunk_size=5)
    b = evaluate_scores(scores, targets, chunk_size=1000)
    assert a == pytest.approx(b)
    per = evaluate_scores(scores, targets, per_session=True)
    assert per["recall@10"].shape == (57,)
    assert per["recall@10"].mean() == pytest.approx(a["recall@10"])


def evaluate_topk(topk_codes, targets, ks: Sequence[int] = DEFAULT_KS,
                  exclude: Sequence[Sequence[int]] | None = None, reserved: int = N_RESERVED,
                  per_session: bool = False):
    """Reference for :func:`gtcrec.metrics.evaluate_scores` (which only tests used, so it lives here):
    metrics of ranked code lists ``(n, K)`` (best first, e.g. a served top-k) against targets.

    Excluded codes (reserved and per-row ``exclude``) are removed from each list, keeping the
    order, before the first ``k`` are taken; the lists must then be long enough for ``max(ks)``
    or a shorter list simply recommends fewer items. The rank is the first position of the
    target; a list has no ties.
    """
    ks = _check_ks(ks)
    topk = _to_numpy(topk_codes).astype(np.int64)
    targets = _to_numpy(targets).astype(np.int64).reshape(-1)
    if topk.ndim != 2:
        raise ValueError(f"top-k codes must be 2-D (n, K), got shape {topk.shape}")
    n = topk.shape[0]
    if len(targets) != n:
        raise ValueError(f"{n} lists but {len(targets)} targets")
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude has {len(exclude)} rows, lists {n}")
    keep = topk >= reserved
    if exclude is not None:
        for i, codes in enumerate(exclude):
            keep[i] &= ~np.isin(topk[i], _as_codes(codes))
    # position among kept entries (1-based); non-kept entries never match
    pos = np.cumsum(keep, axis=1)
    match = keep & (topk == targets[:, None])
    found = match.any(axis=1)
    first = np.argmax(match, axis=1)
    rank = np.where(found, pos[np.arange(n), first], 0)
    # a list gives an exact rank: a range of one position
    greater = np.where(found, rank - 1, 0)
    return _summarise(_metrics_from_rank_ranges(greater, np.ones(n, dtype=np.int64), found, ks),
                      per_session, n)


def test_topk_lists_match_score_matrix():
    rng = np.random.default_rng(2)
    scores = rng.random((200, 60))
    targets = rng.integers(3, 60, 200)
    masked = apply_exclusions(scores)
    topk = np.argsort(-masked, axis=1)[:, :20]
    assert evaluate_topk(topk, targets) == pytest.approx(evaluate_scores(scores, targets))


def test_topk_by_hand_with_exclusions():
    lists = np.array([[1, 7, 5, 9], [8, 9, 4, 3]])
    # row 0: reserved code 1 dropped -> 7, 5, 9: target 5 at rank 2
    # row 1: excluding 8 -> 9, 4, 3: target 3 at rank 3
    res = evaluate_topk(lists, [5, 3], ks=(2, 3), exclude=[[], [8]])
    assert res["recall@2"] == pytest.approx(0.5)
    assert res["recall@3"] == pytest.approx(1.0)
    assert res["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    miss = evaluate_topk(lists, [6, 6], ks=(3,))
    assert miss["recall@3"] == 0.0


@pytest.mark.parametrize("bad", [
    dict(scores=np.zeros((2, 10)), targets=[3]),            # row count
    dict(scores=np.zeros((1, 10)), targets=[10]),           # target outside codes
    dict(scores=np.zeros(10), targets=[3]),                 # not 2-D
    dict(scores=np.full((1, 10), np.nan), targets=[3]),     # NaN
    dict(scores=np.zeros((1, 10)), targets=[3], ks=(0,)),   # bad k
    dict(scores=np.zeros((2, 10)), targets=[3, 4], exclude=[[3]]),  # exclude rows
])
def test_errors(bad):
    with pytest.raises(ValueError):
        evaluate_scores(**bad)


def test_sessions_to_prefixes():
    prefixes, targets = sessions_to_prefixes([[3, 4, 5], np.array([6, 7])])
    assert [p.tolist() for p in prefixes] == [[3, 4], [6]]
    assert targets.tolist() == [5, 7]
    with pytest.raises(ValueError):
        sessions_to_prefixes([[3, 4], [5]])


def test_read_sessions_from_parquet_folder(tmp_path):
    df = pd.DataFrame({"session_id": np.arange(3, dtype=np.int64),
                       "item_id-list": [np.array([3, 4], dtype=np.int64),
                                        np.array([5, 6, 7], dtype=np.int64),
                                        np.array([8, 3], dtype=np.int64)]})
    df.iloc[:2].to_parquet(tmp_path / "part_0.parquet")
    df.iloc[2:].to_parquet(tmp_path / "part_1.parquet")
    sessions = read_sessions(tmp_path)
    assert [s.tolist() for s in sessions] == [[3, 4], [5, 6, 7], [8, 3]]
    with pytest.raises(FileNotFoundError):
        read_sessions(tmp_path / "missing")


def test_format_metrics():
    text = format_metrics(evaluate_scores(row(3, 2, 1), [3]))
    assert "recall@10=1.0000" in text and "n=1" in text
