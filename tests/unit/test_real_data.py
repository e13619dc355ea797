"""The conversion of a rating log into the project's catalog and clicks files (benchmarks/real_data.py).

No network: the functions are fed small hand-made frames."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_data():
    spec = importlib.util.spec_from_file_location("real_data", ROOT / "benchmarks" / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ratings(rows):
    return pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).astype({"ts": "int64"})


def test_movie_title_moves_the_article_and_adds_the_year(real_data):
    assert real_data.movie_title("Shawshank Redemption, The", "1994") == "The Shawshank Redemption (1994)"
    assert real_data.movie_title("Toy Story", "1995") == "Toy Story (1995)"
    assert real_data.movie_title("Usual Suspects, The ", "") == "The Usual Suspects"


def test_catalog_format(real_data, tmp_path):
    from gtcrec import data

    items = pd.DataFrame({"item": ["10", "2"], "title": ["Heat", "Fargo"], "year": ["1995", "1996"],
                          "genres": ["Action Crime Thriller", "Crime Drama Thriller"]})
    catalog = real_data.to_catalog(items)
    assert catalog["talk_id"].tolist() == ["2", "10"]  # numeric item order
    assert catalog["track"].tolist() == ["Crime, Drama, Thriller", "Action, Crime, Thriller"]
    catalog.to_csv(tmp_path / "c.csv", index=False)
    assert data.load_catalog(tmp_path / "c.csv")["title"].tolist() == ["Fargo (1996)", "Heat (1995)"]


def test_gap_sessions_cut_at_pauses_longer_than_the_gap(real_data):
    log = ratings([("u1", "5", 4, 1000), ("u1", "3", 4, 1000 + 3600),       # exactly the gap: same session
                   ("u1", "7", 4, 1000 + 3600 + 3601),                       # more than the gap: new session
                   ("u2", "5", 4, 1000)])
    clicks = real_data.gap_sessions(log, 3600)
    by_user = clicks.groupby("user")["session"].apply(list).to_dict()
    assert by_user["u1"][0] == by_user["u1"][1] != by_user["u1"][2]
    assert by_user["u2"][0] not in by_user["u1"]


def test_tied_timestamps_follow_the_talk_id_text_order(real_data):
    log = ratings([("u1", "3", 4, 50), ("u1", "10", 4, 50), ("u1", "2", 4, 50), ("u1", "9", 4, 10)])
    clicks = real_data.gap_sessions(log, 3600)
    assert clicks["talk_id"].tolist() == ["9", "10", "2", "3"]  # time first, then "10" < "2" < "3"


def test_pieces_restriction_and_single_clicks(real_data):
    log = ratings([("u1", str(i), 4, 100 + i) for i in range(1, 8)] + [("u2", "1", 4, 5)])
    clicks = real_data.gap_sessions(log, 3600)
    pieces = real_data.cut_pieces(clicks, chunk=3)
    sizes = pieces.groupby("session_id").size().sort_index()
    assert sizes.tolist() == [3, 3]           # 7 clicks -> 3 + 3 + 1: the single click and u2's one are dropped
    assert list(pieces.columns) == ["session_id", "talk_id", "timestamp"]
    assert str(pieces["timestamp"].dtype) == "datetime64[ns]"
    assert pieces["timestamp"].iloc[0] == pd.Timestamp(101, unit="s")
    whole = real_data.cut_pieces(clicks, chunk=0)
    assert whole.groupby("session_id").size().tolist() == [7]
    odd = real_data.cut_pieces(clicks, chunk=0, keep={"1", "3", "5"})
    assert odd["talk_id"].tolist() == ["1", "3", "5"]  # each session's subsequence on the kept items


def test_bound_sessions_keeps_the_latest(real_data):
    clicks = pd.DataFrame({"session_id": ["a", "a", "b", "b", "c", "c"], "talk_id": list("121212"),
                           "timestamp": pd.to_datetime([3, 4, 1, 2, 5, 6], unit="s")})
    kept = real_data.bound_sessions(clicks, 2)
    assert sorted(set(kept["session_id"])) == ["a", "c"]
    assert len(real_data.bound_sessions(clicks, 0)) == 6


def test_team_files_are_two_disjoint_halves_the_loaders_read_back(real_data, tmp_path):
    from argparse import Namespace

    from gtcrec import data

    items = pd.DataFrame({"item": [str(i) for i in range(1, 9)], "title": [f"Film {i}" for i in range(1, 9)],
                          "year": ["1995"] * 8, "genres": ["Drama"] * 8})
    log = ratings([(f"u{u}", str(i), 4, 100 * u + i) for u in range(1, 5) for i in range(1, 9)])
    args = Namespace(seed=42, chunk=20, max_sessions=0)
    files = real_data.write_team_files(real_data.to_catalog(items), real_data.gap_sessions(log, 3600), tmp_path, args)
    assert pd.read_csv(files["old_catalog"]).columns.tolist() == ["id", "title", "track"]
    assert pd.read_csv(files["old_clicks"])["timestamp"].iloc[0].endswith("+00:00")  # ISO 8601 with its offset
    halves = []
    for name in ("old", "new"):
        catalog = data.load_catalog(files[f"{name}_catalog"])
        clicks, report = data.load_clicks(files[f"{name}_clicks"], catalog)
        assert len(catalog) == 4 and report["n_sessions"] == 4 and set(clicks["talk_id"]) == set(catalog["talk_id"])
        halves.append(set(catalog["talk_id"]))
    assert not halves[0] & halves[1]
