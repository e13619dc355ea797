"""The exact next-click oracle of the generator, and session prefixes for scoring."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from gtcrec.data.latent import ClickModel, Latent
from gtcrec.data.words import TRACKS


class Oracle:
    """Exact next-click distribution of the generator, over the catalog order.

    The logit of talk ``j`` after a prefix is one dot product ``Q(prefix) . F_j`` with item features
    ``F_j = [z_j, log pop_j, onehot(track_j), onehot(day_j)]`` and query
    ``Q = [a z_l, c, b log share(prefix), -d |days - day_l|]``; talks in the prefix get probability 0.
    """

    def __init__(self, talk_ids: Sequence[str], z: np.ndarray, log_pop: np.ndarray, track: np.ndarray,
                 day: np.ndarray, n_tracks: int, model: ClickModel = ClickModel()):
        self.talk_ids = [str(t) for t in talk_ids]
        self.z = np.asarray(z, dtype=np.float64)
        self.log_pop = np.asarray(log_pop, dtype=np.float64)
        self.track = np.asarray(track, dtype=np.int64)
        self.day = np.asarray(day, dtype=np.int64)
        self.n_tracks = int(n_tracks)
        self.model = model
        n = len(self.talk_ids)
        if not (self.z.shape[0] == self.log_pop.shape[0] == self.track.shape[0] == self.day.shape[0] == n):
            raise ValueError("oracle arrays must all have one row per talk")
        self.n_days = int(self.day.max())
        self.index_of = {t: i for i, t in enumerate(self.talk_ids)}
        if len(self.index_of) != n:
            raise ValueError("duplicate talk ids in the oracle")
        self._days = np.arange(1, self.n_days + 1, dtype=np.float64)
        self.features = np.concatenate([
            self.z, self.log_pop[:, None], np.eye(self.n_tracks)[self.track],
            np.eye(self.n_days)[self.day - 1]], axis=1)
        self.features32 = np.ascontiguousarray(self.features, dtype=np.float32)
        pop = np.exp(self.log_pop)
        track_pop = np.bincount(self.track, weights=pop, minlength=self.n_tracks)
        self.first_probs = pop / (track_pop[self.track] * np.count_nonzero(track_pop))

    @classmethod
    def from_latent(cls, catalog: pd.DataFrame, latent: Latent, model: ClickModel = ClickModel()) -> "Oracle":
        return cls(catalog["talk_id"].astype(str).tolist(), latent.z, latent.log_pop, latent.track, latent.day,
                   len(TRACKS), model)

    @property
    def n_talks(self) -> int:
        return len(self.talk_ids)

    def indices(self, talk_ids: Iterable[str]) -> np.ndarray:
        try:
            return np.array([self.index_of[str(t)] for t in talk_ids], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"talk id {err.args[0]!r} is not in the oracle's catalog") from None

    # -- core -----------------------------------------------------------------------------------
    def _query(self, flat: np.ndarray, rows: np.ndarray, lengths: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Query vectors for prefixes given as flat talk indices with their row numbers (lengths >= 1)."""
        m = self.model
        n = len(lengths)
        counts = np.bincount(rows * self.n_tracks + self.track[flat], minlength=n * self.n_tracks)
        counts = counts.reshape(n, self.n_tracks).astype(np.float64)
        share = (counts + m.share_smoothing) / (lengths[:, None] + m.share_smoothing * self.n_tracks)
        return np.concatenate([
            m.a * self.z[last], np.full((n, 1), m.c), m.b * np.log(share),
            -m.d * np.abs(self._days[None, :] - self.day[last][:, None])], axis=1)

    def _logits(self, flat: np.ndarray, rows: np.ndarray, lengths: np.ndarray, last: np.ndarray,
                float32: bool = False) -> np.ndarray:
        q = self._query(flat, rows, lengths, last)
        if float32:
            logits = q.astype(np.float32) @ self.features32.T
        else:
            logits = q @ self.features.T
        logits[rows, flat] = -np.inf
        return logits

    def _probs_from_indices(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        n = len(prefixes)
        out = np.empty((n, self.n_talks))
        lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
        empty = lengths == 0
        out[empty] = self.first_probs
        keep = np.flatnonzero(~empty)
        if len(keep):
            sub = [np.asarray(prefixes[i], dtype=np.int64) for i in keep]
            flat = np.concatenate(sub)
            rows = np.repeat(np.arange(len(keep)), lengths[keep])
            last = np.array([p[-1] for p in sub], dtype=np.int64)
            logits = self._logits(flat, rows, lengths[keep].astype(np.float64), last)
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
            out[keep] = logits
        return out

    # -- public ---------------------------------------------------------------------------------
    def next_probs(self, prefix_talk_ids: Sequence[str]) -> np.ndarray:
        """P(next click = talk i | prefix) for every talk i in catalog order (sums to 1).

        An empty prefix gives the first-click distribution averaged over attendee interests."""
        return self._probs_from_indices([self.indices(prefix_talk_ids)])[0]

    def scores(self, prefixes: Sequence[Sequence[str]], batch_size: int = 2048) -> np.ndarray:
        """Next-click probabilities for a batch of prefixes: array (n_prefixes, n_talks)."""
        idx = [self.indices(p) for p in prefixes]
        out = np.empty((len(idx), self.n_talks))
        for start in range(0, len(idx), batch_size):
            out[start:start + batch_size] = self._probs_from_indices(idx[start:start + batch_size])
        return out

    def sample_next(self, prefixes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw the next click of each row of ``prefixes`` (int array (B, t >= 1) of talk indices).

        The generator's own sampler: float32 logits and Gumbel-max."""
        prefixes = np.asarray(prefixes, dtype=np.int64)
        b, t = prefixes.shape
        rows = np.repeat(np.arange(b), t)
        logits = self._logits(prefixes.ravel(), rows, np.full(b, float(t)), prefixes[:, -1], float32=True)
        u = rng.random(logits.shape, dtype=np.float32)
        with np.errstate(divide="ignore"):  # u == 0 gives a Gumbel of -inf: never chosen
            np.log(u, out=u)
            np.negative(u, out=u)
            np.log(u, out=u)  # u = -Gumbel
        logits -= u
        return logits.argmax(axis=1)

    def sample_first(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """First clicks: track from a sparse Dirichlet interest, then a talk of it by popularity."""
        present = np.flatnonzero(np.bincount(self.track, minlength=self.n_tracks) > 0)
        theta = rng.dirichlet(np.full(len(present), self.model.interest_alpha), size=n)
        theta_cum = np.cumsum(theta, axis=1)
        u = rng.random(n) * theta_cum[:, -1]
        chosen = present[np.minimum((theta_cum < u[:, None]).sum(axis=1), len(present) - 1)]
        out = np.empty(n, dtype=np.int64)
        u2 = rng.random(n)
        pop = np.exp(self.log_pop)
        for t in present:
            members = np.flatnonzero(self.track == t)
            cum = np.cumsum(pop[members])
            who = np.flatnonzero(chosen == t)
            pos = np.searchsorted(cum, u2[who] * cum[-1], side="right")
            out[who] = members[np.minimum(pos, len(members) - 1)]
        return out

    def log_likelihood(self, clicks: pd.DataFrame, min_position: int = 1) -> np.ndarray:
        """log P(click | prefix) of every click at 0-based position >= min_position of each session.

        ``clicks`` must be sorted by session then time (as :func:`load_clicks` returns them)."""
        prefixes, targets = session_prefixes(clicks, min_position)
        out = np.empty(len(targets))
        for start in range(0, len(targets), 2048):
            p = self.scores(prefixes[start:start + 2048])
            out[start:start + 2048] = np.log(p[np.arange(len(p)), self.indices(targets[start:start + 2048])])
        return out

    def recall_at_k(self, clicks: pd.DataFrame, k: int = 10, min_position: int = 1,
                    last_only: bool = False) -> float:
        """Share of next clicks (position >= min_position, or each session's last click) in the top k."""
        prefixes, targets = session_prefixes(clicks, min_position, last_only=last_only)
        hits = 0
        for start in range(0, len(targets), 2048):
            p = self.scores(prefixes[start:start + 2048])
            tgt = self.indices(targets[start:start + 2048])
            p_tgt = p[np.arange(len(p)), tgt]
            hits += int(((p > p_tgt[:, None]).sum(axis=1) < k).sum())
        return hits / max(len(targets), 1)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, talk_ids=np.array(self.talk_ids, dtype=str), z=self.z, log_pop=self.log_pop,
                            track=self.track, day=self.day, n_tracks=np.int64(self.n_tracks),
                            model=np.array(json.dumps(self.model.to_dict())))
        return path

    @classmethod
    def load(cls, path: str | Path, catalog: pd.DataFrame | None = None) -> "Oracle":
        """Read an oracle; with ``catalog`` its arrays are put in that catalog's order (same talks)."""
        with np.load(path, allow_pickle=False) as f:
            ids = [str(t) for t in f["talk_ids"]]
            arrays = {k: f[k] for k in ("z", "log_pop", "track", "day")}
            n_tracks = int(f["n_tracks"])
            model = ClickModel(**json.loads(str(f["model"])))
        if catalog is not None:
            wanted = catalog["talk_id"].astype(str).tolist()
            if set(wanted) != set(ids) or len(wanted) != len(ids):
                missing = sorted(set(wanted) - set(ids))[:5]
                extra = sorted(set(ids) - set(wanted))[:5]
                raise ValueError(f"{path}: the oracle's talks differ from the catalog's "
                                 f"(in catalog only: {missing}, in oracle only: {extra})")
            pos = {t: i for i, t in enumerate(ids)}
            order = np.array([pos[t] for t in wanted])
            ids = wanted
            arrays = {k: v[order] for k, v in arrays.items()}
        return cls(ids, arrays["z"], arrays["log_pop"], arrays["track"], arrays["day"], n_tracks, model)


def session_prefixes(clicks: pd.DataFrame, min_position: int = 1,
                     last_only: bool = False) -> tuple[list[list[str]], list[str]]:
    """(prefix, next click) pairs of sorted clicks: every position >= min_position, or the last only."""
    prefixes, targets = [], []
    for items in clicks.groupby("session_id", sort=False)["talk_id"].agg(list):
        positions = [len(items) - 1] if last_only else range(min_position, len(items))
        for pos in positions:
            if pos >= min_position:
                prefixes.append(items[:pos])
                targets.append(items[pos])
    return prefixes, targets


