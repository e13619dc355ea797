import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from gtcrec import data


@pytest.fixture(scope="module")
def small():
    catalog, latent = data.generate_catalog(300, seed=5)
    clicks = data.generate_sessions(catalog, latent, 3000, seed=6)
    return catalog, latent, clicks, data.Oracle.from_latent(catalog, latent)


@pytest.fixture(scope="module")
def events():
    return data.generate_events(3, n_talks=200, n_sessions=400, n_sessions_new_event=150)


def write(frame, path):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def tv_distance(counts, probs):
    return 0.5 * np.abs(counts / counts.sum() - probs).sum()


# ----------------------------------------------------------------------------------- generator


def test_generation_is_deterministic_for_a_seed(small):
    catalog, latent, clicks, _ = small
    catalog2, latent2 = data.generate_catalog(300, seed=5)
    pd.testing.assert_frame_equal(catalog, catalog2)
    np.testing.assert_array_equal(latent.z, latent2.z)
    np.testing.assert_array_equal(latent.log_pop, latent2.log_pop)
    pd.testing.assert_frame_equal(clicks, data.generate_sessions(catalog2, latent2, 3000, seed=6))
    other, _ = data.generate_catalog(300, seed=6)
    assert (other["title"] != catalog["title"]).mean() > 0.9
    assert not clicks.equals(data.generate_sessions(catalog, latent, 3000, seed=7))


def test_word_lists_come_from_the_package_data_file():
    """The word lists live in gtcrec/data/words.json (package data); the same seed gives the same bytes as
    when they were Python literals in data.py (the hash was taken before the move)."""
    import hashlib
    import json

    from gtcrec.data import words

    assert words.WORDS_FILE.name == "words.json" and words.WORDS_FILE.exists()
    assert list(json.loads(words.WORDS_FILE.read_text())["tracks"]) == data.TRACKS
    catalog, _ = data.generate_catalog(40, seed=3)
    digest = hashlib.sha256(catalog.to_csv(index=False).encode()).hexdigest()
    assert digest == "c346c83a90eba5a71819089c16e5e03c017dfef4b5ee84c1e50ada3563019ea3"


def test_events_have_disjoint_ids_and_shared_topic_geometry(events):
    spring, fall = events.spring, events.fall
    assert len(spring.catalog) == len(fall.catalog) == 200
    assert not set(spring.catalog["talk_id"]) & set(fall.catalog["talk_id"])
    assert not set(spring.clicks["session_id"]) & set(fall.clicks["session_id"])
    assert spring.catalog["talk_id"].str.match(r"^S5\d{4}$").all()
    assert fall.catalog["talk_id"].str.match(r"^F3\d{4}$").all()
    assert spring.clicks["session_id"].nunique() == 400 and fall.clicks["session_id"].nunique() == 150
    assert set(spring.clicks["talk_id"]) <= set(spring.catalog["talk_id"])
    assert set(fall.clicks["talk_id"]) <= set(fall.catalog["talk_id"])
    # same world: talks of the same subtopic in the two events sit around the same centre
    centre = {}
    for ev in (spring, fall):
        sub = ev.latent.subtopic
        centre[ev.name] = np.stack([ev.latent.z[sub == s].mean(axis=0) for s in range(len(data.SUBTOPICS))
                                    if (spring.latent.subtopic == s).sum() > 2 and (fall.latent.subtopic == s).sum() > 2])
    cos = (centre["spring"] * centre["fall"]).sum(1) / (
        np.linalg.norm(centre["spring"], axis=1) * np.linalg.norm(centre["fall"], axis=1))
    assert cos.mean() > 0.8


