"""One adaptation cycle against a running server, and ``gtcrec-adapt``, the command that repeats it.

A cycle (:func:`run_cycle`):

1. finds the catalog being served and when it went live (the catalog swap or catalog update that made
   the version served, :func:`catalog_event`, in the model folder's swap history; without one, the
   catalog given, every click counts);
2. reads the logged clicks on its talks (:func:`gtcrec.live.clicklog.read_click_log`; a new event's
   talk ids are new, so clicks on talks of another catalog are dropped and counted);
3. rebuilds the swapped model (the trained model with that catalog's table, as the swap serves it) and
   the eager model of the version being served (the same, or the one a previous cycle saved);
4. :func:`gtcrec.live.adapt.adapt` chooses what the clicks teach and whether it beats the version served;
5. when it does, :func:`gtcrec.swap.switch.publish` serves it as the next version, under the swap's lock,
   with the swap's guarantees (warm-up, load under traffic, a refused version archived and the old one
   kept). The eager model is saved in ``<model>/live/<version>`` for the next cycle's guard.

Nothing is written before step 5, so a cycle killed earlier leaves the server, the repository and the
log as they were, and the next cycle starts afresh. Every cycle, published or not, is recorded in
``gtcrec_live.json`` with what it set aside (``screened``: sessions, clients and talks, by rule) and the
candidates its guard refused for their exposure (``settings.exposure_refused``) or for talks rising on
support that stopped before the newest sessions (``settings.unconfirmed``)
(:func:`gtcrec.live.adapt.read_cycles`); ``gtcrec-adapt --status`` shows them.

    gtcrec-adapt --repository REPO --url HOST:GRPC_PORT --model-dir MODEL_DIR --click-log DIR
                 [--catalog FILE] [--cache DIR] [--every N | --every-seconds S] [--cycles M]
    gtcrec-adapt --fleet --url R0 --url R1 ... (or --replicas-of SERVICE:PORT) --repository SHARED_REPO ...
    gtcrec-adapt --status --repository REPO [--url R0 --url R1 ... | --replicas-of SERVICE:PORT]

**A fleet** (``--fleet``, ``--replicas-of``): the replicas share one repository and one click log folder
(every writer's files carry its host, pid and instance, so the reader sees every replica's clicks, each
once). The cycle reads the version they all serve (they must agree), chooses and exports once, and
publishes through the fleet swap's machinery (:func:`gtcrec.swap.fleet.publish_fleet`): the version is
loaded on replica 0, then on each other replica; if one refuses it or stops answering, the version is
archived and every replica serves the old one again (the cycle is recorded as not published).

Saved models are trusted files: loading one runs pickle.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from gtcrec.live import adapt as live_adapt
from gtcrec.live.clicklog import read_click_log
from gtcrec.serving.repository import (CATALOG_ACTIONS, DEFAULT_MODEL_NAME, LIVE_MODELS, Log, SwapError, _quiet,
                                       catalog_event, current_version, read_history, read_version, record_event,
                                       repository_lock)

RETRY_PAUSE_S = 10.0  # --every / --every-seconds: seconds before the cycle after one that failed


@dataclass
class Live:
    """The catalog being served and since when."""

    catalog_file: Path
    since: pd.Timestamp | None  # when the swap put it there (for the record)
    swapped: bool  # a catalog swap put it there (else: the trained catalog)


def live_catalog(repository, model_name: str = DEFAULT_MODEL_NAME, catalog=None, version: int | None = None) -> Live:
    """The catalog of the swap or catalog update that ``version`` serves (:func:`catalog_event`; without
    ``version``: the last one in the history), or ``catalog`` (the trained one)."""
    if version is None:
        made = [e for e in read_history(repository, model_name)["events"]
                if e.get("action") in CATALOG_ACTIONS and e.get("ok")]
        event = made[-1] if made else None
    else:
        event = catalog_event(repository, model_name, version)
    if event is not None:
        return Live(Path(event["catalog"]), pd.Timestamp(event["time"]).tz_convert("UTC").tz_localize(None), True)
    if catalog is None:
        raise SwapError(f"{Path(repository) / model_name} has no catalog swap in its history: pass the catalog the "
                        "served version was exported with (--catalog)")
    return Live(Path(catalog), None, False)


def _eager_models(model_dir, prepared, live: Live, repository, model_name: str, serving: int):
    """(base, serving): the model every candidate starts from, and the eager model of the served version."""
    from gtcrec import model as gm
    from gtcrec.swap.catalog import swapped_model

    base = (swapped_model(model_dir, prepared.table, prepared.catalog) if live.swapped
            else gm.load_model(model_dir).eval())
    saved = Path(repository) / model_name / LIVE_MODELS / str(serving)
    return base, (gm.load_model(saved).eval() if saved.is_dir() else base)


def run_cycle(repository, server_url, model_dir, cache_dir, click_log, model_name: str = DEFAULT_MODEL_NAME,
              catalog=None, work_dir=None, budget_s: float | None = 45.0, timeout: float = 300.0,
              log: Log | None = None, _before_replica_load=None) -> dict:
    """One cycle (module docstring); returns what it recorded.

    ``server_url``: one server, or a list of replicas (a fleet on one shared repository): the cycle
    then reads the version they all serve, chooses and exports once, and publishes through the fleet
    swap's machinery (:func:`gtcrec.swap.fleet.publish_fleet`: every replica loads the version, or, if
    one refuses or dies, every replica serves the old one again). ``_before_replica_load(index,
    version_folder)`` (tests) runs before each replica's load."""
    from gtcrec import model as gm
    from gtcrec.swap.catalog import prepare_catalog
    from gtcrec.swap.fleet import common_version, fleet_lock, fleet_serving, publish_fleet
    from gtcrec.swap.switch import publish

    log = log or _quiet
    t0 = time.perf_counter()
    repo = Path(repository).resolve()
    replicas = list(server_url) if isinstance(server_url, (list, tuple)) else None
    if replicas is not None:
        serving = common_version(replicas, model_name)  # FleetSwapError when they disagree or one is down
    else:
        serving, _ = current_version(server_url, repo, model_name)
    live = live_catalog(repo, model_name, catalog, serving)
    settings = read_version(repo, serving, model_name)
    prepared = prepare_catalog(live.catalog_file, cache_dir)
    if prepared.vocab != settings.vocab:
        raise SwapError(f"version {serving} serves another catalog than {live.catalog_file}")
    # the new catalog's talk ids are new (a swap rule): its clicks are those on its talks, whatever the clock
    # of the clients that sent them; clicks on other catalogs' talks are dropped and counted
    clicks, report = read_click_log(click_log, catalog_ids=prepared.vocab)
    log(f"version {serving} serving {len(prepared.vocab)} talks (live since {live.since or 'the start'}); "
        f"{report['clicks']} of their clicks logged, in {report['sessions']} sessions")
    base, serving_model = _eager_models(model_dir, prepared, live, repo, model_name, serving)
    steps = {"read": round(time.perf_counter() - t0, 3)}  # the catalog, the log and the eager models
    cycle = {"time": pd.Timestamp.now("UTC").isoformat(), "serving_before": serving, "log": report,
             "catalog": str(live.catalog_file), "published": False}
    with tempfile.TemporaryDirectory(prefix="gtcrec-adapt-", dir=work_dir) as tmp:
        result = live_adapt.adapt(serving_model, base, clicks, prepared.catalog, tmp, budget_s=budget_s, log=log)
    cycle.update(result.summary())
    steps.update({step: round(seconds, 3) for step, seconds in cycle.pop("seconds").items()})
    log(result.reason)
    if result.publish:
        started = time.perf_counter()
        with (fleet_lock(repo, model_name) if replicas is not None else contextlib.nullcontext()), \
                repository_lock(repo, model_name):
            try:
                if replicas is None:
                    done = publish(result.model, prepared.vocab, repo, server_url, serving, settings,
                                   int(settings.k_model or 0), model_name, popularity=result.popularity,
                                   timeout=timeout, action="adapt", log=log)
                    load_seconds = done.load.seconds
                    steps.update({f"publish_{k}": round(v, 3) for k, v in done.steps.items()})
                else:
                    now = common_version(replicas, model_name)
                    if now != serving:
                        raise SwapError(f"the fleet went from version {serving} to {now} during the cycle: "
                                        "nothing published, the next cycle starts from it")
                    done = publish_fleet(result.model, prepared.vocab, repo, replicas, serving, settings,
                                         int(settings.k_model or 0), model_name, popularity=result.popularity,
                                         timeout=timeout, action="adapt", log=log,
                                         _before_replica_load=_before_replica_load)
                    load_seconds = {name: round(load.seconds, 3) for name, load in done.loads.items()}
                    steps.update({f"publish_{k}": round(v, 3) for k, v in done.first.steps.items()})
                    steps["publish_other_loads"] = round(sum(load.seconds for load in list(done.loads.values())[1:]), 3)
            except SwapError as exc:  # FleetSwapError included: every replica serves the old version
                cycle.update(published=False, error=str(exc))
                record_event(repo, model_name, action="adapt", version=exc.version, from_version=serving, ok=False,
                             error=str(exc)[:500])
            else:
                gm.save_model(result.model, repo / model_name / LIVE_MODELS / str(done.version))
                cycle.update(published=True, version=done.version, load_seconds=load_seconds)
                record_event(repo, model_name, action="adapt", version=done.version, from_version=serving, ok=True,
                             chosen=result.chosen, clicks=report["clicks"])
                log(f"version {done.version} serving ({result.chosen})")
        steps["publish"] = round(time.perf_counter() - started, 3)
    if replicas is not None:  # what every replica serves now
        cycle["replicas"] = fleet_serving(replicas, model_name)
    cycle.update(seconds=round(time.perf_counter() - t0, 3), steps=steps)
    live_adapt.record_cycle(repo, model_name, cycle)
    return cycle


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gtcrec-adapt",
        description="Learn from the live event's logged clicks: choose what they teach on a time split, and serve "
                    "it as the next model version when it beats the version served (no retraining from scratch).",
        epilog="Exit status: 0 done; 2 bad arguments or no control key; 1 a cycle failed (the version served is "
               "unchanged).")
    parser.add_argument("--repository", required=True, help="the Triton model repository the server reads")
    parser.add_argument("--url", action="append", help="the server's gRPC address, host:port (with --fleet: once "
                        "per replica, all serving --repository)")
    parser.add_argument("--fleet", action="store_true", help="one cycle for every replica given by --url: the log "
                        "of them all is read, the version is chosen and exported once and loaded on every replica, "
                        "all or none (a replica that refuses it sends the others back)")
    parser.add_argument("--replicas-of", metavar="SERVICE:PORT", help="a fleet whose replicas are every address "
                        "this name resolves to, resolved again before every cycle (a Docker Compose service, a "
                        "Kubernetes headless Service); implies --fleet")
    parser.add_argument("--model-dir", help="the trained model saved by notebook 04 (artifacts/04-item-representation/model)")
    parser.add_argument("--click-log", help="the folder of logged clicks (gtcrec-serve --click-log) or of click "
                        "files in the documented clicks format")
    parser.add_argument("--catalog", help="the catalog served, when no catalog swap is in the history")
    parser.add_argument("--cache", default="data/cache/embeddings", help="text-embedding cache (default: %(default)s)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--budget", type=float, default=45.0, help="seconds of training per cycle: both "
                        "fine-tunes, then the winner's refit on every session when it fits (default: %(default)s)")
    parser.add_argument("--every", type=int, help="repeat: a cycle each time this many new sessions were logged")
    parser.add_argument("--every-seconds", type=float, help="repeat: a cycle every this many seconds")
    parser.add_argument("--cycles", type=int, help="stop after this many cycles (default: one, or forever with "
                        "--every / --every-seconds)")
    parser.add_argument("--control-key-file", help="the key of the server's control APIs (see gtcrec-swap)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server's load")
    parser.add_argument("--json", help="also write each cycle as a JSON line to this file ('-': stdout)")
    parser.add_argument("--status", action="store_true", help="show the recorded cycles and stop; with --url or "
                        "--replicas-of, also the versions every replica serves")
    return parser


