"""The ``gtcrec-swap`` command line (swap, ``--rollback``, ``--status``; ``--fleet`` for several replicas)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from gtcrec.data import DataValidationError
from gtcrec.serving import access
from gtcrec.serving.repository import DEFAULT_MODEL_NAME, SwapError, grpc_target
from gtcrec.swap.switch import rollback, status, swap_catalog
from gtcrec.swap.fleet import fleet_status, rollback_fleet, swap_fleet
from gtcrec.swap.update import update_catalog


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gtcrec-swap",
        description="Swap a new event's catalog into the served session model (no retraining) and hot-load "
                    "it into a running Triton server as the next model version; or roll back.",
        epilog="Exit status: 0 done; 2 bad arguments, invalid catalog, or no or a wrong control key (nothing "
               "changed); 1 the server refused the new version or the rollback (the serving version is unchanged).")
    parser.add_argument("catalog", nargs="?", help="the new catalog file (CSV or parquet, the catalog format)")
    parser.add_argument("--repository", required=True, help="the Triton model repository the server reads")
    parser.add_argument("--url", required=True, action="append", help="the server's gRPC address, host:port "
                        "(with --fleet: once per replica, all serving --repository)")
    parser.add_argument("--fleet", action="store_true", help="swap, update, roll back or show every replica given "
                        "by --url: all switch or none does (a replica that refuses sends the others back)")
    parser.add_argument("--model-dir", help="the trained model saved by notebook 04 (artifacts/04-item-representation/model)")
    parser.add_argument("--cache", default="data/cache/embeddings", help="text-embedding cache folder "
                        "(default: %(default)s)")
    parser.add_argument("--k", type=int, default=None, help="candidates the traced model returns "
                        "(default: the same as the serving version)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server's load")
    parser.add_argument("--control-key-file", help="the key of the servers' control APIs (default: "
                        "$GTCREC_CONTROL_KEY, $GTCREC_CONTROL_KEY_FILE, or ~/.config/gtcrec/control.key, the file "
                        "gtcrec-serve creates)")
    parser.add_argument("--json", help="also write the result as JSON to this file ('-': stdout)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--rollback", action="store_true", help="return to the previous version")
    action.add_argument("--status", action="store_true", help="show versions served, kept and archived")
    action.add_argument("--update", action="store_true", help="the catalog file is a new version of the catalog "
                        "being served (talks added, cancelled, retitled): serve it keeping what the live loop "
                        "learned for the talks that stay (gtcrec.swap.update)")
    return parser


def _emit(result: dict, target: str | None) -> None:
    if not target:
        return
    text = json.dumps(result, indent=2, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*Tensorflow dtype mappings.*")
    parser = _parser()
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[gtcrec-swap] {msg}", file=sys.stderr, flush=True)

    if len(args.url) > 1 and not args.fleet:
        parser.error("several --url need --fleet")
    if not (args.status or args.rollback) and not (args.catalog and args.model_dir):
        parser.error("a swap or an update needs the new catalog file and --model-dir (or use --rollback / --status)")
    try:
        key, _ = access.key_for_command(args.control_key_file)  # checked now: a clear error before any work
        args.url = [access.Target(grpc_target(u), key) for u in args.url]
        if args.fleet:
            return _fleet(args, log)
        args.url = args.url[0]
        if args.status:
            result = status(args.url, args.repository, args.model_name)
            log(f"serving {result['serving']}; in the repository {result['repository_versions']}; "
                f"archived {result['archived']}")
            for row in result["versions"]:
                log(f"  version {row['version']}: server {row['server']}, folder {row['folder']}: {row['meaning']}"
                    + ("" if row["agrees"] else "  <- does not agree"))
            for note in result["notes"]:
                log(note)
            for event in result["history"]:
                if event.get("action") == "update" and event.get("ok"):
                    log(f"  version {event['version']} updated the catalog of version {event['from_version']} "
                        f"({event['time']}): {len(event['added'])} added, {len(event['cancelled'])} cancelled "
                        f"{event['cancelled']}, {len(event['changed_text'])} with a changed text; "
                        f"{event['learned_talks']} talks kept what was learned")
            _emit(result, args.json or "-")
            return 0
        if args.rollback:
            rb = rollback(args.url, args.repository, args.model_name, timeout=args.timeout, log=log)
            _emit({"action": "rollback", **asdict(rb)}, args.json)
            return 0
        if args.update:
            up = update_catalog(args.catalog, args.repository, args.url, args.model_dir, args.cache,
                                model_name=args.model_name, timeout=args.timeout, log=log)
            _emit({"action": "update", **up.summary()}, args.json)
            return 0
        res = swap_catalog(args.catalog, args.repository, args.url, args.model_dir, args.cache, k_model=args.k,
                           model_name=args.model_name, timeout=args.timeout, log=log)
        _emit({"action": "swap", **res.summary()}, args.json)
        return 0
    except DataValidationError as exc:
        print(f"gtcrec-swap: invalid catalog, nothing changed:\n{exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, access.ControlKeyError) as exc:
        print(f"gtcrec-swap: {exc}", file=sys.stderr)
        return 2
    except SwapError as exc:  # FleetSwapError included
        print(f"gtcrec-swap: {exc}", file=sys.stderr)
        return 1


def _fleet(args, log) -> int:
    """``--fleet``: the same actions over every ``--url`` (:mod:`gtcrec.swap.fleet`; an update: :func:`update_catalog`)."""
    if args.status:
        result = fleet_status(args.repository, args.url, args.model_name)
        for url, versions in result["serving"].items():
            log(f"{url}: serving {versions}")
        log("the replicas serve one version" if result["consistent"] else "the replicas DISAGREE")
        _emit(result, args.json or "-")
        return 0
    if args.rollback:
        rb = rollback_fleet(args.repository, args.url, args.model_name, timeout=args.timeout, log=log)
        _emit({"action": "fleet-rollback", "from_version": rb.from_version, "to_version": rb.to_version,
               "seconds": rb.ended - rb.started, "serving": rb.serving}, args.json)
        return 0
    if args.update:  # every replica updated, or none
        up = update_catalog(args.catalog, args.repository, args.url, args.model_dir, args.cache,
                            model_name=args.model_name, timeout=args.timeout, log=log)
        _emit({"action": "fleet-update", **up.summary()}, args.json)
        return 0
    res = swap_fleet(args.catalog, args.repository, args.url, args.model_dir, args.cache, k_model=args.k,
                     model_name=args.model_name, timeout=args.timeout, log=log)
    _emit({"action": "fleet-swap", **res.summary()}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
