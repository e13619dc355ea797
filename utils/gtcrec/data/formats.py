"""Reading catalog and click files (generated or brought by a user) through one validation; problems raise
:class:`DataValidationError` naming the file, the row and the column."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CATALOG_COLUMNS = ["talk_id", "title", "abstract", "track", "level", "format", "organization", "day", "slot"]
CATALOG_TEXT_COLUMNS = ["talk_id", "title", "abstract", "track", "level", "format", "organization", "slot"]
TALK_ID_ALIASES = ["id"]  # taken as the talk id when the file has no talk_id column
CLICK_COLUMNS = ["session_id", "talk_id", "timestamp"]
MAX_PROBLEMS = 20



class DataValidationError(ValueError):
    """Problems found in an input file; ``problems`` lists them all, the message shows the first 20.

    Rows are 1-based data rows in file order (the CSV header is not counted: data row 1 is line 2)."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        shown = self.problems[:MAX_PROBLEMS]
        head = (f"{self.path}: {len(self.problems)} problem(s) "
                f"(rows are 1-based data rows, header not counted)")
        lines = [head] + [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    raise DataValidationError(path, [f"{path}: unsupported file type (use .csv or .parquet)"])


def _read(path: str | Path) -> tuple[pd.DataFrame, str, Path]:
    path = Path(path)
    kind = _file_kind(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if kind == "csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    else:
        frame = pd.read_parquet(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.reset_index(drop=True), kind, path


def _where(path: Path, row: int | str, column: str) -> str:
    return f"{path.name} row {row}, column '{column}'"


def _missing_columns(frame: pd.DataFrame, required: list[str], path: Path, kind: str) -> list[str]:
    header = "header (line 1)" if kind == "csv" else "schema"
    found = ", ".join(map(repr, frame.columns)) or "none"
    return [f"{path.name} {header}, column '{c}': missing column (found: {found})"
            for c in required if c not in frame.columns]


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if value is pd.NaT or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, np.ndarray)) else False
    except (TypeError, ValueError):
        return False


def _as_str(value: Any) -> str:
    if _is_blank(value):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _parse_day(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)) or _is_blank(value):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    text = str(value).strip()
    if re.fullmatch(r"[+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+]?\d+\.0*", text):
        return int(float(text))
    return None


_SLOT_RE = re.compile(r"^([01]?\d|2[0-3]):[0-5]\d$")


def load_catalog(path: str | Path) -> pd.DataFrame:
    """Read and validate a catalog (CSV or parquet by suffix). Raises :class:`DataValidationError`.

    Only ``talk_id`` (or, when the file has no ``talk_id`` column, ``id``) and ``title`` are
    required. Returns every documented column first (talk_id, title, abstract, track, level, format,
    organization, slot as str, ``""`` when empty or absent; day as int64, or as pandas' nullable
    Int64 with missing values when some days are empty or the column is absent), then the file's
    other columns, in file order. ``attrs["talk_id_column"]`` names the file's talk id column."""
    frame, kind, path = _read(path)
    id_col = next((c for c in ["talk_id"] + TALK_ID_ALIASES if c in frame.columns), "talk_id")
    problems = []
    if id_col not in frame.columns:
        header = "header (line 1)" if kind == "csv" else "schema"
        found = ", ".join(map(repr, frame.columns)) or "none"
        problems.append(f"{path.name} {header}, column 'talk_id': missing column (or 'id'; found: {found})")
    problems += _missing_columns(frame, ["title"], path, kind)
    out = pd.DataFrame(index=frame.index)
    for col in CATALOG_TEXT_COLUMNS:
        source = id_col if col == "talk_id" else col
        out[col] = [_as_str(v) for v in frame[source].tolist()] if source in frame.columns else ""
    if id_col in frame.columns:
        first_row: dict[str, int] = {}
        dup_rows: dict[str, list[int]] = {}
        for i, tid in enumerate(out["talk_id"].tolist(), start=1):
            if not tid:
                problems.append(f"{_where(path, i, id_col)}: empty talk id")
            elif tid in first_row:
                dup_rows.setdefault(tid, [first_row[tid]]).append(i)
            else:
                first_row[tid] = i
        for tid, rows in dup_rows.items():
            listed = ", ".join(map(str, rows[:-1])) + f" and {rows[-1]}"
            problems.append(f"{path.name} rows {listed}, column '{id_col}': duplicate talk id {tid!r}")
    if "title" in frame.columns:
        for i, title in enumerate(out["title"].tolist(), start=1):
            if not title:
                problems.append(f"{_where(path, i, 'title')}: empty title")
    days: list[int | None] = [None] * len(frame)
    if "day" in frame.columns:
        for i, v in enumerate(frame["day"].tolist(), start=1):
            if _is_blank(v):
                continue  # an empty day is a missing value
            d = _parse_day(v)
            if d is None or d < 1:
                problems.append(f"{_where(path, i, 'day')}: day must be an integer >= 1 (or empty), got {v!r}")
            else:
                days[i - 1] = d
    for i, s in enumerate(out["slot"].tolist(), start=1):
        if s and not _SLOT_RE.match(s):
            problems.append(f"{_where(path, i, 'slot')}: slot must be 'HH:MM' (or empty), got {s!r}")
    if problems:
        raise DataValidationError(path, problems)
    if all(d is not None for d in days):
        out["day"] = np.array(days, dtype=np.int64)
    else:
        out["day"] = pd.array(days, dtype="Int64")
    extra = [c for c in frame.columns if c not in CATALOG_COLUMNS and c != id_col]
    for c in extra:
        out[c] = frame[c]
    out = out[CATALOG_COLUMNS + extra].reset_index(drop=True)
    out.attrs["talk_id_column"] = id_col  # the file's name for it, for later messages
    return out


