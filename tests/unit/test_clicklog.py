"""The click log: the writer in the served model (``click_log.ClickLog``, copied next to the executor), the reader
(``gtcrec.live.read_click_log``) and the served path end to end on a real tritonserver."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gtcrec.live import log_stats, read_click_log
from gtcrec.serving import click_log as ck
from gtcrec.serving import executor_model as em

MS = 1_000_000  # ns per ms
T0 = 1_710_752_400_000  # 2024-03-18 09:00:00 UTC, epoch ms


def arrays(session, talks, times_ms):
    return {"session_id": np.array([session.encode()] * len(talks), dtype=object),
            "talk_id": np.array([t.encode() for t in talks], dtype=object),
            "timestamp": np.asarray(times_ms, dtype=np.int64)}


def write_segment(path: Path, rows: list[tuple[str, str, int]]):
    """A parquet file laid out like the writer's segments (timestamp[ms, UTC])."""
    s, t, ts = zip(*rows) if rows else ((), (), ())
    pq.write_table(pa.table({"session_id": pa.array(s, pa.string()), "talk_id": pa.array(t, pa.string()),
                             "timestamp": pa.array(ts, pa.timestamp("ms", tz="UTC")),
                             "logged_at": pa.array([1.0] * len(s)), "model_version": pa.array([1] * len(s))}), path)
    return path


def prefixes(session, talks, times_ms):
    """What the served model sees of one session: its first 1, 2, ... n clicks, one request each."""
    return [(session, talk, ts) for n in range(1, len(talks) + 1) for talk, ts in zip(talks[:n], times_ms[:n])]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def segments(folder) -> list[Path]:
    return sorted(Path(folder).glob("clicks-*.parquet"))


# ------------------------------------------------------------------------------------------------ the reader

def test_repeated_prefixes_give_each_click_once_in_click_order(tmp_path):
    rows = prefixes("a", ["T3", "T1", "T2"], [T0, T0 + 1000, T0 + 2000])  # sent as 1, then 2, then 3 clicks
    rows += prefixes("b", ["T9", "T2"], [T0 + 5000, T0 + 5000])  # two clicks at the same time
    write_segment(tmp_path / "clicks-w1-000000.parquet", rows[:4])
    write_segment(tmp_path / "clicks-w1-000001.parquet", rows[4:])
    clicks, report = read_click_log(tmp_path)
    assert len(rows) == 9 and report["rows_read"] == 9
    assert report["duplicates_removed"] == 4 and report["clicks"] == 5 and report["sessions"] == 2
    assert list(clicks.columns) == ["session_id", "talk_id", "timestamp", "client_id"]
    assert clicks["timestamp"].dtype == np.dtype("datetime64[ns]")
    # by session, then time, then talk id text (T2 before T9 at the same time)
    assert clicks[["session_id", "talk_id"]].values.tolist() == [["a", "T3"], ["a", "T1"], ["a", "T2"],
                                                                ["b", "T2"], ["b", "T9"]]
    assert clicks["timestamp"].iloc[0] == pd.Timestamp("2024-03-18 09:00:00")
    assert report["files_read"] == ["clicks-w1-000000.parquet", "clicks-w1-000001.parquet"]
    assert report["files_skipped"] == {} and sum(report["rows_dropped"].values()) == 0


def test_bad_files_are_skipped_with_their_reason_and_the_good_ones_kept(tmp_path):
    good = write_segment(tmp_path / "clicks-w1-000000.parquet", prefixes("a", ["T1", "T2"], [T0, T0 + 1]))
    data = good.read_bytes()
    (tmp_path / "clicks-w2-000000.parquet").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "notes.parquet").write_text("session_id,talk_id,timestamp\n")  # not parquet
    pq.write_table(pa.table({"session_id": ["x"], "talk": ["T1"], "timestamp": [T0]}), tmp_path / "other.parquet")
    (tmp_path / "other.csv").write_text("session,talk_id,timestamp\nx,T1,2024-03-18T09:00:00Z\n")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81" * 50)
    # never read: hidden (a segment being written), and files of other kinds
    write_segment(tmp_path / ".clicks-w1-000001.parquet.tmp", [("h", "T1", T0)])
    write_segment(tmp_path / ".hidden.parquet", [("h", "T1", T0)])
    (tmp_path / "readme.txt").write_text("not clicks")
    clicks, report = read_click_log(tmp_path)
    assert clicks[["session_id", "talk_id"]].values.tolist() == [["a", "T1"], ["a", "T2"]]
    assert report["files_read"] == ["clicks-w1-000000.parquet"]
    skipped = report["files_skipped"]
    assert set(skipped) == {"clicks-w2-000000.parquet", "empty.parquet", "empty.csv", "notes.parquet",
                            "other.parquet", "other.csv", "binary.csv"}
    assert "truncated" in skipped["clicks-w2-000000.parquet"]
    assert skipped["empty.parquet"] == skipped["empty.csv"] == "empty file (0 bytes)"
    assert "lacks column(s) talk_id" in skipped["other.parquet"]
    assert "lacks column(s) session_id" in skipped["other.csv"]
    assert "CSV" in skipped["binary.csv"]
    for name in skipped:
        assert any(m.startswith(f"{name}: skipped: ") for m in report["messages"]), name


