"""The live event: what the first clicks of a new event are worth, measured in ONE run.

    python benchmarks/live.py [--artifacts-dir artifacts] [--cache data/cache/embeddings]
                              [--fractions 0.01 0.02 0.05 0.1 0.2 0.5] [--scratch] [--undefended] [--budget 45]
                              [--json out.json]
    python benchmarks/live.py --attack [--attack-fraction 0.2] [--spam-share 0.25] [--shapes ...]
    python benchmarks/live.py --update [--update-fraction 0.2] [--added 3] [--cancelled 1]

Needs ``make run`` (or ``make run SIZE=small``) first: notebook 00's fall event, notebook 04's model.
Nothing is asserted; the numbers are printed (and written as JSON with ``--json``).

The fall event's clicks go through the ETL with its own vocabulary (sessions split by start time
80/10/10, as notebook 07 measures it). Its training sessions, in order of their start, are the live
stream: after the first ``f`` of them, :func:`gtcrec.live.adapt.adapt` starts from the swapped model
(what a catalog swap serves, no click of the new event), chooses on the newest of those sessions and
fits what they teach. Every method is scored on the same test split (the last click given the ones
before, clicked talks excluded):

* zero-shot: the swapped model as served (the transfer check's choice);
* adapted after ``f``: what a cycle would serve (the zero-shot model when the guard keeps it);
* item-kNN of the observed clicks alone, and popularity of the same clicks;
* the best text-similarity baseline;
* retrained: the same architecture trained on the WHOLE training split (notebook 03's epochs): the
  upper bound the issue compares with;
* with ``--scratch``: the same architecture trained from scratch on ALL the observed sessions (the
  settings of the adaptation's own scratch candidate, which fits on the older ones only), with its
  seconds beside the adaptation's;
* with ``--undefended``: the same cycle without the defences against click spam (no screen, no bound on
  the choice, no exposure check): what they cost honest traffic, with the paired standard error.

``--attack`` (:func:`attack`): click spam the app vouched for. The first ``--attack-fraction`` of the
training sessions are the honest log (each session its own client); spam of ``--spam-share`` as many
sessions pushes one talk that real attendees almost never click, in several shapes (see
:data:`SHAPES`), from as many client ids or from one. One cycle (:func:`gtcrec.live.adapt.adapt`) on
each log, with the defences and, for the issue's pair spam, without; the model it serves answers
the NEXT real sessions (as many as observed, each click given the ones before): the target talk's
share of their top 10 and recall@10, against the same cycle without spam, and against the same cycle
on slightly different honest clicks (2 % of the sessions left out: the spread of one retraining).

``--update`` (:func:`catalog_update`): a catalog update during the event. The served catalog lacks
``--added`` talks (they come with the update); one cycle learns from the first ``--update-fraction`` of the
training sessions (their clicks on the missing talks dropped); then the update adds those talks, cancels
``--cancelled`` talks the cycle learned from and retitles one (:func:`gtcrec.swap.update.updated_model`).
The later sessions (the test split, each click given the ones before, unknown talks dropped as the served
graph drops them) are answered by the adapted model without the update, with it, and by a swap to the
updated catalog (nothing learned): recall@10 on the clicks of talks that stay (paired, with the standard
error of the difference) and on the clicks of the added talks.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path


warnings.filterwarnings("ignore")
FRACTIONS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]


def say(line: str) -> None:
    print(line, flush=True)


def first_sessions(clicks, fraction: float):
    """The clicks of the first ``fraction`` of the training sessions (the ETL's time split), in order of
    their start: what a live event has logged by then."""
    from gtcrec import etl

    train = etl.split_by_time(etl.number_sessions(clicks))["train"]
    order = train.drop_duplicates("session_id").sort_values("session_id")["session_key"].tolist()
    return clicks[clicks["session_id"].isin(set(order[:max(1, int(round(fraction * len(order))))]))]


def curve(served, catalog, clicks, table, fractions, work: Path, epochs: int, batch_size: int, lr: float,
          seed: int = 42, scratch: bool = False, budget: float | None = 45.0, log=print,
          undefended: bool = False) -> dict:
    """The live curve of one new event: ``served`` (the swapped model, as a swap serves it), its
    ``catalog`` and ``table`` (text rows, reserved rows included), the event's ``clicks``; the
    retrained bound trained for ``epochs`` epochs (``batch_size``, ``lr``). ``undefended``: each cycle
    also without the defences (``adapt(defend=False)``: no screen, no bound on the choice, no exposure
    check), scored on the same test clicks: what the defences cost honest traffic, with the standard
    error of the paired difference. Returns every number."""
    import numpy as np

    from gtcrec import baselines, etl, metrics
    from gtcrec import model as gm
    from gtcrec.live import adapt
    from gtcrec.representation import warm_codes

    max_len = int(served.max_sequence_length)
    n_codes = gm.n_codes(served)
    split = etl.run_etl(clicks, catalog, work / "etl", max_len=max_len)
    train_sessions = metrics.read_sessions(split.split_dirs["train"])
    prefixes, targets = metrics.sessions_to_prefixes(metrics.read_sessions(split.split_dirs["test"]))

    def score(scores) -> float:
        return float(metrics.evaluate_scores(scores, targets, ks=(10,), exclude=prefixes)["recall@10"])

    results = {"zero-shot (served after the swap)": score(gm.score_sessions(served, prefixes))}
    text = {name: score(b.scores(prefixes)) for name, b in baselines.text_baselines(table).items()}
    best_text = max(text, key=text.get)
    results[f"best text ({best_text})"] = text[best_text]

    def fresh(warm):  # the architecture untrained over the new table, ``warm`` talks with per-talk parts
        return adapt.with_per_talk(adapt.fresh_like(served, catalog, seed), warm)

    started = time.perf_counter()
    retrained = fresh(warm_codes(train_sessions, n_codes))
    gm.train(retrained, split.split_dirs["train"], None, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
             output_dir=work / "retrained")
    retrained_s = time.perf_counter() - started
    results["retrained on the whole training split"] = retrained_r = score(gm.score_sessions(retrained, prefixes))
    zero = results["zero-shot (served after the swap)"]
    log(f"{len(train_sessions)} training sessions, {len(targets)} test sessions; retrained {retrained_r:.4f} "
        f"({epochs} epochs, {retrained_s:.0f} s); zero-shot {zero:.4f}; best text {text[best_text]:.4f}")

    rows = []
    for f in fractions:
        observed = first_sessions(clicks, f)
        started = time.perf_counter()
        result = adapt.adapt(served, served, observed, catalog, work / f"adapt-{f}", budget_s=budget, seed=seed)
        seconds = time.perf_counter() - started
        adapted = score(gm.score_sessions(result.model, prefixes)) if result.publish else zero
        obs_sessions = adapt.observe(observed, catalog, work / f"obs-{f}", max_len, valid_frac=0.0).fit
        knn = baselines.ItemKNNBaseline(n_codes).fit(obs_sessions)
        pop = baselines.PopularityBaseline(n_codes).fit(obs_sessions)
        row = {"fraction": f, "sessions": len(obs_sessions), "chosen": result.chosen, "published": result.publish,
               "reason": result.reason, "adapted": adapted, "adapt_seconds": round(seconds, 1),
               "adapt_steps": {k: round(v, 1) for k, v in result.seconds.items()},
               "item-kNN of observed": score(knn.scores(prefixes)),
               "popularity of observed": score(pop.scores(prefixes)),
               "adapted / retrained": adapted / retrained_r, "adapted / zero-shot": adapted / zero,
               "adapted / best text": adapted / text[best_text], "choice": result.scores, "settings": result.settings,
               "set_aside_sessions": (result.screened or {}).get("set_aside", {}).get("sessions")}
        if undefended:
            plain = adapt.adapt(served, served, observed, catalog, work / f"undefended-{f}", budget_s=budget,
                                seed=seed, defend=False)
            plain_hits = adapt.hits(plain.model if plain.publish else served, prefixes, targets)
            diff = adapt.hits(result.model if result.publish else served, prefixes, targets) - plain_hits
            row.update({"undefended": float(plain_hits.mean()),
                        "undefended_chosen": plain.chosen, "undefended_published": plain.publish,
                        "defended - undefended": float(diff.mean()),
                        "difference_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                        "recall_se": float(np.sqrt(adapted * (1 - adapted) / len(targets)))})
        if scratch:
            started = time.perf_counter()
            model = fresh(warm_codes(obs_sessions, n_codes))
            gm.train(model, work / f"obs-{f}" / "etl" / "train", None, epochs=adapt.EPOCHS_ALL,
                     batch_size=adapt.BATCH_SIZE_ALL, lr=adapt.LR_ALL, seed=seed, output_dir=work / f"scratch-{f}")
            row["scratch"] = score(gm.score_sessions(model, prefixes))
            row["scratch_seconds"] = round(time.perf_counter() - started, 1)
            row["adapted / scratch"] = adapted / row["scratch"] if row["scratch"] else None
        rows.append(row)
        log(f"after {f:.0%} ({row['sessions']} sessions): adapted {adapted:.4f} ({result.chosen}, "
            f"{'published' if result.publish else 'kept'}; {seconds:.0f} s) = {row['adapted / retrained']:.2f} x "
            f"retrained, {row['adapted / zero-shot']:.2f} x zero-shot, {row['adapted / best text']:.2f} x best text; "
            f"item-kNN of observed {row['item-kNN of observed']:.4f}"
            + (f"; scratch {row['scratch']:.4f} ({row['scratch_seconds']:.0f} s)" if scratch else "")
            + (f"; without the defences {row['undefended']:.4f} ({row['undefended_chosen']}, "
               f"{'published' if row['undefended_published'] else 'kept'}): {row['defended - undefended']:+.4f} "
               f"(paired SE {row['difference_se']:.4f}, recall SE {row['recall_se']:.4f})" if undefended else ""))
    return {"results": results, "retrained_seconds": retrained_s, "fractions": rows,
            "n_train_sessions": len(train_sessions), "n_test_sessions": len(targets)}


SHAPES = {
    "pair": "a popular talk and the target, the same two clicks in every session",
    "pair, varied partner": "the target with one of the 20 most popular talks, drawn per session",
    "single-talk flood": "the target clicked three times",
    "long scripted": "ten popular talks in a random order, the target after every third",
    "replayed real sessions": "observed real sessions copied under new ids, the target inserted at random",
    "pair, one client": "the varied pair, every session from one client id",
    "popular mix": "the target and 2-4 of the 30 most popular talks, drawn per session, in a random order",
    "text neighbours": "the target and 2-4 of its 10 most text-similar talks, drawn per session, in a random order",
    "mixed": "each session one of: popular mix, text neighbours, replayed real session, varied pair",
    "popular mix, spread": "the popular mix, its sessions starting among the honest ones rather than in a burst",
    "mixed, spread": "the mixed shapes, their sessions starting among the honest ones",
    "popular mix, late": "the popular mix, in a burst after the honest sessions, just before the cycle",
    "mixed, late": "the mixed shapes, in a burst after the honest sessions, just before the cycle",
}
HUMAN = ("popular mix", "text neighbours", "mixed")  # shapes with human-like timing (30 s to 4 min between clicks)


def spam_sessions(shape: str, n: int, target: str, popular: list[str], real, start, seed: int,
                  neighbours: list[str] = ()):
    """``n`` scripted sessions of ``shape`` (:data:`SHAPES`) pushing ``target``, as clicks (session_id,
    talk_id, timestamp, client_id): one minute apart from ``start``, 30 s between clicks; the shapes of
    :data:`HUMAN` with 30 s to 4 min between clicks, a few minutes between sessions or, spread, each
    session starting at a random honest session's start (``real``), or, late, in a burst after the
    honest sessions (the newest a cycle sees: it chooses on them). ``neighbours``: the talks most
    text-similar to the target."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    real_sessions = [g["talk_id"].tolist() for _, g in real.groupby("session_id", sort=False)]
    real_starts = real.groupby("session_id")["timestamp"].min().to_numpy()
    base = shape.removesuffix(", spread").removesuffix(", late")
    if shape.endswith(", late"):  # a burst after the honest sessions: the newest a cycle sees
        start = pd.Timestamp(real_starts.max()) + pd.Timedelta(minutes=1)
    human_starts = np.cumsum(np.random.default_rng([seed, 1]).integers(60, 300, n)) - 60  # minutes apart
    rows = []
    for i in range(n):
        kind = (["popular mix", "text neighbours", "replayed real sessions", "pair, varied partner"][int(rng.integers(4))]
                if base == "mixed" else base)
        if shape == "pair":
            talks = [popular[0], target]
        elif kind in ("pair, varied partner", "pair, one client"):
            talks = [popular[int(rng.integers(min(20, len(popular))))], target]
        elif shape == "single-talk flood":
            talks = [target] * 3
        elif shape == "long scripted":
            talks = []
            for j, talk in enumerate(rng.permutation(popular[:10])):
                talks += [talk] + ([target] if j % 3 == 2 else [])
        elif kind == "replayed real sessions":
            talks = list(real_sessions[int(rng.integers(len(real_sessions)))])
            talks.insert(int(rng.integers(len(talks) + 1)), target)
        elif kind in ("popular mix", "text neighbours"):
            pool = [t for t in (popular[:30] if kind == "popular mix" else neighbours) if t != target]
            talks = list(rng.permutation([target, *rng.choice(pool, int(rng.integers(2, 5)), replace=False)]))
        else:
            raise ValueError(f"unknown shape {shape!r}")
        client = "spammer" if shape == "pair, one client" else f"spam-{i}"
        if shape.endswith(", spread"):
            t0 = pd.Timestamp(real_starts[int(rng.integers(len(real_starts)))]) + pd.Timedelta(seconds=int(rng.integers(60)))
        elif base in HUMAN:
            t0 = pd.Timestamp(start) + pd.Timedelta(seconds=int(human_starts[i]))
        else:
            t0 = pd.Timestamp(start) + pd.Timedelta(minutes=i)
        gaps = (np.cumsum(rng.integers(30, 240, len(talks))) - 30 if base in HUMAN else 30 * np.arange(len(talks)))
        rows += [{"session_id": f"spam-{i}", "talk_id": str(t), "timestamp": t0 + pd.Timedelta(seconds=int(g)),
                  "client_id": client} for t, g in zip(talks, gaps)]
    return pd.DataFrame(rows)


def text_neighbours(model, catalog, target: str, k: int = 10) -> list[str]:
    """The ``k`` talks of ``catalog`` whose text rows (the served model's table) are nearest ``target``'s."""
    import numpy as np

    from gtcrec import model as gm
    from gtcrec.layout import RESERVED

    table = gm.text_table(model).float().cpu().numpy()[RESERVED:RESERVED + len(catalog)]
    table = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    talks = catalog["talk_id"].astype(str).tolist()
    sim = table @ table[talks.index(target)]
    return [talks[i] for i in np.argsort(-sim) if talks[i] != target][:k]


def attack(served, catalog, clicks, fraction: float, spam_share: float, shapes, work: Path,
           budget: float | None = 45.0, seed: int = 42, log=print) -> dict:
    """The attack benchmark (module docstring). Returns every number."""
    import numpy as np
    import pandas as pd

    from gtcrec import etl, metrics
    from gtcrec import model as gm
    from gtcrec.layout import RESERVED
    from gtcrec.live import adapt

    train = etl.split_by_time(etl.number_sessions(clicks))["train"]
    order = train.drop_duplicates("session_id").sort_values("session_id")["session_key"].tolist()
    n_obs = max(1, int(round(fraction * len(order))))
    honest = clicks[clicks["session_id"].isin(set(order[:n_obs]))].assign(
        client_id=lambda f: "attendee-" + f["session_id"].astype(str))
    later = clicks[clicks["session_id"].isin(set(order[n_obs:2 * n_obs]))]
    position = {t: RESERVED + i for i, t in enumerate(catalog["talk_id"].astype(str))}
    later_sessions = [np.array([position[t] for t in g.sort_values("timestamp")["talk_id"].astype(str)])
                      for _, g in later.groupby("session_id")]
    prefixes, targets = adapt.every_position(later_sessions)
    counts = clicks["talk_id"].astype(str).value_counts()
    popular = counts.index.tolist()
    rng = np.random.default_rng(seed)
    rare = [t for t in catalog["talk_id"].astype(str) if counts.get(t, 0) <= 1]  # real attendees almost never click
    target = rare[int(rng.integers(len(rare)))] if rare else popular[-1]
    n_spam = int(round(spam_share * n_obs))
    start = honest["timestamp"].min()

    def one_cycle(name, logged, defend=True):
        started = time.perf_counter()
        result = adapt.adapt(served, served, logged, catalog, work / name.replace(" ", "-").replace(",", ""),
                             budget_s=budget, seed=seed, defend=defend)
        model = result.model if result.publish else served
        share = float(adapt.exposure(model, prefixes)[position[target]])
        recall = float(adapt.hits(model, prefixes, targets).mean())
        aside = (result.screened or {}).get("set_aside", {})
        row = {"run": name, "published": result.publish, "chosen": result.chosen, "target_share": share,
               "recall@10": recall, "set_aside_sessions": aside.get("sessions"), "set_aside": aside,
               "talks": (result.screened or {}).get("talks"), "exposure_refused":
               result.settings.get("exposure_refused"), "choose_capped": result.settings.get("choose_capped"),
               "seconds": round(time.perf_counter() - started, 1)}
        log(f"{name}: target in {share:.1%} of the later top 10, recall@10 {recall:.4f} ({result.chosen}, "
            f"{'published' if result.publish else 'kept'}); set aside {aside.get('sessions')} sessions "
            f"{ {k: v for k, v in aside.items() if v and k not in ('sessions', 'clients')} }, talks "
            f"{(result.screened or {}).get('talks')}; refused {row['exposure_refused'] or '-'}; clicks left out of the "
            f"choice {row['choose_capped'] or '-'} ({row['seconds']} s)")
        return row

    log(f"{n_obs} honest sessions observed, {len(later_sessions)} later sessions ({len(targets)} clicks) answered; "
        f"target {target} ({counts.get(target, 0)} real clicks in the whole event); spam {n_spam} sessions per shape")
    neighbours = text_neighbours(served, catalog, target)
    rows = [one_cycle("no spam", honest)]
    keep = rng.permutation(honest["session_id"].unique())[: int(round(0.98 * honest["session_id"].nunique()))]
    rows.append(one_cycle("no spam, 2 % of the sessions left out", honest[honest["session_id"].isin(set(keep))]))
    base = rows[0]
    for i, shape in enumerate(shapes):
        spam = spam_sessions(shape, n_spam, target, popular, honest, start, seed + i, neighbours)
        logged = pd.concat([honest, spam], ignore_index=True)
        rows.append(one_cycle(shape, logged))
        if shape == "pair":
            rows.append(one_cycle("pair, without the defences", logged, defend=False))
    for row in rows:
        row["share - no spam"] = row["target_share"] - base["target_share"]
        row["recall / no spam"] = row["recall@10"] / base["recall@10"] if base["recall@10"] else None
    log("run | target share | - no spam (points) | recall@10 | / no spam | sessions set aside")
    for row in rows:
        log(f"{row['run']} | {row['target_share']:.3f} | {100 * row['share - no spam']:+.1f} | {row['recall@10']:.4f} | "
            f"{row['recall / no spam']:.3f} | {row['set_aside_sessions']}")
    return {"target": target, "observed_sessions": n_obs, "spam_sessions": n_spam, "later_clicks": int(len(targets)),
            "rows": rows}


def catalog_update(served, catalog, clicks, fraction: float, work: Path, cache, n_added: int = 3,
                   n_cancelled: int = 1, budget: float | None = 45.0, seed: int = 42, log=print) -> dict:
    """The ``--update`` benchmark (module docstring): ``served`` is the swapped model over ``catalog`` (nothing
    learned), ``clicks`` the event's. Returns every number."""
    import numpy as np
    import pandas as pd

    from gtcrec import embeddings, etl
    from gtcrec.layout import RESERVED
    from gtcrec.live import adapt
    from gtcrec.swap.update import catalog_changes, updated_model

    rng = np.random.default_rng(seed)
    numbered = etl.number_sessions(clicks)
    later_keys = set(etl.split_by_time(numbered)["test"]["session_key"])
    later = clicks[clicks["session_id"].isin(later_keys)].sort_values(["session_id", "timestamp"])
    observed = first_sessions(clicks, fraction)
    ids = catalog["talk_id"].astype(str).tolist()
    in_later, in_observed = set(later["talk_id"].astype(str)), observed["talk_id"].astype(str).value_counts()
    added = [str(t) for t in rng.choice(sorted(in_later - set(in_observed.index)) or sorted(in_later), n_added,
                                        replace=False)]
    learned_from = [t for t in in_observed.index if t not in added]
    cancelled = [str(t) for t in rng.choice(learned_from[:20], n_cancelled, replace=False)]
    retitled = next(t for t in learned_from if t not in cancelled)

    def table_of(frame):
        return etl.item_table(embeddings.embed_catalog(frame, cache, progress=False)[0])

    before = catalog[~catalog["talk_id"].astype(str).isin(added)].reset_index(drop=True)
    vocab0 = before["talk_id"].astype(str).tolist()
    served0 = updated_model(served, table_of(before), before, ids, vocab0)  # the event before the added talks
    logged = observed[~observed["talk_id"].astype(str).isin(added)]
    started = time.perf_counter()
    result = adapt.adapt(served0, served0, logged, before, work / "update-adapt", budget_s=budget, seed=seed)
    adapted = result.model if result.publish else served0
    log(f"cycle on {logged['session_id'].nunique()} sessions ({time.perf_counter() - started:.0f} s): {result.reason}")

    after = pd.concat([before[~before["talk_id"].astype(str).isin(cancelled)],
                       catalog[catalog["talk_id"].astype(str).isin(added)]], ignore_index=True)
    after.loc[after["talk_id"].astype(str) == retitled, "title"] = "Updated: " + after.loc[
        after["talk_id"].astype(str) == retitled, "title"].astype(str)
    vocab1 = after["talk_id"].astype(str).tolist()
    table1 = table_of(after)
    started = time.perf_counter()
    updated = updated_model(adapted, table1, after, vocab0, vocab1)
    carry_s = time.perf_counter() - started
    swapped = updated_model(served0, table1, after, vocab0, vocab1)  # a swap to the update: nothing learned
    from gtcrec import model as gm

    changes = catalog_changes(vocab0, vocab1, gm.text_table(adapted).numpy()[RESERVED:], table1[RESERVED:])

    def clicks_for(vocab):  # every later click after the first, its prefix in ``vocab`` (unknown talks dropped)
        code = {t: RESERVED + i for i, t in enumerate(vocab)}
        rows = []
        for _, g in later.groupby("session_id", sort=False):
            talks = g["talk_id"].astype(str).tolist()
            for j in range(1, len(talks)):
                rows.append((np.array([code[t] for t in talks[:j] if t in code], dtype=np.int64),
                             code.get(talks[j], -1), talks[j]))
        return rows

    old_rows, new_rows = clicks_for(vocab0), clicks_for(vocab1)
    stays = [i for i, (a, b) in enumerate(zip(old_rows, new_rows))
             if a[2] in set(vocab0) & set(vocab1) and len(a[0]) and len(b[0])]

    def hits(model, rows, keep):
        return adapt.hits(model, [rows[i][0] for i in keep], np.array([rows[i][1] for i in keep]))

    without, with_update = hits(adapted, old_rows, stays), hits(updated, new_rows, stays)
    swap_hits = hits(swapped, new_rows, stays)
    diff = with_update - without
    se_diff = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    se_without = float(without.std(ddof=1) / np.sqrt(len(without)))
    new_talks = [i for i, r in enumerate(new_rows) if r[2] in set(added) and len(r[0])]
    added_updated, added_swapped = hits(updated, new_rows, new_talks), hits(swapped, new_rows, new_talks)
    out = {"observed_sessions": int(logged["session_id"].nunique()), "chosen": result.chosen,
           "published": result.publish, "changes": changes.summary(), "added": added, "cancelled": cancelled,
           "retitled": retitled, "carry_seconds": round(carry_s, 3),
           "stays_clicks": len(stays), "stays_recall_without_update": float(without.mean()),
           "stays_recall_with_update": float(with_update.mean()), "stays_difference": float(diff.mean()),
           "stays_se_difference": se_diff, "stays_se_recall": se_without,
           "stays_recall_swap_instead": float(swap_hits.mean()),
           "added_clicks": len(new_talks), "added_recall_with_update": float(added_updated.mean()) if new_talks else None,
           "added_recall_swap_instead": float(added_swapped.mean()) if new_talks else None}
    log(f"update: {changes.summary()} (carried in {carry_s:.2f} s). Later clicks on talks that stay ({len(stays)}): "
        f"recall@10 {out['stays_recall_without_update']:.4f} without the update, {out['stays_recall_with_update']:.4f} "
        f"with it (difference {out['stays_difference']:+.4f}, SE of the difference {se_diff:.4f}, SE of the recall "
        f"{se_without:.4f}); {out['stays_recall_swap_instead']:.4f} after a swap to the same catalog (nothing kept). "
        f"Clicks on the added talks ({len(new_talks)}): recall@10 "
        + (f"{out['added_recall_with_update']:.4f} (the swap: {out['added_recall_swap_instead']:.4f}); without the "
           "update they cannot be answered" if new_talks else "none"))
    return out


def measure_cycle(art: Path, cache, fraction: float, work: Path, budget: float | None, log=say) -> dict:
    """One cycle from the log to the new version serving, on a real Triton server: notebook 05's
    repository (copied), the fall event swapped in (``gtcrec.swap.swap_catalog``), the first
    ``fraction`` of the fall event's training sessions written as a click file into a log folder (the
    documented clicks format, as any application may drop it there), then
    :func:`gtcrec.live.run_cycle`. Returns the cycle's record and its seconds, step by step."""
    import shutil

    from gtcrec import data, live, swap
    from gtcrec.manifest import read_manifest
    from gtcrec.serving.server import TritonServer

    d0, t3, e4 = (read_manifest(art, stem) for stem in ("00-data", "04-item-representation", "05-ensemble"))
    name = e4["metrics"]["model_name"]
    catalog_file = d0.path("fall_catalog")
    clicks, _ = data.load_clicks(d0.path("fall_clicks"), data.load_catalog(catalog_file))
    observed = first_sessions(clicks, fraction)
    shutil.rmtree(work, ignore_errors=True)
    (work / "log").mkdir(parents=True)
    observed.to_parquet(work / "log" / "clicks.parquet", index=False)
    repo = work / "model_repository"
    shutil.copytree(e4.path("model_repository"), repo)
    with TritonServer(repo, load_models=[name], startup_timeout=180) as server:
        swap.swap_catalog(catalog_file, repo, server, t3.path("model"), cache,
                          k_model=int(t3["metrics"]["trace_topk"]), model_name=name)
        cycle = live.run_cycle(repo, server, t3.path("model"), cache, work / "log", name, work_dir=work,
                               budget_s=budget, log=log)
    log(f"one cycle on {observed['session_id'].nunique()} logged sessions: {cycle['seconds']:.1f} s from the log to "
        f"{'version ' + str(cycle.get('version')) + ' serving' if cycle.get('published') else 'no new version'} "
        f"({cycle.get('chosen')}); steps {cycle['steps']}")
    return cycle


def main(argv=None) -> dict:
    from gtcrec import data
    from gtcrec.manifest import read_manifest
    from gtcrec.swap.catalog import prepare_catalog, swapped_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--cache", default="data/cache/embeddings")
    parser.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    parser.add_argument("--scratch", action="store_true", help="also train the architecture from scratch on the "
                        "observed sessions")
    parser.add_argument("--budget", type=float, default=45.0, help="fine-tune seconds per cycle")
    parser.add_argument("--undefended", action="store_true", help="each cycle of the curve also without the "
                        "defences against click spam, on the same test clicks: what they cost honest traffic")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", default="/tmp/gtcrec-live-benchmark")
    parser.add_argument("--cycle", type=float, metavar="FRACTION", help="instead of the curve: one cycle on a real "
                        "server after FRACTION of the training sessions, from the log to the new version serving "
                        "(needs notebook 05's repository)")
    parser.add_argument("--attack", action="store_true", help="instead of the curve: click spam the app vouched "
                        "for, in several shapes, against one cycle with and without the defences")
    parser.add_argument("--attack-fraction", type=float, default=0.2, help="honest share of the training sessions "
                        "observed before the attack's cycle (default: %(default)s)")
    parser.add_argument("--spam-share", type=float, default=0.25, help="spam sessions per honest one "
                        "(default: %(default)s)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--update", action="store_true", help="instead of the curve: a catalog update during the "
                        "event (talks added, cancelled, retitled) after one cycle: what it keeps")
    parser.add_argument("--update-fraction", type=float, default=0.2, help="share of the training sessions the "
                        "cycle before the update learns from (default: %(default)s)")
    parser.add_argument("--added", type=int, default=3, help="talks the update adds (default: %(default)s)")
    parser.add_argument("--cancelled", type=int, default=1, help="talks the update cancels (default: %(default)s)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    art = Path(args.artifacts_dir)
    if args.cycle is not None:
        out = measure_cycle(art, args.cache, args.cycle, Path(args.work) / "cycle", args.budget)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        return out
    data_out, train_out = read_manifest(art, "00-data"), read_manifest(art, "04-item-representation")
    catalog = data.load_catalog(data_out.path("fall_catalog"))
    clicks, _ = data.load_clicks(data_out.path("fall_clicks"), catalog)
    prepared = prepare_catalog(data_out.path("fall_catalog"), args.cache)
    served = swapped_model(train_out.path("model"), prepared.table, prepared.catalog)
    params = train_out["parameters"]
    if args.update:
        out = catalog_update(served, prepared.catalog, clicks, args.update_fraction, Path(args.work) / "update",
                             args.cache, args.added, args.cancelled, args.budget, args.seed, log=say)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        return out
    if args.attack:
        out = attack(served, prepared.catalog, clicks, args.attack_fraction, args.spam_share, args.shapes,
                     Path(args.work) / "attack", args.budget, args.seed, log=say)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        return out
    out = curve(served, prepared.catalog, clicks, prepared.table, args.fractions, Path(args.work),
                int(params.get("EPOCHS", 5)), int(params.get("BATCH_SIZE", 128)),
                float(params.get("LEARNING_RATE", 1e-3)), args.seed, args.scratch, args.budget,
                log=say, undefended=args.undefended)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
