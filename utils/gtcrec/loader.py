"""Helpers around merlin-dataloader over the processed sessions (the ``Loader`` itself is built on
screen in notebook 02, with ``EmbeddingOperator`` joining the pre-trained vectors).

The torch ``Loader`` yields a ragged list column as two tensors, ``<name>__values`` (every code of
the batch, session after session) and ``<name>__offsets`` (where each session starts; one more entry
than sessions). Transformers4Rec pads them itself. ``EmbeddingOperator`` looks every code up in the
item table and adds ``item_vectors__values`` (n_codes, 384) with the same offsets.
"""
from __future__ import annotations

import time

import numpy as np

from gtcrec.etl import ITEM_LIST

VECTORS = "item_vectors"


def shuffle_seeds(seed: int):
    """A ``seed_fn`` for ``Loader(..., shuffle=True, seed_fn=...)``: the loader asks it for a new shuffle
    seed every epoch; a fixed sequence drawn from ``seed`` gives the same batches on every run."""
    rng = np.random.default_rng(seed)

    def seed_fn() -> int:
        return int(rng.integers(0, 2**31 - 1))

    return seed_fn


def session_lists(batch: dict) -> list[np.ndarray]:
    """The sessions of a batch as arrays of codes (undoing values/offsets)."""
    values = batch[f"{ITEM_LIST}__values"].numpy()
    offsets = batch[f"{ITEM_LIST}__offsets"].numpy()
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def joined_rows_match(batch: dict, item_table: np.ndarray) -> float:
    """Largest |difference| between the loader-joined vectors and the table rows of the batch's codes."""
    codes = batch[f"{ITEM_LIST}__values"].numpy()
    vectors = batch[f"{VECTORS}__values"].numpy()
    if vectors.shape != (len(codes), item_table.shape[1]):
        raise ValueError(f"joined vectors have shape {vectors.shape}, expected {(len(codes), item_table.shape[1])}")
    return float(np.abs(vectors - item_table[codes]).max())


def throughput(loader, max_batches: int | None = None) -> dict[str, float]:
    """Batches/s and sessions/s of one pass (or ``max_batches``) over a loader."""
    batches = sessions = 0
    start = time.perf_counter()
    for inputs, _ in loader:
        batches += 1
        sessions += len(inputs[f"{ITEM_LIST}__offsets"]) - 1
        if max_batches and batches >= max_batches:
            break
    seconds = time.perf_counter() - start
    return {"batches": batches, "sessions": sessions, "seconds": seconds,
            "batches_per_s": batches / seconds, "sessions_per_s": sessions / seconds}
