"""Retrieval for large catalogs: the session encoder on one side, every item's output vector in a Faiss
index on the other, so that an inner-product search returns what the model's full product would.

With weight tying, Transformers4Rec scores every code as ``logits = query @ W.T``: ``query`` is what
the task block (T4R's projection, or :class:`gtcrec.representation.LastClickSkip`) makes of the last
position, and ``W`` is the item table's output weight (for an ``ItemRepresentation``: the item vectors,
their bias as one more column, and the raw text rows when a blend is set, which the query meets with a
constant 1 and its own text part). Nothing comes after the product, so

- :func:`session_encoder` is the model up to ``query`` (the tied output layer replaced by nothing),
- :func:`item_vectors` is ``W`` without the reserved codes,
- :func:`trace_query` traces the encoder for serving with no item table inside: the input side of
  the model reads the same rows as the output side (the first ``dim`` columns of ``W``, and the raw
  text columns of a blend), so the served encoder takes the clicked items' rows of ``W`` with the
  request (``FaissTopK`` reads them back from the index) and its size does not grow with the catalog,
  and
- a flat inner-product index over ``item_vectors`` returns exactly the model's top k; an HNSW index
  returns an approximation of it, for catalogs where one product over every item is too slow.

Index ids are positions in ``item_vectors``: code = id + ``RESERVED``.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Dict

import numpy as np
import torch

from gtcrec import model as gm
from gtcrec.layout import RESERVED
from gtcrec.serving.operators import ROWS_INPUT, gather_rows
from gtcrec.serving.operators import index_spec as describe_index  # noqa: F401  (what an index is)


class _Query(torch.nn.Module):
    """Stands where T4R's tied output layer stands: returns its input instead of the product."""

    def forward(self, inputs, targets=None, training=False, testing=False, **kwargs):
        return inputs, targets


def session_encoder(model):
    """A copy of ``model`` (eval mode) that returns each session's query vector ``(batch, dim)``
    instead of its scores over every code: ``scores == query @ item_vectors(model).T`` up to float
    rounding, for the codes after the reserved ones. Takes the same ragged input as the model."""
    encoder = copy.deepcopy(model).eval()
    encoder.top_k = None
    task = gm._task(encoder)
    task.pre = _Query()
    return encoder


