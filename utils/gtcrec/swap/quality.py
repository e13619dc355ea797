"""Quality on the new event: the swapped model measured on the new event's clicks, beside a model retrained on
them, the oracle and baselines (:func:`evaluate_new_event`)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gtcrec import data as gdata
from gtcrec import etl
from gtcrec.layout import RESERVED as N_RESERVED
from gtcrec.serving.repository import Log, _quiet
from gtcrec.swap.catalog import swapped_model


# ----------------------------------------------------------------------------------------------
# Quality on the new event
# ----------------------------------------------------------------------------------------------

def transfer_scores(old_scores: np.ndarray, old_vocab: Sequence[str], new_vocab: Sequence[str],
                    unseen: float = 0.0) -> np.ndarray:
    """Scores over the old codes -> scores over the new codes, matching talks by id. A talk the old
    event never had gets ``unseen`` (for count-based scores: no clicks); reserved codes ``-inf``."""
    old_pos = {t: i + N_RESERVED for i, t in enumerate(old_vocab)}
    cols = np.array([old_pos.get(t, -1) for t in new_vocab], dtype=np.int64)
    out = np.full((old_scores.shape[0], len(new_vocab) + N_RESERVED), -np.inf, dtype=np.float32)
    known = cols >= 0
    out[:, N_RESERVED:][:, ~known] = unseen
    if known.any():
        out[:, N_RESERVED + np.flatnonzero(known)] = old_scores[:, cols[known]]
    return out


def translate_prefixes(prefixes: Sequence[np.ndarray], from_vocab: Sequence[str], to_vocab: Sequence[str]
                       ) -> list[np.ndarray]:
    """Code sessions of one vocabulary in another's codes, by talk id (unknown talks -> 2, OOV)."""
    to_code = {t: i + N_RESERVED for i, t in enumerate(to_vocab)}
    from_ids = np.array([""] * N_RESERVED + list(from_vocab), dtype=object)
    return [np.array([to_code.get(t, etl.OOV) for t in from_ids[p]], dtype=np.int64) for p in prefixes]


@dataclass
class Quality:
    """Every method on the new event's test sessions (the last click given the clicks before it,
    clicked talks excluded)."""

    results: dict[str, dict]
    ratios: dict[str, float | None]
    notes: dict[str, str]
    counts: dict
    retrain: dict
    served: str = ""  # the row that a swap serves: the swapped model, a blend or text similarity (gtcrec.transfer)
    every_session: dict | None = None  # the zero-shot methods on every session of the new event (see below)

    def table(self, columns: Sequence[str] = ("recall@10", "ndcg@10", "recall@20", "mrr@10")) -> pd.DataFrame:
        frame = pd.DataFrame(self.results).T
        frame = frame[[c for c in columns if c in frame.columns]]
        frame["what it knows"] = [self.notes.get(name, "") for name in frame.index]
        return frame


SWAPPED, RETRAINED = "swapped (zero-shot)", "retrained on the new event"


def served_row(check: dict) -> str:
    """The row of :class:`Quality` that a transfer check's choice serves (``check``: the saved
    decision, :func:`gtcrec.transfer.decision`; ``{}``: the swapped model)."""
    from gtcrec import transfer

    choice = check.get("serves", transfer.MODEL)
    if choice == transfer.TEXT:
        return transfer.TEXT_NAMES[float(check.get("text_decay", 0.0))]
    if choice == transfer.BLEND:
        blend = check["blend"]
        return f"{SWAPPED} + {blend['text_weight']:g} x {transfer.TEXT_NAMES[float(blend['text_decay'])]}"
    return SWAPPED


def zero_shot_on_every_session(swapped, new_table: np.ndarray, split_dirs, ks: Sequence[int] = (10, 20),
                               blended: tuple | None = None) -> dict:
    """The methods that need no click of the new event (the swapped model, the text baselines and,
    with ``blended`` = ``(row name, model)``, the served blend) on EVERY session of its processed splits
    (``split_dirs``: train / valid / test folders), not only the test split: none of them has seen a
    new-event click, so every session is a fair test, and ten times the sessions give an SE about three
    times smaller. ``{"sessions": n, "results": {name: metrics}}``."""
    from gtcrec import baselines, metrics
    from gtcrec import model as gm

    sessions = [s for name in etl.SPLITS for s in metrics.read_sessions(split_dirs[name])]
    prefixes, targets = metrics.sessions_to_prefixes(sessions)
    models = {SWAPPED: swapped, **(dict([blended]) if blended else {})}
    results = {name: metrics.evaluate_scores(gm.score_sessions(model, prefixes), targets, ks=ks, exclude=prefixes)
               for name, model in models.items()}
    for name, baseline in baselines.text_baselines(new_table).items():
        results[name] = metrics.evaluate_scores(baseline.scores(prefixes), targets, ks=ks, exclude=prefixes)
    return {"sessions": len(prefixes), "results": results}


