"""One live-event cycle on a fleet of two replicas against the same cycle on one server, at the CI size,
in ONE run.

    python benchmarks/fleet_live.py [--rounds 2] [--budget 1] [--work /tmp/gtcrec-fleet-live-benchmark] [--json out.json]
    python benchmarks/fleet_live.py --artifacts artifacts --budget 10 [--rounds 3]   # after `make run SIZE=small`

The world is the one tests/unit/test_fleet_live.py serves (its ``build_world``: a 60-talk catalog, a tiny
untrained model with per-talk parts, random text vectors; no ``make run`` needed), and the log is the
same 260 sessions written as a click file. Each round copies the exported repository twice and runs
:func:`gtcrec.live.run_cycle` once against one tritonserver and once against two replicas behind HAProxy
(:class:`gtcrec.swap.Fleet`), alternating which goes first. With ``--artifacts`` (a ``make run`` folder: the
CI size after ``make run SIZE=small``) the world is the series' own: notebook 05's repository with 07's new
event swapped in, 04's model, and the first 30 % of the new event's sessions as the log, so that the cycle
publishes (a cycle that keeps serving loads nothing, on one server or on a fleet). Printed: each cycle's seconds and steps, and
the ratio fleet / one server (median over the rounds). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))  # the test's world


def say(line: str) -> None:
    print(line, flush=True)


def one_cycle(world, repo: Path, replicas: int, budget: float) -> dict:
    from gtcrec import live, swap
    from gtcrec.serving.server import TritonServer

    name = world["name"]

    def run(target):
        return live.run_cycle(repo, target, world["model_dir"], world["cache"], world["click_log"], name,
                              catalog=world["catalog_csv"], budget_s=budget, timeout=300)

    if replicas == 1:
        with TritonServer(repo, load_models=[name], startup_timeout=180) as server:
            return run(server)
    with swap.Fleet(repo, n_replicas=replicas, model_name=name, check_interval=0.2) as fleet:
        return run(fleet.replicas)


def series_world(artifacts: Path, work: Path, cache: Path, share: float = 0.3) -> dict:
    """The world of a ``make run`` folder (module docstring): notebook 05's repository with notebook 07's new
    event swapped in (once, on one server, before the rounds), and the first ``share`` of that event's
    sessions (07's ``new_clicks``) as the log: the first cycles of a live event, which publish."""
    from gtcrec import swap
    from gtcrec.manifest import read_manifest
    from gtcrec.serving.server import TritonServer

    train_out, ens_out = read_manifest(artifacts, "04-item-representation"), read_manifest(artifacts, "05-ensemble")
    swap_out = read_manifest(artifacts, "07-catalog-swap")
    name = ens_out["metrics"]["model_name"]
    repo = work / "repo"
    shutil.copytree(ens_out.path("model_repository"), repo)
    with TritonServer(repo, model_control="explicit", load_models=[name], startup_timeout=180) as server:
        swap.swap_catalog(swap_out.path("new_catalog"), repo, server, train_out.path("model"), cache,
                          k_model=int(train_out["metrics"]["trace_topk"]), model_name=name)
    clicks = pd.read_parquet(swap_out.path("new_clicks"))
    first = clicks.groupby("session_id")["timestamp"].min().sort_values().index
    log = work / "clicks"
    log.mkdir()
    clicks[clicks["session_id"].isin(set(first[:int(share * len(first))]))].to_parquet(log / "clicks.parquet",
                                                                                        index=False)
    return {"repo": repo, "model_dir": train_out.path("model"), "cache": cache, "click_log": log,
            "catalog_csv": None, "name": name}


def main(argv=None) -> dict:
    from test_fleet_live import NAME, build_world, event_clicks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=1.0, help="fine-tune seconds per cycle (the test's)")
    parser.add_argument("--work", default=None)
    parser.add_argument("--json")
    parser.add_argument("--artifacts", help="a `make run` folder: the series' own world (module docstring)")
    parser.add_argument("--cache", default=str(Path(__file__).resolve().parents[1] / "data" / "cache" / "embeddings"),
                        help="with --artifacts: the text-embedding cache `make run` filled (default: %(default)s)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="gtcrec-fleet-live-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.artifacts:
        world = series_world(Path(args.artifacts).resolve(), work, Path(args.cache).resolve())
    else:
        world = {**build_world(work), "name": NAME}
        world["click_log"].mkdir()
        clicks = event_clicks(world["catalog"]["talk_id"].tolist())
        clicks.to_parquet(world["click_log"] / "clicks.parquet", index=False)
    rows = []
    for r in range(args.rounds):
        for replicas in ((1, 2) if r % 2 == 0 else (2, 1)):
            repo = work / f"repo-{r}-{replicas}"
            shutil.copytree(world["repo"], repo)
            cycle = one_cycle(world, repo, replicas, args.budget)
            rows.append({"round": r, "replicas": replicas, "seconds": cycle["seconds"], "steps": cycle["steps"],
                         "published": cycle["published"], "chosen": cycle.get("chosen")})
            say(f"round {r}, {replicas} replica(s): {cycle['seconds']:.1f} s, published {cycle['published']} "
                f"({cycle.get('chosen')}); steps {cycle['steps']}")
    ratios = [next(x["seconds"] for x in rows if x["round"] == r and x["replicas"] == 2)
              / next(x["seconds"] for x in rows if x["round"] == r and x["replicas"] == 1) for r in range(args.rounds)]
    out = {"rows": rows, "ratios": [round(x, 3) for x in ratios], "median_ratio": round(statistics.median(ratios), 3)}
    say(f"fleet of 2 / one server: {out['ratios']} (median {out['median_ratio']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