class RequestRows(torch.nn.Module):
    """Stands where the item table stands in the served encoder, and holds no item: each request brings
    the rows of ``W`` (:func:`item_vectors`) of the items it clicked, renumbered from ``RESERVED`` on
    (:func:`gtcrec.serving.operators.gather_rows`), and the reserved codes' rows are kept here. It
    answers what T4R's input block and :class:`gtcrec.representation.LastClickSkip` ask of the table:
    rows by code, the raw text rows and the blend's settings."""

    def __init__(self, reserved: torch.Tensor, dim: int, text_from: int, text_weight: float = 0.0,
                 text_decay: float = 0.0):
        super().__init__()
        self.register_buffer("reserved", reserved.detach().clone())  # (RESERVED, columns of W)
        self.embedding_dim, self.text_from = int(dim), int(text_from)
        self.num_embeddings = int(reserved.shape[0])
        self.text_weight, self.text_decay = float(text_weight), float(text_decay)
        self._table: torch.Tensor | None = None

    def use(self, rows: torch.Tensor) -> None:
        """The rows of this request's items (``gather_rows``), after the reserved ones."""
        self._table = torch.cat([self.reserved, rows.to(self.reserved.dtype)])

    def forward(self, codes: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        return self.rows(codes)

    def rows(self, codes: torch.Tensor) -> torch.Tensor:
        return self._table[codes.long(), :self.embedding_dim]

    @property
    def text(self) -> torch.Tensor:
        table = self.reserved if self._table is None else self._table  # None: between requests
        return table[:, self.text_from:]


def _request_rows(model) -> RequestRows:
    """The :class:`RequestRows` for ``model``'s table: its reserved rows of ``W`` and where the columns are."""
    table = gm.item_embedding(model)
    weight = gm._task(model).item_embedding_table.weight.detach()
    dim = int(table.embedding_dim)
    blend = float(getattr(table, "text_weight", 0.0))
    bias = int(getattr(table, "item_bias", None) is not None)
    return RequestRows(weight[:RESERVED], dim, dim + bias, blend, float(getattr(table, "text_decay", 0.0)))


class QueryOf(torch.nn.Module):
    """The served session encoder: ``{codes__values, codes__offsets, ROWS_INPUT}`` (local codes and the
    clicked items' rows, :func:`gtcrec.serving.operators.gather_rows`) -> query vectors. A
    :func:`session_encoder` of ``model`` whose item table is a :class:`RequestRows`: nothing in it grows
    with the catalog. This is the module :func:`trace_query` traces."""

    def __init__(self, model):
        super().__init__()
        self.encoder = session_encoder(model)
        self.table = _request_rows(self.encoder)
        gm._input_block(self.encoder).categorical_module.embedding_tables[gm.item_column(self.encoder)] = self.table
        task = gm._task(self.encoder)
        if getattr(task, "item_embedding_table", None) is not None:
            task.item_embedding_table = self.table

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        self.table.use(inputs[ROWS_INPUT])
        codes = {name: value.to(torch.int64) for name, value in inputs.items() if name != ROWS_INPUT}
        return self.encoder(codes)


def with_rows(batch: Dict[str, torch.Tensor], vectors: np.ndarray) -> Dict[str, torch.Tensor]:
    """A model batch (``sessions_to_batch``) as the served encoder takes it: local codes and the rows of
    ``vectors`` (:func:`item_vectors`, or any item side) for its items."""
    name = next(n for n in batch if n.endswith("__values"))
    local, rows = gather_rows(batch[name].cpu().numpy(), lambda ids: vectors[ids])
    out = dict(batch)
    out[name] = torch.from_numpy(local).to(batch[name].device)
    out[ROWS_INPUT] = torch.from_numpy(rows).to(batch[name].device)
    return out


def trace_query(model, example_batch: Dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """TorchScript of ``model``'s session encoder for serving (:class:`QueryOf`: ragged local codes and
    the clicked items' rows -> ``(n_sessions, dim)`` query vectors), traced as
    :func:`gtcrec.trace.trace_topk` traces the full model: on the model's device, in eval mode, for any
    batch size and session lengths (callers pad as served). It holds no item table, so its size is the
    same for any catalog."""
    encoder = QueryOf(model).eval()
    device = gm.model_device(model)
    batch = {name: t.to(device) for name, t in with_rows(example_batch, item_vectors(model)).items()}
    with torch.no_grad():
        return torch.jit.trace(encoder, (batch,), strict=True, check_trace=False)


def item_vectors(model) -> np.ndarray:
    """``(n_codes - RESERVED, dim)`` float32: the output weight of the tied layer, in eval mode, one row
    per item code (code = row + ``RESERVED``)."""
    model.eval()
    with torch.no_grad():
        weight = gm._task(model).item_embedding_table.weight
    return np.ascontiguousarray(weight[RESERVED:].detach().cpu().numpy(), dtype=np.float32)


def encode(encoder, sessions, max_len: int, batch_size: int = 1024) -> np.ndarray:
    """Query vectors ``(len(sessions), dim)`` float32 of code sequences (padded as served)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(sessions), batch_size):
            batch = gm.sessions_to_batch(sessions[start:start + batch_size], max_len, pad=True)
            out.append(encoder(batch).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def build_index(vectors: np.ndarray, kind: str = "flat", hnsw_m: int = 32, ef_construction: int = 64,
                ef_search: int = 128, threads: int | None = None):
    """A Faiss inner-product index over ``vectors``: ``"flat"`` (exact) or ``"hnsw"`` (HNSW graph with
    ``hnsw_m`` links per node, built with ``ef_construction``, searched with ``ef_search``). The defaults
    come from notebook 11 at 1,000,000 items near the real ones: recall@10 against exact search 0.973 and
    0.981 in two runs at 0.29-0.32 ms per query (0.954-0.964 at ``ef_search`` 64)."""
    import faiss

    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
    else:
        raise ValueError(f"kind must be 'flat' or 'hnsw', got {kind!r}")
    index.add(vectors)
    return index


def save_index(index, path) -> None:
    """Write a Faiss index to ``path`` (what :class:`gtcrec.serving.operators.FaissTopK` reads)."""
    import faiss

    faiss.write_index(index, str(path))


def search(index, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, codes)`` of the top ``k`` per query, best first. ``exclude``: per query, codes to leave
    out (the talks already clicked, as served); the index is asked for ``k`` more per query than the
    longest exclusion so that ``k`` remain."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    scores, ids = index.search(queries, k + extra)
    codes = np.where(ids >= 0, ids + RESERVED, -1)
    if exclude is None:
        return scores[:, :k], codes[:, :k]
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_c = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (row_s, row_c) in enumerate(zip(scores, codes)):
        keep = ~np.isin(row_c, np.asarray(exclude[i], dtype=np.int64)) & (row_c >= 0)
        s, c = row_s[keep][:k], row_c[keep][:k]
        out_s[i, :len(s)], out_c[i, :len(c)] = s, c
    return out_s, out_c


def build_like(vectors: np.ndarray, spec: Dict[str, Any]):
    """An index over ``vectors`` of the kind :func:`describe_index` (``operators.index_spec``) described (a new catalog's index
    for a version that served ``spec``): flat, or HNSW with the same settings."""
    if spec["kind"] == "IndexFlatIP":
        return build_index(vectors, "flat")
    if spec["kind"] == "IndexHNSWFlat":
        return build_index(vectors, "hnsw", hnsw_m=spec["hnsw_m"], ef_construction=spec["ef_construction"],
                           ef_search=spec["ef_search"])
    raise ValueError(f"no rule to build an index like {spec['kind']}")


def check_query(traced, model, batch: Dict[str, torch.Tensor], atol: float = 1e-4) -> Dict[str, float]:
    """Check that a traced session encoder (:func:`trace_query`) times :func:`item_vectors` gives the
    eager model's scores on ``batch`` (within ``atol``); raises ``AssertionError`` otherwise. Returns
    ``{"max_score_diff": ...}``, as :func:`gtcrec.trace.check_traced` does for the full trace."""
    model.eval()
    vectors = item_vectors(model)
    items = torch.from_numpy(vectors)
    with torch.no_grad():
        split = traced(with_rows(batch, vectors)).float().cpu() @ items.T
        full = model({n: v.clone() for n, v in batch.items()}).float().cpu()[:, RESERVED:]
    diff = float((split - full).abs().max())
    if diff > atol:
        raise AssertionError(f"session encoder x item vectors and the model disagree by {diff:.3g}")
    return {"max_score_diff": diff}


# ------------------------------------------------------------------ measuring an index

def near_catalog(items: np.ndarray, n: int, seed: int = 0, noise: float = 0.5, chunk: int = 100_000) -> np.ndarray:
    """``(n, dim)`` float32 item vectors drawn near ``items``: each a random row of ``items`` plus
    Gaussian noise of ``noise`` times the per-dimension spread of ``items``. A large synthetic catalog
    whose vectors look like the real ones, for measuring an index (encoding a million texts is not
    the point)."""
    rng = np.random.default_rng(seed)
    spread = items.std(axis=0, keepdims=True).astype(np.float32)
    out = np.empty((int(n), items.shape[1]), dtype=np.float32)
    for start in range(0, int(n), chunk):
        stop = min(int(n), start + chunk)
        out[start:stop] = items[rng.integers(0, len(items), stop - start)] + noise * spread * rng.standard_normal(
            (stop - start, items.shape[1]), dtype=np.float32)
    return out


def overlap(found: np.ndarray, exact: np.ndarray) -> float:
    """Recall of ``found`` against ``exact`` (rows of ids or codes, k per row): the mean share of each
    exact row that was found."""
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / len(e) for f, e in zip(found, exact)]))


def one_query_p50_ms(index, queries: np.ndarray, k: int = 10, repeats: int = 200) -> float:
    """Median milliseconds of ``index.search`` for one query alone on one Faiss thread, as one request
    would be answered (the thread count is restored after)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for i in range(repeats):
            query = np.ascontiguousarray(queries[i % len(queries)][None, :], dtype=np.float32)
            started = time.perf_counter()
            index.search(query, k)
            times.append(time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    return 1000 * float(np.median(times))


def encode_p50_ms(encoder, sessions, max_len: int) -> float:
    """Median milliseconds of :func:`encode` for one session alone, over ``sessions``."""
    times = []
    for session in sessions:
        started = time.perf_counter()
        encode(encoder, [session], max_len)
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))
