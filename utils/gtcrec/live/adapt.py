"""Learning from the live event's own clicks, without retraining from scratch.

After a catalog swap the served model knows the new talks only by their text. Within hours the event's
own clicks arrive (every request carries the session so far; :mod:`gtcrec.live.clicklog` reads them).
:func:`adapt` turns the clicks observed since the catalog went live into a better model, if they hold
one:

0. the logged sessions are screened (:func:`gtcrec.live.screen.screen`): scripted-looking sessions,
   and a client's sessions past its bound, are set aside and counted, by rule;
1. the clicks go through the ETL of notebook 01 with the served vocabulary and are split by time:
   the newest sessions (:data:`VALID_FRAC`, at most :data:`MAX_CHOOSE_SESSIONS`) to choose, the
   earlier ones to fit;
2. candidates, each starting from the swapped model:

   * **popularity + co-occurrence** (:func:`closed_form`, no training), in the model's own per-talk
     parts, so the served graph stays the same: each clicked talk's bias gets ``w * log(1 + clicks)``,
     and each talk's residual vector the mean item vector of the talks clicked with it (session
     co-occurrence, as item-kNN measures it) times ``a``; ``w`` from :data:`POPULARITY_WEIGHTS`, then
     ``a`` from :data:`COOCCURRENCE_WEIGHTS` (0 for either: none);
   * **fine-tune per talk**, from the best closed form: the residuals and biases of the clicked talks
     are trained with the Transformers4Rec ``Trainer`` on the fitting sessions, every other parameter
     frozen (a few hundred sessions cannot overfit the transformer), at most :data:`EPOCHS` epochs;
   * **trained on the event's clicks alone**: a fresh model of the same architecture over the same
     table (:func:`fresh_like`), every part trained for notebook 03's :data:`EPOCHS_ALL` epochs: what a
     retraining on the observed clicks gives, which wins once they are many;

   each fine-tune is one linear schedule; a callback scores the newest sessions after every epoch,
   keeps the best epoch and stops when :data:`PATIENCE` epochs bring nothing, or before an epoch that
   would end after ``budget_s`` (for both);

3. every candidate and the version being served are scored on the newest sessions (recall@10 of each
   next click given the clicks before it, clicked talks excluded); the best wins, the simpler one on a
   tie. A winner that does not beat what is served by more than :data:`GUARD_Z` standard errors of the
   paired difference (click by click) is not published; nor is one that puts a talk into far more of
   those answers than the version served does, beyond what the talk's support from distinct clients
   justifies (:func:`exposure_check`), nor one that raises a talk's share of those answers on support
   that does not carry over to the newest sessions (:func:`unconfirmed`: clicked in many of the sessions
   that fit, in almost none of the newest: a burst that has stopped). A per-talk candidate (the closed
   form, the fine-tune) is then tried once more without what it learned for those talks
   (:func:`hold_back`: their parts go back to the swapped model's; ``settings.held_back``), and
   published if it still beats the version served; otherwise the next best candidate is tried;
4. the winner is fitted again on every observed session (the newest are the most telling) with the
   settings chosen: the closed form always, a fine-tune when ``budget_s`` still has room for its epochs
   on all of them (else it goes as measured), and published as the next version through the swap's
   machinery (:func:`gtcrec.swap.switch.publish`: trace, export, load under traffic, archive if refused).
   The fallback ranking for sessions with no known talk becomes the observed popularity.

Each cycle starts again from the swapped model with every click seen so far, so cycles never compound
their own errors. Each is recorded in ``gtcrec_live.json`` in the model folder (:func:`read_cycles`).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from gtcrec.layout import RESERVED

VALID_FRAC = 0.2  # the newest share of observed sessions, held out to choose ...
MAX_CHOOSE_SESSIONS = 500  # ... up to this many (~2,500 clicks: a standard error under 0.01); the rest fit
POPULARITY_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)  # w of w * log(1 + clicks), the per-talk bias
COOCCURRENCE_WEIGHTS = (0.25, 0.5, 1.0, 2.0)  # a of the co-occurrence residual
PATIENCE = 2  # epochs without improvement on the newest sessions before a fine-tune stops
GUARD_Z = 0.5  # a new version must beat the served one by more than this many standard errors: half,
# because early cycles choose on a few hundred clicks (one SE kept gains that the test split confirmed),
# and a version loaded by chance is replaced at the next cycle, which starts again from the swapped model
EPOCHS, LR, BATCH_SIZE = 2, 3e-3, 64  # the fine-tune per talk (a few hundred sessions overfit fast)
MIN_SESSIONS = 20  # fewer observed sessions (of 2+ clicks): nothing to learn from yet
MIN_CHOOSE_CLICKS = 100  # fewer clicks to choose on: a few sessions' luck would decide (a model trained on
# 60 sessions once beat the swap by 1.3 SE on 15 of them, and lost 0.09 recall@10 on the test split)
SERVING, CLOSED_FORM = "serving", "popularity + co-occurrence"
FINE_TUNE = "fine-tune per talk"  # from the closed form
SCRATCH = "trained on the event's clicks alone"  # a fresh model of the same architecture
WARM_COOCCURRENCE_WEIGHTS = (0.1, 0.25, 0.5, 1.0)  # a trained model already holds most of it: smaller steps
WARM_GUARD_Z = 1.0  # a finished event's validation split is large: a whole standard error
EPOCHS_ALL, LR_ALL, BATCH_SIZE_ALL = 5, 1e-3, 64  # from scratch: notebook 03's epochs, smaller steps
LIVE_FILE = "gtcrec_live.json"
CHOOSE_TALK_SHARE, CHOOSE_TALK_MIN = 0.03, 4  # no talk holds more of the clicks that choose than this share
# of them (or this many): the newest sessions decide what is served, so a burst of sessions on one talk just
# before a cycle must not. Honest, small size: at most 2.4 % (6 of 253 clicks; fewer than 4 below 120 clicks)
EXPOSURE_SLACK = 0.05  # a candidate may add this share of the top-10 answers to any talk ...
EXPOSURE_PER_SUPPORT = 4.0  # ... plus this many times the share of distinct clients who clicked it
CONFIRM_RISE, CONFIRM_P = 0.02, 1e-4  # a talk whose share of the answers on the newest sessions rises by more
# than this learns nothing if its share of the sessions that fit is that unlikely to leave so few in the newest
HOLD_BACK_ROUNDS = 3  # a per-talk candidate over that allowance: the talks over it learn nothing, at most this often

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# Observed sessions
# ----------------------------------------------------------------------------------------------

@dataclass
class Observed:
    """The observed clicks as code sessions of the served vocabulary, split by start time."""

    fit_dir: Path  # processed parquet (notebook 01's format) of the fitting sessions
    all_dirs: list[Path]  # ... of every observed session (fit and choose)
    fit: list[np.ndarray]
    choose: list[np.ndarray]
    counts: dict

    @property
    def sessions(self) -> list[np.ndarray]:
        return self.fit + self.choose


def observe(clicks: pd.DataFrame, catalog: pd.DataFrame, work_dir, max_len: int,
            valid_frac: float = VALID_FRAC) -> Observed:
    """Clicks (session_id, talk_id, timestamp) -> :class:`Observed`, through :func:`gtcrec.etl.run_etl`
    (fixed vocabulary of ``catalog``, last ``max_len`` clicks, one-click sessions dropped, whole sessions
    split by start time: the newest ``valid_frac`` to choose)."""
    from gtcrec import etl, metrics

    result = etl.run_etl(clicks, catalog, Path(work_dir) / "etl", max_len=max_len, valid_frac=valid_frac,
                         test_frac=0.0)
    dirs = result.split_dirs  # no "valid" folder when valid_frac is 0
    fit = metrics.read_sessions(dirs["train"])
    choose = metrics.read_sessions(dirs["valid"]) if "valid" in dirs else []
    return Observed(dirs["train"], [dirs[name] for name in ("train", "valid") if name in dirs], fit, choose,
                    dict(result.counts, fit_sessions=len(fit), choose_sessions=len(choose)))


def every_position(sessions: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each click after the first as a target, the clicks before it as the prefix (more of a few
    sessions than their last clicks alone)."""
    prefixes, targets = [], []
    for s in sessions:
        s = np.asarray(s, dtype=np.int64)
        for t in range(1, len(s)):
            prefixes.append(s[:t])
            targets.append(s[t])
    return prefixes, np.asarray(targets, dtype=np.int64)