def test_catalog_columns_and_values(small):
    catalog, latent, _, _ = small
    assert list(catalog.columns) == data.CATALOG_COLUMNS
    assert catalog["day"].dtype == np.int64 and catalog["day"].between(1, data.N_DAYS).all()
    for col in ["talk_id", "title", "abstract", "track", "level", "format", "organization", "slot"]:
        assert catalog[col].map(type).eq(str).all(), col
    assert catalog["talk_id"].is_unique
    assert catalog["slot"].str.match(r"^\d\d:\d\d$").all() and catalog["slot"].nunique() == len(data.SLOTS)
    assert set(catalog["level"]) == set(data.LEVELS) and set(catalog["format"]) == set(data.FORMATS)
    assert catalog["track"].nunique() == len(data.TRACKS) == 12
    assert all(4 <= len(data.WORDS[t]["subtopics"]) <= 6 for t in data.TRACKS)
    assert catalog["organization"].nunique() > 15
    n_sentences = catalog["abstract"].str.count(r"[.?!](?:\s|$)")
    assert n_sentences.between(2, 5).all() and n_sentences.mean() > 2.5
    assert latent.z.shape == (300, data.WorldParams().dim)
    np.testing.assert_array_equal([data.TRACKS[t] for t in latent.track], catalog["track"])
    pop = latent.popularity
    assert 2 < pop.max() / np.median(pop) < 20  # moderate: no talk dominates


def test_text_is_diverse_and_carries_track_and_subtopic():
    catalog, latent = data.generate_catalog(600, seed=9)
    assert catalog["title"].nunique() >= 0.95 * len(catalog)
    assert catalog["abstract"].nunique() == len(catalog)
    title_bigrams = Counter()
    for title in catalog["title"]:
        words = title.lower().split()
        title_bigrams.update(zip(words, words[1:]))
    assert len(title_bigrams) > 2500
    assert title_bigrams.most_common(1)[0][1] < 0.1 * len(catalog)  # no bigram in every title
    # Bag of words, leave-one-out nearest centroid: the words alone recover track and subtopic.
    texts = [f"{t} {a}".lower() for t, a in zip(catalog["title"], catalog["abstract"])]
    tokens = [re.findall(r"[a-z0-9][a-z0-9\-]+", t) for t in texts]
    vocab = {w: i for i, w in enumerate(sorted({w for ws in tokens for w in ws}))}
    x = np.zeros((len(texts), len(vocab)))
    for i, ws in enumerate(tokens):
        for w in ws:
            x[i, vocab[w]] += 1
    x *= np.log(len(texts) / (1 + (x > 0).sum(0)))  # idf
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for labels, floor in [(latent.track, 0.9), (latent.subtopic, 0.8)]:
        sums = np.zeros((labels.max() + 1, x.shape[1]))
        np.add.at(sums, labels, x)
        counts = np.bincount(labels, minlength=len(sums)).astype(float)
        loo = sums[labels] - x  # each talk's own class centroid without itself
        own = (loo * x).sum(1) / np.maximum(np.linalg.norm(loo, axis=1), 1e-9)
        others = (x @ sums.T) / np.maximum(np.linalg.norm(sums, axis=1), 1e-9)
        others[np.arange(len(x)), labels] = own
        others[:, counts == 0] = -np.inf
        assert (others.argmax(1) == labels).mean() > floor


