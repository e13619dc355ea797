"""How long loading a version takes with the lean chain (its operators without Merlin) and with the Merlin
ensemble, in ONE run (not a test).

    python benchmarks/instance_start.py --artifacts-dir artifacts [--rounds 3] [--json out.json]

After ``make run`` (any size): notebook 05's repository is copied twice; in one copy every version's
``lean_chain.pkl`` is removed, so its executor loads the pickled Merlin ensemble as it did before the file
existed. One tritonserver serves each copy. Each round copies version 1 as the next version in both
repositories and asks each server to load it (gRPC ``load_model``: Triton starts one python-backend process
per instance, and the version is READY when each has loaded and answered its warm-up request), alternating
which server goes first. Prints each load's seconds and the ratio of the medians. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from gtcrec.manifest import read_manifest
from gtcrec.serving.executor_model import LEAN_CHAIN_FILE
from gtcrec.serving.server import TritonServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    source = Path(read_manifest(args.artifacts_dir, "05-ensemble")["outputs"]["model_repository"])
    if not source.is_absolute():
        source = Path(args.artifacts_dir).resolve() / source
    name = read_manifest(args.artifacts_dir, "05-ensemble")["metrics"].get("model_name", "executor_model")
    with tempfile.TemporaryDirectory(prefix="gtcrec-instance-start-") as tmp:
        repos = {kind: Path(tmp) / kind for kind in ("lean-chain", "merlin-ensemble")}
        for kind, repo in repos.items():
            shutil.copytree(source, repo)
        for path in repos["merlin-ensemble"].rglob(LEAN_CHAIN_FILE):
            path.unlink()
        if not any(repos["lean-chain"].rglob(LEAN_CHAIN_FILE)):
            raise SystemExit(f"{source} has no {LEAN_CHAIN_FILE}: export it again (make run)")
        servers = {kind: TritonServer(repo, load_models=[name], startup_timeout=300).start()
                   for kind, repo in repos.items()}
        seconds: dict[str, list[float]] = {kind: [] for kind in repos}
        try:
            for round_ in range(args.rounds):
                order = list(repos) if round_ % 2 == 0 else list(reversed(repos))
                for kind in order:
                    shutil.copytree(repos[kind] / name / "1", repos[kind] / name / str(round_ + 2))
                    with servers[kind].control_client() as control:
                        started = time.perf_counter()
                        control.load_model(name, client_timeout=300)
                        seconds[kind].append(time.perf_counter() - started)
                    print(f"round {round_ + 1}: {kind}: version {round_ + 2} loaded in {seconds[kind][-1]:.2f} s",
                          flush=True)
        finally:
            for server in servers.values():
                server.stop()
    medians = {kind: statistics.median(s) for kind, s in seconds.items()}
    ratio = medians["lean-chain"] / medians["merlin-ensemble"]
    print(f"median load: lean chain {medians['lean-chain']:.2f} s, Merlin ensemble {medians['merlin-ensemble']:.2f} s; "
          f"lean / Merlin {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": seconds, "medians": medians, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