def bound_choice(prefixes: list[np.ndarray], targets: np.ndarray, share: float = CHOOSE_TALK_SHARE,
                 least: int = CHOOSE_TALK_MIN) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """The clicks that choose (:func:`every_position`), each talk's beyond the first ``max(least, share *
    clicks)`` (in session order) left out. Returns ``(prefixes, targets, {code: clicks left out})``."""
    cap = max(least, int(share * len(targets)))
    seen: dict[int, int] = {}
    keep = []
    for i, t in enumerate(np.asarray(targets).tolist()):
        seen[t] = seen.get(t, 0) + 1
        if seen[t] <= cap:
            keep.append(i)
    dropped = {t: n - cap for t, n in seen.items() if n > cap}
    return [prefixes[i] for i in keep], np.asarray(targets)[keep], dropped


def hits(model, prefixes, targets, k: int = 10) -> np.ndarray:
    """Per click: recall@k of the model's ranking (1 a hit, 0 a miss; ties count in expectation)."""
    from gtcrec import metrics
    from gtcrec import model as gm

    if not len(targets):
        return np.zeros(0)
    return np.asarray(metrics.evaluate_scores(gm.score_sessions(model, prefixes), targets, ks=(k,),
                                              exclude=prefixes, per_session=True)[f"recall@{k}"], dtype=np.float64)


