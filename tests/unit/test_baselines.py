"""Baselines on small hand-checkable sessions, plus one topical data set and a size check."""
import math
import time

import numpy as np
import pytest

from gtcrec.baselines import (ItemKNNBaseline, PopularityBaseline, RandomBaseline,
                              TextSimilarityBaseline, all_baselines, text_baselines)
from gtcrec.metrics import evaluate_scores, sessions_to_prefixes

# codes 3..7 are items; 0..2 reserved
TRAIN = [[3, 4], [3, 4], [4, 5], [6, 7]]
N_CODES = 8


def topical_sessions(n_items=200, n_topics=10, n_sessions=3000, seed=0):
    """Sessions that stay within one topic (items ``code % n_topics``), Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    codes = np.arange(3, n_items + 3)
    topic = codes % n_topics
    weight = 1.0 / (1 + rng.permutation(n_items))
    sessions = []
    for _ in range(n_sessions):
        members = codes[topic == rng.integers(n_topics)]
        p = weight[members - 3] / weight[members - 3].sum()
        sessions.append(rng.choice(members, size=rng.integers(2, 12), p=p).tolist())
    return sessions


def assert_reserved_masked(scores):
    assert np.all(np.isneginf(scores[:, :3]))
    assert np.all(np.isfinite(scores[:, 3:]))


def test_random_shape_seed_and_level():
    a = RandomBaseline(N_CODES, seed=7).fit(TRAIN)
    b = RandomBaseline(N_CODES, seed=7).fit(TRAIN)
    sa, sb = a.scores([[3], [4, 5]]), b.scores([[3], [4, 5]])
    assert sa.shape == (2, N_CODES) and sa.dtype == np.float32
    assert_reserved_masked(sa)
    np.testing.assert_array_equal(sa, sb)
    # recall@10 of random scores over 100 items is about 10 %
    big = RandomBaseline(103, seed=1).fit([[3, 4]])
    targets = np.random.default_rng(0).integers(3, 103, 4000)
    res = evaluate_scores(big.scores([[3]] * 4000), targets)
    assert 0.08 < res["recall@10"] < 0.12
    assert 0.17 < res["recall@20"] < 0.23


def test_popularity_counts_by_hand():
    pop = PopularityBaseline(N_CODES).fit([[3, 4, 4], [4, 5]])
    s = pop.scores([[3], [6]])
    assert_reserved_masked(s)
    np.testing.assert_array_equal(s[0, 3:], [1, 3, 1, 0, 0])
    np.testing.assert_array_equal(s[0], s[1])  # same for every prefix
    per_session = PopularityBaseline(N_CODES, count="sessions").fit([[3, 4, 4], [4, 5]])
    np.testing.assert_array_equal(per_session.scores([[3]])[0, 3:], [1, 2, 1, 0, 0])
    res = evaluate_scores(s, [4, 3], ks=(1, 3))
    assert res["recall@1"] == pytest.approx(0.5)  # code 4 first; code 3 ties with 5 at ranks 2-3
    assert res["mrr@3"] == pytest.approx((1 + (1 / 2 + 1 / 3) / 2) / 2)


def test_popularity_infers_n_codes_and_checks_it():
    assert PopularityBaseline().fit(TRAIN).scores([[3]]).shape == (1, 8)
    with pytest.raises(ValueError):
        PopularityBaseline(n_codes=6).fit(TRAIN)


def test_knn_cosine_similarity_by_hand():
    knn = ItemKNNBaseline(N_CODES, n_neighbors=None, decay=0.5,
                          popularity_fallback=False).fit(TRAIN)
    sim = knn.similarity_.toarray()
    # sessions containing: 3 -> 2, 4 -> 3, 5 -> 1, 6 -> 1, 7 -> 1
    assert sim[3, 4] == pytest.approx(2 / math.sqrt(2 * 3))
    assert sim[4, 5] == pytest.approx(1 / math.sqrt(3 * 1))
    assert sim[6, 7] == pytest.approx(1.0)
    assert sim[3, 5] == 0.0 and np.all(np.diag(sim) == 0.0)
    np.testing.assert_allclose(sim, sim.T)
    s = knn.scores([[5, 3]])  # weights: 3 (last) 1.0, 5 -> 0.5
    assert_reserved_masked(s)
    assert s[0, 4] == pytest.approx(1.0 * 2 / math.sqrt(6) + 0.5 / math.sqrt(3))
    assert s[0, 6] == 0.0 and s[0, 7] == 0.0


def test_knn_neighbour_pruning_and_recency():
    pruned = ItemKNNBaseline(N_CODES, n_neighbors=1, popularity_fallback=False).fit(TRAIN)
    full = ItemKNNBaseline(N_CODES, n_neighbors=None, popularity_fallback=False).fit(TRAIN)
    assert pruned.scores([[4]])[0, 5] == 0.0           # 4 keeps only its best neighbour, 3
    assert full.scores([[4]])[0, 5] > 0.0
    # the most recent item dominates: after [6, 3] code 4 (neighbour of 3) beats 7 (of 6)
    s = ItemKNNBaseline(N_CODES, decay=0.3).fit(TRAIN).scores([[6, 3]])
    assert s[0, 4] > s[0, 7] > 0


def test_knn_popularity_fallback_orders_unreached_items_below():
    knn = ItemKNNBaseline(N_CODES).fit(TRAIN + [[4, 4, 4]])
    s = knn.scores([[6]])[0]
    assert s[7] > 0                               # the only neighbour of 6
    others = s[[3, 4, 5]]
    assert np.all(others < 0) and np.all(others >= -1)
    assert s[4] > s[3] and s[4] > s[5]           # 4 is the most clicked unreached item


def test_knn_errors():
    with pytest.raises(RuntimeError):
        ItemKNNBaseline(N_CODES).scores([[3]])
    knn = ItemKNNBaseline(N_CODES).fit(TRAIN)
    with pytest.raises(ValueError):
        knn.scores([[3, 99]])
    with pytest.raises(ValueError):
        ItemKNNBaseline(decay=0.0)


def test_ordering_on_topical_sessions():
    sessions = topical_sessions()
    train, test = sessions[:2500], sessions[2500:]
    prefixes, targets = sessions_to_prefixes(test)
    res = {}
    for name, b in all_baselines(203, seed=0).items():
        scores = b.fit(train).scores(prefixes)
        assert scores.shape == (len(test), 203)
        assert_reserved_masked(scores)
        res[name] = evaluate_scores(scores, targets)["recall@20"]
    # random ~ 20/200; popularity knows the global favourites; kNN knows the topic
    assert 0.04 < res["random"] < 0.17
    assert res["popularity"] > res["random"] + 0.1
    assert res["item-knn"] > res["popularity"] + 0.15


def test_knn_is_fast_at_event_scale():
    rng = np.random.default_rng(3)
    sessions = [rng.integers(3, 5003, size=rng.integers(2, 21)) for _ in range(50_000)]
    start = time.perf_counter()
    knn = ItemKNNBaseline(5003).fit(sessions)
    scores = knn.scores(sessions[:1000])
    elapsed = time.perf_counter() - start
    assert scores.shape == (1000, 5003)
    assert knn.similarity_.nnz <= 5003 * 100
    assert elapsed < 30, f"fit + score took {elapsed:.1f} s"


def small_text_table():
    """Codes 3..7 with 2-d unit vectors: 3 and 4 point one way, 5 and 6 another, 7 between."""
    table = np.zeros((8, 2), dtype=np.float32)
    table[3:] = [[1, 0], [0.96, 0.28], [0, 1], [0.28, 0.96], [0.71, 0.71]]
    return table


def test_text_similarity_last_mean_and_recency_by_hand():
    table = small_text_table()
    prefix = [[3, 5]]  # last click 5
    last = TextSimilarityBaseline(table, "last").fit(TRAIN).scores(prefix)[0]
    np.testing.assert_allclose(last[3:], table[3:] @ table[5], rtol=1e-6)
    mean = TextSimilarityBaseline(table, "mean").scores(prefix)[0]
    np.testing.assert_allclose(mean[3:], table[3:] @ ((table[3] + table[5]) / 2), rtol=1e-6)
    recency = TextSimilarityBaseline(table, "recency", decay=0.5).scores(prefix)[0]
    np.testing.assert_allclose(recency[3:], table[3:] @ (0.5 * table[3] + table[5]), rtol=1e-6)
    assert np.isinf(last[:3]).all() and np.isinf(mean[:3]).all()
    # the nearest other talk to the last click (5) is 6
    assert int(np.argmax(np.where(np.isin(np.arange(8), [5]), -np.inf, last))) == 6
    # reserved codes in a prefix are ignored; an all-reserved prefix scores 0 everywhere
    np.testing.assert_allclose(TextSimilarityBaseline(table).scores([[3, 5, 0]])[0][3:], last[3:])
    assert (TextSimilarityBaseline(table).scores([[2]])[0][3:] == 0).all()


def test_text_similarity_refuses_bad_input():
    table = small_text_table()
    with pytest.raises(ValueError, match="mode"):
        TextSimilarityBaseline(table, "max")
    with pytest.raises(ValueError, match="decay"):
        TextSimilarityBaseline(table, "recency", decay=0.0)
    with pytest.raises(ValueError, match="outside"):
        TextSimilarityBaseline(table).scores([[3, 9]])
    with pytest.raises(ValueError, match="n_codes"):
        TextSimilarityBaseline(table).fit([[3, 9]])
    assert set(text_baselines(table)) == {"text: last click", "text: session mean", "text: recency-weighted"}
    assert set(all_baselines(8, table=table)) == {"random", "popularity", "item-knn", *text_baselines(table)}
