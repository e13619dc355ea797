"""ETL with NVTabular and an existing vocabulary.

The item vocabulary is the catalog itself, in catalog order: ``Categorify(vocabs=...)`` gives talk
``i`` the code ``i + 3`` (0 is padding, 1 null, 2 out-of-vocabulary), so the pre-trained item table has
three reserved rows on top and row ``code`` holds that talk's text embedding. Nothing about the codes
depends on the clicks, which is what lets a new catalog be swapped in later.

Sessions are grouped and put in click order inside the workflow: a named ``LambdaOp``
(:func:`click_position`) numbers every click by THE click order rule,
:func:`gtcrec.order.click_order` (time, ties by talk id text), and ``Groupby`` sorts by
that number. Serving's ``SessionizeClicks`` calls the same function, so tied timestamps give the
same model input on both paths whatever order the clicks come in. The last ``max_len`` clicks
are kept (``ListSlice``), sessions shorter than ``min_len`` are dropped (``Filter``), and sessions are
split by start time into train / valid / test.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gtcrec.layout import ITEM_COL, ITEM_LIST, OOV, RESERVED  # noqa: F401  (the code layout)

SPLITS = ("train", "valid", "test")


def item_table(vectors: np.ndarray) -> np.ndarray:
    """Pre-trained table aligned with the codes: three zero rows, then one row per talk in catalog order."""
    table = np.zeros((len(vectors) + RESERVED, vectors.shape[1]), dtype=np.float32)
    table[RESERVED:] = vectors
    return table


def vocabulary(catalog: pd.DataFrame) -> pd.Series:
    """Talk ids in catalog order: position i gets code i + 3."""
    vocab = catalog["talk_id"].astype(str).reset_index(drop=True)
    if vocab.duplicated().any():
        raise ValueError(f"duplicate talk ids in the vocabulary: {sorted(vocab[vocab.duplicated()])[:5]}")
    return vocab.rename("talk_id")


def number_sessions(clicks: pd.DataFrame) -> pd.DataFrame:
    """Integer session ids in order of each session's first click (ties by the original id)."""
    start = clicks.groupby("session_id")["timestamp"].min().reset_index()
    start = start.sort_values(["timestamp", "session_id"], kind="stable").reset_index(drop=True)
    numbers = pd.Series(np.arange(len(start), dtype=np.int64), index=start["session_id"].to_numpy())
    out = clicks.copy()
    out["session_key"] = out["session_id"].astype(str)
    out["session_id"] = numbers.loc[out["session_key"].to_numpy()].to_numpy()
    out["ts"] = out["timestamp"].astype("int64") // 10**6  # epoch milliseconds
    return out.reset_index(drop=True)


def split_by_time(clicks: pd.DataFrame, valid_frac: float = 0.1, test_frac: float = 0.1) -> dict[str, pd.DataFrame]:
    """Split whole sessions by start time: the earliest go to train, the latest to test."""
    n = int(clicks["session_id"].max()) + 1  # numbered by start time
    n_test = int(round(n * test_frac))
    n_valid = int(round(n * valid_frac))
    bounds = {"train": (0, n - n_valid - n_test), "valid": (n - n_valid - n_test, n - n_test), "test": (n - n_test, n)}
    return {name: clicks[(clicks["session_id"] >= lo) & (clicks["session_id"] < hi)].reset_index(drop=True)
            for name, (lo, hi) in bounds.items()}


CLICK_POSITION = "click_position"  # per click: its position in the click order of its partition


def click_position(ts: pd.Series, frame: pd.DataFrame) -> pd.Series:
    """LambdaOp (named, importable): every click's position in THE click order,
    :func:`gtcrec.order.click_order` of (``session_id``, ``ts``, talk id text). The
    positions are distinct, so the ``Groupby`` that sorts by them has no ties left to break."""
    from gtcrec.order import click_order, text_rank

    order = click_order(np.asarray(frame["session_id"]), np.asarray(ts, dtype=np.int64), text_rank(frame["talk_id"]))
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order), dtype=np.int64)
    return pd.Series(position, index=ts.index, name=ts.name)


def at_least_two_items(df: pd.DataFrame) -> pd.Series:
    """Filter: sessions with two or more known clicks (one to read, one to predict)."""
    return df[f"{ITEM_COL}-count"] >= 2


