"""Next-item metrics shared by every model and baseline of the series.

Evaluation protocol
-------------------
A processed session is a list of item codes ``[c1, ..., cn]`` in time order (``n >= 2``; codes
0, 1, 2 are reserved: padding, null, out-of-vocabulary; talks start at code 3). The prediction
task is the one serving answers: given the prefix ``[c1, ..., c(n-1)]``, rank every code so that
the LAST click ``cn`` comes first. :func:`sessions_to_prefixes` turns a list of sessions into
``(prefixes, targets)``; every model and baseline produces a score matrix ``(n_sessions, n_codes)``
for the prefixes, and :func:`evaluate_scores` compares it with the targets. One relevant item per session, so

* ``recall@k`` (= hit rate) is 1 when the target is among the first ``k`` codes,
* ``ndcg@k`` is ``1 / log2(rank + 1)`` when ``rank <= k`` (the ideal DCG is 1),
* ``mrr@k`` is ``1 / rank`` when ``rank <= k``,

each averaged over sessions, for ``k`` in ``ks`` (default 10 and 20).

Exclusions: the reserved codes (``0 .. reserved-1``) are never recommendations and always get
``-inf`` unless ``reserved=0``. With ``exclude=prefixes`` the codes already in each session's
prefix are removed as well (a recommender would not re-offer what the user just saw). A target
that is excluded (for instance a repeated click) cannot be ranked and counts as a miss: the
metrics do not silently drop such sessions.

Ties: the rank of the target is the expected rank under uniformly random tie-breaking. If ``g``
codes score strictly higher than the target and ``t`` codes (the target included) score the same,
the target is equally likely to sit at each rank ``g+1 .. g+t``; every metric is the average over
those ``t`` ranks (e.g. an all-equal score row over 100 codes gives ``recall@10 = 0.1``). This
makes a constant or partly constant scorer (popularity with many unseen items) neither lucky nor
unlucky. Codes with score ``-inf`` (excluded) rank after everything, and a target at ``-inf`` is a
miss. ``NaN`` scores are an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gtcrec.layout import ITEM_LIST
from gtcrec.layout import RESERVED as N_RESERVED  # codes 0 padding, 1 null, 2 out-of-vocabulary

DEFAULT_KS = (10, 20)


# ----------------------------------------------------------------------------- sessions

def _as_codes(session) -> np.ndarray:
    arr = np.asarray(session, dtype=np.int64).reshape(-1)
    return arr


def read_sessions(path: str | Path, column: str = ITEM_LIST) -> list[np.ndarray]:
    """Read a processed-sessions parquet file or folder into a list of int64 code arrays."""
    import pandas as pd

    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no parquet files under {path}")
    out: list[np.ndarray] = []
    for f in files:
        df = pd.read_parquet(f, columns=[column])
        out.extend(_as_codes(s) for s in df[column])
    return out


def sessions_to_prefixes(sessions: Iterable[Sequence[int]], min_length: int = 2
                         ) -> tuple[list[np.ndarray], np.ndarray]:
    """Split each session ``[c1..cn]`` into the prefix ``[c1..c(n-1)]`` and the target ``cn``.

    Sessions shorter than ``min_length`` (at least 2: a prefix needs one item) raise ``ValueError``
    rather than being skipped, so that every caller evaluates the same set of sessions.
    """
    if min_length < 2:
        raise ValueError("min_length must be >= 2")
    prefixes, targets = [], []
    for i, s in enumerate(sessions):
        codes = _as_codes(s)
        if len(codes) < min_length:
            raise ValueError(f"session {i} has {len(codes)} items, fewer than {min_length}")
        prefixes.append(codes[:-1])
        targets.append(codes[-1])
    return prefixes, np.asarray(targets, dtype=np.int64)


# ----------------------------------------------------------------------------- helpers

def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _rank_tables(max_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative sums over ranks 0..max_k of the per-rank gains (index r: sum over ranks 1..r)."""
    r = np.arange(1, max_k + 1, dtype=np.float64)
    dcg = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(r + 1.0))])
    rr = np.concatenate([[0.0], np.cumsum(1.0 / r)])
    return dcg, rr


