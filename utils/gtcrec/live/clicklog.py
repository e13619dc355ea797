"""Reading a click log folder back: the served model's segments and other applications' click files.

The served model writes ``clicks-<writer>-<seq>.parquet`` segments and a ``clicks-<writer>.stats.json``
file per writer into the folder (:class:`gtcrec.serving.click_log.ClickLog`, turned on with
``TritonServer(click_log=...)`` or ``gtcrec-serve --click-log``). :func:`read_click_log` reads every
``*.parquet`` and ``*.csv`` file of the folder whose name does not start with ``.`` (a segment being
written has a hidden name), so click files that another application drops there in the documented
clicks format (:func:`gtcrec.data.load_clicks`: ``session_id``, ``talk_id``, ``timestamp``) are read
the same way.

Nothing in a file stops the reading: a file that is empty, unreadable (truncated, not parquet, not
text) or lacks one of the three columns is skipped, and a row with an empty id, an unknown talk (when
``catalog_ids`` is given) or a timestamp that is missing or cannot be read is dropped; both are
counted in the report with a message that names the file.

The served model logs only the requests the app vouched for (the logging key), with the client id
the app sent (``client_id``) and which key vouched (``source``). The reader keeps ``client_id`` (empty
for files without it: each such session is then its own client), which the cycle's screening uses
(:mod:`gtcrec.live.screen`).

Every request carries its session so far, so the log holds the same click many times: the clicks
are deduplicated by (session_id, talk_id, timestamp). Unlike :func:`gtcrec.data.load_clicks`,
sessions with a single click are kept: during the event, a session that has one click so far is a
live session.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from gtcrec.data.formats import CLICK_COLUMNS  # the documented clicks format
from gtcrec.serving.click_log import SEGMENT_PREFIX, STATS_SUFFIX

SUFFIXES = (".parquet", ".csv")
DROP_REASONS = {  # in the order they are checked: a row is counted under the first that applies
    "empty_session_id": "an empty session id",
    "empty_talk_id": "an empty talk id",
    "bad_timestamp": "a missing or unreadable timestamp",
    "unknown_talk_id": "a talk id that is not in the catalog",
}
_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_NS_LIMIT = np.iinfo(np.int64).max  # datetime64[ns] covers |value| < 2**63 ns


class _Skip(Exception):
    """A file that cannot be read (the message says why)."""


# ------------------------------------------------------------------------------------------------ one file

def _texts(values: Iterable[Any]) -> np.ndarray:
    """Ids as stripped str (bytes decoded as UTF-8; whole floats without '.0'; missing -> '')."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append("")
        elif isinstance(v, bytes):
            out.append(v.decode("utf-8", "backslashreplace").strip())
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip())
    return np.array(out, dtype=object)


def _arrow_ids(column) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.utf8_trim_whitespace(column).fill_null("").to_numpy(zero_copy_only=False).astype(object)
    return _texts(column.to_pylist())


def _text_timestamps(values) -> np.ndarray:
    """ISO-8601 text (or datetimes) -> int64 ns, with the minimum int64 for what cannot be read."""
    from gtcrec.data.formats import _parse_timestamps  # the documented format's own parser

    parsed = _parse_timestamps(pd.Series(values, dtype=object))
    return parsed.to_numpy().astype(np.int64)  # NaT -> min int64


def _ns_from_units(values: np.ndarray, valid: np.ndarray, unit: str) -> np.ndarray:
    factor = _NS[unit]
    valid = valid & (np.abs(values.astype(np.float64)) * factor < _NS_LIMIT * 0.999)
    out = np.full(len(values), np.iinfo(np.int64).min, dtype=np.int64)
    out[valid] = values[valid].astype(np.int64) * factor
    return out


def _arrow_timestamps(column) -> tuple[np.ndarray, str]:
    """int64 ns (min int64 where missing or unreadable) and a note on the column's type ('' if fine)."""
    import pyarrow as pa

    valid = ~column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(column.type):  # with a time zone: stored as UTC; without: taken as UTC
        raw = column.cast(pa.int64()).fill_null(0).to_numpy()
        return _ns_from_units(raw, valid, column.type.unit), ""
    if pa.types.is_integer(column.type):  # epoch milliseconds, as the served requests carry them
        raw = column.cast(pa.int64()).fill_null(0).to_numpy()
        return _ns_from_units(raw, valid, "ms"), ""
    if pa.types.is_date(column.type):
        return _text_timestamps(column.cast(pa.timestamp("ms")).to_pylist()), ""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return _text_timestamps(column.to_pylist()), ""
    return (np.full(len(column), np.iinfo(np.int64).min, dtype=np.int64),
            f"timestamp column of type {column.type} (expected timestamps, ISO-8601 text or int64 milliseconds)")