def test_clicks_columns_order_and_timing(small):
    _, _, clicks, _ = small
    assert list(clicks.columns) == data.CLICK_COLUMNS
    assert clicks["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert clicks["session_id"].map(type).eq(str).all() and clicks["talk_id"].map(type).eq(str).all()
    ordered = clicks.sort_values(["session_id", "timestamp"], kind="mergesort")
    assert ordered.index.equals(clicks.index)
    sizes = clicks.groupby("session_id").size()
    assert sizes.min() >= 2 and sizes.max() <= 30 and 5.5 < sizes.mean() < 7.5
    assert not clicks.duplicated(["session_id", "talk_id"]).any()  # no repeats
    same = clicks["session_id"].eq(clicks["session_id"].shift())
    gaps = clicks["timestamp"].diff().dt.total_seconds()[same]
    assert gaps.between(10, 300).all()
    starts = clicks.groupby("session_id")["timestamp"].min()
    assert (starts.max() - starts.min()).days >= 50


def test_sessions_are_topical(small):
    _, latent, clicks, oracle = small
    idx = oracle.indices(clicks["talk_id"])
    same = clicks["session_id"].eq(clicks["session_id"].shift()).to_numpy()[1:]
    same_track = (latent.track[idx][1:] == latent.track[idx][:-1])[same].mean()
    share_of_track = np.bincount(latent.track, minlength=12) / len(latent.track)
    assert same_track > 0.75 > 5 * (share_of_track ** 2).sum()


def test_generation_of_50k_sessions_is_fast_enough():
    import time

    catalog, latent = data.generate_catalog(1000, seed=1)
    start = time.perf_counter()
    data.generate_sessions(catalog, latent, 10000, seed=2)
    assert time.perf_counter() - start < 10  # ~0.3 s here; the 5,000 x 50,000 run takes ~7 s


# ------------------------------------------------------------------------------------ oracle


def test_oracle_probabilities_sum_to_one_and_exclude_the_prefix(small):
    catalog, _, clicks, oracle = small
    prefixes, _ = data.session_prefixes(clicks.head(400))
    probs = oracle.scores(prefixes)
    assert probs.shape == (len(prefixes), len(catalog))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
    assert (probs >= 0).all()
    for row, prefix in zip(probs, prefixes):
        assert (row[oracle.indices(prefix)] == 0).all()
        assert (np.delete(row, oracle.indices(prefix)) > 0).all()
    np.testing.assert_allclose(oracle.next_probs(prefixes[3]), probs[3])
    with pytest.raises(KeyError, match="NOPE"):
        oracle.next_probs(["NOPE"])


def test_first_clicks_follow_the_oracle_marginal(small):
    catalog, latent, _, oracle = small
    first = data.generate_sessions(catalog, latent, 20000, seed=11).groupby("session_id")["talk_id"].first()
    counts = np.bincount(oracle.indices(first), minlength=len(catalog)).astype(float)
    marginal = oracle.next_probs([])
    np.testing.assert_allclose(marginal.sum(), 1.0)
    assert tv_distance(counts, marginal) < 0.07
    assert tv_distance(counts, np.full(len(catalog), 1 / len(catalog))) > 0.12


def test_sampler_matches_oracle_next_click_frequencies(small):
    catalog, latent, clicks, oracle = small
    rng = np.random.default_rng(0)
    wrong = data.Oracle.from_latent(catalog, latent, data.ClickModel(a=2.0))
    prefixes, _ = data.session_prefixes(clicks.head(60))
    for prefix in [prefixes[0], prefixes[5], max(prefixes, key=len)]:
        idx = oracle.indices(prefix)
        draws = oracle.sample_next(np.tile(idx, (30000, 1)), rng)
        counts = np.bincount(draws, minlength=len(catalog)).astype(float)
        assert counts[idx].sum() == 0
        assert tv_distance(counts, oracle.next_probs(prefix)) < 0.05
        assert tv_distance(counts, wrong.next_probs(prefix)) > 0.15


def test_generated_next_clicks_are_likely_under_the_oracle(small):
    catalog, latent, clicks, oracle = small
    held_out = data.generate_sessions(catalog, latent, 500, seed=99)
    ll_oracle = oracle.log_likelihood(held_out).mean()
    prefixes, targets = data.session_prefixes(held_out)
    pop = np.bincount(oracle.indices(clicks["talk_id"]), minlength=len(catalog)) + 1.0
    ll_pop = []
    for prefix, target in zip(prefixes, targets):
        p = pop.copy()
        p[oracle.indices(prefix)] = 0
        ll_pop.append(np.log(p[oracle.index_of[target]] / p.sum()))
    wrong = data.Oracle.from_latent(catalog, latent, data.ClickModel(a=2.0, b=0.0))
    assert ll_oracle > np.mean(ll_pop) + 1.0
    assert ll_oracle > wrong.log_likelihood(held_out).mean() + 0.3


def test_oracle_recall_at_full_catalog_size():
    catalog, latent = data.generate_catalog(5000, seed=21)
    clicks = data.generate_sessions(catalog, latent, 400, seed=22)
    recall = data.Oracle.from_latent(catalog, latent).recall_at_k(clicks, k=10)
    assert 0.3 < recall < 0.6


def test_oracle_save_load_round_trip(small, tmp_path):
    catalog, _, clicks, oracle = small
    path = oracle.save(tmp_path / "oracle.npz")
    prefixes, _ = data.session_prefixes(clicks.head(50))
    loaded = data.Oracle.load(path, catalog)
    np.testing.assert_array_equal(loaded.scores(prefixes), oracle.scores(prefixes))
    assert loaded.model == oracle.model
    shuffled = catalog.sample(frac=1.0, random_state=1).reset_index(drop=True)
    reordered = data.Oracle.load(path, shuffled)
    order = oracle.indices(shuffled["talk_id"])
    np.testing.assert_allclose(reordered.scores(prefixes), oracle.scores(prefixes)[:, order])
    with pytest.raises(ValueError, match="differ from the catalog"):
        data.Oracle.load(path, catalog.iloc[1:])


# ----------------------------------------------------------------------------------- loading


def test_generated_files_pass_validation_and_round_trip(events, tmp_path):
    for name, event in events.items():
        paths = data.write_event(event, tmp_path / name)
        catalog = data.load_catalog(paths["catalog"])
        clicks, report = data.load_clicks(paths["clicks"], catalog)
        pd.testing.assert_frame_equal(catalog, event.catalog)
        pd.testing.assert_frame_equal(clicks, event.clicks)
        assert report["dropped_single_click_sessions"] == 0
        assert report["n_sessions"] == event.clicks["session_id"].nunique()
        loaded = data.Oracle.load(paths["oracle"], catalog)
        np.testing.assert_array_equal(loaded.next_probs([catalog["talk_id"][0]]),
                                      event.oracle.next_probs([catalog["talk_id"][0]]))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_load_the_same(events, tmp_path, suffix):
    event = events.spring
    shuffled = event.clicks.sample(frac=1.0, random_state=0)
    cat_path = write(event.catalog, tmp_path / f"talks{suffix}")
    click_path = write(shuffled, tmp_path / f"clicks{suffix}")
    catalog = data.load_catalog(cat_path)
    pd.testing.assert_frame_equal(catalog, event.catalog)
    clicks, _ = data.load_clicks(click_path, cat_path)  # catalog given as a path
    pd.testing.assert_frame_equal(clicks, event.clicks)  # sorted back by session then time


def test_single_click_sessions_are_dropped_and_counted(events, tmp_path):
    catalog = events.spring.catalog
    ids = catalog["talk_id"].tolist()
    clicks = pd.DataFrame({
        "session_id": ["b", "a", "a", "c", "b", "d", "a"],
        "talk_id": [ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6]],
        "timestamp": ["2025-03-01T10:05:00", "2025-03-01T09:00:00", "2025-03-01T09:01:00", "2025-03-02T08:00:00",
                      "2025-03-01T10:00:00", "2025-03-03T12:00:00", "2025-03-01T08:59:00"],
    })
    out, report = data.load_clicks(write(clicks, tmp_path / "clicks.csv"), catalog)
    assert report["dropped_single_click_sessions"] == 2 and report["n_rows"] == 7
    assert report["n_sessions"] == 2 and report["n_clicks"] == 5
    assert out["session_id"].tolist() == ["a", "a", "a", "b", "b"]
    assert out["talk_id"].tolist() == [ids[6], ids[1], ids[2], ids[4], ids[0]]
    assert out["timestamp"].dtype == np.dtype("datetime64[ns]")


