"""What a cycle may learn from: the logged sessions screened for scripted traffic, each source bounded.

The click log holds only what the deploying app vouched for (the logging key,
:mod:`gtcrec.serving.click_log`), but an attendee can script the app, or make many accounts.
:func:`screen` sets sessions aside before a cycle learns anything, and says why, by rule, in the order
below (a session is counted under the first rule that sets it aside):

1. ``client_rate``: every session of a client that started more than :data:`RATE_SESSIONS` sessions
   within :data:`RATE_WINDOW_S` seconds (clients' own clock): no attendee browses like that;
2. ``client_cap``: a client's sessions after its first :data:`MAX_SESSIONS_PER_CLIENT` (by start): what
   one client can move is bounded, scripted or not;
3. ``repeated_pattern``: sessions whose set of talks is the same as that of at least
   :func:`pattern_limit` other sessions (identical short patterns repeated across sessions);
4. ``short_session_talk``: for a talk whose support comes almost only from sessions of at most
   :data:`SHORT` distinct talks (far above the share such sessions hold of every talk's support, by
   :data:`SHORT_Z` binomial standard errors, and at least :data:`SHORT_RATIO` times it), those short
   sessions (a pair or a single talk pushed across many sessions, whatever else they pair it with);
5. ``carried_talk`` (talks, not sessions): a talk at least :data:`CARRIED_SHARE` of whose sessions
   were set aside by the rules above, or one that rule 4 found pushed by short sessions: its clicks are
   removed from the sessions kept, so the sessions of the same push that slipped through (longer ones,
   made to look like an audience's) teach nothing about it this cycle.

Clients are the ``client_id`` the app sent; a session without one (click files dropped into the log
folder by hand) is its own client. The thresholds were chosen on honest traffic (the generated events
at both sizes; docs/live-event.md gives what each costs there).

What the cycle then learns counts distinct sessions, not clicks (:func:`gtcrec.live.adapt.click_counts`:
a talk counts once per session), and its guard refuses a candidate that puts a talk into far more
answers than its support from distinct clients justifies (:func:`gtcrec.live.adapt.exposure_check`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

RATE_SESSIONS, RATE_WINDOW_S = 10, 600  # more sessions than this from one client within this many seconds
MAX_SESSIONS_PER_CLIENT = 20  # a client's sessions a cycle learns from, at most
PATTERN_LIMITS = {1: 3, 2: 8, 3: 5}  # sessions sharing one set of talks of this size: more is a pattern ...
PATTERN_LIMIT_LONG = 3  # ... of 4 talks or more (honest: at most 6, 4, 2 and 2 sessions per set, out of 1,500)
PATTERN_PER_TALK = 2.0  # ... and never fewer than this many times the sessions per talk seen
# (honest short sets repeat more where a few talks share many sessions)
SHORT = 2  # sessions of at most this many distinct talks are short
SHORT_MIN, SHORT_Z, SHORT_RATIO = 8, 4.0, 2.5  # a talk's short sessions: at least this many, this far above
CARRIED_SHARE, CARRIED_MIN = 0.8, 5  # a talk with this share of its (at least this many) sessions set aside
RULES = {
    "client_rate": f"its client started more than {RATE_SESSIONS} sessions within {RATE_WINDOW_S} s",
    "client_cap": f"its client's sessions after the first {MAX_SESSIONS_PER_CLIENT}",
    "repeated_pattern": "the same set of talks as many other sessions",
    "short_session_talk": f"a session of at most {SHORT} talks on a talk whose support comes almost only from such",
}


def pattern_limit(size: int, n_sessions: int, n_talks: int) -> int:
    """How many of ``n_sessions`` sessions (on ``n_talks`` talks) may share one set of ``size`` talks
    before they count as a pattern."""
    base = PATTERN_LIMITS.get(size, PATTERN_LIMIT_LONG)
    return max(base, math.ceil(PATTERN_PER_TALK * n_sessions / max(1, n_talks)))


def clients_of(clicks: pd.DataFrame) -> pd.Series:
    """Each click's client: the ``client_id`` the app sent, or ``session:<session_id>`` without one."""
    client = clicks["client_id"].astype(str) if "client_id" in clicks else pd.Series("", index=clicks.index)
    return client.where(client != "", "session:" + clicks["session_id"].astype(str))


def _sessions(clicks: pd.DataFrame) -> pd.DataFrame:
    """One row per session: client, start, its distinct talks (a sorted tuple)."""
    frame = clicks.assign(client=clients_of(clicks))
    grouped = frame.groupby("session_id", sort=False)
    return pd.DataFrame({"client": grouped["client"].first(), "start": grouped["timestamp"].min(),
                         "talks": grouped["talk_id"].agg(lambda t: tuple(sorted(set(t))))})


def _client_rate(sessions: pd.DataFrame) -> pd.Series:
    window = pd.Timedelta(seconds=RATE_WINDOW_S)
    hit = pd.Series(False, index=sessions.index)
    for _, group in sessions.groupby("client", sort=False):
        if len(group) <= RATE_SESSIONS:
            continue
        starts = group["start"].sort_values().to_numpy()
        later = np.searchsorted(starts, starts + np.timedelta64(window), side="left")
        if (later - np.arange(len(starts)) > RATE_SESSIONS).any():
            hit[group.index] = True
    return hit