def exposure(model, prefixes, k: int = 10) -> np.ndarray:
    """Per code: the share of ``prefixes`` whose top-``k`` answer (clicked talks excluded) holds it."""
    from gtcrec import model as gm

    scores = gm.score_sessions(model, prefixes)
    for row, prefix in enumerate(prefixes):
        scores[row, np.asarray(prefix, dtype=np.int64)] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return np.bincount(top.ravel(), minlength=scores.shape[1]) / max(1, len(prefixes))


def exposure_check(candidate: np.ndarray, serving: np.ndarray, support: np.ndarray,
                   slack: float = EXPOSURE_SLACK, per_support: float = EXPOSURE_PER_SUPPORT) -> tuple[bool, dict]:
    """Whether a candidate's exposure (:func:`exposure`) rises above the version served's by at most
    ``slack + per_support * support`` for every talk (``support``: per code, the share of distinct
    clients of the kept sessions who clicked it). Returns ``(ok, the talk that rose most beyond its
    allowance: code, exposure before and after, support)``."""
    rise = np.asarray(candidate) - np.asarray(serving)
    over = rise - (slack + per_support * np.asarray(support))
    worst = int(np.argmax(over))
    return bool(over[worst] <= 0), {"code": worst, "serving": round(float(serving[worst]), 4),
                                    "candidate": round(float(candidate[worst]), 4),
                                    "support": round(float(support[worst]), 4), "over": round(float(over[worst]), 4)}


def over_allowance(candidate: np.ndarray, serving: np.ndarray, support: np.ndarray,
                   slack: float = EXPOSURE_SLACK, per_support: float = EXPOSURE_PER_SUPPORT) -> np.ndarray:
    """The codes whose exposure rises beyond :func:`exposure_check`'s allowance."""
    rise = np.asarray(candidate) - np.asarray(serving)
    return np.flatnonzero(rise > slack + per_support * np.asarray(support))


def with_parts_of(model, base, codes: Sequence[int]):
    """A copy of the per-talk candidate ``model`` in which ``codes`` have ``base``'s residual, bias and warm
    flag again: what the cycle learned for those talks is left out, the rest kept."""
    import torch

    out = copy.deepcopy(model)
    rep, base_rep = _representation(out), _representation(base)
    index = torch.as_tensor(np.asarray(codes, dtype=np.int64), device=rep.warm.device)
    with torch.no_grad():
        for name in ("residual", "item_bias", "warm"):
            getattr(rep, name)[index] = getattr(base_rep, name)[index].to(getattr(rep, name).device)
    rep._clear()
    return out.eval()


def hold_back(model, base, served_exposure: np.ndarray, support: np.ndarray, prefixes,
              rounds: int = HOLD_BACK_ROUNDS, model_exposure: np.ndarray | None = None) -> tuple[object, list[int], bool]:
    """Bounded influence per talk: the per-talk candidate ``model`` with the talks whose exposure rises
    beyond their allowance (:func:`over_allowance`) put back to ``base`` (:func:`with_parts_of`), again
    for the talks that rise past theirs then, at most ``rounds`` times (``model_exposure``: ``model``'s
    :func:`exposure` when the caller has it). Returns ``(model, the codes held back, whether the result
    passes the exposure check)``."""
    held: list[int] = []
    for _ in range(rounds):
        seen = exposure(model, prefixes) if model_exposure is None else model_exposure
        model_exposure = None
        over = [int(c) for c in over_allowance(seen, served_exposure, support) if c not in held]
        if not over:
            return model, held, True
        held += over
        model = with_parts_of(model, base, held)
    return model, held, not len(over_allowance(exposure(model, prefixes), served_exposure, support))


def unconfirmed(candidate_exposure: np.ndarray, served_exposure: np.ndarray, fit_counts: np.ndarray, n_fit: int,
                choose_counts: np.ndarray, n_choose: int, rise: float = CONFIRM_RISE,
                p_value: float = CONFIRM_P) -> list[int]:
    """The codes whose exposure (:func:`exposure`) rises by more than ``rise`` over the version served's
    although their support does not carry over to the newest sessions: ``choose_counts`` of the
    ``n_choose`` sessions that choose clicked them, fewer than the share of the ``n_fit`` sessions that
    fit (``fit_counts``) makes likely (binomial tail below ``p_value``). A burst of sessions on a talk
    that has stopped by the time the newest sessions come teaches nothing about it."""
    from scipy.stats import binom

    rising = np.flatnonzero(np.asarray(candidate_exposure) - np.asarray(served_exposure) > rise)
    tail = binom.cdf(np.asarray(choose_counts)[rising], n_choose, np.asarray(fit_counts)[rising] / max(1, n_fit))
    return [int(c) for c, p in zip(rising, tail) if p < p_value]


def talk_id_of(catalog: pd.DataFrame, code: int, reserved: str = "") -> str:
    """The talk id of a code of ``catalog``'s vocabulary (code = row + RESERVED); ``reserved`` for a reserved code."""
    return str(catalog["talk_id"].iloc[code - RESERVED]) if code >= RESERVED else reserved


