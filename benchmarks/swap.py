"""Catalog-swap benchmark: speed and quality ratios measured in ONE run on this machine (nothing is asserted).

    python benchmarks/swap.py --artifacts-dir artifacts [--cache data/cache/embeddings]
                              [--epochs 5 12] [--cli] [--cold-encode] [--json out.json]

Needs notebooks 00 (the "fall" event: catalog, clicks, oracle), 01 (old vocabulary and training
sessions), 03 (trained model, K) and 04 (model repository) in ARTIFACTS_DIR. It copies 04's repository
into a temporary folder, starts a real Triton server on it (explicit model control) and measures:

1. speed: the in-process swap ``gtcrec.swap.swap_catalog`` from the new catalog file to the new
   version serving, step by step, with a background client sending requests the whole time (failed
   requests, old/new answers around the switch, latency of the first answers of the new version);
   then a rollback; then the same swap with the new version's warm-up request removed (``--no-cold``
   leaves it out), for the first-request latency without warm-up, and a rollback. Target: <= 30 s on 2 CPU cores
   without text encoding, which is reported apart (``--cold-encode`` measures it with an empty cache;
   otherwise the cache given is used and may already hold the vectors). ``--cli`` also runs the
   ``gtcrec-swap`` command in a new process (wall time including Python start and imports).
2. quality on the new event (``gtcrec.swap.evaluate_new_event``): recall@10 and NDCG@10 of the swapped
   model against the same architecture retrained on the new event's clicks (one run per ``--epochs``
   value; default: notebook 03's EPOCHS, the budget the swapped model got), the untrained model, the
   text-similarity baselines, popularity and item-kNN fitted on the old event, and the oracle; and the
   row a swap serves (notebook 04's transfer check: the model, a blend with text similarity, or text
   similarity). Targets: >= 1.1 x the best text baseline and >= 0.95 x retrained.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore", message=".*(Tensorflow dtype mappings|NVTabular Dataset in CPU mode).*")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the server is forked after text encoding

from gtcrec import data, embeddings, metrics, swap  # noqa: E402
from gtcrec.manifest import read_manifest  # noqa: E402
from gtcrec.serving.server import TritonServer  # noqa: E402


def measure_swap(args, tmp: Path) -> dict:
    d0 = read_manifest(args.artifacts_dir, "00-data")
    t3 = read_manifest(args.artifacts_dir, "04-item-representation")
    e4 = read_manifest(args.artifacts_dir, "05-ensemble")
    name = e4["metrics"]["model_name"]
    k_model = int(t3["metrics"]["trace_topk"])
    catalog_file = d0.path("fall_catalog")
    out: dict = {"model": name, "k_model": k_model}

    if args.cold_encode:
        catalog = data.load_catalog(catalog_file)
        started = time.perf_counter()
        _, newly = embeddings.embed_catalog(catalog, tmp / "cold-cache", progress=False)
        out["cold_encode"] = {"talks": len(catalog), "newly_encoded": newly,
                              "seconds": time.perf_counter() - started}

    repo = tmp / "model_repository"
    shutil.copytree(e4.path("model_repository"), repo)
    with TritonServer(repo, load_models=[name], startup_timeout=180) as server:
        out["server_startup_seconds"] = server.startup_seconds
        old_vocab = swap.read_version(repo, 1, name).vocab
        new_vocab = data.load_catalog(catalog_file)["talk_id"].tolist()
        request = swap.probe_request(old_vocab, new_vocab)

        def traffic():
            t = swap.Traffic(server, request, old_vocab, new_vocab, model_name=name, pause=args.pause,
                             max_requests=args.max_requests, max_seconds=args.max_seconds).start()
            t.wait_for(20)
            return t

        client = traffic()
        result = swap.swap_catalog(catalog_file, repo, server, t3.path("model"), args.cache, k_model=k_model,
                                   model_name=name)
        time.sleep(1.0)
        frame = client.stop()
        out["swap"] = {**result.summary(),
                       "traffic": swap.traffic_summary(frame, client.at(result.load.started),
                                                       client.at(result.load.ended))}

        client = traffic()
        back = swap.rollback(server, repo, name)
        time.sleep(1.0)
        frame = client.stop()
        out["rollback"] = {"from": back.from_version, "to": back.to_version, "seconds": back.load.seconds,
                           "traffic": swap.traffic_summary(frame, client.at(back.load.started),
                                                           client.at(back.load.ended), before="new", after="old")}
        if not args.no_cold:  # the same swap, its new version without a warm-up request
            from gtcrec.serving import executor_model

            client = traffic()
            cold = swap.swap_catalog(catalog_file, repo, server, t3.path("model"), args.cache, k_model=k_model,
                                     model_name=name,
                                     _before_load=lambda folder: (folder / executor_model.WARMUP_FILE).unlink())
            time.sleep(1.0)
            frame = client.stop()
            out["cold_swap"] = {"version": cold.version, "load_seconds": cold.load.seconds,
                                "traffic": swap.traffic_summary(frame, client.at(cold.load.started),
                                                                client.at(cold.load.ended))}
            swap.rollback(server, repo, name)
        if args.cli:
            command = [str(Path(sys.executable).parent / "gtcrec-swap"), str(catalog_file), "--repository", str(repo),
                       "--url", server.grpc_url, "--model-dir", str(t3.path("model")), "--cache", str(args.cache),
                       "--k", str(k_model), "--model-name", name, "--json", str(tmp / "cli.json")]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
            wall = time.perf_counter() - started
            cli = json.loads((tmp / "cli.json").read_text()) if done.returncode == 0 else {}
            out["cli"] = {"exit_code": done.returncode, "wall_seconds": wall,
                          "swap_seconds": cli.get("total_seconds"), "version": cli.get("version"),
                          "stderr_tail": done.stderr[-500:] if done.returncode else ""}
    return out


def measure_quality(args, tmp: Path) -> dict:
    d0 = read_manifest(args.artifacts_dir, "00-data")
    e1 = read_manifest(args.artifacts_dir, "01-etl")
    t3 = read_manifest(args.artifacts_dir, "04-item-representation")
    catalog = data.load_catalog(d0.path("fall_catalog"))
    clicks, _ = data.load_clicks(d0.path("fall_clicks"), catalog)
    old_vocab = pd.read_parquet(e1.path("vocab"))["talk_id"].astype(str).tolist()
    prepared = swap.prepare_catalog(d0.path("fall_catalog"), args.cache, old_vocab)
    oracle = d0.path("fall_oracle") if "fall_oracle" in d0["outputs"] else None
    old_train = metrics.read_sessions(e1.path("train"))
    runs = {}
    for epochs in args.epochs or [int(t3["parameters"].get("EPOCHS", 5))]:
        started = time.perf_counter()
        quality = swap.evaluate_new_event(
            t3.path("model"), catalog, clicks, prepared.table, old_train, old_vocab, tmp / f"quality-{epochs}",
            oracle_path=oracle, epochs=epochs, batch_size=int(t3["parameters"].get("BATCH_SIZE", 256)),
            lr=float(t3["parameters"].get("LEARNING_RATE", 1e-3)), seed=args.seed)
        runs[epochs] = {"results": quality.results, "ratios": quality.ratios, "counts": quality.counts,
                        "retrain": quality.retrain, "served": quality.served, "every_session": quality.every_session,
                        "seconds": time.perf_counter() - started}
    return runs


def report(speed: dict | None, quality: dict | None) -> None:
    if speed:
        s = speed["swap"]
        print("\n== speed: catalog file -> new version serving (in process) ==")
        steps = pd.Series(s["steps"]).rename("seconds")
        print(steps.round(2).to_string())
        print(f"total {s['total_seconds']:.1f} s; without text encoding {s['seconds_without_encoding']:.1f} s "
              f"(target <= 30 s: {'met' if s['seconds_without_encoding'] <= 30 else 'NOT met'}); "
              f"{s['newly_encoded']} texts encoded during the swap")
        if "cold_encode" in speed:
            c = speed["cold_encode"]
            print(f"text encoding with an empty cache: {c['talks']} talks in {c['seconds']:.1f} s "
                  f"({c['talks'] / c['seconds']:.0f} talks/s)")
        for label, part in (("swap", s["traffic"]), ("rollback", speed["rollback"]["traffic"])):
            print(f"{label}: {part['requests']} requests, {part['failed']} failed, answers {part['answers']}, "
                  f"before-only {part['before_only']}, after-only {part['after_only']}, ordered {part['ordered']}; "
                  f"load call {part['switch_seconds']:.1f} s; last old -> first new answer "
                  f"{part['gap_ms'] if part['gap_ms'] is None else round(part['gap_ms'])} ms; "
                  "p50 before/during/after " + "/".join(
                      "-" if part[k] is None else f"{part[k]:.1f}" for k in ("p50_ms_before", "p50_ms_during",
                                                                             "p50_ms_after")) + " ms")
        first = {"warm-up (default)": s["traffic"]["first_ms_after"]}
        if "cold_swap" in speed:
            first["no warm-up"] = speed["cold_swap"]["traffic"]["first_ms_after"]
        print("first answers of the new version after the switch (ms): " + "; ".join(
            f"{label}: {', '.join(f'{x:.1f}' for x in values)}" for label, values in first.items())
            + f"; p50 after {s['traffic']['p50_ms_after'] or 0:.1f} ms")
        if "cold_swap" in speed:
            print(f"load call with / without warm-up: {s['load']['seconds']:.1f} / "
                  f"{speed['cold_swap']['load_seconds']:.1f} s")
        if "cli" in speed:
            c = speed["cli"]
            print(f"gtcrec-swap command: exit {c['exit_code']}, {c['wall_seconds']:.1f} s wall (Python start and "
                  f"imports included), swap itself {c['swap_seconds'] or 0:.1f} s")
    if quality:
        for epochs, q in quality.items():
            print(f"\n== quality on the new event ({q['counts']['test_sessions']} test sessions, "
                  f"retrained {epochs} epochs in {q['retrain']['seconds']:.0f} s) ==")
            table = pd.DataFrame(q["results"]).T[["recall@10", "ndcg@10", "recall@20"]]
            print(table.round(4).to_string())
            r = q["ratios"]
            for who, row in (("swapped", "swapped (as trained)"), ("served", f"served ({q['served']})")):
                print(f"{row}: / retrained recall@10 {r[f'{who}_over_retrained_recall@10']:.3f} (target >= 0.95); "
                      f"/ best text recall@10 {r[f'{who}_over_best_text_recall@10']:.3f} on the test split, "
                      f"{r[f'{who}_over_best_text_every_session_recall@10']:.3f} on all "
                      f"{q['every_session']['sessions']} sessions (target >= 1.1)")
            if r.get("swapped_over_oracle_recall@10") is not None:
                print(f"swapped / oracle: recall@10 {r['swapped_over_oracle_recall@10']:.3f}, ndcg@10 "
                      f"{r['swapped_over_oracle_ndcg@10']:.3f}")
            print(f"swapped / untrained: recall@10 {r['swapped_over_untrained_recall@10']:.2f}; swapped / popularity "
                  f"fitted on the old event: {r['swapped_over_old_popularity_recall@10']:.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--cache", default="data/cache/embeddings", help="text-embedding cache")
    parser.add_argument("--epochs", type=int, nargs="+", default=None,
                        help="epochs of the retrained model, one run each (default: 03's EPOCHS)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between two background requests")
    parser.add_argument("--max-requests", type=int, default=30000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--cli", action="store_true", help="also time the gtcrec-swap command")
    parser.add_argument("--no-cold", action="store_true", help="skip the swap without warm-up (first-request "
                        "latency of a cold version)")
    parser.add_argument("--cold-encode", action="store_true", help="time text encoding with an empty cache")
    parser.add_argument("--skip", choices=["speed", "quality"], help="leave one part out")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)
    args.cache = Path(args.cache).resolve()
    with tempfile.TemporaryDirectory(prefix="gtcrec-swap-bench-") as tmp:
        speed = None if args.skip == "speed" else measure_swap(args, Path(tmp))
        quality = None if args.skip == "quality" else measure_quality(args, Path(tmp))
    report(speed, quality)
    if args.json:
        Path(args.json).write_text(json.dumps({"speed": speed, "quality": quality}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