CLIENT_COLUMN = "client_id"  # optional: the client the app vouched for (empty when a file has none)


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # noqa: BLE001 - truncated, not parquet, ...
        raise _Skip(f"unreadable parquet file, truncated or not parquet ({type(exc).__name__}: {exc})") from None
    missing = [c for c in CLICK_COLUMNS if c not in names]
    if missing:
        raise _Skip(f"lacks column(s) {', '.join(missing)} (found: {', '.join(names) or 'none'})")
    columns = CLICK_COLUMNS + ([CLIENT_COLUMN] if CLIENT_COLUMN in names else [])
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:  # noqa: BLE001
        raise _Skip(f"unreadable parquet file ({type(exc).__name__}: {exc})") from None
    column = {name: table.column(name).combine_chunks() for name in columns}
    ts, note = _arrow_timestamps(column["timestamp"])
    clients = (_arrow_ids(column[CLIENT_COLUMN]) if CLIENT_COLUMN in column
               else np.full(len(ts), "", dtype=object))
    return _arrow_ids(column["session_id"]), _arrow_ids(column["talk_id"]), ts, note, clients


def _read_csv(path: Path):
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except Exception as exc:  # noqa: BLE001 - not text, bad quoting, ...
        raise _Skip(f"unreadable CSV file ({type(exc).__name__}: {exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in CLICK_COLUMNS if c not in frame.columns]
    if missing:
        raise _Skip(f"lacks column(s) {', '.join(missing)} (found: {', '.join(frame.columns) or 'none'})")
    clients = (_texts(frame[CLIENT_COLUMN].tolist()) if CLIENT_COLUMN in frame.columns
               else np.full(len(frame), "", dtype=object))
    return (_texts(frame["session_id"].tolist()), _texts(frame["talk_id"].tolist()),
            _text_timestamps(frame["timestamp"].tolist()), "", clients)


def click_files(folder) -> list[Path]:
    """The files :func:`read_click_log` reads: ``*.parquet`` and ``*.csv``, not hidden, by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file())


# ------------------------------------------------------------------------------------------------ the folder

def _since_ns(since) -> int | None:
    """``since`` as int64 ns: a number is epoch milliseconds; anything else goes through pd.Timestamp
    (naive: UTC)."""
    if since is None:
        return None
    if isinstance(since, (int, float, np.integer, np.floating)) and not isinstance(since, (bool, np.bool_)):
        return int(round(float(since) * 1_000_000))
    ts = pd.Timestamp(since)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.value)


def read_click_log(folder, catalog_ids: Iterable[str] | None = None, since=None) -> tuple[pd.DataFrame, dict]:
    """Every click of ``folder`` (see the module docstring), once.

    ``catalog_ids``: the talk ids of the catalog; rows with another talk id are dropped (and counted).
    ``since``: keep clicks with ``timestamp >= since`` (a pandas Timestamp, datetime or text, naive
    meaning UTC; or epoch milliseconds).

    Returns ``(clicks, report)``: clicks has session_id and talk_id (str), timestamp
    (datetime64[ns], UTC) and client_id (str, '' when the file has none), deduplicated, in the click order of training and serving
    (:mod:`gtcrec.order`: by session id text, then time, then talk id text). The report:
    ``files_read`` and ``files_skipped`` (name -> reason), ``rows_read``, ``rows_dropped`` (reason ->
    count) and ``rows_dropped_by_file``, ``rows_before_since``, ``duplicates_removed``, ``clicks``,
    ``sessions``, ``writers`` (the :func:`log_stats` of the folder), ``writers_dropped_clicks`` (clicks
    the served model could not queue), ``writers_lost_clicks`` (clicks it could not write) and
    ``messages`` (one line per skipped file and per file with dropped rows)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"click log folder {folder} is not a folder")
    known = None if catalog_ids is None else set(str(t) for t in catalog_ids)
    since_ns = _since_ns(since)
    parts, messages = [], []
    files_read: list[str] = []
    files_skipped: dict[str, str] = {}
    rows_read = rows_before = 0
    dropped = {reason: 0 for reason in DROP_REASONS}
    dropped_by_file: dict[str, dict[str, int]] = {}
    for path in click_files(folder):
        try:
            if path.stat().st_size == 0:
                raise _Skip("empty file (0 bytes)")
            reader = _read_csv if path.suffix.lower() == ".csv" else _read_parquet
            sessions, talks, ts, note, clients = reader(path)
        except _Skip as skip:
            files_skipped[path.name] = str(skip)
            messages.append(f"{path.name}: skipped: {skip}")
            continue
        except Exception as exc:  # noqa: BLE001 - gone since it was listed, or content no reader expected
            files_skipped[path.name] = f"could not be read ({type(exc).__name__}: {exc})"
            messages.append(f"{path.name}: skipped: {files_skipped[path.name]}")
            continue
        files_read.append(path.name)
        n = len(ts)
        rows_read += n
        bad_ts = ts == np.iinfo(np.int64).min
        checks = {"empty_session_id": sessions == "", "empty_talk_id": talks == "", "bad_timestamp": bad_ts,
                  "unknown_talk_id": (~pd.Series(talks, dtype=object).isin(known).to_numpy() if known is not None
                                      else np.zeros(n, dtype=bool))}
        keep = np.ones(n, dtype=bool)
        counts = {}
        for reason, hit in checks.items():
            hit = hit & keep
            if hit.any():
                counts[reason] = int(hit.sum())
                dropped[reason] += counts[reason]
                keep &= ~hit
                example = ""
                if reason == "unknown_talk_id":
                    example = f", e.g. {sorted(set(talks[hit].tolist()))[:3]}"
                elif reason == "bad_timestamp" and note:
                    example = f" ({note})"
                messages.append(f"{path.name}: dropped {counts[reason]} of {n} rows with {DROP_REASONS[reason]}"
                                f"{example}")
        if counts:
            dropped_by_file[path.name] = counts
        if since_ns is not None:
            early = keep & (ts < since_ns)
            rows_before += int(early.sum())
            keep &= ~early
        parts.append((sessions[keep], talks[keep], ts[keep], clients[keep]))

    sessions = np.concatenate([p[0] for p in parts]) if parts else np.array([], dtype=object)
    talks = np.concatenate([p[1] for p in parts]) if parts else np.array([], dtype=object)
    ts = np.concatenate([p[2] for p in parts]) if parts else np.array([], dtype=np.int64)
    clients = np.concatenate([p[3] for p in parts]) if parts else np.array([], dtype=object)
    frame = pd.DataFrame({"session_id": sessions.astype(object), "talk_id": talks.astype(object), "timestamp": ts,
                          CLIENT_COLUMN: clients.astype(object)})
    before = len(frame)
    frame = frame.drop_duplicates(CLICK_COLUMNS, ignore_index=True)
    duplicates = before - len(frame)
    if len(frame):
        # the click order of training and serving; imported here (gtcrec.order is numpy only)
        from gtcrec.order import click_order, text_rank

        order = click_order(text_rank(frame["session_id"]), frame["timestamp"].to_numpy(),
                            text_rank(frame["talk_id"]))
        frame = frame.iloc[order].reset_index(drop=True)
    frame["timestamp"] = frame["timestamp"].to_numpy().astype("datetime64[ns]")
    writers = log_stats(folder)
    report = {
        "folder": str(folder),
        "files_read": files_read,
        "files_skipped": files_skipped,
        "rows_read": rows_read,
        "rows_dropped": dropped,
        "rows_dropped_by_file": dropped_by_file,
        "rows_before_since": rows_before,
        "duplicates_removed": int(duplicates),
        "clicks": int(len(frame)),
        "sessions": int(frame["session_id"].nunique()),
        "writers": writers,
        "writers_dropped_clicks": writers["clicks_dropped"],
        "writers_lost_clicks": writers["clicks_lost"],
        "requests_not_logged": writers["requests_unvouched"] + writers["requests_bad_key"],
        "messages": messages + writers["messages"],
    }
    return frame, report


