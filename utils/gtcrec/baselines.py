"""Honest baselines for next-talk prediction, scored over item codes like the model.

Every baseline has ``fit(train_sessions)`` (an iterable of code sequences, e.g. from
:func:`gtcrec.metrics.read_sessions`) and ``scores(prefixes) -> np.ndarray`` of shape
``(len(prefixes), n_codes)`` (float32), where the reserved codes 0, 1, 2 score ``-inf``. The
matrices go straight into :func:`gtcrec.metrics.evaluate_scores` (which breaks ties by expectation,
so the many equal scores of the popularity baseline are neither rewarded nor punished).

* :class:`RandomBaseline`: i.i.d. uniform scores (the floor: recall@k ~ k / n_items).
* :class:`PopularityBaseline`: click counts of each code in the training sessions.
* :class:`ItemKNNBaseline`: session co-occurrence item-to-item kNN. Two items are neighbours when
  they appear in the same training session; the co-occurrence counts ``C = X^T X`` of the binary
  session x item matrix ``X`` are cosine-normalised (``C_ij / sqrt(n_i n_j)``, ``n_i`` = sessions
  containing ``i``), the diagonal is dropped and each item keeps its ``n_neighbors`` strongest
  neighbours. A prefix is scored by summing its items' neighbour rows with recency weights
  ``decay ** (distance from the last item)``; items no neighbourhood reaches are ordered by
  popularity below all reached items. Sparse (scipy) throughout: fitting 50,000 sessions over 5,000
  items takes well under a second.
* :class:`TextSimilarityBaseline`: no clicks at all: the dot product (cosine, for the L2-normalised
  text vectors) of every talk's pre-trained text vector with a vector of the prefix: the last
  click's (``"last"``), the mean of the prefix (``"mean"``) or a recency-weighted sum
  (``"recency"``, weights ``decay ** distance from the last click``). It needs no training, so it
  scores a new catalog zero-shot as well as the training event.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from .metrics import N_RESERVED


def _sessions_list(sessions: Iterable[Sequence[int]]) -> list[np.ndarray]:
    return [np.asarray(s, dtype=np.int64).reshape(-1) for s in sessions]


def _infer_n_codes(sessions: list[np.ndarray], n_codes: int | None) -> int:
    top = max((int(s.max()) for s in sessions if len(s)), default=N_RESERVED - 1)
    if n_codes is None:
        return max(top + 1, N_RESERVED + 1)
    if top >= n_codes:
        raise ValueError(f"code {top} found but n_codes={n_codes}")
    return int(n_codes)


def _check_prefix_codes(prefixes: list[np.ndarray], n_codes: int) -> None:
    for i, p in enumerate(prefixes):
        if len(p) and (p.min() < 0 or p.max() >= n_codes):
            raise ValueError(f"prefix {i} holds codes outside [0, {n_codes})")


class _Baseline:
    n_codes: int | None

    def _require_fit(self) -> int:
        if getattr(self, "n_codes_", None) is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(train_sessions)")
        return self.n_codes_

    @staticmethod
    def _mask_reserved(scores: np.ndarray) -> np.ndarray:
        scores[:, :N_RESERVED] = -np.inf
        return scores


class RandomBaseline(_Baseline):
    """Uniform random scores; reproducible for a seed (each call continues the generator)."""

    def __init__(self, n_codes: int | None = None, seed: int = 0):
        self.n_codes = n_codes
        self.seed = seed
        self.n_codes_: int | None = None

    def fit(self, train_sessions: Iterable[Sequence[int]]) -> "RandomBaseline":
        self.n_codes_ = _infer_n_codes(_sessions_list(train_sessions), self.n_codes)
        self._rng = np.random.default_rng(self.seed)
        return self

    def scores(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        n_codes = self._require_fit()
        out = self._rng.random((len(prefixes), n_codes), dtype=np.float32)
        return self._mask_reserved(out)


class PopularityBaseline(_Baseline):
    """Scores every code by its number of clicks in the training sessions (same for all prefixes).

    ``count="clicks"`` counts every click; ``count="sessions"`` counts each session once.
    """

    def __init__(self, n_codes: int | None = None, count: str = "clicks"):
        if count not in ("clicks", "sessions"):
            raise ValueError("count must be 'clicks' or 'sessions'")
        self.n_codes = n_codes
        self.count = count
        self.n_codes_: int | None = None

    def fit(self, train_sessions: Iterable[Sequence[int]]) -> "PopularityBaseline":
        sessions = _sessions_list(train_sessions)
        self.n_codes_ = _infer_n_codes(sessions, self.n_codes)
        if self.count == "sessions":
            sessions = [np.unique(s) for s in sessions]
        codes = np.concatenate(sessions) if sessions else np.zeros(0, dtype=np.int64)
        self.counts_ = np.bincount(codes, minlength=self.n_codes_).astype(np.float32)
        self.counts_[:N_RESERVED] = 0.0
        return self

    def scores(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        self._require_fit()
        out = np.repeat(self.counts_[None, :], len(prefixes), axis=0)
        return self._mask_reserved(out)


class ItemKNNBaseline(_Baseline):
    """Session co-occurrence item-kNN (cosine-normalised, recency-weighted prefix scoring).

    Parameters: ``n_neighbors`` kept per item (``None``: all), ``decay`` the recency weight factor
    per step back from the last prefix item (1.0: all items equal), ``max_prefix`` the number of
    most recent prefix items used, ``popularity_fallback`` whether items with no neighbour relation
    to the prefix are ordered by training popularity (always below every supported item: scores
    ``clicks / (max_clicks + 1) - 1`` in ``[-1, 0)``) instead of tying at 0.
    """

    def __init__(self, n_codes: int | None = None, n_neighbors: int | None = 100,
                 decay: float = 0.6, max_prefix: int = 20, popularity_fallback: bool = True):
        if n_neighbors is not None and n_neighbors < 1:
            raise ValueError("n_neighbors must be >= 1 or None")
        if not 0.0 < decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")
        self.n_codes = n_codes
        self.n_neighbors = n_neighbors
        self.decay = decay
        self.max_prefix = max_prefix
        self.popularity_fallback = popularity_fallback
        self.n_codes_: int | None = None

    def fit(self, train_sessions: Iterable[Sequence[int]]) -> "ItemKNNBaseline":
        sessions = _sessions_list(train_sessions)
        n_codes = self.n_codes_ = _infer_n_codes(sessions, self.n_codes)
        lengths = np.array([len(s) for s in sessions], dtype=np.int64)
        rows = np.repeat(np.arange(len(sessions)), lengths)
        cols = np.concatenate(sessions) if sessions else np.zeros(0, dtype=np.int64)
        keep = cols >= N_RESERVED
        x = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
                          shape=(len(sessions), n_codes))
        x.sum_duplicates()
        x.data[:] = 1.0  # binary: a repeated click within a session counts once
        co = (x.T @ x).tocsr()
        n_i = np.asarray(co.diagonal(), dtype=np.float64)
        co.setdiag(0.0)
        co.eliminate_zeros()
        co = co.tocoo()
        denom = np.sqrt(n_i[co.row] * n_i[co.col])
        sim = sp.csr_matrix((co.data / denom, (co.row, co.col)), shape=(n_codes, n_codes))
        if self.n_neighbors is not None:
            sim = _keep_top_per_row(sim, self.n_neighbors)
        self.similarity_ = sim.astype(np.float32)
        pop = np.bincount(cols[keep], minlength=n_codes).astype(np.float64)
        self.popularity_ = pop.astype(np.float32)
        # in [-1, 0): below every reached item, most popular first
        self.fallback_ = (pop / (pop.max() + 1.0) - 1.0).astype(np.float32)
        return self

    def _prefix_weights(self, prefixes: list[np.ndarray]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for i, p in enumerate(prefixes):
            p = p[-self.max_prefix:] if self.max_prefix else p
            p_keep = p >= N_RESERVED
            w = self.decay ** np.arange(len(p) - 1, -1, -1, dtype=np.float64)
            rows.append(np.full(int(p_keep.sum()), i))
            cols.append(p[p_keep])
            vals.append(w[p_keep])
        return sp.csr_matrix((_cat(vals, np.float32), (_cat(rows, np.int64), _cat(cols, np.int64))),
                             shape=(len(prefixes), self.n_codes_))  # duplicates are summed

    def scores(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        n_codes = self._require_fit()
        prefixes = _sessions_list(prefixes)
        _check_prefix_codes(prefixes, n_codes)
        out = np.asarray((self._prefix_weights(prefixes) @ self.similarity_).todense(),
                         dtype=np.float32)
        if self.popularity_fallback:
            # items without any neighbour relation to the prefix rank below all supported items
            # (whose scores are > 0), ordered among themselves by training popularity
            unsupported = out <= 0.0
            fallback = np.broadcast_to(self.fallback_[None, :], out.shape)
            out[unsupported] = fallback[unsupported]
        return self._mask_reserved(out)


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _keep_top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each CSR row (ties at the cut: lower column first)."""
    m = m.tocsr()
    m.sort_indices()
    indptr, indices, data = m.indptr, m.indices, m.data
    keep = np.zeros(len(data), dtype=bool)
    for r in range(m.shape[0]):
        a, b = indptr[r], indptr[r + 1]
        if b - a <= k:
            keep[a:b] = True
        else:
            order = np.argsort(-data[a:b], kind="stable")[:k]
            keep[a + order] = True
    rows = np.repeat(np.arange(m.shape[0]), np.diff(indptr))
    return sp.csr_matrix((data[keep], (rows[keep], indices[keep])), shape=m.shape)