def recall_at(model, prefixes, targets, k: int = 10) -> float:
    per_click = hits(model, prefixes, targets, k)
    return float(per_click.mean()) if len(per_click) else float("nan")


def beats(candidate: np.ndarray, serving: np.ndarray, z: float = GUARD_Z) -> tuple[bool, float]:
    """Whether ``candidate`` hits more of the same clicks than ``serving`` by more than ``z`` standard
    errors (a few clicks' luck is not a reason to change what is served). The clicks where the two
    differ decide: ``sum(d) / sqrt(sum(d ** 2))`` over the per-click differences ``d`` (with 0/1 hits,
    (wins - losses) / sqrt(wins + losses), the sign test's). Returns ``(beats, that ratio)``."""
    diff = np.asarray(candidate, dtype=np.float64) - np.asarray(serving, dtype=np.float64)
    spread = float(np.sqrt((diff ** 2).sum()))
    if spread == 0.0:
        return False, 0.0
    t = float(diff.sum() / spread)
    return t > z, t


def click_counts(sessions: Sequence[np.ndarray], n_codes: int) -> np.ndarray:
    """Per code: the number of sessions that clicked it (a talk counts once per session, however often
    it was clicked there)."""
    counts = np.bincount(np.concatenate([np.unique(np.asarray(s, dtype=np.int64)) for s in sessions]) if sessions
                         else np.zeros(0, np.int64), minlength=n_codes).astype(np.float64)
    counts[:RESERVED] = 0
    return counts


# ----------------------------------------------------------------------------------------------
# Candidates: the model's own per-talk parts
# ----------------------------------------------------------------------------------------------

def _representation(model):
    from gtcrec import model as gm
    from gtcrec.representation import ItemRepresentation

    rep = gm.item_embedding(model)
    if not isinstance(rep, ItemRepresentation) or rep.item_bias is None or rep.residual is None:
        raise ValueError("adaptation needs the item representation of notebook 04 with per-talk residuals and "
                         "biases (REPRESENTATION with residual and bias on); this model has a plain table")
    return rep


def with_per_talk(model, clicked: np.ndarray, bias: np.ndarray | None = None):
    """A copy of ``model`` whose clicked talks may use a residual and a bias (``bias``: their
    starting biases; others keep theirs)."""
    import torch

    out = copy.deepcopy(model)
    rep = _representation(out)
    warm = torch.as_tensor(np.asarray(clicked, dtype=np.float32), device=rep.warm.device)
    rep.warm = torch.maximum(rep.warm, warm)
    if bias is not None:
        with torch.no_grad():
            rep.item_bias.copy_(torch.as_tensor(np.asarray(bias, dtype=np.float32), device=rep.item_bias.device))
    rep._clear()
    return out.eval()


def cooccurrence(sessions: Sequence[np.ndarray], n_codes: int) -> sp.csr_matrix:
    """The cosine of session co-occurrence (:class:`gtcrec.baselines.ItemKNNBaseline`, its 100 nearest),
    each row scaled to sum to 1 (rows of talks clicked with no other: 0)."""
    from gtcrec.baselines import ItemKNNBaseline

    sim = ItemKNNBaseline(n_codes).fit(sessions).similarity_.tocsr()
    total = np.asarray(sim.sum(axis=1)).ravel()
    return sp.diags(np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)) @ sim


def closed_form(model, sessions: Sequence[np.ndarray], weight: float, alpha: float, sim: sp.spmatrix | None = None):
    """The model with what the observed ``sessions`` say in closed form, in its own per-talk parts:

    * popularity: ``weight * log(1 + clicks)`` added to the bias of every clicked talk;
    * co-occurrence: ``alpha * sum_i sim(j, i) * item_i`` added to the residual of every talk ``j``
      clicked in a session with others (``sim``: the cosine of session co-occurrence of
      :class:`gtcrec.baselines.ItemKNNBaseline`, its 100 nearest, each row scaled to sum to 1: a weighted
      mean of the co-clicked talks; ``item_i`` the model's item vectors).
      The skip path scores ``gain * item(last click) . item(j)``, so a talk often clicked with the last
      click moves up, as item-kNN would rank it, in the same served graph. ``sim``: :func:`cooccurrence`
      of ``sessions`` when already computed.
    """
    from gtcrec import model as gm

    rep = _representation(model)
    n_codes = gm.n_codes(model)
    counts = click_counts(sessions, n_codes)
    clicked = counts > 0
    warm = rep.warm.cpu().numpy()
    bias = rep.item_bias.detach().cpu().numpy() * warm + np.where(clicked, weight * np.log1p(counts), 0.0)
    out = with_per_talk(model, clicked, bias)
    if alpha > 0 and sessions:
        import torch

        sim = cooccurrence(sessions, n_codes) if sim is None else sim
        out_rep = _representation(out)
        with torch.no_grad():
            items = rep.table().detach().cpu().numpy()
            out_rep.residual.add_(torch.as_tensor(alpha * np.asarray(sim @ items, dtype=np.float32),
                                                  device=out_rep.residual.device))
        out_rep._clear()
    return out