COUNTERS = ("clicks_queued", "clicks_logged", "clicks_dropped", "requests_dropped", "clicks_lost", "segments",
            "write_errors", "requests_unvouched", "clicks_unvouched", "requests_bad_key", "clicks_bad_key")


def log_stats(folder) -> dict:
    """The served model's writers' counters (their ``clicks-*.stats.json`` files), summed.

    Returns ``writers`` (how many), ``open`` (those not closed yet: still serving, or stopped without
    a finalize), the sums of ``clicks_queued``, ``clicks_logged``, ``clicks_dropped``,
    ``requests_dropped``, ``clicks_lost``, ``segments``, ``write_errors``, ``requests_unvouched`` / ``clicks_unvouched`` (no logging key) and ``requests_bad_key`` / ``clicks_bad_key`` (another key), ``by_writer`` (prefix ->
    its file) and ``messages`` (stats files that could not be read)."""
    out: dict[str, Any] = {"writers": 0, "open": 0, **{c: 0 for c in COUNTERS}, "by_writer": {}, "messages": []}
    for path in sorted(Path(folder).glob(f"{SEGMENT_PREFIX}*{STATS_SUFFIX}")):
        if path.name.startswith("."):
            continue
        try:
            doc = json.loads(path.read_text())
            counts = {c: int(doc.get(c, 0)) for c in COUNTERS}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            out["messages"].append(f"{path.name}: unreadable stats file ({type(exc).__name__}: {exc})")
            continue
        out["writers"] += 1
        out["open"] += 0 if doc.get("closed") else 1
        for c, v in counts.items():
            out[c] += v
        out["by_writer"][str(doc.get("prefix", path.name))] = doc
    return out