def _parse_timestamps(values: pd.Series) -> pd.Series:
    """datetime64[ns] (UTC, tz-naive) or NaT per value; numbers are not accepted as timestamps."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        return ts.astype("datetime64[ns]")
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    obj = values.astype(object)
    numeric = obj.map(lambda v: isinstance(v, (int, float, np.integer, np.floating, bool)))
    text = obj.where(~numeric, None).map(lambda v: v.strip() if isinstance(v, str) else v)
    text = text.where(text != "", None)
    try:
        ts = pd.to_datetime(text, errors="coerce", utc=True)
    except (ValueError, TypeError, OverflowError):  # a value pandas cannot even coerce: go one by one
        ts = pd.to_datetime(text.map(_one_timestamp), utc=True)
    return ts.dt.tz_localize(None).astype("datetime64[ns]")


def _one_timestamp(value: Any) -> Any:
    try:
        return pd.to_datetime(value, utc=True)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def load_clicks(path: str | Path, catalog: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read and validate clicks (CSV or parquet) against a catalog (a DataFrame from
    :func:`load_catalog`, or its path). Returns (clicks, report): clicks has session_id and talk_id as
    str and timestamp as datetime64[ns] (UTC if the file had offsets), sorted by session id, then time,
    then talk id (the click order rule of training and serving); sessions with a single click are dropped and counted in the report."""
    if not isinstance(catalog, pd.DataFrame):
        catalog = load_catalog(catalog)
    frame, kind, path = _read(path)
    problems = _missing_columns(frame, CLICK_COLUMNS, path, kind)
    known = set(catalog["talk_id"].astype(str))
    out = pd.DataFrame(index=frame.index)
    if "session_id" in frame.columns:
        out["session_id"] = [_as_str(v) for v in frame["session_id"].tolist()]
        for i in np.flatnonzero(out["session_id"].to_numpy() == ""):
            problems.append(f"{_where(path, i + 1, 'session_id')}: empty session id")
    if "talk_id" in frame.columns:
        out["talk_id"] = [_as_str(v) for v in frame["talk_id"].tolist()]
        ids = out["talk_id"].to_numpy()
        for i in np.flatnonzero(~pd.Series(ids).isin(known).to_numpy()):
            what = "empty talk id" if not ids[i] else f"talk id {ids[i]!r} is not in the catalog"
            problems.append(f"{_where(path, i + 1, 'talk_id')}: {what}")
    if "timestamp" in frame.columns:
        ts = _parse_timestamps(frame["timestamp"])
        raw = frame["timestamp"].tolist()
        for i in np.flatnonzero(ts.isna().to_numpy()):
            problems.append(f"{_where(path, i + 1, 'timestamp')}: unparsable timestamp {raw[i]!r} "
                            "(expected ISO-8601 text or a datetime)")
        out["timestamp"] = ts.to_numpy()
    if problems:
        raise DataValidationError(path, problems)

    extra = [c for c in frame.columns if c not in CLICK_COLUMNS]
    for c in extra:
        out[c] = frame[c]
    out = out[CLICK_COLUMNS + extra]
    n_rows = len(out)
    # THE click order of training and serving (gtcrec.order.click_order): by session
    # (id text), then time, then talk id text. Imported here: that module loads Merlin (seconds).
    from gtcrec.order import click_order, text_rank

    order = click_order(text_rank(out["session_id"]), out["timestamp"].to_numpy().astype(np.int64),
                        text_rank(out["talk_id"]))
    out = out.iloc[order].reset_index(drop=True)
    sizes = out.groupby("session_id", sort=False)["talk_id"].transform("size")
    single = sizes == 1
    n_sessions_in_file = int(out["session_id"].nunique())
    out = out[~single].reset_index(drop=True)
    repeated = int(out.duplicated(["session_id", "talk_id"]).sum())
    report = {
        "file": str(path),
        "n_rows": n_rows,
        "n_sessions_in_file": n_sessions_in_file,
        "dropped_single_click_sessions": int(single.sum()),
        "n_clicks": int(len(out)),
        "n_sessions": int(out["session_id"].nunique()),
        "n_talks_clicked": int(out["talk_id"].nunique()),
        "n_catalog_talks": int(len(catalog)),
        "n_repeated_clicks": repeated,
        "first_timestamp": str(out["timestamp"].min()) if len(out) else None,
        "last_timestamp": str(out["timestamp"].max()) if len(out) else None,
    }
    return out, report
