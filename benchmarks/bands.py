"""The figures the notebook tests hold bands around, from one or more series runs, side by side (not a test).

    python -m gtcrec.series --size small --artifacts-dir /tmp/a-fp32   # with GTCREC_BF16=0, and again with =1
    python benchmarks/bands.py /tmp/a-fp32 /tmp/a-bf16 [--json out.json]

Each column is one run's ARTIFACTS_DIR (its precision and seed are read from its manifests); each row is a
figure of tests/notebooks/ with the band the test holds it to. docs/testing.md quotes what this printed for
both precisions and three seeds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TEXTS = ("text: last click", "text: session mean", "text: recency-weighted")


def _manifest(root: Path, stem: str) -> dict:
    return json.loads((root / stem / "manifest.json").read_text())


def figures(root: Path) -> dict[str, float | str]:
    """``{figure: value}`` of one run (its notebooks 00, 03, 04, 07 and 10)."""
    out: dict[str, float | str] = {}
    data = _manifest(root, "00-data")
    out["precision (00's text encoding / 03's training)"] = (
        f"{data['run'].get('embed_precision', '?')} / "
        f"{'bf16' if _manifest(root, '03-train')['run'].get('bf16') else 'fp32'}")
    out["seed"] = data["parameters"].get("SEED", "?")
    stock = _manifest(root, "03-train")["metrics"]
    test = stock["test"]
    ours = test[stock["model_key"]]["recall@10"]
    best_text = max(test[t]["recall@10"] for t in TEXTS)
    out["03: stock / learned ids (>= 0.91)"] = ours / test["learned ids"]["recall@10"]
    out["03: stock / best text (>= 1.1)"] = ours / best_text
    rep = _manifest(root, "04-item-representation")["metrics"]
    test = rep["test"]
    ours = test[rep["model_key"]]["recall@10"]
    out["04: model recall@10"] = ours
    out["04: model / item-kNN (>= 0.96)"] = ours / test["item-knn"]["recall@10"]
    out["04: model / learned ids (>= 0.97)"] = ours / test["learned ids"]["recall@10"]
    out["04: model / best text (>= 1.15)"] = ours / max(test[t]["recall@10"] for t in TEXTS)
    out["04: model / oracle (>= 0.89)"] = ours / test["oracle"]["recall@10"]
    out["04: selection margin over 03 (>= 0.03)"] = (rep["selection"]["item representation"]
                                                    - rep["selection"]["frozen text table"])
    swap = _manifest(root, "07-catalog-swap")["metrics"]
    out["07: swapped / best text (>= 0.85)"] = swap["ratios"]["swapped_over_best_text_recall@10"]
    out["07: served / best text (>= 0.90)"] = swap["ratios"]["served_over_best_text_recall@10"]
    out["07: swapped / best text, every session (>= 0.93)"] = swap["ratios"][
        "swapped_over_best_text_every_session_recall@10"]
    out["07: served / best text, every session (>= 0.99 when 04 serves the blend)"] = swap["ratios"][
        "served_over_best_text_every_session_recall@10"]
    live = _manifest(root, "10-live-event")["metrics"]
    for i, (segment, centre) in enumerate(zip(live["segments"], (0.705, 0.682, 0.675))):
        out[f"10: prequential block {i + 1} (within 0.065 of {centre})"] = segment["prequential_recall@10"]
    out["10: zero-shot (0.65-0.82)"] = live["zero_shot"]
    for i, offline in enumerate(live["offline"]):
        out[f"10: test split after cycle {i + 1} (>= zero-shot - 0.035; last >= zero-shot)"] = offline["served"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts_dirs", nargs="+", type=Path)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    runs = {str(d): figures(d) for d in args.artifacts_dirs}
    names = list(next(iter(runs.values())))
    print("| figure (band) | " + " | ".join(Path(d).name for d in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name in names:
        cells = [r.get(name) for r in runs.values()]
        print(f"| {name} | " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