def test_a_csv_and_a_parquet_of_another_application_are_read_like_the_segments(tmp_path):
    write_segment(tmp_path / "clicks-w1-000000.parquet", [("a", "T1", T0), ("a", "T2", T0 + 60_000)])
    # another application: ISO-8601 text with an offset (09:01 UTC), one click the log already has
    (tmp_path / "kiosk.csv").write_text("session_id,talk_id,timestamp,device\n"
                                        "a,T2,2024-03-18T10:01:00+01:00,kiosk\n"
                                        " k7 , T5 ,2024-03-18T09:30:00Z,kiosk\n"
                                        "k7,T6,2024-03-18 09:31:00,kiosk\n")  # naive: UTC
    # and a parquet with int64 epoch milliseconds
    pq.write_table(pa.table({"session_id": ["m1", "m1"], "talk_id": ["T3", "T4"],
                             "timestamp": pa.array([T0 + 5, T0 + 7], pa.int64())}), tmp_path / "mobile.parquet")
    clicks, report = read_click_log(tmp_path)
    assert report["files_read"] == ["clicks-w1-000000.parquet", "kiosk.csv", "mobile.parquet"]
    assert report["rows_read"] == 7 and report["duplicates_removed"] == 1 and report["clicks"] == 6
    got = [(s, t, str(ts)) for s, t, ts, _ in clicks.itertuples(index=False)]
    assert got == [("a", "T1", "2024-03-18 09:00:00"), ("a", "T2", "2024-03-18 09:01:00"),
                   ("k7", "T5", "2024-03-18 09:30:00"), ("k7", "T6", "2024-03-18 09:31:00"),
                   ("m1", "T3", "2024-03-18 09:00:00.005000"), ("m1", "T4", "2024-03-18 09:00:00.007000")]


def test_unknown_talks_empty_ids_and_bad_timestamps_are_dropped_and_counted_per_file(tmp_path):
    (tmp_path / "kiosk.csv").write_text("session_id,talk_id,timestamp\n"
                                        "a,T1,2024-03-18T09:00:00Z\n"
                                        "a,NOPE,2024-03-18T09:01:00Z\n"
                                        "a,GONE,2024-03-18T09:02:00Z\n"
                                        "a,T2,not a time\n"
                                        "a,T3,\n"
                                        ",T3,2024-03-18T09:03:00Z\n"
                                        "b,,2024-03-18T09:03:00Z\n"
                                        "b,T2,2024-03-18T09:04:00Z\n")
    pq.write_table(pa.table({"session_id": ["c", "c", None], "talk_id": ["T1", "NOPE", "T2"],
                             "timestamp": pa.array([T0, None, T0], pa.timestamp("ms"))}), tmp_path / "app.parquet")
    pq.write_table(pa.table({"session_id": ["d"], "talk_id": ["T1"], "timestamp": [1.5]}), tmp_path / "floats.parquet")
    clicks, report = read_click_log(tmp_path, catalog_ids=["T1", "T2", "T3"])
    assert clicks[["session_id", "talk_id"]].values.tolist() == [["a", "T1"], ["b", "T2"], ["c", "T1"]]
    assert report["rows_read"] == 12
    assert report["rows_dropped"] == {"empty_session_id": 2, "empty_talk_id": 1, "bad_timestamp": 4,
                                      "unknown_talk_id": 2}
    assert report["rows_dropped_by_file"] == {
        "kiosk.csv": {"empty_session_id": 1, "empty_talk_id": 1, "bad_timestamp": 2, "unknown_talk_id": 2},
        "app.parquet": {"empty_session_id": 1, "bad_timestamp": 1},
        "floats.parquet": {"bad_timestamp": 1}}
    messages = report["messages"]
    assert "kiosk.csv: dropped 2 of 8 rows with a talk id that is not in the catalog, e.g. ['GONE', 'NOPE']" in messages
    assert "kiosk.csv: dropped 2 of 8 rows with a missing or unreadable timestamp" in messages
    assert "app.parquet: dropped 1 of 3 rows with an empty session id" in messages
    assert any(m.startswith("floats.parquet: dropped 1 of 1 rows with a missing or unreadable timestamp (timestamp "
                            "column of type double") for m in messages)
    # without a catalog, unknown talks are kept
    assert read_click_log(tmp_path)[1]["clicks"] == 5


