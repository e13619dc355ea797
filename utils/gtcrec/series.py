"""Run the numbered notebooks in order with papermill (the series, and the integration tests).

``python -m gtcrec.series --size default --artifacts-dir artifacts`` executes every notebook in
``notebooks/`` into ``ARTIFACTS_DIR/executed/``; ``--size small`` injects the small parameters
below (the ones CI uses) on top of each notebook's own defaults.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO / "notebooks"

# Parameters injected by ``--size small`` (CI and tests): minutes on 2 CPU cores in all.
SMALL: dict[str, dict[str, Any]] = {
    "00-data": {"N_TALKS": 400, "N_SESSIONS": 4000, "N_SESSIONS_NEW_EVENT": 1500},
    "01-etl": {},
    "02-dataloader": {"BATCH_SIZE": 128},
    "03-train": {"EPOCHS": 3},
    "04-ensemble": {},
    "05-serve": {"LOAD_TEST_SECONDS": 1, "CONCURRENCY": [1, 4], "SESSIONS_PER_REQUEST": [1, 50],
                 "N_PARITY_SESSIONS": 300},
    "06-catalog-swap": {"EPOCHS_RETRAINED": 3},
}


def notebook_stems(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    return sorted(p.stem for p in notebooks_dir.glob("[0-9][0-9]-*.ipynb"))


def run_notebook(stem: str, artifacts_dir: str | Path, parameters: Mapping[str, Any] | None = None,
                 notebooks_dir: Path = NOTEBOOKS_DIR, log_output: bool = False) -> Path:
    """Execute one notebook with papermill; returns the executed copy's path."""
    import papermill

    artifacts_dir = Path(artifacts_dir).resolve()
    executed = artifacts_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    params = {"ARTIFACTS_DIR": str(artifacts_dir), **(parameters or {})}
    out = executed / f"{stem}.ipynb"
    papermill.execute_notebook(str(notebooks_dir / f"{stem}.ipynb"), str(out), parameters=params,
                               cwd=str(notebooks_dir), log_output=log_output, progress_bar=False,
                               kernel_name="python3")
    return out


def run_series(size: str, artifacts_dir: str | Path, only: list[str] | None = None,
               seed: int | None = None) -> dict[str, float]:
    """Run the notebooks in order; returns seconds per notebook."""
    times = {}
    for stem in notebook_stems():
        if only and stem not in only:
            continue
        params = dict(SMALL.get(stem, {})) if size == "small" else {}
        if seed is not None:
            params["SEED"] = seed
        start = time.perf_counter()
        print(f"[series] {stem} ...", flush=True)
        run_notebook(stem, artifacts_dir, params)
        times[stem] = time.perf_counter() - start
        print(f"[series] {stem} done in {times[stem]:.1f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["default", "small"], default="default")
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--only", nargs="*", help="notebook stems to run (default: all)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    times = run_series(args.size, args.artifacts_dir, args.only, args.seed)
    total = sum(times.values())
    print(f"[series] {len(times)} notebooks in {total:.1f} s; executed copies in "
          f"{Path(args.artifacts_dir).resolve() / 'executed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