def build_workflow(vocab: pd.Series, out_path: str | Path, max_len: int = 20):
    """The NVTabular workflow: map talk ids through the fixed vocabulary, group clicks into sessions
    in click order (:func:`click_position`: time, ties by talk id text), keep the last ``max_len``
    clicks, drop sessions of fewer than two known clicks.

    Notebook 01 writes this workflow in its cells, operator by operator, to teach it; this is the
    definition for code that runs without the notebook (the swap's new-event evaluation, benchmarks,
    unit tests). ``tests/notebooks/test_lessons_match_package.py`` checks that both give the same splits."""
    import nvtabular as nvt
    from merlin.schema import Tags

    out_path = str(Path(out_path).resolve())  # relative paths lose the vocabulary file (stack notes)
    items = (["talk_id"] >> nvt.ops.Categorify(vocabs={"talk_id": vocab}, out_path=out_path)
             >> nvt.ops.Rename(f=None, name=ITEM_COL))
    position = (["ts"] >> nvt.ops.LambdaOp(click_position, dependency=["session_id", "talk_id"])
                >> nvt.ops.Rename(f=None, name=CLICK_POSITION))
    grouped = (["session_id", "ts"] + items + position) >> nvt.ops.Groupby(
        groupby_cols=["session_id"], sort_cols=[CLICK_POSITION],
        aggs={ITEM_COL: ["list", "count"], "ts": ["first"]}, name_sep="-")
    sliced = grouped[ITEM_LIST] >> nvt.ops.ListSlice(-max_len) >> nvt.ops.AddMetadata(
        tags=[Tags.ITEM_ID, Tags.ITEM, Tags.CATEGORICAL, Tags.LIST])
    kept = (grouped[["session_id", f"{ITEM_COL}-count", "ts-first"]] + sliced) >> nvt.ops.Filter(f=at_least_two_items)
    return nvt.Workflow(kept)


def drop_unknown_clicks(clicks: pd.DataFrame, vocab: pd.Series) -> tuple[pd.DataFrame, int]:
    """Clicks on talks outside the vocabulary would become code 2 (OOV): the offline data drops them."""
    known = clicks["talk_id"].astype(str).isin(set(vocab))
    return clicks[known].reset_index(drop=True), int((~known).sum())


@dataclass
class EtlResult:
    workflow_dir: Path
    split_dirs: dict[str, Path]
    counts: dict[str, int]


def run_etl(clicks: pd.DataFrame, catalog: pd.DataFrame, out_dir: str | Path, max_len: int = 20,
            valid_frac: float = 0.1, test_frac: float = 0.1) -> EtlResult:
    """Fit the workflow on the training split and write processed parquet for every split (a split
    with no session, ``valid_frac`` or ``test_frac`` 0, gets no folder and no ``split_dirs`` entry)."""
    import nvtabular as nvt

    out_dir = Path(out_dir).resolve()
    vocab = vocabulary(catalog)
    clicks, n_unknown = drop_unknown_clicks(clicks, vocab)
    splits = split_by_time(number_sessions(clicks), valid_frac, test_frac)
    workflow = build_workflow(vocab, out_dir / "categories", max_len)
    columns = ["session_id", "ts", "talk_id"]
    workflow.fit(nvt.Dataset(splits["train"][columns], cpu=True, npartitions=1))
    counts = {"unknown_clicks_dropped": n_unknown}
    split_dirs = {}
    for name in SPLITS:
        frame = splits[name][columns].reset_index(drop=True)
        if frame.empty and name != "train":  # a split asked to be empty (valid_frac or test_frac 0): no folder
            counts[f"{name}_sessions_in"] = counts[f"{name}_sessions"] = 0
            continue
        dataset = nvt.Dataset(frame, cpu=True, npartitions=1)  # one partition: Groupby never splits a session
        split_dirs[name] = out_dir / name
        workflow.transform(dataset).to_parquet(str(split_dirs[name]), out_files_per_proc=1)
        counts[f"{name}_sessions_in"] = int(frame["session_id"].nunique())
        counts[f"{name}_sessions"] = int(len(read_split(split_dirs[name])))
    workflow_dir = out_dir / "workflow"
    workflow.save(str(workflow_dir))
    return EtlResult(workflow_dir, split_dirs, counts)


def read_split(folder: str | Path) -> pd.DataFrame:
    """A processed split as a DataFrame (``item_id-list`` as arrays of codes)."""
    files = sorted(Path(folder).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def encode_talk_ids(workflow_dir: str | Path, talk_ids: list[str]) -> np.ndarray:
    """Codes the saved workflow's Categorify gives these talk ids (unknown ones get 2)."""
    import nvtabular as nvt

    workflow = nvt.Workflow.load(str(workflow_dir))
    node = find_node(workflow.output_node, nvt.ops.Categorify)
    frame = pd.DataFrame({"talk_id": pd.Series(talk_ids, dtype=str)})
    return node.op.transform(node.input_columns, frame)["talk_id"].to_numpy().astype(np.int64)


def find_node(output_node, op_type):
    """The first node of a workflow graph whose operator is an ``op_type`` (searching from the output)."""
    todo, seen = [output_node], set()
    while todo:
        node = todo.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.op, op_type):
            return node
        todo.extend(node.parents_with_dependencies)
    raise LookupError(f"the workflow has no {op_type.__name__} step")