def _client_cap(sessions: pd.DataFrame) -> pd.Series:
    rank = sessions.sort_values("start").groupby("client", sort=False).cumcount()
    return (rank >= MAX_SESSIONS_PER_CLIENT).reindex(sessions.index)


def _repeated_pattern(sessions: pd.DataFrame) -> pd.Series:
    counts = sessions["talks"].map(sessions["talks"].value_counts())
    n_talks = sessions["talks"].explode().nunique()
    limits = sessions["talks"].map(lambda t: pattern_limit(len(t), len(sessions), n_talks))
    return counts > limits


def _short_session_talk(sessions: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Short sessions on talks whose support is far more short than the talks' support overall."""
    pairs = sessions["talks"].explode().rename("talk").to_frame().assign(
        short=sessions["talks"].map(len).le(SHORT).reindex(sessions["talks"].explode().index))
    per_talk = pairs.groupby("talk")["short"].agg(["size", "sum"])
    base = float(per_talk["sum"].sum() / max(1, per_talk["size"].sum()))  # short share of all support
    expected = per_talk["size"] * base
    spread = np.sqrt(per_talk["size"] * base * (1 - base))
    flagged = per_talk[(per_talk["sum"] >= SHORT_MIN) & (per_talk["sum"] > expected + SHORT_Z * spread)
                       & (per_talk["sum"] >= SHORT_RATIO * expected)].index.tolist()
    hit = sessions["talks"].map(lambda t: len(t) <= SHORT and any(x in flagged for x in t))
    return hit, sorted(flagged)


def screen(clicks: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Set aside what looks scripted or over its bound (module docstring). ``clicks``: the log
    (:func:`gtcrec.live.read_click_log`: session_id, talk_id, timestamp, client_id). Returns the clicks
    kept and a report: ``sessions`` / ``clients`` (seen), ``set_aside`` (sessions per rule, and
    ``sessions`` / ``clients`` in all), ``talks`` (the talks flagged by ``short_session_talk`` and
    ``carried_talk``), ``clicks_removed`` (of carried talks, from kept sessions), ``examples`` (up to 5
    session ids per rule) and ``rules`` (what each rule means)."""
    report = {"sessions": 0, "clients": 0, "set_aside": {rule: 0 for rule in RULES}, "talks": {}, "examples": {},
              "clicks_removed": 0, "rules": dict(RULES)}
    report["set_aside"].update(sessions=0, clients=0)
    if not len(clicks):
        return clicks, report
    sessions = _sessions(clicks)
    report["sessions"], report["clients"] = int(len(sessions)), int(sessions["client"].nunique())
    reason = pd.Series("", index=sessions.index, dtype=object)
    talks_flagged = {}
    for rule in RULES:
        open_ = reason == ""
        if rule == "short_session_talk":
            hit, talks_flagged["short_session_talk"] = _short_session_talk(sessions[open_])
        else:
            hit = {"client_rate": _client_rate, "client_cap": _client_cap,
                   "repeated_pattern": _repeated_pattern}[rule](sessions[open_])
        hit = hit[hit].index
        reason[hit] = rule
        report["set_aside"][rule] = int(len(hit))
        if len(hit):
            report["examples"][rule] = [str(s) for s in list(hit[:5])]
    aside = reason != ""
    support = sessions["talks"].explode().rename("talk").to_frame().assign(aside=aside.reindex(
        sessions["talks"].explode().index))
    per_talk = support.groupby("talk")["aside"].agg(["size", "mean"])
    carried = per_talk[(per_talk["size"] >= CARRIED_MIN) & (per_talk["mean"] >= CARRIED_SHARE)].index.tolist()
    carried = sorted(set(carried) | set(talks_flagged["short_session_talk"]))  # a pushed talk: all its clicks
    talks_flagged["carried_talk"] = carried
    kept = clicks[~clicks["session_id"].isin(set(sessions.index[aside]))]
    removed = kept["talk_id"].isin(set(carried))
    report["clicks_removed"] = int(removed.sum())
    kept = kept[~removed]
    report["set_aside"]["sessions"] = int(aside.sum())
    kept_clients = set(sessions.loc[~aside, "client"])
    report["set_aside"]["clients"] = int(len(set(sessions.loc[aside, "client"]) - kept_clients))
    report["talks"] = {rule: talks for rule, talks in talks_flagged.items() if talks}
    return kept.reset_index(drop=True), report


def distinct_clients(clicks: pd.DataFrame) -> pd.Series:
    """Per talk: how many distinct clients clicked it (a session without a client id is its own)."""
    if not len(clicks):
        return pd.Series(dtype=np.int64)
    return pd.DataFrame({"talk": clicks["talk_id"], "client": clients_of(clicks)}).drop_duplicates().groupby(
        "talk").size()
