"""The new catalog of a swap: validation (the file rules plus the swap rules), embedding it into an item
table, the model with that table swapped in, and its trace."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from gtcrec import data as gdata
from gtcrec import etl
from gtcrec.data import DataValidationError
from gtcrec.layout import RESERVED as N_RESERVED


# ----------------------------------------------------------------------------------------------
# The new catalog
# ----------------------------------------------------------------------------------------------

def validate_catalog(path, old_vocab: Iterable[str] = (), min_talks: int = 1, update: bool = False) -> pd.DataFrame:
    """Read a new event's catalog (CSV or parquet, the catalog format) and check it for a swap.

    Everything :func:`gtcrec.data.load_catalog` checks (only ``talk_id`` (or ``id``) and ``title``
    are required, other documented columns are optional and extra ones kept; empty or duplicate
    talk ids, empty titles, bad days and slots), then: no talk id of ``old_vocab`` (the catalog
    being served), and at least ``min_talks`` talks. Raises :class:`DataValidationError` listing
    every problem with file, row and column; nothing is changed. ``update``: the file is a new
    version of the catalog being served (:mod:`gtcrec.swap.update`): its ids may be those of
    ``old_vocab``, and at least one must be (else it is a new event: a swap)."""
    catalog = gdata.load_catalog(path)
    path = Path(path)
    problems = []
    old = set(map(str, old_vocab))
    id_col = catalog.attrs.get("talk_id_column", "talk_id")
    if update:
        if old and not old & set(catalog["talk_id"].astype(str)):
            problems.append(f"{path.name}, column '{id_col}': no talk id in common with the {len(old)} talks of the "
                            "catalog being served: this is a new event, not an update of the one served; use a "
                            "swap instead (gtcrec-swap NEW_CATALOG, without --update)")
    elif old:
        for i, tid in enumerate(catalog["talk_id"].tolist(), start=1):
            if tid in old:
                problems.append(f"{path.name} row {i}, column '{id_col}': talk id {tid!r} is already in the "
                                "catalog being served (a new event needs new talk ids)")
    if len(catalog) < min_talks:
        problems.append(f"{path.name}: {len(catalog)} talks, fewer than the {min_talks} the served model "
                        "returns as candidates (K); use a larger catalog or a smaller K")
    if problems:
        raise DataValidationError(path, problems)
    return catalog


@dataclass
class PreparedCatalog:
    """A validated new catalog, its vocabulary (talk ids in catalog order: code = position + 3) and
    its item table (three zero rows, then one L2-normalised text vector per talk)."""

    path: Path
    catalog: pd.DataFrame
    vocab: list[str]
    table: np.ndarray
    newly_encoded: int
    validate_seconds: float
    encode_seconds: float


def prepare_catalog(path, cache_dir, old_vocab: Iterable[str] = (), min_talks: int = 1,
                    progress: bool = False, update: bool = False) -> PreparedCatalog:
    """Validate (:func:`validate_catalog`; ``update``: a new version of the catalog served), embed (cache in ``cache_dir``; the text leaves out empty
    or absent fields, :func:`gtcrec.embeddings.talk_text`), build vocabulary and table."""
    from gtcrec import embeddings

    started = time.perf_counter()
    catalog = validate_catalog(path, old_vocab, min_talks, update)
    validated = time.perf_counter()
    vectors, newly = embeddings.embed_catalog(catalog, cache_dir, progress=progress)
    encoded = time.perf_counter()
    vocab = etl.vocabulary(catalog).tolist()
    return PreparedCatalog(Path(path), catalog, vocab, etl.item_table(vectors), int(newly),
                           validated - started, encoded - validated)


# ----------------------------------------------------------------------------------------------
# The swapped model and its trace
# ----------------------------------------------------------------------------------------------

def swapped_model(model, table: np.ndarray, catalog: pd.DataFrame | None = None, decided: bool = True):
    """The trained model (a saved model folder, loaded fresh, or a model object, changed in place)
    with ``table`` as its item table: :func:`gtcrec.model.swap_item_table`, no retraining. With
    ``catalog`` (the new talks, in table order), a model whose item representation reads catalog
    fields (track, day, ...) gets the new talks' values. A folder is served as its transfer check
    chose (:mod:`gtcrec.transfer`: the model, the model blended with text similarity, or text
    similarity), unless ``decided=False`` (the trained model as it is, to measure it)."""
    from gtcrec import model as gm
    from gtcrec import transfer
    from gtcrec.representation import ItemRepresentation, catalog_fields

    if isinstance(model, (str, os.PathLike)):
        check = transfer.decision(model) if decided else {}
        model = transfer.serve_as_decided(gm.load_model(model), check)
    rep = gm.item_embedding(model)
    fields = None
    if catalog is not None and isinstance(rep, ItemRepresentation):
        fields = catalog_fields(catalog, rep.field_names)
    gm.swap_item_table(model, table, fields=fields)
    return model.eval()


def example_sessions(n_codes: int, max_len: int, n: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Ragged code sessions over ``3 .. n_codes-1`` (lengths 1..max_len, one of each extreme), for
    tracing and checking a model over a catalog of ``n_codes - 3`` talks."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[1, max_len], rng.integers(1, max_len + 1, size=max(n - 2, 0))])
    return [rng.integers(N_RESERVED, n_codes, size=int(m)).astype(np.int64) for m in lengths]


def trace_swapped(model, k: int, seed: int = 0, query: bool = False):
    """Trace ``model`` to return its top ``k`` codes (:func:`gtcrec.trace.trace_topk`) and check the
    trace against the eager model on other sessions; returns ``(traced, check)``. Both batches are
    padded to ``max_len`` as the serving graph pads them. ``query``: trace the session encoder of the
    retrieval path instead (:func:`gtcrec.serving.retrieval.trace_query`; ``k`` is not used)."""
    from gtcrec import model as gm
    from gtcrec.trace import check_traced, trace_topk

    n = gm.n_codes(model)
    max_len = int(model.max_sequence_length)

    def batch(s):
        return gm.sessions_to_batch(example_sessions(n, max_len, seed=s), max_len, pad=True)

    if query:
        from gtcrec.serving import retrieval

        traced = retrieval.trace_query(model, batch(seed))
        return traced, retrieval.check_query(traced, model, batch(seed + 1))
    traced = trace_topk(model, batch(seed), k=k)
    check = check_traced(traced, model, batch(seed + 1))
    return traced, check
