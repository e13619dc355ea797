"""The seeded generator: a catalog of talks, attendee sessions, and the two events of the series."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from gtcrec.data.latent import ClickModel, Latent, WorldParams, world_centres
from gtcrec.data.oracle import Oracle
from gtcrec.data.words import (ORG_HOME_TRACK, ORG_WEIGHTS, ORGANIZATIONS, SUBTOPICS, TERM_INDEX, TRACKS, WORDS,
                               talk_text)

LEVELS = ["Beginner", "Intermediate", "Advanced"]
LEVEL_WEIGHTS = [0.3, 0.45, 0.25]
FORMATS = ["Talk", "Panel", "Lab", "Tutorial", "Poster"]
FORMAT_WEIGHTS = [0.6, 0.08, 0.1, 0.1, 0.12]
N_DAYS = 4
SLOTS = ["09:00", "10:00", "11:00", "13:00", "14:00", "15:00", "16:00", "17:00"]
# Visible drivers of popularity (added to log popularity): format, level, the host organisation.
_FORMAT_POP = np.array([0.0, 0.2, -0.2, 0.1, -0.5])   # Talk, Panel, Lab, Tutorial, Poster
_LEVEL_POP = np.array([0.15, 0.0, -0.15])             # Beginner, Intermediate, Advanced
_FIRST_ORG_POP = 0.2                                  # ORGANIZATIONS[0]


def generate_catalog(n_talks: int, seed: int, event: str = "spring", id_prefix: str = "S",
                     id_start: int = 50001, world_seed: int = 0,
                     world: WorldParams = WorldParams()) -> tuple[pd.DataFrame, Latent]:
    """A catalog of ``n_talks`` GTC-like talks and their latent arrays (in catalog order).

    Talk ids are ``f"{id_prefix}{id_start + i}"``. The track/subtopic centres come from
    ``world_seed`` (shared by the events of one series); talks, text and noise from ``seed``.
    """
    if n_talks < 1:
        raise ValueError("n_talks must be >= 1")
    rng = np.random.default_rng([int(seed), 104729])
    track_c, sub_c, term_v = world_centres(world_seed, world)
    weights = np.array([WORDS[t]["weight"] for t in TRACKS])
    track = rng.choice(len(TRACKS), size=n_talks, p=weights / weights.sum())
    sub_of_track = {ti: [si for si, (t, _) in enumerate(SUBTOPICS) if t == TRACKS[ti]] for ti in range(len(TRACKS))}
    subtopic = np.array([sub_of_track[t][int(rng.integers(len(sub_of_track[t])))] for t in track], dtype=np.int64)
    level = rng.choice(len(LEVELS), size=n_talks, p=LEVEL_WEIGHTS)
    fmt = rng.choice(len(FORMATS), size=n_talks, p=FORMAT_WEIGHTS)
    org = rng.choice(len(ORGANIZATIONS), size=n_talks, p=ORG_WEIGHTS / ORG_WEIGHTS.sum())
    at_home = rng.random(n_talks) < 0.6
    home_pick = rng.random(n_talks)
    for ti, name in enumerate(TRACKS):
        homes = [k for k, o in enumerate(ORGANIZATIONS) if ORG_HOME_TRACK.get(o) == name]
        who = np.flatnonzero((track == ti) & at_home)
        if homes and len(who):
            org[who] = np.array(homes)[(home_pick[who] * len(homes)).astype(int)]
    day = rng.integers(1, N_DAYS + 1, size=n_talks)
    slot = rng.integers(0, len(SLOTS), size=n_talks)
    titles, abstracts = [], []
    term_part = np.zeros((n_talks, world.dim))
    for i in range(n_talks):
        title, abstract, terms = talk_text(rng, TRACKS[track[i]], SUBTOPICS[subtopic[i]][1], FORMATS[fmt[i]],
                                            LEVELS[level[i]], ORGANIZATIONS[org[i]])
        titles.append(title)
        abstracts.append(abstract)
        if terms:
            term_part[i] = term_v[[TERM_INDEX[t] for t in terms]].sum(axis=0) / math.sqrt(len(terms))
    noise = world.noise_scale * rng.standard_normal((n_talks, world.dim)) / math.sqrt(world.dim)
    z = track_c[track] + sub_c[subtopic] + world.term_scale * term_part + noise
    z /= np.linalg.norm(z, axis=1, keepdims=True)  # unit length: no talk is a hub by its norm alone
    log_pop = (world.popularity_sigma * rng.standard_normal(n_talks) + _FORMAT_POP[fmt] + _LEVEL_POP[level]
               + np.where(org == 0, _FIRST_ORG_POP, 0.0))
    log_pop -= log_pop.mean()
    catalog = pd.DataFrame({
        "talk_id": [f"{id_prefix}{id_start + i}" for i in range(n_talks)],
        "title": titles,
        "abstract": abstracts,
        "track": [TRACKS[t] for t in track],
        "level": [LEVELS[x] for x in level],
        "format": [FORMATS[x] for x in fmt],
        "organization": [ORGANIZATIONS[x] for x in org],
        "day": day.astype(np.int64),
        "slot": [SLOTS[x] for x in slot],
    })
    latent = Latent(event=event, z=z, log_pop=log_pop, track=track.astype(np.int64), subtopic=subtopic,
                    day=day.astype(np.int64))
    return catalog, latent


def subtopic_names(latent: Latent) -> list[str]:
    """The subtopic name of every talk (not a catalog column: it is the hidden label)."""
    return [SUBTOPICS[s][1] for s in latent.subtopic]

def generate_sessions(catalog: pd.DataFrame, latent: Latent, n_sessions: int, seed: int,
                      start: str | pd.Timestamp = "2025-02-03", days: float = 60.0,
                      model: ClickModel = ClickModel(), session_prefix: str | None = None,
                      batch_size: int = 2048, time_resolution_s: int = 1) -> pd.DataFrame:
    """Sessions drawn from the click model: DataFrame (session_id, talk_id, timestamp) sorted by
    session then time. Session ids are ``f"{session_prefix}{i:06d}"`` (default prefix: ``"<event>-"``).
    Sessions start uniformly within ``days`` days after ``start``; steps are sampled for a batch of
    ``batch_size`` sessions at once.

    ``time_resolution_s`` rounds every timestamp down to a multiple of that many seconds, as logs
    with coarse clocks or batched uploads do: with more than ~10 s, clicks of a session share
    timestamps (tied clicks). Rows stay in the order they were drawn, but a tie no longer says
    which click came first: whatever reads them orders ties by the click order rule (talk id)."""
    if int(time_resolution_s) < 1:
        raise ValueError("time_resolution_s must be >= 1")
    oracle = Oracle.from_latent(catalog, latent, model)
    n_talks = oracle.n_talks
    if n_talks < 2 or n_sessions < 1:
        raise ValueError("need at least 2 talks and 1 session to generate sessions")
    rng = np.random.default_rng([int(seed), 15485863])
    p = 1.0 / (model.mean_length - 1.0)
    lengths = np.minimum(1 + rng.geometric(p, size=n_sessions), min(model.max_length, n_talks))
    first = oracle.sample_first(n_sessions, rng)
    start_s = np.floor(rng.uniform(0.0, days * 86400.0, size=n_sessions)).astype(np.int64)
    gaps = rng.integers(model.min_gap_s, model.max_gap_s + 1, size=int(lengths.sum()))

    clicked = np.full((n_sessions, int(lengths.max())), -1, dtype=np.int64)
    clicked[:, 0] = first
    for b0 in range(0, n_sessions, batch_size):
        sl = slice(b0, min(b0 + batch_size, n_sessions))
        block, block_len = clicked[sl], lengths[sl]  # block is a view: writes go into `clicked`
        for t in range(1, int(block_len.max())):
            active = np.flatnonzero(block_len > t)
            block[active, t] = oracle.sample_next(block[active, :t], rng)

    mask = np.arange(clicked.shape[1])[None, :] < lengths[:, None]
    talk_idx = clicked[mask]  # row-major: session by session, in click order
    sess = np.repeat(np.arange(n_sessions), lengths)
    session_first = np.r_[0, np.cumsum(lengths)[:-1]]  # flat position of each session's first click
    gaps[session_first] = 0
    offsets = np.cumsum(gaps)
    session_base = offsets[session_first]
    seconds = start_s[sess] + offsets - session_base[sess]
    seconds = seconds // int(time_resolution_s) * int(time_resolution_s)
    timestamps = pd.Timestamp(start).to_datetime64().astype("datetime64[ns]") + seconds.astype("timedelta64[s]")
    prefix = f"{latent.event}-" if session_prefix is None else session_prefix
    width = max(6, len(str(n_sessions)))
    ids = np.array([f"{prefix}{i:0{width}d}" for i in range(n_sessions)], dtype=object)
    return pd.DataFrame({
        "session_id": ids[sess],
        "talk_id": np.array(oracle.talk_ids, dtype=object)[talk_idx],
        "timestamp": pd.to_datetime(timestamps.astype("datetime64[ns]")),
    })


# ---------------------------------------------------------------------------------------------
# Two events and their files
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EventData:
    name: str
    catalog: pd.DataFrame
    clicks: pd.DataFrame
    latent: Latent
    oracle: Oracle


@dataclasses.dataclass
class Events:
    """The training event ("spring") and the new event with a disjoint catalog ("fall")."""

    spring: EventData
    fall: EventData
    seed: int
    model: ClickModel

    def __getitem__(self, name: str) -> EventData:
        return {"spring": self.spring, "fall": self.fall}[name]

    def items(self) -> list[tuple[str, EventData]]:
        return [("spring", self.spring), ("fall", self.fall)]


EVENT_SETTINGS = {
    "spring": {"id_prefix": "S", "id_start": 50001, "start": "2025-01-20"},
    "fall": {"id_prefix": "F", "id_start": 30001, "start": "2025-08-04"},
}


def generate_events(seed: int, n_talks: int = 5000, n_sessions: int = 50000, n_sessions_new_event: int = 10000,
                    n_talks_new_event: int | None = None, model: ClickModel = ClickModel(),
                    days: float = 60.0, time_resolution_s: int = 1) -> Events:
    """Both events of the series from one seed (shared topic geometry, disjoint talk ids).
    ``time_resolution_s``: see :func:`generate_sessions` (coarse values give tied timestamps)."""
    seeds = [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(4)]
    out = {}
    sizes = {"spring": (n_talks, n_sessions), "fall": (n_talks_new_event or n_talks, n_sessions_new_event)}
    for k, name in enumerate(["spring", "fall"]):
        st = EVENT_SETTINGS[name]
        catalog, latent = generate_catalog(sizes[name][0], seeds[2 * k], event=name, id_prefix=st["id_prefix"],
                                           id_start=st["id_start"], world_seed=seed)
        clicks = generate_sessions(catalog, latent, sizes[name][1], seeds[2 * k + 1], start=st["start"],
                                   days=days, model=model, time_resolution_s=time_resolution_s)
        out[name] = EventData(name, catalog, clicks, latent, Oracle.from_latent(catalog, latent, model))
    return Events(out["spring"], out["fall"], int(seed), model)


def write_event(event_data: EventData, folder: str | Path) -> dict[str, Path]:
    """Write catalog.parquet, clicks.parquet and oracle.npz into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"catalog": folder / "catalog.parquet", "clicks": folder / "clicks.parquet",
             "oracle": folder / "oracle.npz"}
    event_data.catalog.to_parquet(paths["catalog"], index=False)
    event_data.clicks.to_parquet(paths["clicks"], index=False)
    event_data.oracle.save(paths["oracle"])
    return paths