def evaluate_new_event(model_dir, new_catalog: pd.DataFrame, new_clicks: pd.DataFrame, new_table: np.ndarray,
                       old_train_sessions: Sequence[np.ndarray], old_vocab: Sequence[str], out_dir,
                       oracle_path=None, epochs: int = 5, batch_size: int = 128, lr: float = 3e-3,
                       seed: int = 42, ks: Sequence[int] = (10, 20), swapped=None,
                       log: Log | None = None) -> Quality:
    """Recall/NDCG@k of the swapped model and the references on the new event.

    The new event's clicks go through :func:`gtcrec.etl.run_etl` with the NEW vocabulary (catalog
    order, code = position + 3; time split), and every method is scored on its test split:

    * swapped (zero-shot): the trained model with the new table (``swapped`` or built from ``model_dir``),
      as trained, whatever its transfer check chose (``Quality.served`` says which row a swap serves);
    * the served blend, where the check chose one: the swapped model plus ``w`` x text similarity;
    * retrained: the same architecture built with the new table and trained on the new event's
      training split (``epochs``): the upper bound of what the clicks of the new event can teach;
    * untrained: the same architecture with the new table and no training at all;
    * popularity and item-kNN fitted on the OLD event (``old_train_sessions`` in old codes): they know
      talks only by id, and no new talk was seen, so every new talk gets the same score (~random);
    * popularity and item-kNN fitted on the new event's training split, and random, for reference;
    * the oracle (``oracle_path``, the generator's exact next-click probabilities): the ceiling.
    """
    from gtcrec import baselines, metrics, transfer
    from gtcrec import model as gm
    from gtcrec.representation import settings_for, warm_codes

    log = log or _quiet
    out_dir = Path(out_dir).resolve()
    ks = tuple(ks)
    trained = gm.load_model(model_dir)
    cfg = gm.describe(trained)
    max_len = cfg["max_len"]
    new_vocab = etl.vocabulary(new_catalog).tolist()
    n_codes = len(new_vocab) + N_RESERVED
    if new_table.shape[0] != n_codes:
        raise ValueError(f"the table has {new_table.shape[0]} rows, the catalog needs {n_codes}")

    started = time.perf_counter()
    result = etl.run_etl(new_clicks, new_catalog, out_dir / "etl", max_len=max_len)
    etl_seconds = time.perf_counter() - started
    train_sessions = metrics.read_sessions(result.split_dirs["train"])
    prefixes, targets = metrics.sessions_to_prefixes(metrics.read_sessions(result.split_dirs["test"]))
    log(f"new event through the ETL in {etl_seconds:.1f} s: {len(train_sessions)} training sessions, "
        f"{len(prefixes)} test sessions")

    def evaluate(scores):
        return metrics.evaluate_scores(scores, targets, ks=ks, exclude=prefixes)

    results, notes = {}, {}
    if swapped is None:
        swapped = swapped_model(model_dir, new_table, new_catalog, decided=False)
    results[SWAPPED] = evaluate(gm.score_sessions(swapped, prefixes))
    notes[SWAPPED] = "old event's clicks + new talks' text"
    check = transfer.decision(model_dir)
    served = served_row(check)
    blended = None
    if check.get("serves") == transfer.BLEND:
        blended = (served, swapped_model(model_dir, new_table, new_catalog))
        results[served] = evaluate(gm.score_sessions(blended[1], prefixes))
        notes[served] = "the swapped model plus text similarity, as the transfer check chose"

    schema = gm.load_schema(result.split_dirs["train"])
    arch = {k: cfg[k] for k in ("arch", "masking", "d_model", "n_layer", "n_head", "dropout") if k in cfg}
    rep = cfg.get("item_repr")
    untrained = gm.build_model(schema, new_table, max_len=max_len, seed=seed,
                               item_repr=settings_for(rep, new_catalog), **arch)
    results["untrained, new table"] = evaluate(gm.score_sessions(untrained, prefixes))
    notes["untrained, new table"] = "new talks' text only"

    warm = warm_codes(train_sessions, n_codes, N_RESERVED)
    retrained = gm.build_model(schema, new_table, max_len=max_len, seed=seed,
                               item_repr=settings_for(rep, new_catalog, warm), **arch)
    history = gm.train(retrained, result.split_dirs["train"], result.split_dirs["valid"], epochs=epochs,
                       batch_size=batch_size, lr=lr, seed=seed, output_dir=out_dir / "t4r-retrained")
    results[RETRAINED] = evaluate(gm.score_sessions(retrained, prefixes))
    notes[RETRAINED] = "new event's clicks + new talks' text (upper bound)"
    log(f"retrained on the new event in {history['seconds']:.0f} s ({epochs} epochs)")

    old_train = [np.asarray(s, dtype=np.int64) for s in old_train_sessions]
    old_prefixes = translate_prefixes(prefixes, new_vocab, old_vocab)
    n_old_codes = len(old_vocab) + N_RESERVED
    for name, baseline in (("popularity (old event)", baselines.PopularityBaseline(n_old_codes)),
                           ("item-kNN (old event)", baselines.ItemKNNBaseline(n_old_codes))):
        baseline.fit(old_train)
        results[name] = evaluate(transfer_scores(baseline.scores(old_prefixes), old_vocab, new_vocab))
        notes[name] = "old event's clicks; never saw a new talk: ~random"
    text = baselines.text_baselines(new_table)
    for name, baseline in text.items():
        results[name] = evaluate(baseline.scores(prefixes))
        notes[name] = "new talks' text only, no training"
    for name, baseline in (("popularity (new event)", baselines.PopularityBaseline(n_codes)),
                           ("item-kNN (new event)", baselines.ItemKNNBaseline(n_codes)),
                           ("random", baselines.RandomBaseline(n_codes, seed=seed))):
        baseline.fit(train_sessions)
        results[name] = evaluate(baseline.scores(prefixes))
        notes[name] = "nothing" if name == "random" else "new event's clicks (reference)"
    if oracle_path is not None:
        oracle = gdata.Oracle.load(oracle_path, new_catalog)
        ids = np.array(new_vocab, dtype=object)
        scores = np.full((len(prefixes), n_codes), -np.inf, dtype=np.float64)
        scores[:, N_RESERVED:] = oracle.scores([list(ids[p - N_RESERVED]) for p in prefixes])
        results["oracle"] = evaluate(scores)
        notes["oracle"] = "the generator's exact probabilities (ceiling)"

    def ratio(a, b, metric):
        den = results.get(b, {}).get(metric)
        return None if not den else float(results[a][metric] / den)

    ratios = {}
    for metric in ("recall@10", "ndcg@10"):
        ratios[f"served_over_retrained_{metric}"] = ratio(served, RETRAINED, metric)
        ratios[f"swapped_over_retrained_{metric}"] = ratio(SWAPPED, RETRAINED, metric)
        ratios[f"swapped_over_oracle_{metric}"] = ratio(SWAPPED, "oracle", metric)
        ratios[f"swapped_over_untrained_{metric}"] = ratio(SWAPPED, "untrained, new table", metric)
        ratios[f"swapped_over_old_popularity_{metric}"] = ratio(SWAPPED, "popularity (old event)", metric)
        ratios[f"swapped_over_random_{metric}"] = ratio(SWAPPED, "random", metric)
        best_text = max(text, key=lambda name: results[name][metric])
        ratios[f"swapped_over_best_text_{metric}"] = ratio(SWAPPED, best_text, metric)
        ratios[f"served_over_best_text_{metric}"] = ratio(served, best_text, metric)
    every = zero_shot_on_every_session(swapped, new_table, result.split_dirs, ks, blended)
    for metric in ("recall@10", "ndcg@10"):
        best_text = max(text, key=lambda name: every["results"][name][metric])
        for who, row in (("swapped", SWAPPED), ("served", served)):
            ratios[f"{who}_over_best_text_every_session_{metric}"] = float(
                every["results"][row][metric] / every["results"][best_text][metric]) \
                if every["results"][best_text][metric] else None
    counts = {**result.counts, "test_sessions": len(prefixes), "train_sessions": len(train_sessions),
              "n_talks": len(new_vocab), "every_sessions": every["sessions"]}
    retrain = {"epochs": epochs, "seconds": history["seconds"], "steps": history["steps"],
               "final_loss": history["train"][-1]["loss"] if history["train"] else None,
               "etl_seconds": etl_seconds}
    return Quality(results=results, ratios=ratios, notes=notes, counts=counts, retrain=retrain, every_session=every,
                   served=served)