def _status(repository, model_name: str) -> list[dict]:
    """The recorded cycles and the catalog updates (``gtcrec-swap --update``) between them, in time order."""
    rows = []
    for c in live_adapt.read_cycles(repository, model_name):
        rows.append({"kind": "cycle", "time": c.get("time"), "clicks": (c.get("log") or {}).get("clicks"),
                     "sessions": (c.get("log") or {}).get("sessions"), "chosen": c.get("chosen"),
                     "serving_recall@10": (c.get("scores") or {}).get("serving"),
                     "chosen_recall@10": (c.get("scores") or {}).get(c.get("chosen")),
                     "published": c.get("published", False), "version": c.get("version", c.get("serving_before")),
                     "seconds": c.get("seconds"), "reason": c.get("reason") or c.get("error"),
                     "set_aside": (c.get("screened") or {}).get("set_aside"),
                     "talks_set_aside": (c.get("screened") or {}).get("talks"),
                     "exposure_refused": (c.get("settings") or {}).get("exposure_refused"),
                     "unconfirmed": (c.get("settings") or {}).get("unconfirmed"),
                     "catalog": c.get("catalog")})
    for e in read_history(repository, model_name)["events"]:
        if e.get("action") == "update" and e.get("ok"):
            rows.append({"kind": "catalog update", "time": e["time"], "version": e["version"],
                         "from_version": e["from_version"], "catalog": e["catalog"], "added": e["added"],
                         "cancelled": e["cancelled"], "changed_text": e["changed_text"],
                         "learned_talks": e["learned_talks"]})
    return sorted(rows, key=_when)