def test_coarse_time_resolution_gives_tied_timestamps(small):
    catalog, latent, clicks, _ = small
    coarse = data.generate_sessions(catalog, latent, 3000, seed=6, time_resolution_s=600)
    # the same draws, every time rounded down to 10 minutes
    assert coarse["talk_id"].tolist() == clicks["talk_id"].tolist()
    floor = clicks["timestamp"].dt.floor("600s")
    assert coarse["timestamp"].tolist() == floor.tolist()
    assert not clicks.duplicated(["session_id", "timestamp"]).any()
    assert coarse.duplicated(["session_id", "timestamp"], keep=False).mean() > 0.5
    with pytest.raises(ValueError, match="time_resolution_s"):
        data.generate_sessions(catalog, latent, 10, seed=6, time_resolution_s=0)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tied_timestamps_are_ordered_by_talk_id_whatever_the_file_order(events, tmp_path, suffix):
    ids = sorted(events.spring.catalog["talk_id"].tolist()[:4])
    clicks = pd.DataFrame({"session_id": ["b", "a", "a", "a", "b", "a"],
                           "talk_id": [ids[1], ids[3], ids[0], ids[2], ids[0], ids[1]],
                           "timestamp": ["2025-03-01T10:00:00"] * 2 + ["2025-03-01T09:00:00"] * 3
                           + ["2025-03-01T08:00:00"]})
    first = None
    for seed in range(3):
        path = write(clicks.sample(frac=1.0, random_state=seed), tmp_path / f"clicks{seed}{suffix}")
        out, _ = data.load_clicks(path, events.spring.catalog)
        assert out["session_id"].tolist() == ["a", "a", "a", "a", "b", "b"]
        assert out["talk_id"].tolist() == [ids[1], ids[0], ids[2], ids[3], ids[0], ids[1]]
        if first is not None:
            pd.testing.assert_frame_equal(out, first)
        first = out


