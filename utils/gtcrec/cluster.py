"""The ETL of notebook 01 on a Dask cluster, out of core.

Same workflow (:func:`gtcrec.etl.build_workflow`, unchanged), same outputs as
:func:`gtcrec.etl.run_etl` (``train`` / ``valid`` / ``test`` parquet folders, the saved workflow, the
counts), but the click log is a folder of parquet partitions read by ``dask.dataframe`` and every step
runs partition by partition on the cluster's workers:

1. clicks on talks outside the vocabulary are dropped (counted);
2. sessions are numbered by their first click, ties by the original id (THE numbering of
   :func:`gtcrec.etl.number_sessions`): a per-session start table (one row per session, grouped with
   ``split_out``), sorted with ``set_index`` on the start time (equal times land in one partition, so
   the tie-break by id is a sort within a partition), numbered by partition offsets, and joined back
   to the clicks by a hash join;
3. whole sessions go to train / valid / test by number (the bounds of :func:`gtcrec.etl.split_by_time`);
4. each split becomes a ``merlin.io.Dataset(cpu=True)`` shuffled by the session key
   (``Dataset.shuffle_by_keys``), so that ``Groupby`` finds every session inside one partition, and the
   workflow is fitted on train and applied to every split under ``merlin.core.utils.Distributed``.

No step holds the whole log in one process: the largest single object is one partition of clicks,
and the shuffles go through Dask (workers spill to disk when they reach their ``memory_limit``).
The start table has one row per session (about 80 bytes), spread over ``split_out`` partitions.

:func:`write_clicks_partitioned` writes a large log with the seeded generator, one partition of
sessions at a time (about 46 MB of pandas per 50,000 sessions): 1M sessions is 20 files of 50,000;
10M sessions is 200 files, with the same memory per step.

:func:`local_cluster` gives a ``LocalCluster`` of worker processes on the CPU, or a
``dask_cuda.LocalCUDACluster`` (one worker per GPU) with ``cuda=True``. With ``cpu=False`` (GPUs and cudf)
the numbering still runs in pandas and each split reaches the workflow as cudf partitions; the default is
``cpu=True`` (pandas everywhere, which ``LocalCUDACluster`` workers run as well).
"""
from __future__ import annotations

import contextlib
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gtcrec import etl
from gtcrec.data.generator import generate_sessions
from gtcrec.data.latent import ClickModel, Latent

CLICK_COLUMNS = ["session_id", "talk_id", "timestamp"]
WORKFLOW_COLUMNS = ["session_id", "ts", "talk_id"]  # what run_etl gives the workflow
SESSION_KEY = "session_key"  # the original (string) session id


# ----------------------------------------------------------------------------- a large log


def part_seed(seed: int, part: int) -> int:
    """The generator seed of partition ``part`` (independent streams from one seed)."""
    return int(np.random.SeedSequence([int(seed), int(part)]).generate_state(1)[0])


