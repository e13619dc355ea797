"""The hidden structure of a generated event: click-model parameters, the world's geometry, and the latent
arrays of one catalog (see :mod:`gtcrec.data` for the click model)."""
from __future__ import annotations

import dataclasses

import numpy as np

from gtcrec.data.words import SUBTOPICS, TERMS, TRACKS



@dataclasses.dataclass(frozen=True)
class ClickModel:
    """Parameters of the next-click model (see the module docstring)."""

    a: float = 12.0                 # weight of the latent similarity z_l . z_j (unit vectors) to the last click
    b: float = 0.5                  # weight of log smoothed track share of the prefix
    c: float = 1.0                  # weight of log popularity
    d: float = 0.3                  # penalty per day between j and the last click
    share_smoothing: float = 0.5    # s in (count + s) / (len + s * n_tracks)
    interest_alpha: float = 0.2     # Dirichlet concentration of the first-click track interest
    mean_length: float = 6.5        # mean clicks per session (2 + geometric)
    max_length: int = 30
    min_gap_s: int = 10
    max_gap_s: int = 300

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class WorldParams:
    """Geometry of the latent space shared by every event generated from one world seed."""

    dim: int = 24
    track_scale: float = 0.75      # norm of a track centre
    subtopic_scale: float = 0.8    # norm of a subtopic centre
    term_scale: float = 0.9        # norm of the combined vector of the key terms a talk's text uses
    noise_scale: float = 0.45      # norm of a talk's own noise (before z is scaled to unit length)
    popularity_sigma: float = 0.6  # standard deviation of the talk-specific part of log popularity


@dataclasses.dataclass
class Latent:
    """Latent arrays of one catalog, in catalog order."""

    event: str
    z: np.ndarray            # (n_talks, dim) float64, unit rows
    log_pop: np.ndarray      # (n_talks,) float64, mean 0
    track: np.ndarray        # (n_talks,) int64, index into TRACKS
    subtopic: np.ndarray     # (n_talks,) int64, index into SUBTOPICS
    day: np.ndarray          # (n_talks,) int64, 1..N_DAYS

    @property
    def popularity(self) -> np.ndarray:
        return np.exp(self.log_pop)


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)



def world_centres(world_seed: int, world: WorldParams = WorldParams()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-free geometry of a world seed: track centres (n_tracks, dim), subtopic centres
    (n_subtopics, dim) and term vectors (n_terms, dim), scaled by ``world``."""
    rng = np.random.default_rng([int(world_seed), 7919])
    track_c = world.track_scale * _unit_rows(rng, len(TRACKS), world.dim)
    sub_c = world.subtopic_scale * _unit_rows(rng, len(SUBTOPICS), world.dim)
    term_v = _unit_rows(rng, len(TERMS), world.dim)
    return track_c, sub_c, term_v