def closed_form_grid(model, sessions: Sequence[np.ndarray], pairs, prefixes, targets, sim: sp.spmatrix,
                     best: tuple | None = None) -> tuple[tuple, dict]:
    """:func:`closed_form` of ``model`` for each ``(weight, alpha)`` of ``pairs``, scored by :func:`hits`
    on ``targets`` after ``prefixes``. Returns ``(best, means)``: ``best`` is ``(key, (weight, alpha),
    model, per-click hits)`` of the highest mean (ties: the smaller alpha, then weight), starting from
    ``best`` when given (only the best model is kept); ``means`` the mean hits of each pair."""
    means = {}
    for w, a in pairs:
        candidate = closed_form(model, sessions, w, a, sim)
        per = hits(candidate, prefixes, targets)
        means[(w, a)] = float(per.mean())
        key = (per.mean(), -a, -w)
        if best is None or key > best[0]:
            best = (key, (w, a), candidate, per)
    return best, means


def with_cooccurrence(model, sessions: Sequence[np.ndarray], prefixes, targets,
                      alphas: Sequence[float] = WARM_COOCCURRENCE_WEIGHTS, z: float = WARM_GUARD_Z):
    """The trained model of a finished event with the session co-occurrence of ``sessions`` in its
    residuals (:func:`closed_form`, no popularity term: the trained biases have it), if that ranks
    ``targets`` after ``prefixes`` (the validation split) better by more than ``z`` standard errors
    than the model alone; otherwise the model unchanged. Returns ``(model, report)``: ``report``
    has ``alpha`` (0: unchanged), validation recall@10 per ``alpha`` and the winner's standard errors."""
    from gtcrec import model as gm

    alone = hits(model, prefixes, targets)
    sim = cooccurrence(sessions, gm.n_codes(model))
    (_, (_, alpha), candidate, per), means = closed_form_grid(model, sessions, [(0.0, a) for a in alphas], prefixes,
                                                              targets, sim)
    wins, t = beats(per, alone, z)
    report = {"alpha": alpha if wins else 0.0, "valid_recall@10": {0.0: float(alone.mean()),
              **{a: means[(0.0, a)] for a in alphas}}, "standard_errors": round(t, 3)}
    return (candidate if wins else model), report


def fresh_like(model, catalog: pd.DataFrame, seed: int = 42):
    """An untrained model of ``model``'s architecture and item representation over its table (the
    text rows of ``catalog``'s talks): what training on the new event alone starts from."""
    from gtcrec import model as gm
    from gtcrec.representation import settings_for

    cfg = gm.describe(model)
    arch = {k: cfg[k] for k in ("arch", "masking", "d_model", "n_layer", "n_head", "dropout") if k in cfg}
    return gm.build_model(gm._model_schema(model), gm.text_table(model).cpu().numpy(), max_len=cfg["max_len"],
                          seed=seed, item_repr=settings_for(cfg.get("item_repr"), catalog), **arch).eval()