def write_clicks_partitioned(folder: str | Path, catalog: pd.DataFrame, latent: Latent, n_sessions: int,
                             seed: int, sessions_per_part: int = 50_000, start: str = "2025-01-20",
                             days: float = 60.0, model: ClickModel = ClickModel(),
                             time_resolution_s: int = 1, row_group_size: int | None = None) -> dict[str, Any]:
    """Write ``n_sessions`` generated sessions as ``part_00000.parquet``, ``part_00001.parquet``, ...
    (columns ``session_id, talk_id, timestamp``), ``sessions_per_part`` sessions per file, generating and
    writing one file at a time (:func:`gtcrec.data.generator.generate_sessions` with a seed per part and
    session ids ``"<event>-<part>-<i>"``, so they are unique over the log). Every session starts
    uniformly within ``days`` days, so sessions of all files interleave in time.

    Returns ``{"folder", "files", "sessions", "clicks"}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if n_sessions < 1 or sessions_per_part < 1:
        raise ValueError("n_sessions and sessions_per_part must be >= 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_parts = math.ceil(n_sessions / sessions_per_part)
    files, n_clicks = [], 0
    for part in range(n_parts):
        size = min(sessions_per_part, n_sessions - part * sessions_per_part)
        clicks = generate_sessions(catalog, latent, size, part_seed(seed, part), start=start, days=days,
                                   model=model, session_prefix=f"{latent.event}-{part:05d}-",
                                   time_resolution_s=time_resolution_s)
        path = folder / f"part_{part:05d}.parquet"
        pq.write_table(pa.Table.from_pandas(clicks[CLICK_COLUMNS], preserve_index=False), path,
                       row_group_size=row_group_size)
        files.append(path)
        n_clicks += len(clicks)
        del clicks
    return {"folder": folder, "files": files, "sessions": int(n_sessions), "clicks": int(n_clicks)}


# ----------------------------------------------------------------------------- the cluster


def local_cluster(n_workers: int = 2, memory_limit: str | int = "2GiB", cuda: bool = False,
                  local_directory: str | Path | None = None, **options):
    """A local Dask cluster and its client: ``(cluster, client)``; close both when done
    (:func:`close`). CPU: ``distributed.LocalCluster`` of ``n_workers`` processes, one thread each,
    ``memory_limit`` per worker (they spill to ``local_directory`` past 60 % of it), the scheduler and its
    HTTP endpoint on free ports.
    ``cuda=True``: ``dask_cuda.LocalCUDACluster`` (one worker per visible GPU; ``n_workers`` GPUs
    at most), same options."""
    from distributed import Client

    common = dict(memory_limit=memory_limit, dashboard_address=":0", threads_per_worker=1)  # no fixed port (None means 8787)
    if local_directory is not None:
        common["local_directory"] = str(local_directory)
    common.update(options)
    if cuda:
        from dask_cuda import LocalCUDACluster

        cluster = LocalCUDACluster(n_workers=n_workers, **common)
    else:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=n_workers, processes=True, **common)
    return cluster, Client(cluster)


def close(cluster, client) -> None:
    """Close a client and its cluster (either may be None)."""
    for thing in (client, cluster):
        if thing is not None:
            with contextlib.suppress(Exception):
                thing.close()


# ----------------------------------------------------------------------------- named partition functions
# Named and importable: the workers unpickle them by reference.


def known_clicks(frame: pd.DataFrame, vocab: frozenset) -> pd.DataFrame:
    """Clicks on talks of the vocabulary, with the original session id kept as ``session_key`` and
    the click time as ``ts`` (epoch milliseconds, as :func:`gtcrec.etl.number_sessions` computes it)."""
    keep = frame["talk_id"].astype(str).isin(vocab).to_numpy()
    out = pd.DataFrame({SESSION_KEY: frame["session_id"].astype(str).to_numpy()[keep],
                        "talk_id": frame["talk_id"].astype(str).to_numpy()[keep],
                        "start_ns": frame["timestamp"].astype("datetime64[ns]").astype("int64").to_numpy()[keep]})
    out["ts"] = out["start_ns"] // 10**6
    return out


def count_unknown(frame: pd.DataFrame, vocab: frozenset) -> pd.Series:
    """Number of clicks on talks outside the vocabulary in one partition."""
    return pd.Series([int((~frame["talk_id"].astype(str).isin(vocab)).sum())])


def sort_starts(frame: pd.DataFrame) -> pd.DataFrame:
    """One partition of the start table (index: start time) in (start, original id) order."""
    out = frame.reset_index()
    return out.sort_values(["start_ns", SESSION_KEY], kind="stable").reset_index(drop=True)


def number_partition(frame: pd.DataFrame, offsets: np.ndarray, partition_info=None) -> pd.DataFrame:
    """Session numbers of one sorted partition: the partition's offset plus the position in it."""
    first = int(offsets[partition_info["number"]]) if partition_info is not None else 0
    return pd.DataFrame({SESSION_KEY: frame[SESSION_KEY].to_numpy(),
                         "session_id": np.arange(first, first + len(frame), dtype=np.int64)})


