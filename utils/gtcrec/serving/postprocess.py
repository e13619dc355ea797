"""The post-processing step of serving, written four ways, to measure which one to serve with
(``python benchmarks/serving.py --postprocess-only``).

The step (``DecodeTopK`` without the fallback): for each session, drop the model's candidates
that the session already clicked or that are reserved codes, keep the first ``k``, and map codes
to talk ids. Every variant takes the same numpy inputs and returns ``(talk_ids (n, k) object,
scores (n, k) float32)``; a slot left empty (fewer than ``k`` candidates survive) holds ``b""``
and NaN.

* ``decode_numpy``: the operator's own code (``DecodeTopK.decode``), vectorised numpy.

Pass ``op = plain_decoder(vocab, k)`` (a ``DecodeTopK`` whose fallback adds nothing).
* ``decode_torch``: tensors; clicked talks padded to a matrix and compared by broadcasting.
* ``decode_pandas``: long tables, an anti-join on (session, code), ``groupby().head(k)``.
* ``decode_cudf``: the pandas code on cudf (GPU), when cudf is installed.

``time_variants`` times them per request size; ``agree`` checks they give the same answer.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from gtcrec.serving import operators as ops


class PlainDecode(ops.DecodeTopK):
    """``DecodeTopK`` without the fallback: what all the variants compute."""

    def fallback(self, exclude, n):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)


def plain_decoder(vocab: Sequence[str], k: int) -> PlainDecode:
    return PlainDecode(vocab, k=k)


def decode_numpy(op: "ops.DecodeTopK", clicked_values, clicked_offsets, scores, codes):
    """The served implementation (one model row per session)."""
    n = len(clicked_offsets) - 1
    out = op.decode(np.arange(n).astype(object), clicked_values, clicked_offsets,
                    np.arange(n, dtype=np.int64), scores, codes)
    return out[ops.OUT_TALKS], out[ops.OUT_SCORES]


def decode_torch(op: "ops.DecodeTopK", clicked_values, clicked_offsets, scores, codes):
    """One torch thread, as the served model runs (a shared 2-core machine makes the default pool
    of small ops orders of magnitude slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _decode_torch(torch, op, clicked_values, clicked_offsets, scores, codes)
    finally:
        torch.set_num_threads(threads)


def _decode_torch(torch, op, clicked_values, clicked_offsets, scores, codes):
    k = op.k
    cand = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))
    cand_scores = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    offsets = torch.from_numpy(np.asarray(clicked_offsets, dtype=np.int64))
    values = torch.from_numpy(np.asarray(clicked_values, dtype=np.int64))
    n = cand.shape[0]
    lengths = offsets[1:] - offsets[:-1]
    width = int(lengths.max()) if n and len(values) else 0
    clicked = torch.full((n, max(width, 1)), -1, dtype=torch.int64)
    if len(values):
        rows = torch.repeat_interleave(torch.arange(n), lengths)
        cols = torch.arange(len(values)) - torch.repeat_interleave(offsets[:-1], lengths)
        clicked[rows, cols] = values
    hit = (cand.unsqueeze(2) == clicked.unsqueeze(1)).any(dim=2) if op.exclude_clicked else torch.zeros_like(cand, dtype=torch.bool)
    valid = ~hit & (cand >= ops.FIRST_CODE) & (cand < op.n_codes)
    rank = torch.cumsum(valid.to(torch.int64), dim=1)
    take = valid & (rank <= k)
    r, c = torch.nonzero(take, as_tuple=True)
    out_codes = torch.zeros((n, k), dtype=torch.int64)
    out_scores = torch.full((n, k), float("nan"), dtype=torch.float32)
    out_codes[r, rank[r, c] - 1] = cand[r, c]
    out_scores[r, rank[r, c] - 1] = cand_scores[r, c]
    return op.id_table[out_codes.numpy()], out_scores.numpy()