def _when(row: dict) -> pd.Timestamp:
    return pd.Timestamp(row["time"]).tz_convert("UTC") if row.get("time") else pd.Timestamp(0, tz="UTC")


def _listing(folder) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of the files the log reader reads: it changes when the log does."""
    from gtcrec.live.clicklog import click_files

    out = []
    for path in click_files(folder):
        try:
            stat = path.stat()
        except OSError:  # gone since it was listed
            continue
        out.append((path.name, stat.st_size, stat.st_mtime_ns))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    from gtcrec.serving import access
    from gtcrec.serving.repository import grpc_target
    from gtcrec.swap.fleet import fleet_serving, replica_addresses

    warnings.filterwarnings("ignore", message=".*Tensorflow dtype mappings.*")
    parser = _parser()
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[gtcrec-adapt] {msg}", file=sys.stderr, flush=True)

    fleet = args.fleet or args.replicas_of is not None
    if args.url and len(args.url) > 1 and not fleet:
        parser.error("several --url need --fleet")
    if args.url and args.replicas_of:
        parser.error("give the replicas by --url or by --replicas-of, not both")

    def targets(key):
        """The server, or the fleet's replicas (resolved now with --replicas-of), with the control key."""
        urls = replica_addresses(args.replicas_of) if args.replicas_of else args.url
        found = [access.Target(grpc_target(u), key) for u in urls]
        return found if fleet else found[0]

    if args.status:
        rows = _status(args.repository, args.model_name)
        for r in rows:
            if r["kind"] == "catalog update":
                log(f"{r['time']}: catalog update {Path(r['catalog']).name} served as version {r['version']} (from "
                    f"{r['from_version']}): {len(r['added'])} added, {len(r['cancelled'])} cancelled, "
                    f"{len(r['changed_text'])} with a changed text; {r['learned_talks']} talks kept what was learned")
                continue
            log(f"{r['time']}: {r['clicks']} clicks, {r['sessions']} sessions; {r['chosen']} "
                f"{r['chosen_recall@10']} vs serving {r['serving_recall@10']}; "
                f"{'published as' if r['published'] else 'kept'} version {r['version']} ({r['seconds']} s)")
            aside = r["set_aside"] or {}
            log(f"  set aside: {aside.get('sessions', 0)} sessions, {aside.get('clients', 0)} clients "
                f"({', '.join(f'{k} {v}' for k, v in aside.items() if v and k not in ('sessions', 'clients')) or 'none'})"
                f"; talks {r['talks_set_aside'] or 'none'}; refused for exposure: {r['exposure_refused'] or 'none'}"
                f"; rising on support that stopped: {r['unconfirmed'] or 'none'}")
        if not (args.url or args.replicas_of):
            print(json.dumps(rows, indent=2, default=str))
            return 0
        try:  # the versions every replica serves
            key, _ = access.key_for_command(args.control_key_file)
            found = targets(key)
            serving = fleet_serving(found if isinstance(found, list) else [found], args.model_name)
        except (access.ControlKeyError, ValueError, OSError) as exc:
            print(f"gtcrec-adapt: {exc}", file=sys.stderr)
            return 2
        for url, versions in serving.items():
            log(f"{url}: serving {versions}")
        consistent = len({str(v) for v in serving.values()}) == 1
        log("the replicas serve one version" if consistent else "the replicas DISAGREE")
        print(json.dumps({"cycles": rows, "serving": serving, "consistent": consistent}, indent=2, default=str))
        return 0
    if not ((args.url or args.replicas_of) and args.model_dir and args.click_log):
        parser.error("a cycle needs --url (or --replicas-of), --model-dir and --click-log (or use --status)")
    if args.every is not None and args.every < 1 or args.every_seconds is not None and args.every_seconds <= 0:
        parser.error("--every and --every-seconds must be positive")
    try:
        key, _ = access.key_for_command(args.control_key_file)
    except access.ControlKeyError as exc:
        print(f"gtcrec-adapt: {exc}", file=sys.stderr)
        return 2
    repeat = args.every is not None or args.every_seconds is not None
    cycles = args.cycles if args.cycles is not None else (None if repeat else 1)
    done, last_sessions, last_time = 0, -1, 0.0
    logged_sessions, served_ids, last_files = 0, None, None
    code = 0
    try:
        while cycles is None or done < cycles:
            if args.every is not None and last_sessions >= 0:
                files = _listing(args.click_log)
                if files != last_files:  # read the log again only when a file came or changed
                    last_files = files
                    _, report = read_click_log(args.click_log, catalog_ids=served_ids)  # counted as the cycle counts
                    logged_sessions = report["sessions"]
                if logged_sessions - last_sessions < args.every:
                    time.sleep(1.0)
                    continue
            if args.every_seconds is not None and time.monotonic() - last_time < args.every_seconds:
                time.sleep(min(1.0, args.every_seconds))
                continue
            last_time = time.monotonic()
            try:
                cycle = run_cycle(args.repository, targets(key), args.model_dir, args.cache, args.click_log,
                                  args.model_name, catalog=args.catalog, budget_s=args.budget, timeout=args.timeout,
                                  log=log)
            except access.ControlKeyError as exc:
                print(f"gtcrec-adapt: {exc}", file=sys.stderr)
                return 2
            except (SwapError, FileNotFoundError, ValueError, OSError) as exc:  # OSError: a name that does not resolve
                print(f"gtcrec-adapt: the cycle failed, the version served is unchanged: {exc}", file=sys.stderr)
                code = 1
                if not repeat:
                    return code
                done += 1
                time.sleep(RETRY_PAUSE_S)  # a loop that fails (a fleet swap under way, a replica down) retries calmly
                continue
            last_sessions = logged_sessions = (cycle.get("log") or {}).get("sessions", 0)
            if args.every is not None:
                from gtcrec.data import load_catalog

                served_ids, last_files = load_catalog(cycle["catalog"])["talk_id"].tolist(), _listing(args.click_log)
            if args.json:
                line = json.dumps(cycle, default=str)
                if args.json == "-":
                    print(line, flush=True)
                else:
                    with open(args.json, "a") as f:
                        f.write(line + "\n")
            done += 1
    except KeyboardInterrupt:
        log("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