def in_range(frame: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    """The clicks of sessions numbered ``lo <= n < hi``, in the workflow's columns."""
    keep = (frame["session_id"] >= lo) & (frame["session_id"] < hi)
    return frame.loc[keep, WORKFLOW_COLUMNS].reset_index(drop=True)


def partition_length(frame: pd.DataFrame) -> pd.Series:
    return pd.Series([len(frame)])


def to_gpu_frame(frame: pd.DataFrame):
    """A pandas partition as a cudf DataFrame (``cpu=False``: the workflow then runs on the GPU)."""
    import cudf

    return cudf.from_pandas(frame)


# ----------------------------------------------------------------------------- the ETL


def split_bounds(n_sessions: int, valid_frac: float = 0.1, test_frac: float = 0.1) -> dict[str, tuple[int, int]]:
    """Session-number ranges ``[lo, hi)`` of each split for ``n_sessions`` numbered sessions, taken from
    :func:`gtcrec.etl.split_by_time` itself (applied to the numbers ``0 .. n-1``), so both paths split alike."""
    numbers = pd.DataFrame({"session_id": np.arange(n_sessions, dtype=np.int64)})
    parts = etl.split_by_time(numbers, valid_frac, test_frac) if n_sessions else {s: numbers for s in etl.SPLITS}
    bounds, lo = {}, 0
    for name in etl.SPLITS:
        ids = parts[name]["session_id"].to_numpy()
        if not np.array_equal(ids, np.arange(lo, lo + len(ids))):
            raise AssertionError("etl.split_by_time no longer gives contiguous ranges in split order")
        bounds[name], lo = (lo, lo + len(ids)), lo + len(ids)
    return bounds


def _read_clicks(clicks_path, blocksize=None):
    import dask.dataframe as dd

    if isinstance(clicks_path, dd.DataFrame):
        return clicks_path
    path = Path(clicks_path)
    files = sorted(str(p) for p in path.glob("*.parquet")) if path.is_dir() else [str(path)]
    if not files:
        raise FileNotFoundError(f"no parquet files under {path}")
    return dd.read_parquet(files, columns=CLICK_COLUMNS, split_row_groups=False)


def number_sessions_dask(known, client, split_out: int):
    """The clicks with ``session_id`` = the session's number (order of first click, ties by original
    id) and the number of sessions: the out-of-core form of :func:`gtcrec.etl.number_sessions`."""
    import dask.dataframe as dd

    starts = known.groupby(SESSION_KEY, sort=False)["start_ns"].min(split_out=split_out).to_frame().reset_index()
    starts = starts.set_index("start_ns", shuffle="tasks").map_partitions(
        sort_starts, meta=pd.DataFrame({"start_ns": pd.Series(dtype="int64"),
                                        SESSION_KEY: pd.Series(dtype=object)}))
    starts = client.persist(starts)
    lengths = client.compute(starts.map_partitions(partition_length, meta=(None, "int64"))).result()
    offsets = np.r_[0, np.cumsum(np.asarray(lengths, dtype=np.int64))]
    numbers = starts.map_partitions(number_partition, offsets, meta=pd.DataFrame(
        {SESSION_KEY: pd.Series(dtype=object), "session_id": pd.Series(dtype="int64")}))
    numbered = dd.merge(known, numbers, on=SESSION_KEY, how="inner", shuffle="tasks")
    return numbered, int(offsets[-1])


@dataclass
class SplitFrames:
    """The click log numbered and split on the cluster (:func:`split_frames`): ``frames`` per split
    (``dask.dataframe`` with ``session_id, ts, talk_id``, numbered like :func:`gtcrec.etl.run_etl`),
    ``npartitions`` for the shuffles, ``counts`` (unknown clicks dropped, sessions per split in,
    sessions, clicks), and the persisted numbered clicks (``release()`` frees them on the workers)."""
    frames: dict
    npartitions: int
    counts: dict
    client: Any
    numbered: Any

    def release(self) -> None:
        self.client.cancel(self.numbered)


def split_frames(clicks_path, catalog: pd.DataFrame, client, valid_frac: float = 0.1, test_frac: float = 0.1,
                 npartitions: int | None = None) -> SplitFrames:
    """Steps 1-3 of the module's description, on the cluster: known clicks, sessions numbered by first
    click over the whole log, whole sessions to train / valid / test by number. ``clicks_path``: a folder
    of parquet files (or one file, or a ``dask.dataframe``) with ``session_id, talk_id, timestamp``.
    ``npartitions``: partitions of the start table and of each later shuffle (default: the input's, at
    least the number of workers)."""
    vocab_set = frozenset(etl.vocabulary(catalog).tolist())
    clicks = _read_clicks(clicks_path)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    nparts = int(npartitions or max(clicks.npartitions, n_workers))
    known = clicks.map_partitions(known_clicks, vocab_set, meta=pd.DataFrame(
        {SESSION_KEY: pd.Series(dtype=object), "talk_id": pd.Series(dtype=object),
         "start_ns": pd.Series(dtype="int64"), "ts": pd.Series(dtype="int64")}))
    unknown = clicks.map_partitions(count_unknown, vocab_set, meta=(None, "int64")).sum()
    numbered, n_sessions = number_sessions_dask(known, client, nparts)
    numbered = client.persist(numbered)
    n_unknown, n_clicks = (int(v) for v in client.compute([unknown, numbered.map_partitions(
        partition_length, meta=(None, "int64")).sum()], sync=True))
    bounds = split_bounds(n_sessions, valid_frac, test_frac)
    meta = pd.DataFrame({"session_id": pd.Series(dtype="int64"), "ts": pd.Series(dtype="int64"),
                         "talk_id": pd.Series(dtype=object)})
    frames = {name: numbered.map_partitions(in_range, *bounds[name], meta=meta) for name in etl.SPLITS}
    counts = {"unknown_clicks_dropped": n_unknown, "sessions": n_sessions, "clicks_in": n_clicks,
              **{f"{name}_sessions_in": hi - lo for name, (lo, hi) in bounds.items()}}
    return SplitFrames(frames, nparts, counts, client, numbered)


def split_dir_counts(split_dirs: dict) -> dict[str, int]:
    """Sessions written per split (rows of its parquet files), as ``run_etl`` counts them."""
    return {f"{name}_sessions": int(sum(_rows(f) for f in Path(folder).glob("*.parquet")))
            for name, folder in split_dirs.items()}


def run_etl_on_cluster(clicks_path, catalog: pd.DataFrame, out_dir: str | Path, client, max_len: int = 20,
                       valid_frac: float = 0.1, test_frac: float = 0.1, npartitions: int | None = None,
                       cpu: bool = True) -> etl.EtlResult:
    """:func:`gtcrec.etl.run_etl` on a Dask cluster, reading a partitioned parquet click log.

    ``clicks_path``: a folder of parquet files (or one file, or a ``dask.dataframe``) with columns
    ``session_id, talk_id, timestamp``. ``client``: a ``distributed.Client`` (see :func:`local_cluster`).
    ``npartitions``: partitions of the start table and of each shuffled split (default: the input's,
    at least the number of workers). Writes ``out_dir/{train,valid,test}`` (several parquet files per
    split, with NVTabular's schema files), ``out_dir/categories`` and ``out_dir/workflow``; returns an
    :class:`gtcrec.etl.EtlResult` whose ``counts`` has the keys of ``run_etl``'s plus ``sessions`` and
    ``clicks_in``.

    The splits hold the same sessions with the same codes, lists and ``ts-first`` as ``run_etl`` on
    the same clicks (rows in another order, over several files).
    """
    from merlin.core.utils import Distributed
    from merlin.io import Dataset

    out_dir = Path(out_dir).resolve()
    parts = split_frames(clicks_path, catalog, client, valid_frac, test_frac, npartitions)
    workflow = etl.build_workflow(etl.vocabulary(catalog), out_dir / "categories", max_len)
    split_dirs = {name: out_dir / name for name in etl.SPLITS}
    for folder in split_dirs.values():
        shutil.rmtree(folder, ignore_errors=True)
    with warnings.catch_warnings():  # Distributed says it deploys no new cluster: it uses ours
        warnings.filterwarnings("ignore", message="Existing Dask-client object detected")
        distributed = Distributed(client=client)
    with distributed:
        datasets = {}
        for name, frame in parts.frames.items():
            if not cpu:  # the numbering ran in pandas; the workflow gets cudf partitions
                import cudf

                frame = frame.map_partitions(to_gpu_frame, meta=cudf.from_pandas(frame._meta))
            datasets[name] = Dataset(frame, cpu=cpu).shuffle_by_keys(["session_id"], npartitions=parts.npartitions)
        workflow.fit(datasets["train"])
        for name in etl.SPLITS:
            workflow.transform(datasets[name]).to_parquet(str(split_dirs[name]))
        workflow.save(str(out_dir / "workflow"))
    parts.release()
    return etl.EtlResult(out_dir / "workflow", split_dirs, {**parts.counts, **split_dir_counts(split_dirs)})


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


# ----------------------------------------------------------------------------- comparing two runs


def sorted_split(folder: str | Path) -> pd.DataFrame:
    """A processed split in session order (the row order of files differs between the two paths)."""
    frame = etl.read_split(folder)
    return frame.sort_values("session_id", kind="stable").reset_index(drop=True)


def compare_etl(a: etl.EtlResult, b: etl.EtlResult) -> dict[str, Any]:
    """Whether two ETL results hold the same sessions with the same codes, lists and first times in
    every split: ``{"equal": bool, "splits": {name: {"sessions", "equal", "differences"}},
    "counts_equal": bool}`` (counts compared on the keys both have)."""
    out: dict[str, Any] = {"splits": {}}
    equal = True
    for name in etl.SPLITS:
        x, y = sorted_split(a.split_dirs[name]), sorted_split(b.split_dirs[name])
        problems = []
        if list(x.columns) != list(y.columns) and set(x.columns) != set(y.columns):
            problems.append(f"columns {list(x.columns)} != {list(y.columns)}")
        elif len(x) != len(y):
            problems.append(f"{len(x)} != {len(y)} sessions")
        else:
            for col in x.columns:
                if col == etl.ITEM_LIST:
                    same = all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(x[col], y[col]))
                else:
                    same = np.array_equal(x[col].to_numpy().astype(np.int64), y[col].to_numpy().astype(np.int64))
                if not same:
                    problems.append(f"column {col} differs")
        out["splits"][name] = {"sessions": [len(x), len(y)], "equal": not problems, "differences": problems}
        equal = equal and not problems
    shared = set(a.counts) & set(b.counts)
    out["counts_equal"] = all(a.counts[k] == b.counts[k] for k in shared)
    out["equal"] = equal and out["counts_equal"]
    return out