def fine_tune(model, train_data, counts: np.ndarray, choose: tuple | None, epochs: int, lr: float,
              batch_size: int, seed: int = 42, work_dir=None, deadline: float | None = None,
              parts: str = "per-talk") -> tuple[object, list[float]]:
    """Train a copy of ``model`` with the Transformers4Rec ``Trainer`` for one linear schedule of
    ``epochs`` epochs: ``parts`` ``"per-talk"``, only the residuals and biases of the clicked talks
    (``counts > 0``); ``"all"``, those and every part that was trainable (transformer, adapter, field
    vectors, skip). With ``choose`` (prefixes, targets), a callback scores recall@10 there after every
    epoch, stops the run when it has not improved for :data:`PATIENCE` epochs, and the best epoch is kept
    (none: the model as it started). ``deadline`` (``time.perf_counter()``) stops the run before an
    epoch that would pass it (one lasts as long as the one before; the first always runs). Returns
    ``(model, recall after each epoch)``, the number of epochs kept in ``model.fit_epochs``."""
    from transformers import TrainerCallback

    from gtcrec import model as gm

    if parts not in ("per-talk", "all"):
        raise ValueError("parts must be 'per-talk' or 'all'")
    tuned = with_per_talk(model, counts > 0)
    rep = _representation(tuned)
    if parts == "per-talk":
        for p in tuned.parameters():
            p.requires_grad_(False)
    rep.residual.requires_grad_(True)
    rep.item_bias.requires_grad_(True)
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="gtcrec-adapt-"))
    curve: list[float] = []
    best = {"score": recall_at(tuned, *choose) if choose else -1.0, "epoch": 0,
            "state": copy.deepcopy(tuned.state_dict()) if choose else None}

    class EarlyStop(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.mark = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            epoch = int(round(state.epoch))
            if choose is None:
                best["epoch"] = epoch
            else:
                rep._clear()
                curve.append(recall_at(tuned, *choose))
                if curve[-1] > best["score"]:
                    best.update(score=curve[-1], epoch=epoch, state=copy.deepcopy(tuned.state_dict()))
                elif epoch - best["epoch"] >= PATIENCE:
                    control.should_training_stop = True
            now = time.perf_counter()
            if deadline is not None and now + (now - self.mark) > deadline:  # the next epoch would pass it
                control.should_training_stop = True
            self.mark = now

    gm.train(tuned, train_data, None, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
             output_dir=work_dir / "t4r", callbacks=[EarlyStop()])
    if choose is not None:
        tuned.load_state_dict(best["state"])
    tuned.fit_epochs = best["epoch"]
    for p in tuned.parameters():
        p.requires_grad_(False)
    rep._clear()
    return tuned.eval(), curve


# ----------------------------------------------------------------------------------------------
# One adaptation
# ----------------------------------------------------------------------------------------------

@dataclass
class Adaptation:
    """What :func:`adapt` measured and chose. ``scores``: recall@10 on the newest observed sessions
    of every candidate and of the version served; ``chosen``: the winner; ``publish``: whether it
    beats what is served; ``model``: the winner, fitted again on every observed session where the
    budget allowed (``settings["refit"]``; None when not published); ``popularity``: sessions per talk
    (the new fallback ranking; a talk held back counts as often as the newest sessions show it)."""

    scores: dict[str, float]
    chosen: str
    publish: bool
    reason: str
    settings: dict
    counts: dict
    seconds: dict = field(default_factory=dict)
    screened: dict = field(default_factory=dict)  # what :func:`gtcrec.live.screen.screen` set aside, and why
    curves: dict = field(default_factory=dict)  # recall@10 on the newest sessions after each fine-tune epoch
    model: object = None
    popularity: list[float] | None = None

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("model")
        out.pop("popularity")
        return out


def adapt(serving_model, base_model, clicks: pd.DataFrame, catalog: pd.DataFrame, work_dir=None,
          weights: Sequence[float] = POPULARITY_WEIGHTS, alphas: Sequence[float] = COOCCURRENCE_WEIGHTS,
          epochs: int = EPOCHS, lr: float = LR, batch_size: int = BATCH_SIZE, epochs_all: int = EPOCHS_ALL,
          lr_all: float = LR_ALL, batch_size_all: int = BATCH_SIZE_ALL, seed: int = 42,
          budget_s: float | None = 45.0,
          log: Log | None = None, defend: bool = True) -> Adaptation:
    """Choose and fit what the observed ``clicks`` teach (see the module docstring).

    ``serving_model``: the eager model of the version being served (the guard); ``base_model``: the
    swapped model every candidate starts from (often the same); ``catalog``: the served catalog (its
    order is the vocabulary); ``budget_s``: seconds for the training of both fine-tunes (each stops
    before an epoch that would pass it) and the winner's refit (skipped when it would pass them).
    ``defend=False`` learns from every click as given (no screening, no exposure check): what
    ``benchmarks/live.py --attack`` compares with."""
    from gtcrec import model as gm
    from gtcrec.live.screen import clients_of, distinct_clients, screen

    log = log or _quiet
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="gtcrec-adapt-"))
    t0 = time.perf_counter()
    max_len = int(base_model.max_sequence_length)
    clicks, screened = screen(clicks) if defend else (clicks, {})
    if screened and (screened["set_aside"]["sessions"] or screened["clicks_removed"]):
        log(f"set aside {screened['set_aside']['sessions']} of {screened['sessions']} sessions "
            f"({ {k: v for k, v in screened['set_aside'].items() if v and k not in ('sessions', 'clients')} }), "
            f"talks {screened['talks']}")
    n_sessions = max(1, clicks["session_id"].nunique())
    observed = observe(clicks, catalog, work_dir, max_len, min(VALID_FRAC, MAX_CHOOSE_SESSIONS / n_sessions))
    n_codes = gm.n_codes(base_model)
    seconds = {"observe": time.perf_counter() - t0}
    if len(observed.sessions) < MIN_SESSIONS or not observed.choose:
        return Adaptation({}, SERVING, False, f"{len(observed.sessions)} observed sessions of 2+ clicks, fewer than "
                          f"{MIN_SESSIONS}: nothing to learn from yet", {}, observed.counts, seconds, screened)
    choose = every_position(observed.choose)
    capped = {}
    if defend:  # no talk's clicks decide the choice beyond their bound
        *choose, capped = bound_choice(*choose)
        capped = {talk_id_of(catalog, c, str(c)): n for c, n in capped.items()}
        if capped:
            log(f"clicks that choose, left out beyond each talk's bound: {capped}")
    if len(choose[1]) < MIN_CHOOSE_CLICKS:
        return Adaptation({}, SERVING, False, f"{len(choose[1])} clicks in the newest {len(observed.choose)} sessions to "
                          f"choose on, fewer than {MIN_CHOOSE_CLICKS}: too few to tell the candidates apart yet", {},
                          observed.counts, seconds, screened)
    support = np.zeros(n_codes)  # per code: the share of distinct clients (of the sessions kept) who clicked it
    clients = distinct_clients(clicks)
    position = {str(t): RESERVED + i for i, t in enumerate(catalog["talk_id"].astype(str))}
    for talk, n in clients.items():
        if str(talk) in position:
            support[position[str(talk)]] = n
    support /= max(1, clients_of(clicks).nunique())
    fit_counts = click_counts(observed.fit, n_codes)
    per_click = {SERVING: hits(serving_model, *choose)}
    started = time.perf_counter()
    # popularity first, then co-occurrence on top of the best popularity (0: none)
    sim = cooccurrence(observed.fit, n_codes)  # fitted once for the whole grid
    best, _ = closed_form_grid(base_model, observed.fit, [(w, 0.0) for w in (0.0, *weights)], *choose, sim)
    best, _ = closed_form_grid(base_model, observed.fit, [(best[1][0], a) for a in alphas], *choose, sim, best)
    (best_w, best_a), best_closed, per_click[CLOSED_FORM] = best[1], best[2], best[3]
    scores = {name: float(h.mean()) for name, h in per_click.items()}
    curves: dict[str, list[float]] = {}
    seconds["closed_form"] = time.perf_counter() - started
    log(f"{len(observed.fit)} sessions to fit, {len(observed.choose)} ({len(choose[1])} clicks) to choose; "
        f"serving {scores[SERVING]:.4f}; popularity x {best_w:g} + co-occurrence x {best_a:g} "
        f"{scores[CLOSED_FORM]:.4f}")
    started = time.perf_counter()
    deadline = None if budget_s is None else started + budget_s
    tuned, epoch_s = {}, {}
    recipes = {FINE_TUNE: ("per-talk", epochs, lr, batch_size), SCRATCH: ("all", epochs_all, lr_all, batch_size_all)}
    for name, start in ((FINE_TUNE, best_closed), (SCRATCH, fresh_like(base_model, catalog, seed))):
        parts, n_epochs, rate, batch = recipes[name]
        began = time.perf_counter()
        tuned[name], curves[name] = fine_tune(start, observed.fit_dir, fit_counts, choose, n_epochs, rate, batch,
                                              seed, work_dir / name.replace(" ", "-"), deadline, parts)
        epoch_s[name] = (time.perf_counter() - began) / max(1, len(curves[name]))
        per_click[name] = hits(tuned[name], *choose)
        scores[name] = float(per_click[name].mean())
    seconds["fine_tune"] = time.perf_counter() - started
    log(f"{FINE_TUNE} {scores[FINE_TUNE]:.4f} ({tuned[FINE_TUNE].fit_epochs} epochs), {SCRATCH} "
        f"{scores[SCRATCH]:.4f} ({tuned[SCRATCH].fit_epochs} epochs), in {seconds['fine_tune']:.1f} s")

    order = [SERVING, CLOSED_FORM, FINE_TUNE, SCRATCH]  # simplest first: a tie goes to the simpler
    ranked = sorted(order, key=lambda name: (-scores[name], order.index(name)))
    models = {CLOSED_FORM: best_closed, **tuned}
    served_exposure, refused, unheard, held_back = None, {}, {}, []
    choose_counts = click_counts(observed.choose, n_codes)
    for chosen in ranked:  # the best candidate that beats the version served and passes both checks
        wins, t = beats(per_click[chosen], per_click[SERVING])
        if chosen == SERVING or not wins or not defend:
            break
        served_exposure = exposure(serving_model, choose[0]) if served_exposure is None else served_exposure
        candidate_exposure = exposure(models[chosen], choose[0])
        fair, worst = exposure_check(candidate_exposure, served_exposure, support)
        stale = unconfirmed(candidate_exposure, served_exposure, fit_counts, len(observed.fit), choose_counts,
                            len(observed.choose))
        if fair and not stale:
            break
        if stale:
            unheard[chosen] = [talk_id_of(catalog, c) for c in stale]
            log(f"{chosen}: talks {unheard[chosen]} rise in the answers on support that does not carry over to the "
                "newest sessions")
        if not fair:
            worst["talk_id"] = talk_id_of(catalog, worst["code"])
            refused[chosen] = worst
            log(f"{chosen} refused: it puts talk {worst['talk_id']} into {worst['candidate']:.1%} of the answers "
                f"(served: {worst['serving']:.1%}) with the support of {worst['support']:.1%} of the clients")
        if chosen not in (CLOSED_FORM, FINE_TUNE):  # a whole model cannot leave one talk out
            continue
        # per-talk parts: those talks learn nothing this cycle, the rest is kept
        start = with_parts_of(models[chosen], base_model, stale) if stale else models[chosen]
        bounded, held, fair = hold_back(start, base_model, served_exposure, support, choose[0],
                                        model_exposure=None if stale else candidate_exposure)
        held = stale + [c for c in held if c not in stale]
        bounded_hits = hits(bounded, *choose)
        wins, t = beats(bounded_hits, per_click[SERVING])
        if fair and wins:
            models[chosen], per_click[chosen], held_back = bounded, bounded_hits, held
            scores[chosen] = float(bounded_hits.mean())
            if chosen in tuned:
                tuned[chosen] = bounded
            log(f"{chosen} without what it learned for talks {[talk_id_of(catalog, c) for c in held]}: "
                f"{scores[chosen]:.4f}, within every talk's allowance")
            break
    else:
        chosen, wins, t = SERVING, False, 0.0
    settings = {"popularity_weight": best_w, "cooccurrence_weight": best_a,
                "epochs": tuned[chosen].fit_epochs if chosen in tuned else None,
                "lr": recipes[chosen][2] if chosen in recipes else None,
                "batch_size": recipes[chosen][3] if chosen in recipes else None,
                "choose_clicks": int(len(choose[1])), "standard_errors": round(t, 3), "exposure_refused": refused,
                "held_back": [talk_id_of(catalog, c) for c in held_back], "choose_capped": capped,
                "unconfirmed": unheard}
    if not wins or chosen == SERVING:
        why = ("no candidate scores above" if chosen == SERVING and not (refused or unheard) else
               "every candidate above it was refused (for its exposure, or for talks rising on support that "
               "stopped), against" if chosen == SERVING else
               f"{chosen} ({scores[chosen]:.4f}) is not {GUARD_Z:g} standard error above")
        return Adaptation(scores, chosen, False, f"{why} the version served ({scores[SERVING]:.4f}) on the newest "
                          f"{len(observed.choose)} sessions ({len(choose[1])} clicks); it keeps serving",
                          settings, observed.counts, seconds, screened, curves)
    # the winner fitted again on every observed session, the newest too, as it was chosen (the closed form
    # always; a fine-tune when the budget has room for its epochs on all the sessions). Measured at 50 %:
    # on the default-size event 0.339 -> 0.353 for 35 s more (the default budget skips it), on the real
    # log's new movies 0.142 -> 0.174 for 7 s
    started = time.perf_counter()
    all_counts = click_counts(observed.sessions, n_codes)
    final = tuned[chosen] if chosen in tuned else closed_form(base_model, observed.sessions, best_w, best_a)
    if chosen in tuned:
        n_epochs = max(1, int(tuned[chosen].fit_epochs or 1))
        need = epoch_s[chosen] * n_epochs * len(observed.sessions) / max(1, len(observed.fit))
        settings["refit"] = deadline is None or time.perf_counter() + need <= deadline
        if settings["refit"]:
            start = (fresh_like(base_model, catalog, seed) if chosen == SCRATCH
                     else closed_form(base_model, observed.sessions, best_w, best_a))
            final, _ = fine_tune(start, _dataset(observed.all_dirs, base_model), all_counts, None, n_epochs,
                                 settings["lr"], settings["batch_size"], seed, work_dir / "final",
                                 parts=recipes[chosen][0])
    if held_back and final is not models[chosen]:  # the refit learns those talks again: left out once more
        final = with_parts_of(final, base_model, held_back)
    popularity = all_counts.copy()  # the fallback ranking: a talk held back counts as the newest sessions show it
    if held_back:
        newest = choose_counts * len(observed.sessions) / max(1, len(observed.choose))
        popularity[held_back] = np.minimum(popularity[held_back], newest[held_back])
    seconds["refit"] = time.perf_counter() - started
    seconds["total"] = time.perf_counter() - t0
    return Adaptation(scores, chosen, True, f"{chosen} {scores[chosen]:.4f} beats the version served "
                      f"{scores[SERVING]:.4f} on the newest {len(observed.choose)} sessions ({t:.1f} standard "
                      "errors)", settings, observed.counts, seconds, screened, curves, final,
                      popularity[RESERVED:].tolist())


def _dataset(folders: Sequence[Path], model):
    """One merlin Dataset over the parquet files of several processed folders."""
    from merlin.io import Dataset

    from gtcrec import model as gm

    files = [str(f) for folder in folders for f in sorted(Path(folder).glob("*.parquet"))]
    ds = Dataset(files, engine="parquet", cpu=True)
    ds.schema = gm._model_schema(model)
    return ds


# ----------------------------------------------------------------------------------------------
# The record of cycles
# ----------------------------------------------------------------------------------------------

def read_cycles(repository, model_name: str) -> list[dict]:
    path = Path(repository) / model_name / LIVE_FILE
    return json.loads(path.read_text())["cycles"] if path.is_file() else []


def record_cycle(repository, model_name: str, cycle: dict) -> None:
    path = Path(repository) / model_name / LIVE_FILE
    cycles = read_cycles(repository, model_name) + [cycle]
    tmp = path.with_name(f".{LIVE_FILE}.tmp")
    tmp.write_text(json.dumps({"cycles": cycles}, indent=2, default=str))
    os.replace(tmp, path)
