"""Training benchmark: model quality ratios measured in ONE run at the default size (nothing is asserted).

    python benchmarks/train.py --artifacts-dir artifacts [--rerun]

Runs notebooks 00-04 with their default parameters into ARTIFACTS_DIR (those whose manifest is
already there are reused unless ``--rerun``), then prints, from notebook 04's test-split results (03's stock model and baselines included):

- recall@10 of the chosen model / the best of item-kNN, learned ids and the three text-similarity
  baselines (the strongest simple method). Target: >= 1.05.
- the same against each of them, popularity and the oracle, and the training time on this machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gtcrec.series import run_notebook

STAGES = ["00-data", "01-etl", "02-dataloader", "03-train", "04-item-representation"]
SIMPLE = ("item-knn", "learned ids", "text: last click", "text: session mean", "text: recency-weighted")


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
    manifest = json.loads((root / "04-item-representation" / "manifest.json").read_text())
    stock_run = json.loads((root / "03-train" / "manifest.json").read_text())["run"]
    test, run = manifest["metrics"]["test"], manifest["run"]
    ours = test[manifest["metrics"]["model_key"]]
    print(f"\ntest sessions: {manifest['metrics']['test_sessions']}, architecture: {manifest['metrics']['chosen']}, "
          f"epochs: {manifest['parameters']['EPOCHS']}, device: {run['device']}, "
          f"training {run['train_seconds']:.0f} s (stock model {stock_run['train_seconds']:.0f} s, "
          f"learned ids {stock_run['learned_train_seconds']:.0f} s)")
    print(f"{'method':34s} {'recall@10':>9s} {'ndcg@10':>8s} {'mrr@20':>7s}")
    for name, values in sorted(test.items(), key=lambda kv: kv[1]["recall@10"]):
        print(f"{name:34s} {values['recall@10']:9.3f} {values['ndcg@10']:8.3f} {values['mrr@20']:7.3f}")
    print()
    best = max((name for name in SIMPLE if name in test), key=lambda name: test[name]["recall@10"])
    ratio = ours["recall@10"] / test[best]["recall@10"]
    print(f"recall@10 model / best simple method ({best}): {ratio:.3f}  "
          f"(target >= 1.05: {'met' if ratio >= 1.05 else 'NOT met'})")
    for other in (*SIMPLE, "popularity", "oracle"):
        if other not in test:
            print(f"model / {other}: not available")
            continue
        print(f"recall@10 model / {other:24s} {ours['recall@10'] / test[other]['recall@10']:6.2f}")


if __name__ == "__main__":
    main()