def test_since_keeps_the_later_clicks(tmp_path):
    write_segment(tmp_path / "clicks-w1-000000.parquet", [("a", "T1", T0), ("a", "T2", T0 + 60_000),
                                                          ("b", "T3", T0 + 120_000), ("b", "T3", T0 + 120_000)])
    for since in (pd.Timestamp("2024-03-18 09:01:00"), T0 + 60_000, "2024-03-18T10:01:00+01:00",
                  pd.Timestamp("2024-03-18 10:01:00", tz="Europe/Paris").tz_convert("UTC").tz_convert("Asia/Tokyo")):
        clicks, report = read_click_log(tmp_path, since=since)
        assert clicks["talk_id"].tolist() == ["T2", "T3"], since
        assert report["rows_before_since"] == 1 and report["duplicates_removed"] == 1
    assert read_click_log(tmp_path, since=T0 + 60_001)[0]["talk_id"].tolist() == ["T3"]
    assert read_click_log(tmp_path, since=T0 + 10**9)[0].empty


def test_a_missing_folder_raises_and_an_empty_one_gives_no_clicks(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_click_log(tmp_path / "nope")
    clicks, report = read_click_log(tmp_path)
    assert clicks.empty and list(clicks.columns) == ["session_id", "talk_id", "timestamp", "client_id"]
    assert report["clicks"] == 0 and report["writers"]["writers"] == 0


# ------------------------------------------------------------------------------------------------ the writer

def open_log(folder, **kwargs) -> ck.ClickLog:
    kwargs.setdefault("poll_seconds", 0.05)
    return ck.ClickLog(folder, ck.click_log_prefix("rec_0_0", 3), model_version=3, **kwargs)


def test_executor_model_imports_outside_triton():
    assert em.pb_utils is None  # imported here without triton_python_backend_utils
    assert em.CLICK_LOG_ENV == "GTCREC_CLICK_LOG"


def test_segments_rotate_by_records_and_are_in_the_documented_clicks_format(tmp_path):
    from gtcrec.data import load_clicks

    log = open_log(tmp_path, max_records=4, max_seconds=60)
    before = time.time()
    for i in range(5):  # 15 clicks: three segments of 4 now, 3 clicks left waiting
        log.put(**arrays(f"s{i}", ["T1", "T2", "T3"], [T0 + i, T0 + i + 1, T0 + i + 2]))
    assert wait_for(lambda: len(segments(tmp_path)) == 3)
    time.sleep(0.3)
    assert len(segments(tmp_path)) == 3  # the last 3 wait for the time rotation or the close
    stats = log.close()
    files = segments(tmp_path)
    assert [pq.read_metadata(f).num_rows for f in files] == [4, 4, 4, 3]
    assert [f.name for f in files] == [ck.segment_name(log.prefix, i) for i in range(4)]
    table = pq.read_table(files[0])
    assert table.schema.names == ["session_id", "talk_id", "timestamp", "logged_at", "model_version", "client_id",
                                  "source"]
    assert table.schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("session_id").type == pa.string()
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert frame["session_id"].tolist() == [f"s{i}" for i in range(5) for _ in range(3)]
    assert frame["talk_id"].tolist() == ["T1", "T2", "T3"] * 5
    assert (frame["model_version"] == 3).all()
    assert ((frame["logged_at"] >= before) & (frame["logged_at"] <= time.time())).all()
    assert stats["clicks_logged"] == stats["clicks_queued"] == 15 and stats["segments"] == 4
    assert stats["clicks_dropped"] == 0 and stats["closed"] is True
    # a segment is a clicks file of the documented format
    catalog = pd.DataFrame({"talk_id": ["T1", "T2", "T3"], "title": ["a", "b", "c"]})
    clicks, report = load_clicks(files[0], catalog)
    assert clicks["timestamp"].tolist() == [pd.Timestamp((T0 + i) * MS) for i in range(3)]
    assert clicks["session_id"].tolist() == ["s0"] * 3 and report["dropped_single_click_sessions"] == 1  # s1


def test_segments_rotate_by_time_and_nothing_is_written_while_no_click_comes(tmp_path):
    log = open_log(tmp_path, max_records=1000, max_seconds=0.3)
    log.put(**arrays("a", ["T1", "T2"], [T0, T0 + 1]))
    assert wait_for(lambda: len(segments(tmp_path)) == 1, timeout=5)
    assert pq.read_table(segments(tmp_path)[0]).column("talk_id").to_pylist() == ["T1", "T2"]
    time.sleep(0.7)
    assert len(segments(tmp_path)) == 1  # idle: no empty segments
    log.put(**arrays("b", ["T3"], [T0 + 5]))
    assert wait_for(lambda: len(segments(tmp_path)) == 2, timeout=5)
    stats = log.close()
    assert len(segments(tmp_path)) == 2 and stats["segments"] == 2 and stats["clicks_logged"] == 3


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    log = open_log(tmp_path, max_records=1, max_seconds=60, queue_size=2)
    real_write, entered, release = log._write_file, threading.Event(), threading.Event()

    def stuck_write(table, path):  # a disk that does not answer
        entered.set()
        assert release.wait(30)
        real_write(table, path)

    log._write_file = stuck_write
    assert log.put(**arrays("a", ["T1"], [T0]))  # the writer takes it and gets stuck
    assert entered.wait(10)
    assert log.put(**arrays("b", ["T1", "T2"], [T0, T0 + 1]))  # the queue holds two records
    assert log.put(**arrays("c", ["T1", "T2", "T3"], [T0, T0 + 1, T0 + 2]))
    started = time.perf_counter()
    assert not log.put(**arrays("d", ["T1", "T2", "T3", "T4"], [T0, T0 + 1, T0 + 2, T0 + 3]))
    assert not log.put(**arrays("e", ["T5"], [T0]))
    assert time.perf_counter() - started < 0.05  # no waiting
    assert log.clicks_dropped == 5 and log.requests_dropped == 2
    release.set()
    stats = log.close()
    assert stats["clicks_logged"] == 6 and stats["clicks_dropped"] == 5 and stats["requests_dropped"] == 2
    assert not log.put(**arrays("f", ["T1"], [T0]))  # after close: dropped and counted, no error
    assert log.clicks_dropped == 6
    clicks, report = read_click_log(tmp_path)
    assert sorted(set(clicks["session_id"])) == ["a", "b", "c"] and len(clicks) == 6
    assert report["writers_dropped_clicks"] == 5  # what the stats file said at close
    on_disk = json.loads(log.stats_path.read_text())
    assert on_disk["clicks_dropped"] == 5 and on_disk["closed"] is True and on_disk["clicks_logged"] == 6


def test_put_never_raises(tmp_path):
    log = open_log(tmp_path)
    assert not log.put(np.array([b"a", b"b"], dtype=object), np.array([b"T1"], dtype=object), np.array([T0, T0]))
    assert not log.put(None, None, None)
    assert not log.put(np.array([b"a"], dtype=object), np.array([b"T1"], dtype=object), np.array(["soon"]))
    assert log.requests_dropped == 3 and log.clicks_dropped == 2
    assert log.close()["clicks_logged"] == 0 and segments(tmp_path) == []


def test_a_segment_is_never_visible_half_written_and_a_write_error_is_counted(tmp_path, capsys):
    log = open_log(tmp_path, max_records=2, max_seconds=60)
    real_write = log._write_file
    calls, visible = [], []

    def watched_write(table, path):
        calls.append(path.name)
        path.write_bytes(b"PAR1 half a segment")  # what a reader looking now finds under the temporary name
        visible.append({p.name: pq.read_metadata(p).num_rows for p in segments(tmp_path)})  # all complete
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(table, path)

    log._write_file = watched_write
    for i in range(3):
        log.put(**arrays(f"s{i}", ["T1", "T2"], [T0, T0 + 1]))
    stats = log.close()
    final = [ck.segment_name(log.prefix, i) for i in (0, 1, 1)]  # the failed write leaves its number free
    assert calls == [f".{name}.tmp" for name in final]
    assert [name in seen for name, seen in zip(final, visible)] == [False, False, False]
    assert visible == [{}, {final[0]: 2}, {final[0]: 2}]
    assert [p.name for p in segments(tmp_path)] == final[:2]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the failed temporary file is gone
    assert stats["write_errors"] == 1 and stats["clicks_lost"] == 2 and stats["clicks_logged"] == 4
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / final[1]} (2 clicks lost)" in err and "No space left on device" in err
    clicks, report = read_click_log(tmp_path)
    assert sorted(set(clicks["session_id"])) == ["s0", "s2"] and report["writers_lost_clicks"] == 2