class TextSimilarityBaseline(_Baseline):
    """Text similarity to the session: ``table @ prefix vector`` (``table``: the item table aligned
    with the codes, reserved rows first). ``mode``: ``"last"`` (the last click), ``"mean"`` (the
    mean of the last ``max_prefix`` clicks) or ``"recency"`` (their sum weighted by ``decay **``
    steps back from the last click). ``fit`` learns nothing (it only checks the codes)."""

    MODES = ("last", "mean", "recency")

    def __init__(self, table: np.ndarray, mode: str = "last", decay: float = 0.5, max_prefix: int = 20):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if not 0.0 < decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")
        self.table = np.asarray(table, dtype=np.float32)
        if self.table.ndim != 2 or len(self.table) <= N_RESERVED:
            raise ValueError(f"table must be (n_codes, dim) with talk rows, got {self.table.shape}")
        self.mode, self.decay, self.max_prefix = mode, float(decay), int(max_prefix)
        self.n_codes_: int | None = len(self.table)

    def fit(self, train_sessions: Iterable[Sequence[int]] = ()) -> "TextSimilarityBaseline":
        _infer_n_codes(_sessions_list(train_sessions), len(self.table))
        return self

    def _weights(self, length: int) -> np.ndarray:
        if self.mode == "last":
            w = np.zeros(length)
            w[-1] = 1.0
        elif self.mode == "mean":
            w = np.full(length, 1.0 / length)
        else:
            w = self.decay ** np.arange(length - 1, -1, -1, dtype=np.float64)
        return w

    def scores(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        n_codes = self._require_fit()
        prefixes = _sessions_list(prefixes)
        _check_prefix_codes(prefixes, n_codes)
        queries = np.zeros((len(prefixes), self.table.shape[1]), dtype=np.float32)
        for i, p in enumerate(prefixes):
            p = p[p >= N_RESERVED][-self.max_prefix:]
            if len(p):
                queries[i] = self._weights(len(p)) @ self.table[p]
        return self._mask_reserved(queries @ self.table.T)


def text_baselines(table: np.ndarray) -> dict[str, TextSimilarityBaseline]:
    """The three text-similarity baselines by name (they need no fit)."""
    return {"text: last click": TextSimilarityBaseline(table, "last"),
            "text: session mean": TextSimilarityBaseline(table, "mean"),
            "text: recency-weighted": TextSimilarityBaseline(table, "recency")}


def all_baselines(n_codes: int | None = None, seed: int = 0, table: np.ndarray | None = None
                  ) -> dict[str, _Baseline]:
    """Random, popularity, item-kNN with their default settings, and with ``table`` the text
    baselines, by name (unfitted)."""
    out: dict[str, _Baseline] = {"random": RandomBaseline(n_codes, seed=seed),
                                 "popularity": PopularityBaseline(n_codes),
                                 "item-knn": ItemKNNBaseline(n_codes)}
    if table is not None:
        out.update(text_baselines(table))
    return out
