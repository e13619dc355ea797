"""One live-event cycle on a fleet of two replicas against the same cycle on one server, at the CI size,
in ONE run.

    python benchmarks/fleet_live.py [--rounds 2] [--budget 1] [--work /tmp/gtcrec-fleet-live-benchmark] [--json out.json]

The world is the one tests/unit/test_fleet_live.py serves (its ``build_world``: a 60-talk catalog, a tiny
untrained model with per-talk parts, random text vectors; no ``make run`` needed), and the log is the
same 260 sessions written as a click file. Each round copies the exported repository twice and runs
:func:`gtcrec.live.run_cycle` once against one tritonserver and once against two replicas behind HAProxy
(:class:`gtcrec.swap.Fleet`), alternating which goes first. Printed: each cycle's seconds and steps, and
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

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))  # the test's world


def say(line: str) -> None:
    print(line, flush=True)


def one_cycle(world, repo: Path, replicas: int, budget: float) -> dict:
    from gtcrec import live, swap
    from gtcrec.serving.server import TritonServer
    from test_fleet_live import NAME

    def run(target):
        return live.run_cycle(repo, target, world["model_dir"], world["cache"], world["click_log"], NAME,
                              catalog=world["catalog_csv"], budget_s=budget, timeout=120)

    if replicas == 1:
        with TritonServer(repo, load_models=[NAME], startup_timeout=180) as server:
            return run(server)
    with swap.Fleet(repo, n_replicas=replicas, model_name=NAME, check_interval=0.2) as fleet:
        return run(fleet.replicas)


def main(argv=None) -> dict:
    from test_fleet_live import build_world, event_clicks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=1.0, help="fine-tune seconds per cycle (the test's)")
    parser.add_argument("--work", default=None)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="gtcrec-fleet-live-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    world = build_world(work)
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