def _metrics_from_rank_ranges(greater: np.ndarray, ties: np.ndarray, hit_possible: np.ndarray,
                              ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-row metrics when the target's rank is uniform over ``greater+1 .. greater+ties``."""
    dcg, rr = _rank_tables(max(ks))
    ties = np.maximum(ties, 1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        lo = np.minimum(greater, k)               # ranks 1..lo are taken by higher scores
        hi = np.minimum(greater + ties, k)        # ranks lo+1..hi are tie positions within top k
        frac = (hi - lo) / ties
        out[f"recall@{k}"] = np.where(hit_possible, frac, 0.0)
        out[f"ndcg@{k}"] = np.where(hit_possible, (dcg[hi] - dcg[lo]) / ties, 0.0)
        out[f"mrr@{k}"] = np.where(hit_possible, (rr[hi] - rr[lo]) / ties, 0.0)
    return out


def _summarise(per_row: dict[str, np.ndarray], per_session: bool, n: int):
    if per_session:
        return per_row
    res = {name: float(v.mean()) if n else float("nan") for name, v in per_row.items()}
    res["n"] = n
    return res


# ----------------------------------------------------------------------------- score matrices

def apply_exclusions(scores: np.ndarray, exclude: Sequence[Sequence[int]] | None = None,
                     reserved: int = N_RESERVED, copy: bool = True) -> np.ndarray:
    """Float copy of ``scores`` with reserved codes and each row's ``exclude`` codes at ``-inf``."""
    arr = _to_numpy(scores)
    scores = np.array(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32, copy=copy)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_codes), got shape {scores.shape}")
    if reserved:
        scores[:, :reserved] = -np.inf
    if exclude is not None:
        if len(exclude) != scores.shape[0]:
            raise ValueError(f"exclude has {len(exclude)} rows, scores {scores.shape[0]}")
        rows, cols = [], []
        for i, codes in enumerate(exclude):
            codes = _as_codes(codes)
            codes = codes[(codes >= 0) & (codes < scores.shape[1])]
            rows.append(np.full(len(codes), i))
            cols.append(codes)
        if rows:
            scores[np.concatenate(rows), np.concatenate(cols)] = -np.inf
    return scores


def evaluate_scores(scores, targets, ks: Sequence[int] = DEFAULT_KS,
                    exclude: Sequence[Sequence[int]] | None = None, reserved: int = N_RESERVED,
                    per_session: bool = False, chunk_size: int = 2048):
    """Recall/NDCG/MRR@k of a score matrix ``(n, n_codes)`` (numpy or torch) against target codes.

    ``exclude``: optional per-row codes (normally the prefixes) scored ``-inf`` before ranking;
    ``reserved``: the number of leading reserved codes scored ``-inf`` (0 disables it). Ties are
    resolved by expectation over random tie-breaking (module docstring). Returns a dict with keys
    ``"recall@10"``, ``"ndcg@10"``, ``"mrr@10"``, ... and ``"n"`` (number of sessions); with
    ``per_session=True`` a dict of per-row arrays instead. The input matrix is not modified.
    """
    ks = _check_ks(ks)
    targets = _to_numpy(targets).astype(np.int64).reshape(-1)
    shape = getattr(scores, "shape", None)
    if shape is None or len(shape) != 2:
        scores = _to_numpy(scores)
        shape = scores.shape
        if len(shape) != 2:
            raise ValueError(f"scores must be 2-D (n, n_codes), got shape {shape}")
    n, n_codes = shape
    if len(targets) != n:
        raise ValueError(f"{n} score rows but {len(targets)} targets")
    if np.any((targets < 0) | (targets >= n_codes)):
        raise ValueError("targets must be codes in [0, n_codes)")
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude has {len(exclude)} rows, scores {n}")
    greater = np.empty(n, dtype=np.int64)
    ties = np.empty(n, dtype=np.int64)
    possible = np.empty(n, dtype=bool)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        chunk = apply_exclusions(scores[start:stop],
                                 None if exclude is None else exclude[start:stop], reserved)
        if np.isnan(chunk).any():
            raise ValueError("scores contain NaN")
        t = targets[start:stop]
        ts = chunk[np.arange(stop - start), t][:, None]
        greater[start:stop] = (chunk > ts).sum(axis=1)
        ties[start:stop] = (chunk == ts).sum(axis=1)
        possible[start:stop] = np.isfinite(ts[:, 0]) | (ts[:, 0] > 0)  # +inf is a sure top score
    return _summarise(_metrics_from_rank_ranges(greater, ties, possible, ks), per_session, n)


# ----------------------------------------------------------------------------- top-k lists

def format_metrics(results: dict, ks: Sequence[int] = DEFAULT_KS) -> str:
    """One-line text of a result dict, e.g. for notebook output."""
    parts = [f"{m}@{k}={results[f'{m}@{k}']:.4f}" for k in ks for m in ("recall", "ndcg", "mrr")
             if f"{m}@{k}" in results]
    if "n" in results:
        parts.append(f"n={results['n']}")
    return "  ".join(parts)
