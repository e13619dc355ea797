"""Data-parallel training of the notebook-03 model: Transformers4Rec's ``Trainer`` under ``torchrun``.

Every rank builds the same model (:func:`gtcrec.model.build_model`, same seed, so the same initial
weights), and the Hugging Face ``Trainer`` underneath T4R's wraps it in ``DistributedDataParallel``
(gradients averaged over the ranks at every step). The backend is gloo on the CPU and NCCL on GPUs
(``ddp_backend``; on the CPU ``no_cuda`` makes HF/accelerate start a CPU process group).

How the data is divided (read from the installed sources, and measured: each rank writes what it saw):

* T4R's ``Trainer.get_train_dataloader`` hands ``global_rank`` / ``global_size`` to
  merlin-dataloader's ``Loader``, which gives rank ``r`` the partitions
  ``indices[r * k:(r + 1) * k]`` with ``k = ceil(npartitions / world_size)``
  (``LoaderBase._indices_for_process``). A partition is a parquet row group here, so the training split
  is first rewritten as ``world_size * parts_per_rank`` files of one row group each, of equal size
  (:func:`partition_for_ranks`). With fewer partitions than ranks T4R repartitions by itself (a warning).
* Which partitions a rank reads is fixed when the Loader builds its partition iterator
  (``ChunkQueue``, on the first ``len()`` or iteration, before any shuffle): rank ``r`` reads the same
  shard, ``indices[r * k:(r + 1) * k]`` of the files' order, in every epoch. The Loader's per-epoch
  shuffle of its partition list does not reach that iterator (merlin-dataloader 23.08), so the ranks
  never depend on their NumPy states agreeing; rows are shuffled within what a rank reads. Measured:
  :class:`RecordingLoader` records the partitions each rank's iterator was built with and a fingerprint
  of every row of every batch, and ``tests/unit/test_ddp.py`` matches both against the partition files.
* T4R passes the LOCAL rank as ``global_rank``, which is wrong on more than one node; here the loader is
  built with the global rank (``RANK``), and handed to T4R's Trainer as its ``train_dataloader``.

Every rank must run the same collectives: the ranks agree on the fewest batches per epoch (an all-reduce)
and log at the same steps (HF gathers the loss when it logs; different logging steps hang), and with unequal
shards (a folder not written by :func:`partition_for_ranks`) every rank stops after ``epochs * fewest`` steps.

``steps`` per rank are ``epochs * ceil(rows per rank / batch_size)``; with ``batch_size`` (per rank)
equal to a single process's batch divided by the number of ranks, the ranks together take the same
optimizer steps over the same global batch size as that single process.

Entry point (each rank)::

    python -m torch.distributed.run --nproc_per_node 2 -m gtcrec.ddp --spec SPEC.pkl

where the spec is written by :func:`write_spec` (the training folder, the item table, the
:func:`gtcrec.model.build_model` arguments and the training settings). :func:`train_distributed` does
all of it from Python (partition, spec, launch, read the report). Rank 0 saves the model with
:func:`gtcrec.model.save_model` into ``out_dir/model`` and writes ``out_dir/ddp.json``: world size,
backend, steps per rank, rows and partitions per rank and epoch, seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import pandas as pd

from gtcrec.etl import ITEM_LIST

REPORT = "ddp.json"
SPEC = "spec.pkl"


# ----------------------------------------------------------------------------- data per rank


def sample_split(src: str | os.PathLike, dst: str | os.PathLike, n_rows: int | None, seed: int = 0) -> Path:
    """A processed split cut to ``n_rows`` rows drawn with ``seed`` (in their original order), written to
    ``dst`` with the split's ``schema.pbtxt``; ``src`` itself when ``n_rows`` is ``None`` or not smaller than
    the split. For a shorter comparison (one process against several) on the same data."""
    from gtcrec.etl import read_split

    src, dst = Path(src), Path(dst)
    if n_rows is None:
        return src
    if n_rows < 1:
        raise ValueError("n_rows must be >= 1 (or None: the whole split)")
    frame = read_split(src)
    if n_rows >= len(frame):
        return src
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=int(n_rows), replace=False))
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    frame.iloc[keep].reset_index(drop=True).to_parquet(dst / "part_00000.parquet", index=False)
    if (src / "schema.pbtxt").exists():
        shutil.copy(src / "schema.pbtxt", dst / "schema.pbtxt")
    return dst


def partition_for_ranks(src: str | os.PathLike, dst: str | os.PathLike, world_size: int, parts_per_rank: int = 1,
                        seed: int = 0) -> dict[str, Any]:
    """Rewrite a processed split as ``world_size * parts_per_rank`` parquet files of one row group each
    (rows shuffled with ``seed``, sizes differing by one row at most), plus the split's ``schema.pbtxt``.
    Returns ``{"folder", "files", "rows"}`` (rows per file)."""
    from gtcrec.etl import read_split

    src, dst = Path(src), Path(dst)
    n_parts = int(world_size) * int(parts_per_rank)
    if n_parts < 1:
        raise ValueError("world_size and parts_per_rank must be >= 1")
    frame = read_split(src)
    if len(frame) < n_parts:
        raise ValueError(f"{len(frame)} rows cannot fill {n_parts} partitions")
    order = np.random.default_rng(seed).permutation(len(frame))
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    files, rows = [], []
    for i, idx in enumerate(np.array_split(order, n_parts)):
        part = frame.iloc[np.sort(idx)].reset_index(drop=True)
        path = dst / f"part_{i:05d}.parquet"
        part.to_parquet(path, index=False, row_group_size=len(part) + 1)
        files.append(path)
        rows.append(len(part))
    if (src / "schema.pbtxt").exists():
        shutil.copy(src / "schema.pbtxt", dst / "schema.pbtxt")
    return {"folder": dst, "files": files, "rows": rows}


def row_fingerprints(codes) -> list[int]:
    """One integer per session row: Python's hash of its tuple of nonzero codes (ints hash alike in
    every process), for padded rows (a batch) or lists (a parquet split)."""
    out = []
    for row in codes:
        row = np.asarray(row).reshape(-1)
        out.append(hash(tuple(int(c) for c in row[row != 0])))
    return out


class RecordingLoader:
    """A T4R data loader that also records, per epoch, the rows it gave (count and
    :func:`row_fingerprints`) and the partitions the merlin Loader's iterator reads for this rank
    (captured where the Loader builds that iterator, ``Loader._data_iter``)."""

    def __init__(self, inner, item_col: str = ITEM_LIST, fingerprints: bool = True):
        self.inner, self.item_col, self.keep_fingerprints = inner, item_col, fingerprints
        self.epochs: list[dict[str, Any]] = []
        self.partitions: list[int] | None = None  # what the merlin Loader's partition iterator reads
        merlin_loader = inner.dataset
        build_iterator = merlin_loader._data_iter

        def recording_data_iter(epochs):
            self.partitions = [int(i) for i in merlin_loader._indices_for_process()]
            return build_iterator(epochs)

        merlin_loader._data_iter = recording_data_iter

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):  # _batch_size, dataset, ... as the wrapped loader has them
        return getattr(self.inner, name)

    def __iter__(self):
        record: dict[str, Any] = {"rows": 0, "batches": 0, "partitions": None, "fingerprints": []}
        self.epochs.append(record)
        for batch in self.inner:
            record["partitions"] = self.partitions
            x = batch[0][self.item_col]
            record["rows"] += int(x.shape[0])
            record["batches"] += 1
            if self.keep_fingerprints:
                record["fingerprints"].extend(row_fingerprints(x.detach().cpu().numpy()))
            yield batch


def rank_dataloader(schema, data_dir, batch_size: int, max_len: int, rank: int, world_size: int,
                    local_rank: int | None = None, cpu: bool = True, fingerprints: bool = True) -> RecordingLoader:
    """T4R's merlin data loader for this rank's partitions (shuffled, padded to ``max_len``)."""
    from merlin.io import Dataset
    from transformers4rec.torch.utils.data_utils import MerlinDataLoader

    from gtcrec.model import _parquet_files

    dataset = Dataset(_parquet_files(data_dir), engine="parquet", cpu=cpu)
    dataset.schema = schema
    loader = MerlinDataLoader.from_schema(
        schema, dataset, batch_size, max_sequence_length=max_len, drop_last=False, shuffle=True,
        global_rank=rank, global_size=world_size, device=local_rank)
    return RecordingLoader(loader, schema.first.name, fingerprints)


# ----------------------------------------------------------------------------- one rank


def write_spec(path: str | os.PathLike, train_dir, item_table: np.ndarray, out_dir, build: Dict[str, Any] | None = None,
               epochs: int = 5, batch_size: int = 128, lr: float = 3e-3, seed: int = 42,
               schema_dir=None, max_steps: int = -1, fingerprints: bool = True) -> Path:
    """The pickle every rank reads: where the rank partitions are (``train_dir``), the item table, the
    :func:`gtcrec.model.build_model` keyword arguments (``build``: ``d_model``, ``n_layer``, ``n_head``,
    ``max_len``, ``item_repr``, ...), the per-rank ``batch_size`` and the other training settings.
    ``schema_dir``: the folder whose ``schema.pbtxt`` to read (default ``train_dir``)."""
    spec = {"train_dir": str(Path(train_dir).resolve()), "item_table": np.asarray(item_table, dtype=np.float32),
            "out_dir": str(Path(out_dir).resolve()), "build": dict(build or {}), "epochs": int(epochs),
            "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed), "max_steps": int(max_steps),
            "schema_dir": str(Path(schema_dir or train_dir).resolve()), "fingerprints": bool(fingerprints)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(spec, f)
    return path


def _fewest_batches(batches: int, device) -> int:
    """The smallest number of batches per epoch over all ranks (all-reduce MIN; this rank's without a
    process group)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return int(batches)
    value = torch.tensor([int(batches)], dtype=torch.int64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_rank(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Train on this rank (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` from torchrun), write
    ``rank<r>.json`` (and ``rank<r>_rows.npz``); rank 0 also saves the model and ``ddp.json``."""
    import torch
    from transformers4rec.torch import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from gtcrec import model as M

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = M.load_schema(spec["schema_dir"])
    build = dict(spec["build"])
    max_len = int(build.get("max_len", M.DEFAULTS["max_len"]))
    model = M.build_model(schema, spec["item_table"], seed=build.pop("seed", spec["seed"]), **build)
    loader = rank_dataloader(schema, spec["train_dir"], spec["batch_size"], max_len, rank, world,
                             local_rank=local_rank, cpu=not M._gpu_dataframes(), fingerprints=spec["fingerprints"])
    steps_per_epoch = len(loader)  # builds the Loader's partition iterator: this rank's shard
    M.set_seed(spec["seed"])
    args = M.training_arguments(out_dir / "trainer", max_len, spec["epochs"], spec["batch_size"], spec["lr"],
                                spec["seed"], max(1, steps_per_epoch // 10), max_steps=spec["max_steps"],
                                no_cuda=not cuda, ddp_backend=backend)
    fewest = _fewest_batches(steps_per_epoch, args.device)  # args.device starts the process group
    # Every collective must happen on every rank: logging gathers the loss, so all ranks log at the same
    # steps; with unequal shards every rank takes the same number of steps (else the last all-reduce waits).
    args.logging_steps = max(1, fewest // 10)
    if fewest != steps_per_epoch and spec["max_steps"] < 0:
        args.max_steps = int(spec["epochs"]) * fewest
    trainer = Trainer(model=model, args=args, schema=schema, train_dataloader=loader, compute_metrics=False)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    import torch.distributed as dist

    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    M.drop_mixed_precision(model)
    actual_backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    record = {"rank": rank, "local_rank": local_rank, "world_size": world, "backend": actual_backend,
              "wrapped": type(trainer.model_wrapped).__name__, "device": str(args.device),
              "steps": int(trainer.state.global_step), "batches_per_epoch": steps_per_epoch,
              "fewest_batches_per_epoch_of_all_ranks": fewest,
              "seconds": seconds, "threads": torch.get_num_threads(),
              "epochs": [{k: v for k, v in e.items() if k != "fingerprints"} for e in loader.epochs],
              "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record, indent=2))
    if spec["fingerprints"]:
        np.savez(out_dir / f"rank{rank}_rows.npz",
                 **{f"epoch{i}": np.asarray(e["fingerprints"], dtype=np.int64) for i, e in enumerate(loader.epochs)})
    _barrier()  # every rank has written its record
    if rank == 0:
        model = model.cpu()
        M.save_model(model, out_dir / "model")
        ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]
        report = {"world_size": world, "backend": actual_backend, "requested_backend": backend,
                  "steps_per_rank": [r["steps"] for r in ranks], "seconds": max(r["seconds"] for r in ranks),
                  "rows_per_rank": [[e["rows"] for e in r["epochs"]] for r in ranks],
                  "partitions_per_rank": [[e["partitions"] for e in r["epochs"]] for r in ranks],
                  "batch_size_per_rank": spec["batch_size"], "epochs": spec["epochs"], "lr": spec["lr"],
                  "model": str(out_dir / "model"), "ranks": ranks}
        (out_dir / REPORT).write_text(json.dumps(report, indent=2))
    _barrier()
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torch.distributed.run --nproc_per_node N -m gtcrec.ddp",
                                     description="one rank of the data-parallel training (see gtcrec.ddp)")
    parser.add_argument("--spec", required=True, help="the pickle written by gtcrec.ddp.write_spec")
    args = parser.parse_args(argv)
    with open(args.spec, "rb") as f:
        spec = pickle.load(f)
    import torch.distributed as dist

    try:
        run_rank(spec)
    finally:
        # an explicit end to the process group: left to the interpreter's exit, a rank sometimes aborted
        # there ("terminate called without an active exception") after its work was done and saved
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------- the launcher


def launch(spec_path, nproc: int = 2, timeout_s: float | None = 1800, threads_per_rank: int | None = None,
           verbose: bool = False) -> list[str]:
    """Run ``torchrun --standalone --nproc_per_node nproc -m gtcrec.ddp --spec spec_path`` in its own process
    group; past ``timeout_s`` the whole group (torchrun and every rank) is killed. Returns the command;
    raises ``RuntimeError`` with the end of the output when it fails or times out."""
    import signal

    spec_path = Path(spec_path)
    with open(spec_path, "rb") as f:
        out_dir = Path(pickle.load(f)["out_dir"])
    (out_dir / REPORT).unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
               "-m", "gtcrec.ddp", "--spec", str(spec_path)]
    env = dict(os.environ)
    if threads_per_rank is not None:
        env["OMP_NUM_THREADS"] = str(int(threads_per_rank))
    env.setdefault("PYTHONWARNINGS", "ignore")
    pipe = None if verbose else subprocess.PIPE
    proc = subprocess.Popen(command, env=env, stdout=pipe, stderr=subprocess.STDOUT if pipe else None, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its ranks
        output, _ = proc.communicate()
        raise RuntimeError(f"torchrun ran past {timeout_s} s and was killed:\n{(output or '')[-6000:]}") from None
    if proc.returncode != 0 or not (out_dir / REPORT).exists():
        raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{(output or '')[-6000:]}")
    return command


def train_distributed(train_dir, item_table: np.ndarray, out_dir, nproc: int = 2, build: Dict[str, Any] | None = None,
                      epochs: int = 5, batch_size: int = 64, lr: float = 3e-3, seed: int = 42, parts_per_rank: int = 1,
                      max_steps: int = -1, fingerprints: bool = True, timeout_s: float | None = 1800,
                      threads_per_rank: int | None = None, verbose: bool = False) -> Dict[str, Any]:
    """Train the notebook-03 model on ``nproc`` processes of this machine with ``torchrun`` and return the
    report (``out_dir/ddp.json``; the model is in ``out_dir/model``, load it with
    :func:`gtcrec.model.load_model`).

    ``train_dir``: the ETL's processed train split; it is rewritten into ``out_dir/partitions`` as
    ``nproc * parts_per_rank`` equal partitions (:func:`partition_for_ranks`). ``build``: the
    :func:`gtcrec.model.build_model` keyword arguments besides schema and table. ``batch_size`` is per
    rank (the global batch is ``nproc * batch_size``). ``threads_per_rank``: ``OMP_NUM_THREADS`` of each
    rank (default: torchrun's, 1). Raises ``RuntimeError`` with the ranks' output if the launch fails.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("rank*.json")) + list(out_dir.glob("rank*_rows.npz")) + [out_dir / REPORT]:
        old.unlink(missing_ok=True)
    parts = partition_for_ranks(train_dir, out_dir / "partitions", nproc, parts_per_rank, seed)
    spec = write_spec(out_dir / SPEC, parts["folder"], item_table, out_dir, build, epochs, batch_size, lr, seed,
                      schema_dir=train_dir, max_steps=max_steps, fingerprints=fingerprints)
    start = time.perf_counter()
    command = launch(spec, nproc, timeout_s, threads_per_rank, verbose)
    wall = time.perf_counter() - start
    report = json.loads((out_dir / REPORT).read_text())
    report["launch_seconds"] = wall
    report["partition_rows"] = parts["rows"]
    report["command"] = command
    (out_dir / REPORT).write_text(json.dumps(report, indent=2))
    return report


def rank_rows(out_dir, rank: int, epoch: int) -> np.ndarray:
    """The fingerprints of the rows rank ``rank`` trained on in ``epoch`` (see :func:`row_fingerprints`)."""
    with np.load(Path(out_dir) / f"rank{rank}_rows.npz") as rows:
        return rows[f"epoch{epoch}"]


def partition_fingerprints(out_dir) -> list[np.ndarray]:
    """Fingerprints of every partition file written by :func:`partition_for_ranks`, in partition order."""
    files = sorted((Path(out_dir) / "partitions").glob("part_*.parquet"))
    return [np.asarray(row_fingerprints(pd.read_parquet(f)[ITEM_LIST]), dtype=np.int64) for f in files]


def data_division(report: Dict[str, Any], out_dir) -> Dict[str, Any]:
    """How the ranks divided the training data, from what they recorded: per epoch, every partition read
    by exactly one rank (``partitions_disjoint``), and each rank's trained rows equal, as a multiset of
    row fingerprints, to the rows of its partitions (``rows_match``). ``rows``: rows trained per epoch,
    all ranks together (the whole split when the partitions cover it)."""
    parts = partition_fingerprints(out_dir)
    world = int(report["world_size"])
    disjoint, match, rows = True, True, []
    for epoch in range(len(report["partitions_per_rank"][0])):
        seen = [report["partitions_per_rank"][r][epoch] for r in range(world)]
        disjoint &= sorted(sum(seen, [])) == list(range(len(parts)))
        trained = [rank_rows(out_dir, r, epoch) for r in range(world)]
        for r in range(world):
            expected = np.sort(np.concatenate([parts[p] for p in seen[r]])) if seen[r] else np.array([], np.int64)
            match &= bool(np.array_equal(np.sort(trained[r]), expected))
        rows.append(int(sum(len(t) for t in trained)))
    return {"partitions_disjoint": bool(disjoint), "rows_match": bool(match), "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