def _decode_frames(lib, op: "ops.DecodeTopK", clicked_values, clicked_offsets, scores, codes):
    """The dataframe version, for pandas or cudf (``lib``)."""
    k = op.k
    n, width = codes.shape
    lengths = np.diff(np.asarray(clicked_offsets, dtype=np.int64))
    cand = lib.DataFrame({"row": np.repeat(np.arange(n, dtype=np.int64), width),
                          "pos": np.tile(np.arange(width, dtype=np.int64), n),
                          "code": np.asarray(codes, dtype=np.int64).ravel(),
                          "score": np.asarray(scores, dtype=np.float32).ravel()})
    cand = cand[(cand["code"] >= ops.FIRST_CODE) & (cand["code"] < op.n_codes)]
    if op.exclude_clicked and len(clicked_values):
        clicked = lib.DataFrame({"row": np.repeat(np.arange(n, dtype=np.int64), lengths),
                                 "code": np.asarray(clicked_values, dtype=np.int64)}).drop_duplicates()
        clicked["hit"] = True
        cand = cand.merge(clicked, on=["row", "code"], how="left")
        cand = cand[cand["hit"].isna()]
    cand = cand.sort_values(["row", "pos"])
    cand["rank"] = cand.groupby("row").cumcount()
    cand = cand[cand["rank"] < k]
    if lib is not pd:
        cand = cand.to_pandas()
    out_codes = np.zeros((n, k), dtype=np.int64)
    out_scores = np.full((n, k), np.nan, dtype=np.float32)
    rows, ranks = cand["row"].to_numpy(), cand["rank"].to_numpy()
    out_codes[rows, ranks] = cand["code"].to_numpy()
    out_scores[rows, ranks] = cand["score"].to_numpy()
    return op.id_table[out_codes], out_scores


def decode_pandas(op, clicked_values, clicked_offsets, scores, codes):
    return _decode_frames(pd, op, clicked_values, clicked_offsets, scores, codes)


def cudf_available() -> bool:
    try:
        import cudf  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA error without a GPU
        return False
    return True


def decode_cudf(op, clicked_values, clicked_offsets, scores, codes):
    import cudf

    return _decode_frames(cudf, op, clicked_values, clicked_offsets, scores, codes)


def variants() -> dict[str, Callable]:
    """The implementations that can run here (cudf only where it imports)."""
    out = {"numpy": decode_numpy, "torch": decode_torch, "pandas": decode_pandas}
    if cudf_available():
        out["cudf"] = decode_cudf
    return out


def agree(op, clicked_values, clicked_offsets, scores, codes) -> dict[str, bool]:
    """Whether each variant gives the numpy variant's answer (ids equal, scores equal incl. NaN)."""
    want_ids, want_scores = decode_numpy(op, clicked_values, clicked_offsets, scores, codes)
    result = {}
    for name, fn in variants().items():
        ids, sc = fn(op, clicked_values, clicked_offsets, scores, codes)
        result[name] = bool(np.array_equal(ids, want_ids) and np.array_equal(sc, want_scores, equal_nan=True))
    return result


def model_candidates(model_op: "ops.TorchScriptTopK", sessionize: "ops.SessionizeClicks", arrays: dict,
                     n_sessions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Realistic inputs for ``n_sessions`` sessions: the request's sessions (repeated as needed)
    through ``sessionize`` and the model. Returns (clicked_values, clicked_offsets, scores, codes)
    for sessions with at least one known click."""
    pre = sessionize.sessionize(arrays["session_id"], arrays["talk_id"], arrays["timestamp"])
    scores, codes = model_op.predict(pre[f"{ops.ITEM_LIST}__values"], pre[f"{ops.ITEM_LIST}__offsets"])
    rows = np.flatnonzero(pre[ops.MODEL_ROW] >= 0)
    offs = pre[f"{ops.CLICKED}__offsets"]
    vals = pre[f"{ops.CLICKED}__values"]
    pick = rows[np.arange(n_sessions) % len(rows)]
    lists = [vals[offs[i]:offs[i + 1]] for i in pick]
    lengths = np.array([len(x) for x in lists], dtype=np.int64)
    clicked_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    clicked_values = np.concatenate(lists).astype(np.int64)
    model_rows = pre[ops.MODEL_ROW][pick]
    return clicked_values, clicked_offsets, scores[model_rows], codes[model_rows]


def time_variants(op, inputs_by_size: dict[int, tuple], repeats: int = 20, min_seconds: float = 0.05) -> pd.DataFrame:
    """Median milliseconds per call of each variant, per request size (sessions).

    ``inputs_by_size``: size -> (clicked_values, clicked_offsets, scores, codes). Each variant runs
    once untimed, then ``repeats`` times (fewer when a call is slow: about ``min_seconds`` each size)."""
    rows = []
    for size, args in inputs_by_size.items():
        for name, fn in variants().items():
            fn(op, *args)  # warm-up (imports, caches)
            times = []
            budget_end = time.perf_counter() + max(min_seconds, 0)
            for i in range(repeats):
                started = time.perf_counter()
                fn(op, *args)
                times.append(time.perf_counter() - started)
                if i >= 2 and time.perf_counter() > budget_end + 1.0:
                    break
            rows.append({"sessions": size, "variant": name, "ms": float(np.median(times)) * 1e3})
    table = pd.DataFrame(rows).pivot(index="sessions", columns="variant", values="ms")
    return table[[c for c in ("numpy", "torch", "pandas", "cudf") if c in table.columns]]