def test_timestamps_with_offsets_become_utc(events, tmp_path):
    ids = events.spring.catalog["talk_id"].tolist()
    clicks = pd.DataFrame({"session_id": ["s", "s"], "talk_id": ids[:2],
                           "timestamp": ["2025-03-01T10:00:00+02:00", "2025-03-01T08:30:00Z"]})
    out, _ = data.load_clicks(write(clicks, tmp_path / "c.csv"), events.spring.catalog)
    assert out["timestamp"].tolist() == [pd.Timestamp("2025-03-01 08:00:00"), pd.Timestamp("2025-03-01 08:30:00")]


# ---- one test per validation problem: the message names the file, the row and the column


@pytest.fixture
def tiny_catalog():
    return pd.DataFrame({
        "talk_id": ["T1", "T2", "T3", "T4"],
        "title": ["A talk", "Another talk", "Third", "Fourth"],
        "abstract": ["x", "y", "z", "w"],
        "track": ["Robotics"] * 4,
        "level": ["Beginner"] * 4,
        "format": ["Talk"] * 4,
        "organization": ["Org"] * 4,
        "day": [1, 2, 3, 4],
        "slot": ["09:00", "10:00", "11:00", "13:00"],
    })


def raises_naming(path, *parts):
    """Context manager: DataValidationError whose message holds the file name and every part."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(data.DataValidationError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert path.name in message, message
            for part in parts:
                assert part in message, (part, message)
            return handled

    return _Check()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_column(tiny_catalog, tmp_path, suffix):
    path = write(tiny_catalog.drop(columns=["title"]), tmp_path / f"catalog{suffix}")
    header = "header (line 1)" if suffix == ".csv" else "schema"
    with raises_naming(path, header, "column 'title'", "missing column"):
        data.load_catalog(path)


def test_missing_click_column(tiny_catalog, tmp_path):
    clicks = pd.DataFrame({"session_id": ["s", "s"], "talk_id": ["T1", "T2"]})
    path = write(clicks, tmp_path / "clicks.csv")
    with raises_naming(path, "header (line 1)", "column 'timestamp'", "missing column"):
        data.load_clicks(path, tiny_catalog)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_duplicate_talk_id_names_both_rows(tiny_catalog, tmp_path, suffix):
    tiny_catalog.loc[3, "talk_id"] = "T2"
    path = write(tiny_catalog, tmp_path / f"catalog{suffix}")
    with raises_naming(path, "rows 2 and 4", "column 'talk_id'", "duplicate talk id 'T2'"):
        data.load_catalog(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_empty_title(tiny_catalog, tmp_path, suffix):
    tiny_catalog.loc[2, "title"] = "   "
    tiny_catalog.loc[3, "title"] = None
    path = write(tiny_catalog, tmp_path / f"catalog{suffix}")
    with raises_naming(path, "row 3, column 'title'", "row 4, column 'title'", "empty title"):
        data.load_catalog(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_click_on_unknown_talk(tiny_catalog, tmp_path, suffix):
    clicks = pd.DataFrame({"session_id": ["s"] * 3, "talk_id": ["T1", "T9", "T2"],
                           "timestamp": pd.to_datetime(["2025-03-01 10:00", "2025-03-01 10:01", "2025-03-01 10:02"])})
    path = write(clicks, tmp_path / f"clicks{suffix}")
    with raises_naming(path, "row 2, column 'talk_id'", "'T9' is not in the catalog"):
        data.load_clicks(path, tiny_catalog)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_unparsable_timestamp(tiny_catalog, tmp_path, suffix):
    clicks = pd.DataFrame({"session_id": ["s"] * 4, "talk_id": ["T1", "T2", "T3", "T4"],
                           "timestamp": ["2025-03-01T10:00:00", "yesterday", "", None]})
    path = write(clicks, tmp_path / f"clicks{suffix}")
    with raises_naming(path, "row 2, column 'timestamp'", "'yesterday'", "row 3, column 'timestamp'",
                       "row 4, column 'timestamp'", "unparsable timestamp") as info:
        data.load_clicks(path, tiny_catalog)
    assert len(info.value.problems) == 3


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_wrong_type_of_day(tiny_catalog, tmp_path, suffix):
    catalog = tiny_catalog.assign(day=["1", "Tuesday", "1.5", "0"])  # text: parquet needs one type a column
    path = write(catalog, tmp_path / f"catalog{suffix}")
    with raises_naming(path, "row 2, column 'day'", "'Tuesday'", "row 3, column 'day'", "row 4, column 'day'",
                       "integer >= 1") as info:
        data.load_catalog(path)
    assert len(info.value.problems) == 3


def test_wrong_type_of_day_in_a_numeric_parquet_column(tiny_catalog, tmp_path):
    path = write(tiny_catalog.assign(day=[1.0, np.nan, 2.5, 0.0]), tmp_path / "catalog.parquet")
    with raises_naming(path, "row 3, column 'day'", "row 4, column 'day'", "integer >= 1") as info:
        data.load_catalog(path)
    assert len(info.value.problems) == 2  # the empty day (NaN, row 2) is a missing value, not a problem
    fine = data.load_catalog(write(tiny_catalog.assign(day=[1.0, 2.0, 3.0, 4.0]), tmp_path / "ok.parquet"))
    assert fine["day"].dtype == np.int64 and fine["day"].tolist() == [1, 2, 3, 4]


def test_problems_are_collected_up_to_twenty(tiny_catalog, tmp_path):
    big = pd.concat([tiny_catalog] * 8, ignore_index=True)
    big["talk_id"] = [f"T{i}" for i in range(len(big))]
    big["title"] = ""
    big.loc[0, "day"] = -1
    path = write(big, tmp_path / "catalog.csv")
    with raises_naming(path, "33 problem(s)", "... and 13 more", "row 20, column 'title'") as info:
        data.load_catalog(path)
    assert len(info.value.problems) == 33
    assert "row 21, column 'title'" not in str(info.value)  # shown: the first 20
    assert any("row 1, column 'day'" in p for p in info.value.problems)  # all kept on the exception
    assert isinstance(info.value, ValueError)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text("{}")
    with pytest.raises(data.DataValidationError, match="unsupported file type"):
        data.load_catalog(path)


# ---- optional columns: only talk_id and title are required


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_catalog_with_only_talk_id_and_title(tmp_path, suffix):
    path = write(pd.DataFrame({"talk_id": ["T1", "T2"], "title": ["A talk", "Another"]}), tmp_path / f"c{suffix}")
    catalog = data.load_catalog(path)
    assert list(catalog.columns) == data.CATALOG_COLUMNS
    assert catalog["talk_id"].tolist() == ["T1", "T2"] and catalog["title"].tolist() == ["A talk", "Another"]
    for col in ["abstract", "track", "level", "format", "organization", "slot"]:
        assert catalog[col].tolist() == ["", ""], col
    assert str(catalog["day"].dtype) == "Int64" and catalog["day"].isna().all()
    # what notebook 00 writes is read back the same
    again = data.load_catalog(write(catalog, tmp_path / "again.parquet"))
    pd.testing.assert_frame_equal(again, catalog)


REAL_WORLD_CSV = """id,title,abstract,speakers,tags,recording time
S71001,Scaling LLM Inference,How we serve a 70B model.,"Ada Lovelace; Alan Turing","llm,inference",2025-03-18 10:00
S71002,Robot Grasping in Simulation,,Grace Hopper,robotics,
"""


def test_real_world_catalog_keeps_its_columns_and_takes_id_as_talk_id(tmp_path):
    path = tmp_path / "real.csv"
    path.write_text(REAL_WORLD_CSV, encoding="utf-8")
    catalog = data.load_catalog(path)
    assert list(catalog.columns) == data.CATALOG_COLUMNS + ["speakers", "tags", "recording time"]
    assert catalog["talk_id"].tolist() == ["S71001", "S71002"]
    assert catalog["abstract"].tolist() == ["How we serve a 70B model.", ""]
    assert catalog["speakers"].tolist() == ["Ada Lovelace; Alan Turing", "Grace Hopper"]
    assert catalog["recording time"].tolist() == ["2025-03-18 10:00", ""]
    assert catalog["track"].eq("").all() and catalog["day"].isna().all()
    # its problems name the file's own column
    path.write_text(REAL_WORLD_CSV + "S71001,Again,,,,\n,No id,,,,\n", encoding="utf-8")
    with raises_naming(path, "rows 1 and 3, column 'id'", "duplicate talk id 'S71001'",
                       "row 4, column 'id'", "empty talk id") as info:
        data.load_catalog(path)
    assert len(info.value.problems) == 2


def test_talk_id_column_wins_over_id(tiny_catalog, tmp_path):
    catalog = data.load_catalog(write(tiny_catalog.assign(id=["x", "y", "z", "w"]), tmp_path / "c.csv"))
    assert catalog["talk_id"].tolist() == ["T1", "T2", "T3", "T4"] and catalog["id"].tolist() == ["x", "y", "z", "w"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_talk_id_and_title_are_still_refused(tmp_path, suffix):
    path = write(pd.DataFrame({"name": ["a"], "abstract": ["b"]}), tmp_path / f"c{suffix}")
    header = "header (line 1)" if suffix == ".csv" else "schema"
    with raises_naming(path, header, "column 'talk_id': missing column (or 'id'", "column 'title': missing column",
                       "'name', 'abstract'") as info:
        data.load_catalog(path)
    assert len(info.value.problems) == 2


def test_empty_days_are_missing_values(tiny_catalog, tmp_path):
    catalog = data.load_catalog(write(tiny_catalog.assign(day=["1", "", "3", " "]), tmp_path / "c.csv"))
    assert str(catalog["day"].dtype) == "Int64"
    assert catalog["day"].tolist()[0] == 1 and catalog["day"].tolist()[2] == 3 and catalog["day"].isna().sum() == 2
    full = data.load_catalog(write(tiny_catalog, tmp_path / "full.csv"))
    assert full["day"].dtype == np.int64  # no empty day: plain integers, as before
