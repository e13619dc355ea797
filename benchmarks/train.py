"""Training benchmark: model quality ratios measured in ONE run at the default size (nothing is asserted).

    python benchmarks/train.py --artifacts-dir artifacts [--rerun]

Runs notebooks 00-03 with their default parameters into ARTIFACTS_DIR (those whose manifest is
already there are reused unless ``--rerun``), then prints, from notebook 03's test-split results:

- recall@10 of the model (frozen pre-trained table) / the oracle's. Target: >= 0.8.
- recall@10 of the model / item-kNN's. Target: >= 1.2.
- the same against popularity and the learned-ids model, and the training time on this machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gtcrec.series import run_notebook

STAGES = ["00-data", "01-etl", "02-dataloader", "03-train"]
MODEL = "T4R, frozen text table"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--rerun", action="store_true", help="run every stage even if its manifest exists")
    args = parser.parse_args()
    root = Path(args.artifacts_dir).resolve()
    for stem in STAGES:
        if args.rerun or not (root / stem / "manifest.json").exists():
            start = time.perf_counter()
            run_notebook(stem, root)
            print(f"{stem}: {time.perf_counter() - start:.0f} s")
    manifest = json.loads((root / "03-train" / "manifest.json").read_text())
    test, run = manifest["metrics"]["test"], manifest["run"]
    ours = test[MODEL]
    print(f"\ntest sessions: {manifest['metrics']['test_sessions']}, architecture: {manifest['metrics']['chosen']}, "
          f"epochs: {manifest['parameters']['EPOCHS']}, device: {run['device']}, "
          f"training {run['train_seconds']:.0f} s (learned ids {run['learned_train_seconds']:.0f} s)")
    print(f"{'method':28s} {'recall@10':>9s} {'ndcg@10':>8s} {'mrr@20':>7s}")
    for name, values in sorted(test.items(), key=lambda kv: kv[1]["recall@10"]):
        print(f"{name:28s} {values['recall@10']:9.3f} {values['ndcg@10']:8.3f} {values['mrr@20']:7.3f}")
    print()
    for other, target in (("oracle", 0.8), ("item-knn", 1.2), ("popularity", None), ("learned ids", None)):
        if other not in test:
            print(f"model / {other}: not available")
            continue
        ratio = ours["recall@10"] / test[other]["recall@10"]
        verdict = "" if target is None else (f"  (target >= {target}: {'met' if ratio >= target else 'NOT met'})")
        print(f"recall@10 model / {other:12s} {ratio:6.2f}{verdict}")


if __name__ == "__main__":
    main()