def test_close_writes_what_is_queued(tmp_path):
    log = open_log(tmp_path, max_records=1000, max_seconds=60)
    for n in (1, 2, 3):
        log.put(**arrays("a", ["T1", "T2", "T3"][:n], [T0, T0 + 1, T0 + 2][:n]))
    time.sleep(0.2)
    assert segments(tmp_path) == []
    assert json.loads(log.stats_path.read_text())["closed"] is False
    stats = log.close()
    assert stats["clicks_logged"] == 6 and stats["segments"] == 1 and len(segments(tmp_path)) == 1
    assert log.close()["segments"] == 1  # closing twice is harmless
    assert json.loads(log.stats_path.read_text())["closed"] is True
    clicks, report = read_click_log(tmp_path)
    assert clicks["talk_id"].tolist() == ["T1", "T2", "T3"] and report["duplicates_removed"] == 3
    assert log_stats(tmp_path)["writers"] == 1 and log_stats(tmp_path)["open"] == 0


def test_the_settings_come_from_the_environment(tmp_path):
    assert ck.click_log_from_env("rec_0_0", 1, environ={}) is None
    assert ck.click_log_from_env("rec_0_0", 1, environ={ck.CLICK_LOG_ENV: " "}) is None
    with pytest.raises(ValueError, match="needs a logging key"):  # no key: the load fails
        ck.click_log_from_env("rec_0_0", 1, environ={ck.CLICK_LOG_ENV: str(tmp_path / "log")})
    with pytest.raises(ValueError, match="cannot take"):  # a key that cannot be one: the load fails
        ck.click_log_from_env("rec_0_0", 1, environ={ck.CLICK_LOG_ENV: str(tmp_path / "log"), ck.LOG_KEY_ENV: "a b"})
    env = {ck.CLICK_LOG_ENV: str(tmp_path / "log"), ck.CLICK_LOG_SECONDS_ENV: "2.5", ck.CLICK_LOG_RECORDS_ENV: "500",
           ck.LOG_KEY_ENV: "k"}
    log = ck.click_log_from_env("rec_0_1", 4, environ=env)
    try:
        assert (log.max_seconds, log.max_records, log.model_version) == (2.5, 500, 4)
        assert log.folder == tmp_path / "log" and log.folder.is_dir()
        assert log.prefix[:-6] == ck.click_log_prefix("rec_0_1", 4, token="x")[:-1]  # all but the token
        assert f"-{os.getpid()}-rec_0_1-v4-" in log.prefix
        assert log.stats()["instance"] == "rec_0_1"
    finally:
        log.close()
    default = ck.click_log_from_env("rec_0_1", 4, environ={ck.CLICK_LOG_ENV: str(tmp_path / "log"), ck.LOG_KEY_ENV: "k"})
    assert (default.max_seconds, default.max_records) == (ck.CLICK_LOG_SECONDS, ck.CLICK_LOG_RECORDS)
    assert default.prefix != log.prefix  # the same instance started again writes under new names
    default.close()
    for bad in ({ck.CLICK_LOG_SECONDS_ENV: "0"}, {ck.CLICK_LOG_SECONDS_ENV: "soon"}, {ck.CLICK_LOG_RECORDS_ENV: "1.5"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ck.click_log_from_env("rec_0_0", 1, environ={ck.CLICK_LOG_ENV: str(tmp_path / "x"), ck.LOG_KEY_ENV: "k", **bad})
    assert ck.click_log_prefix("a b/c", 1, host="h.x", pid=7, token="t") == "h.x-7-a_b_c-v1-t"
    with pytest.raises(OSError):  # a folder that cannot be made fails loudly (the load fails)
        ck.ClickLog(tmp_path / "log" / ck.stats_name(log.prefix) / "sub", "p")


@pytest.mark.filterwarnings("ignore:.*restricted-api")  # the test tier's stand-in binary has no such flags
def test_the_server_and_the_cli_pass_the_settings(tmp_path, monkeypatch, capsys):
    from gtcrec.serving import access, serve
    from gtcrec.serving.server import TritonServer

    for name in (access.ENV_LOG_KEY, access.ENV_LOG_KEY_FILE):
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    server = TritonServer(repo, click_log=tmp_path / "log", click_log_seconds=2, click_log_records=50)
    assert len(server.log_key) >= 40 and server.log_key not in repr(server)  # a new key only this object knows
    assert server.click_log_env() == {"GTCREC_CLICK_LOG": str((tmp_path / "log").resolve()),
                                      "GTCREC_LOG_KEY": server.log_key,
                                      "GTCREC_CLICK_LOG_SECONDS": "2.0", "GTCREC_CLICK_LOG_RECORDS": "50"}
    assert (tmp_path / "log").is_dir()
    assert TritonServer(repo).click_log_env() == {}
    with pytest.raises(ValueError, match="click_log_seconds"):
        TritonServer(repo, click_log=tmp_path / "log", click_log_seconds=0)
    with pytest.raises(SystemExit) as info:
        serve.main([str(repo), "--click-log-seconds", "3"])
    assert info.value.code == 2
    # --click-log without a logging key refuses to start, and says what to pass
    with pytest.raises(SystemExit) as info:
        serve.main([str(repo), "--click-log", str(tmp_path / "log")])
    assert info.value.code == 2 and "--log-key-file FILE" in capsys.readouterr().err
    # a key of characters it cannot take: refused at start, with the reason, the key never printed
    bad = tmp_path / "bad.key"
    bad.write_text("s3cret key\n")
    assert serve.main([str(repo), "--click-log", str(tmp_path / "log"), "--log-key-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "logging key" in err and "cannot take: [' ']" in err and "s3cret" not in err
    with pytest.raises(access.LogKeyError, match="cannot take"):
        TritonServer(repo, click_log=tmp_path / "log", log_key="caf\u00e9")
    # --log-key-file makes the file, readable by its owner only
    made = tmp_path / "keys" / "log.key"
    key, source = access.read_log_key(made, create=True)
    assert source == str(made) and made.stat().st_mode & 0o777 == 0o600 and made.read_text().strip() == key


# ------------------------------------------------------------------------------------------------ served

@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    import torch

    from gtcrec.serving.export import example_clicks, export_ensemble
    from test_executor import VOCAB, Scorer

    root = tmp_path_factory.mktemp("clicklog")
    model = root / "m.pt"
    example = {"item_id-list__values": torch.tensor([3, 4, 5]), "item_id-list__offsets": torch.tensor([0, 1, 3])}
    with torch.no_grad():
        torch.jit.trace(Scorer(len(VOCAB) + 3, 14).eval(), (example,), strict=False).save(str(model))
    warm = example_clicks(VOCAB, n_sessions=4, max_clicks=5, seed=1)
    export_ensemble(VOCAB, model, root / "plain", max_len=5, k=4, name="rec", request=warm, instance_count=2)
    export_ensemble(VOCAB, model, root / "merlin", max_len=5, k=4, name="rec_merlin", request=warm,
                    executor="merlin", instance_count=1)
    export_ensemble(VOCAB, model, root / "batched", max_len=5, k=4, name="rec_batched", request=warm,
                    instance_count=1, dynamic_batching=True, max_batch_size=8, batch_delay_us=20_000)
    clicks = example_clicks(VOCAB, n_sessions=10, max_clicks=6, seed=7)
    return root, clicks


def session_requests(clicks: pd.DataFrame) -> list[dict]:
    """Each session as the live site sends it: its first 1, 2, ... clicks, one request each."""
    from gtcrec.serving import client as cl

    out = []
    for _, session in clicks.sort_values(["session_id", "timestamp"]).groupby("session_id", sort=True):
        out += [cl.request_arrays(session.iloc[:n]) for n in range(1, len(session) + 1)]
    return out


def send_all(server, requests, model_name, threads=3, batched=False, parameters=None) -> list[dict]:
    """Send from several threads (each its own client) so that every instance gets requests;
    ``parameters``: the request parameters (the logging key) of every request."""
    from gtcrec.serving import client as cl

    answered, errors = [], []

    def run(part):
        client = server.grpc_client()
        try:
            for request in part:
                try:
                    cl.infer_arrays(client, request, model_name=model_name, batched=batched, parameters=parameters)
                    answered.append(request)
                except Exception as exc:  # noqa: BLE001 - collected
                    errors.append(str(exc))
        finally:
            client.close()

    workers = [threading.Thread(target=run, args=(requests[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return answered, errors


def keys(requests) -> set:
    return {(s.decode(), t.decode(), int(ts)) for r in requests
            for s, t, ts in zip(r["session_id"], r["talk_id"], r["timestamp"])}


@pytest.mark.server
def test_the_served_path_logs_every_answered_click(repos, tmp_path, monkeypatch):
    from gtcrec.serving import client as cl
    from gtcrec.serving.server import TritonServer

    root, clicks = repos
    requests = session_requests(clicks)
    assert len(requests) >= 20 and max(len(r["talk_id"]) for r in requests) > 1
    log = tmp_path / "log"
    bad = {**requests[3], "timestamp": -requests[3]["timestamp"] - 1}  # answered with an error: not logged
    with TritonServer([root / "plain", root / "merlin", root / "batched"], startup_timeout=120, click_log=log,
                      load_models=["rec", "rec_merlin", "rec_batched"], click_log_seconds=1.0,
                      click_log_records=7) as server:
        app = cl.log_parameters(server.log_key, "attendee-1")  # what the app vouches for
        first, errors = send_all(server, requests + [bad], "rec", parameters=app)
        assert len(first) == len(requests) and len(errors) == 1 and "bad request" in errors[0]
        raw_first = sum(len(r["talk_id"]) for r in first)
        # the writer threads run while the stubs wait for requests: the time rotation writes the rest
        assert wait_for(lambda: read_click_log(log)[1]["rows_read"] == raw_first, timeout=15)
        second, errors = send_all(server, requests[:8], "rec_batched", threads=4, batched=True, parameters=app)
        third, _ = send_all(server, requests[-5:], "rec_merlin", threads=1, parameters=app)
        assert not errors and len(second) == 8 and len(third) == 5
    server_log = server.log_path.read_text()  # after the stop: the finalize lines too
    answered = first + second + third
    clicks_log, report = read_click_log(log)
    # every click of every answered request, exactly once after dedup, nothing else
    assert report["rows_read"] == sum(len(r["talk_id"]) for r in answered)
    assert set(zip(clicks_log["session_id"], clicks_log["talk_id"],
                   clicks_log["timestamp"].to_numpy().astype(np.int64) // MS)) == keys(answered)
    assert report["clicks"] == len(keys(answered)) == len(clicks)
    assert report["duplicates_removed"] == report["rows_read"] - report["clicks"]
    assert not report["files_skipped"] and sum(report["rows_dropped"].values()) == 0
    writers = report["writers"]
    assert writers["writers"] == 4 and writers["open"] == 0  # every instance's finalize closed its log
    assert writers["clicks_dropped"] == 0 and writers["clicks_lost"] == 0 and writers["write_errors"] == 0
    assert writers["clicks_logged"] == report["rows_read"]
    by_instance = {doc["instance"]: doc for doc in writers["by_writer"].values()}
    assert sorted(by_instance) == ["rec_0_0", "rec_0_1", "rec_batched_0_0", "rec_merlin_0_0"]
    assert len({doc["pid"] for doc in by_instance.values()}) == 4  # one stub process each
    names = {inst: sorted(p.name for p in log.glob(f"clicks-{doc['prefix']}-*.parquet"))
             for inst, doc in by_instance.items()}
    assert all(names.values()), names  # both instances of rec answered, and logged
    assert len(set(names["rec_0_0"]) | set(names["rec_0_1"])) == len(names["rec_0_0"]) + len(names["rec_0_1"])
    assert all(pq.read_metadata(p).num_rows <= 7 for p in segments(log))  # rotated by size
    assert max(len(v) for v in names.values()) > 1
    assert {int(v) for p in segments(log) for v in pq.read_table(p).column("model_version").to_pylist()} == {1}
    for instance in by_instance:
        assert f"{instance.rsplit('_0_', 1)[0]} v1: logging clicks to {log}" in server_log
    for doc in by_instance.values():
        assert (f"click log {doc['prefix']} closed: {doc['clicks_logged']} clicks in {doc['segments']} segments, "
                "0 dropped, 0 lost to write errors") in server_log


@pytest.mark.server
def test_a_server_without_click_log_writes_nothing(repos, tmp_path, monkeypatch):
    from gtcrec.serving.server import TritonServer

    root, clicks = repos
    inherited = tmp_path / "inherited"
    monkeypatch.setenv(ck.CLICK_LOG_ENV, str(inherited))  # set in this process: not passed on
    with TritonServer(root / "plain", load_models=["rec"], startup_timeout=120) as server:
        answered, errors = send_all(server, session_requests(clicks)[:6], "rec", threads=2)
        assert len(answered) == 6 and not errors
        server_log = server.log_path.read_text()
    assert not inherited.exists()
    assert "logging clicks" not in server_log and "click log" not in server_log


# ------------------------------------------------------------------------------------------------ attacks

def scripted(prefix, sessions, start, client=None, gap_s=30, every_s=60):
    """Clicks of scripted ``sessions`` (lists of talk ids), started ``every_s`` apart; each its own client
    unless ``client`` names one."""
    rows = []
    for i, talks in enumerate(sessions):
        t0 = start + pd.Timedelta(seconds=every_s * i)
        rows += [(f"{prefix}-{i}", talk, t0 + pd.Timedelta(seconds=gap_s * j), client or f"{prefix}-client-{i}")
                 for j, talk in enumerate(talks)]
    return pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp", "client_id"])


def test_a_talk_pushed_by_short_sessions_learns_nothing_from_the_longer_ones_either():
    """A push mixing pairs with longer, audience-like sessions: the pairs give it away, and the longer
    sessions of the same push keep their other clicks but teach nothing about the pushed talk."""
    from gtcrec.live.screen import screen

    from test_executor import VOCAB

    start = pd.Timestamp("2024-03-18 09:00")
    rng = np.random.default_rng(11)
    honest = scripted("real", [list(rng.choice(VOCAB[:60], size=int(rng.integers(3, 8)), replace=False))
                               for _ in range(200)], start)
    pairs = scripted("pair", [[VOCAB[int(i)], "T0070"] for i in rng.integers(0, 20, 15)], start)
    longer = scripted("long", [list(rng.choice(VOCAB[:20], size=3, replace=False)) + ["T0070"] for _ in range(40)],
                      start)
    kept, report = screen(pd.concat([honest, pairs, longer], ignore_index=True))
    assert report["talks"]["short_session_talk"] == ["T0070"] and "T0070" in report["talks"]["carried_talk"]
    assert report["set_aside"]["short_session_talk"] == 15 and report["set_aside"]["sessions"] == 15
    assert not (kept["talk_id"] == "T0070").any() and report["clicks_removed"] == 40
    assert set(kept["session_id"]) == set(honest["session_id"]) | set(longer["session_id"])
    assert len(kept[kept["session_id"].isin(set(longer["session_id"]))]) == 3 * 40  # their other clicks stay


def send_sessions(url, frame, parameters_of, model_name="rec"):
    """Each session as the app sends it (its first 1, 2, ... clicks), with ``parameters_of(client_id)``."""
    import tritonclient.grpc as grpcclient

    from gtcrec.serving import client as cl

    client = grpcclient.InferenceServerClient(url)
    try:
        for _, session in frame.sort_values(["session_id", "timestamp"]).groupby("session_id", sort=True):
            for n in range(1, len(session) + 1):
                cl.infer_arrays(client, cl.request_arrays(session.iloc[:n]), model_name=model_name,
                                parameters=parameters_of(session["client_id"].iloc[0]))
    finally:
        client.close()


@pytest.mark.server
def test_only_the_app_is_logged_and_scripted_sessions_are_set_aside(repos, tmp_path):
    """One server, every attack shape: anonymous and wrong-key spam are answered and never logged;
    the app's honest sessions are kept; vouched-for pair spam from many client ids, single-talk floods,
    long scripted sessions, replayed real sessions, varied pairs through the balancer and one client's
    burst are set aside, each by its rule."""
    from gtcrec.live.screen import screen
    from gtcrec.serving import balancer as lb
    from gtcrec.serving import client as cl
    from gtcrec.serving.server import TritonServer

    from test_executor import VOCAB

    root, _ = repos
    start = pd.Timestamp("2024-03-18 09:00")
    rng = np.random.default_rng(3)
    honest = scripted("real", [list(rng.choice(VOCAB[:70], size=int(rng.integers(2, 8)), replace=False))
                               for _ in range(60)], start)
    replayed_from = honest[honest["session_id"] == "real-0"]["talk_id"].tolist()
    vouched = {  # shape -> (clicks, the rule expected to set them aside)
        "pair": (scripted("pair", [["T0001", "T0079"]] * 15, start), "repeated_pattern"),
        "flood": (scripted("flood", [["T0078"] * 3] * 6, start), "repeated_pattern"),
        "long": (scripted("long", [VOCAB[:9] + ["T0077"]] * 5, start), "repeated_pattern"),
        "replay": (scripted("replay", [replayed_from] * 5, start), "repeated_pattern"),
        "burst": (scripted("burst", [[VOCAB[int(i)], "T0075"] for i in rng.integers(0, 70, 15)], start,
                           client="one-bot", gap_s=5, every_s=10), "client_rate"),
    }
    through_balancer = scripted("lb", [[VOCAB[int(i)], "T0076"] for i in rng.integers(0, 70, 15)], start)
    anonymous = scripted("anon", [["T0002", "T0074"]] * 20, start)
    wrong_key = scripted("wrong", [["T0003", "T0073"]] * 5, start)
    with TritonServer(root / "plain", load_models=["rec"], startup_timeout=120, click_log=tmp_path / "log",
                      log_key="the-app-key", click_log_seconds=0.5) as server:
        def app(client_id):
            return cl.log_parameters(server.log_key, client_id)

        send_sessions(server.grpc_url, honest, app)
        for frame, _ in vouched.values():
            send_sessions(server.grpc_url, frame, app)
        send_sessions(server.grpc_url, anonymous, lambda _: None)
        send_sessions(server.grpc_url, wrong_key, lambda c: cl.log_parameters("not-the-key", c))
        if lb.haproxy_available()[0]:
            with lb.Balancer([server], model_name="rec") as balancer:
                send_sessions(balancer.grpc_url, through_balancer, app)
                send_sessions(balancer.grpc_url, anonymous.assign(session_id="lb-" + anonymous["session_id"]),
                              lambda _: None)
            vouched["balancer"] = (through_balancer, "short_session_talk")
    logged, report = read_click_log(tmp_path / "log", catalog_ids=VOCAB)
    # anonymous and wrong-key requests: answered, never logged, counted
    assert not logged["session_id"].str.startswith(("anon", "lb-anon", "wrong")).any()
    requests = (lambda f: int(f.groupby("session_id").size().sum()))  # one request per click of each session
    writers = report["writers"]
    assert writers["requests_unvouched"] == requests(anonymous) * (2 if "balancer" in vouched else 1)
    assert writers["requests_bad_key"] == requests(wrong_key) and writers["clicks_dropped"] == 0
    assert report["requests_not_logged"] == writers["requests_unvouched"] + writers["requests_bad_key"]
    # the app's clicks are all there, with the client id it sent and the key's fingerprint as source
    sent = pd.concat([honest] + [f for f, _ in vouched.values()], ignore_index=True)
    assert len(logged) == len(sent)
    merged = sent.merge(logged, on=["session_id", "talk_id", "timestamp"], suffixes=("", "_logged"))
    assert len(merged) == len(sent) and (merged["client_id"] == merged["client_id_logged"]).all()
    sources = {v for p in segments(tmp_path / "log") for v in pq.read_table(p).column("source").to_pylist()}
    assert sources == {ck.key_source("the-app-key")}
    assert "the-app-key" not in server.log_path.read_text()
    # the screen: every scripted shape set aside by its rule, the honest sessions kept (but the one replayed)
    kept, screened = screen(logged)
    reasons = {s: rule for rule, ids in screened["examples"].items() for s in ids}  # up to 5 per rule
    for shape, (frame, rule) in vouched.items():
        ids = set(frame["session_id"])
        assert not kept["session_id"].isin(ids).any(), shape
        assert screened["set_aside"][rule] >= min(len(ids), 5), (shape, screened["set_aside"])
        assert all(reasons.get(s, rule) == rule for s in ids), shape
    honest_kept = set(kept["session_id"]) & set(honest["session_id"])
    assert honest_kept == set(honest["session_id"]) - {"real-0"}  # the original of the replayed session goes too
    assert screened["set_aside"]["sessions"] == sum(f["session_id"].nunique() for f, _ in vouched.values()) + 1
    assert "T0079" in screened["talks"]["carried_talk"] and "T0076" in screened["talks"].get("short_session_talk",
                                                                                             ["T0076"])
