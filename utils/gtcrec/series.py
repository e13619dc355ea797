"""Run the numbered notebooks in order with papermill (the series, and the integration tests).

``python -m gtcrec.series --size default --artifacts-dir artifacts`` executes every notebook in
``notebooks/`` into ``ARTIFACTS_DIR/executed/``; ``--size small`` injects the small parameters
below (the ones CI uses) on top of each notebook's own defaults; ``--size tiny`` shrinks them further
(:data:`TINY`): a few minutes that check your files go through every notebook, whose figures mean nothing.

Progress: while a notebook runs, lines such as
``[series] 03-train: cell 7/12 "Train the chosen model" (2:31 in this notebook)`` say which
notebook, which step (the section heading above the cell) and how far (code cells done / in
all). A line is printed when a code cell starts, at most one every ``--progress-every`` seconds
(default 10), and a cell that runs longer than that is reported again every ``--progress-every``
seconds, so a long training cell shows it is alive without flooding the terminal. ``--quiet``
prints only one line per notebook.

The kernel runs with CurveZMQ transport encryption when pyzmq supports it (``KernelManager``
``transport_encryption="auto"``; ipykernel's kernelspec declares ``curve``): without it, ipykernel
warns "Kernel is running over TCP without encryption" at every notebook start. The kernel only
listens on 127.0.0.1 either way.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from gtcrec.serving.server import SERVER_LOGS_ENV, crashes

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO / "notebooks"

# Parameters injected by ``--size small`` (CI and tests): minutes on 2 CPU cores in all.
SMALL: dict[str, dict[str, Any]] = {
    "00-data": {"N_TALKS": 400, "N_SESSIONS": 4000, "N_SESSIONS_NEW_EVENT": 1500},
    "01-etl": {},
    "02-dataloader": {"BATCH_SIZE": 128},
    "03-train": {"EPOCHS": 3},
    "04-item-representation": {},
    "05-ensemble": {},
    "06-serve": {"LOAD_TEST_SECONDS": 1, "CONCURRENCY": [1, 4], "SESSIONS_PER_REQUEST": [1, 50]},
    "07-catalog-swap": {"EPOCHS_RETRAINED": 3},
    "08-scale-out": {"LOG_SESSIONS": 3000, "SESSIONS_PER_PART": 1000},
    "09-fleet": {"LOAD_SECONDS": 1.0, "CYCLE_SESSIONS": 150, "CYCLE_BUDGET_S": 2.0},
    "10-live-event": {"FRACTIONS": [0.05, 0.2, 0.5], "BUDGET_S": 20.0},
    "11-large-catalogs": {"N_ITEMS": 20_000, "QUERIES": 200, "EF_SEARCH": [16, 64], "LATENCY_SECONDS": 0.5},
}

# ``--size tiny`` (``make run SIZE=tiny``): :data:`SMALL` with these on top. A few minutes: it checks that your files go
# through every notebook (tests/notebooks/test_own_event.py, docs/your-event.md); its figures mean nothing.
TINY: dict[str, dict[str, Any]] = {
    "03-train": {"EPOCHS": 1},
    "04-item-representation": {"TRANSFER_EPOCHS": 1},
    "05-ensemble": {"INSTANCES": 1},  # each load starts one python-backend process (torch's import) instead of two
    "06-serve": {"LOAD_TEST_SECONDS": 0.5, "CONCURRENCY": [2], "SESSIONS_PER_REQUEST": [10]},
    "07-catalog-swap": {"EPOCHS_RETRAINED": 1},
    "08-scale-out": {"LOG_SESSIONS": 1000, "SESSIONS_PER_PART": 500, "DDP_SESSIONS": None},
    "09-fleet": {"LOAD_SECONDS": 0.5},
    "10-live-event": {"FRACTIONS": [0.5], "BUDGET_S": 5.0},
    "11-large-catalogs": {"N_ITEMS": 2000, "QUERIES": 50, "EF_SEARCH": [32], "LATENCY_SECONDS": 0.3},
}
SIZES = ("default", "small", "tiny")


def size_parameters(size: str, stem: str) -> dict[str, Any]:
    """The parameters ``--size`` injects into ``stem`` (none at the default size)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    params = dict(SMALL.get(stem, {})) if size in ("small", "tiny") else {}
    if size == "tiny":
        params.update(TINY.get(stem, {}))
    return params


def notebook_stems(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    return sorted(p.stem for p in notebooks_dir.glob("[0-9][0-9]-*.ipynb"))


def _kernel_manager_class():
    """An ``AsyncKernelManager`` that provisions CurveZMQ keys for the kernel when pyzmq can (the
    kernel's sockets are then encrypted, and ipykernel's plain-TCP warning goes away)."""
    import zmq
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class EncryptedKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _default_transport_encryption(self):
            return "auto" if zmq.has("curve") else "disabled"

    return EncryptedKernelManager


def _steps(nb) -> list[tuple[int, str]]:
    """Per code cell (in order): its cell index and the step it belongs to (the last markdown
    heading above it, else its first code line)."""
    steps, heading = [], ""
    for i, cell in enumerate(nb.cells):
        text = "".join(cell.source) if isinstance(cell.source, list) else cell.source
        if cell.cell_type == "markdown":
            for line in text.splitlines():
                if line.startswith("#"):
                    heading = line.lstrip("#").strip()
                    break
        elif cell.cell_type == "code":
            first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
            steps.append((i, heading or first))
    return steps


class Progress:
    """Prints which cell of which notebook runs, at most one line every ``every`` seconds, and again
    every ``every`` seconds while one cell keeps running (see the module docstring)."""

    def __init__(self, stem: str, every: float = 10.0, stream=None):
        self.stem, self.every = stem, float(every)
        self.stream = stream or sys.stdout
        self.steps: dict[int, tuple[int, str]] = {}
        self.n_code = 0
        self.current: tuple[int, str] | None = None
        self.cell_started = self.started = self.last_line = time.monotonic()
        self.last_printed_cell = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, nb) -> None:
        steps = _steps(nb)
        self.n_code = len(steps)
        self.steps = {cell: (n + 1, step) for n, (cell, step) in enumerate(steps)}
        self.started = time.monotonic()
        self.last_line = self.started - self.every  # the first cell is shown at once
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)

    @staticmethod
    def _clock(seconds: float) -> str:
        m, s = divmod(int(seconds), 60)
        return f"{m}:{s:02d}"

    def _line(self, now: float, still: bool = False) -> None:
        number, step = self.current
        step = step if len(step) <= 60 else step[:57] + "..."
        running = f", this cell {self._clock(now - self.cell_started)}" if still else ""
        print(f"[series] {self.stem}: cell {number}/{self.n_code} \"{step}\" "
              f"({self._clock(now - self.started)} in this notebook{running})", file=self.stream, flush=True)
        self.last_line = now

    def cell_start(self, cell_index) -> None:
        with self._lock:
            if cell_index not in self.steps:
                return
            now = time.monotonic()
            self.current, self.cell_started = self.steps[cell_index], now
            if now - self.last_line >= self.every:
                self._line(now)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            with self._lock:
                now = time.monotonic()
                if self.current is not None and now - self.last_line >= self.every:
                    self._line(now, still=now - self.cell_started >= self.every)


def _progress_engine(progress: Progress):
    """A papermill engine (nbclient's) that reports cell starts to ``progress``."""
    from papermill.engines import NBClientEngine

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            cell_start = nb_man.cell_start

            def reporting_cell_start(cell, cell_index=None, **kw):
                progress.cell_start(cell_index)
                return cell_start(cell, cell_index, **kw)

            nb_man.cell_start = reporting_cell_start
            progress.begin(nb_man.nb)
            try:
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
            finally:
                progress.end()

    return ProgressEngine


# The longest a single cell may run before the notebook fails: the longest cell of the default run takes about
# 190 s with bfloat16 and 270 s in float32, so this only turns a hang into an error. One `make run SIZE=small` in a
# fresh clone once waited forever in notebook 06 with the kernel and papermill both idle (a kernel message lost).
CELL_TIMEOUT_S = 3600


def run_notebook(stem: str, artifacts_dir: str | Path, parameters: Mapping[str, Any] | None = None,
                 notebooks_dir: Path = NOTEBOOKS_DIR, log_output: bool = False,
                 progress_every: float | None = None) -> Path:
    """Execute one notebook with papermill; returns the executed copy's path.

    ``progress_every``: print progress lines (see the module docstring) at most this often, in
    seconds; ``None`` prints none."""
    import papermill
    from papermill.engines import papermill_engines

    artifacts_dir = Path(artifacts_dir).resolve()
    executed = artifacts_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    params = {"ARTIFACTS_DIR": str(artifacts_dir), **(parameters or {})}
    out = executed / f"{stem}.ipynb"
    engine = None
    if progress_every is not None:
        engine = f"gtcrec-progress-{stem}"
        papermill_engines.register(engine, _progress_engine(Progress(stem, progress_every)))
    logs = artifacts_dir / "server-logs" / stem  # the logs of the servers this notebook starts
    for attempt in (1, 2):
        shutil.rmtree(logs, ignore_errors=True)
        previous = os.environ.get(SERVER_LOGS_ENV)
        os.environ[SERVER_LOGS_ENV] = str(logs)  # the kernel, and the servers it starts, inherit it
        try:
            papermill.execute_notebook(str(notebooks_dir / f"{stem}.ipynb"), str(out), parameters=params,
                                       cwd=str(notebooks_dir), log_output=log_output, progress_bar=False,
                                       kernel_name="python3", engine_name=engine, execution_timeout=CELL_TIMEOUT_S,
                                       kernel_manager_class=_kernel_manager_class())
            return out
        except Exception:
            crashed = crashes(logs)
            if not crashed:
                raise
            print(f"[series] {stem}: tritonserver crashed ({'; '.join(crashed)}); the python backend of the pinned "
                  "Triton does this on rare loads under traffic (docs/troubleshooting.md)", flush=True)
            if attempt == 2:
                raise
            print(f"[series] {stem}: running it once more, from a clean {stem}/ folder", flush=True)
            shutil.rmtree(artifacts_dir / stem, ignore_errors=True)
        finally:
            if previous is None:
                os.environ.pop(SERVER_LOGS_ENV, None)
            else:
                os.environ[SERVER_LOGS_ENV] = previous
    return out


# Time budget of each notebook at the default size, in seconds, on 2 CPU cores, from an empty text-embedding cache
# (notebooks 00 and 07 encode 5,000 talks each), by the precision training and text encoding use:
# BUDGET_S where the CPU computes bfloat16 natively (AVX512-BF16), BUDGET_F32_S where it does not (float32).
# Printed next to each notebook's time; docs/results.md has the measured runs. 10's cycles have 45 s of fine-tuning
# each but stop earlier: it took 175-262 s in the default runs of docs/results.md.
BUDGET_S: dict[str, int] = {"00-data": 110, "01-etl": 20, "02-dataloader": 10, "03-train": 280,
                            "04-item-representation": 250, "05-ensemble": 10, "06-serve": 55, "07-catalog-swap": 165,
                            "08-scale-out": 110, "09-fleet": 70, "10-live-event": 300,
                            "11-large-catalogs": 260}
BUDGET_F32_S: dict[str, int] = {"00-data": 110, "01-etl": 20, "02-dataloader": 10, "03-train": 450,
                                "04-item-representation": 460, "05-ensemble": 10, "06-serve": 65,
                                "07-catalog-swap": 235, "08-scale-out": 170, "09-fleet": 70, "10-live-event": 320,
                                "11-large-catalogs": 280}

# Measured at the default size on 2 cores. MEASURED_S with native bfloat16: 03, 04, 08 and 09 in the run of
# 2026-12-04 (the notebooks split that day) and 11 on its own (with its served swap to 1,000,000 items), 00 on
# 2026-12-06 with float32 text encoding (97 s, 76 s of it encoding; 61 s with bfloat16 encoding before), 07 from an
# empty text-embedding cache with bfloat16 encoding (46 s of it; float32 encoding took 76 s in 00, so about 30 s
# more here: not re-measured, its budget has room for it) and the rest in earlier runs. MEASURED_F32_S: one fresh clone's `make run` in
# float32 on AVX2 kernels (2026-12-04; GTCREC_BF16=0 with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
# MKL_ENABLE_INSTRUCTIONS=AVX2 on the same machine). A real AVX2-only CPU (2-core AMD EPYC) took REAL_AVX2_FACTOR x
# that emulation for notebook 03 before the split (docs/results.md).
MEASURED_S = {"00-data": 97, "01-etl": 16, "02-dataloader": 8, "03-train": 258, "04-item-representation": 229,
              "05-ensemble": 6, "06-serve": 48, "07-catalog-swap": 121, "08-scale-out": 100, "09-fleet": 49,
              "10-live-event": 175, "11-large-catalogs": 217}
MEASURED_F32_S = {"00-data": 99, "01-etl": 18, "02-dataloader": 10, "03-train": 406, "04-item-representation": 418,
                  "05-ensemble": 9, "06-serve": 57, "07-catalog-swap": 212, "08-scale-out": 153, "09-fleet": 61,
                  "10-live-event": 207, "11-large-catalogs": 253}
REAL_AVX2_FACTOR = 1.9


def _tables(bf16: bool) -> tuple[dict[str, int], dict[str, int]]:
    """(budgets, measured times) of the notebooks on a machine that computes bfloat16 natively (``bf16``) or not."""
    return (BUDGET_S, MEASURED_S) if bf16 else (BUDGET_F32_S, MEASURED_F32_S)


def budget_note(stem: str | None, seconds: float, size: str, bf16: bool) -> str:
    """`` (budget 280 s)`` after a notebook's time at the default size, `` (budget 280 s: 12 s over)``
    when it ran longer (`` (float32 budget 450 s)`` without native bfloat16); ``stem`` ``None``: the whole
    series. Nothing at the small size."""
    if size != "default":
        return ""
    table, _ = _tables(bf16)
    budget = sum(table.values()) if stem is None else table.get(stem)
    if budget is None:
        return ""
    label = "budget" if bf16 else "float32 budget"
    over = round(seconds - budget)  # whole seconds: 10.04 s is within a 10-s budget
    return f" ({label} {budget} s: {over} s over)" if over > 0 else f" ({label} {budget} s)"


def expectation(size: str, only: list[str] | None = None, bf16: bool | None = None) -> str:
    """What ``make run`` prints first: the precision training will use on this machine, the CPU kernels that
    decided it (AMX-BF16, AVX512-BF16, AVX2), and the time to expect at the default size, from the measured
    runs (:data:`MEASURED_S`, :data:`MEASURED_F32_S`)."""
    from gtcrec.device import bf16_native, describe_precision

    bf16 = bf16_native() if bf16 is None else bf16
    line = f"precision: {describe_precision(bf16)}"
    if size != "default":
        return line
    stems = [k for k in BUDGET_S if not only or k in only]
    budget_table, measured_table = _tables(bf16)
    measured, budget = sum(measured_table[k] for k in stems), sum(budget_table[k] for k in stems)
    cores = os.cpu_count() or 2
    here = "" if cores == 2 else f"; this machine has {cores} cores, so times will differ"
    line = (f"{line}; expect about {measured / 60:.0f} minutes at the default size on 2 cores (measured "
            f"{measured} s; the notebooks' budgets add up to {budget} s{here})")
    if bf16:
        return line
    return (f"{line}. That was measured on AVX2 kernels of a recent core: a real AVX2-only CPU took "
            f"{REAL_AVX2_FACTOR:g} x as long for notebook 03. `make run SIZE=small` runs the series at the CI "
            f"sizes in about 6 minutes")


# Your own event: which notebook parameter each of ``make run``'s files goes to (``--catalog`` and so on).
FILE_PARAMETERS = {"catalog": ("00-data", "CATALOG_FILE"), "clicks": ("00-data", "CLICKS_FILE"),
                   "new_catalog": ("07-catalog-swap", "CATALOG_FILE"), "new_clicks": ("07-catalog-swap", "CLICKS_FILE")}


def file_parameters(files: Mapping[str, Any] | None, stems: list[str]) -> dict[str, dict[str, str]]:
    """Notebook parameters for your own event's files (keys of :data:`FILE_PARAMETERS`; paths are made
    absolute, since the notebooks run in ``notebooks/``). Raises ``ValueError`` for a combination the series
    cannot run: clicks without their catalog, or your own event without a new one while notebook 07 runs
    (only the generated run has a generated new event)."""
    files = {k: v for k, v in (files or {}).items() if v}
    unknown = set(files) - set(FILE_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown file kinds {sorted(unknown)}; expected {sorted(FILE_PARAMETERS)}")
    for clicks, catalog in (("clicks", "catalog"), ("new_clicks", "new_catalog")):
        if clicks in files and catalog not in files:
            raise ValueError(f"{clicks.upper()} needs {catalog.upper()}: clicks are read against their catalog")
    if "catalog" in files and "clicks" not in files:
        raise ValueError("CATALOG needs CLICKS: the series trains on your event's clicks")
    if "catalog" in files and "new_catalog" not in files and "07-catalog-swap" in stems:
        raise ValueError("with your own CATALOG, give NEW_CATALOG too: notebook 07 swaps a new event's catalog in, "
                         "and only the generated run has a generated new event (or run up to 06 with --only)")
    params: dict[str, dict[str, str]] = {}
    for kind, path in files.items():
        path = Path(path).resolve()
        if not path.exists():
            raise ValueError(f"{kind.upper()}: no such file: {path}")
        stem, name = FILE_PARAMETERS[kind]
        params.setdefault(stem, {})[name] = str(path)
    return params


def skip_reason(stem: str, artifacts_dir: str | Path) -> str | None:
    """Why ``stem`` cannot run on what earlier notebooks wrote, or ``None``: notebook 10 replays the new
    event's clicks, which notebook 07 records only when it had them."""
    if stem != "10-live-event":
        return None
    from gtcrec.manifest import read_manifest

    if "new_clicks" in read_manifest(artifacts_dir, "07-catalog-swap")["outputs"]:
        return None
    return ("it replays the new event's clicks, and notebook 07 had none (NEW_CLICKS); "
            "docs/your-event.md runs the same loop from the shell as the clicks arrive")


def run_series(size: str, artifacts_dir: str | Path, only: list[str] | None = None,
               seed: int | None = None, progress_every: float | None = 10.0,
               bf16: bool | None = None, files: Mapping[str, Any] | None = None,
               parameters: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, float]:
    """Run the notebooks in order; returns seconds per notebook (``progress_every``: see
    ``run_notebook``; ``bf16``: which budgets the times are printed against, default this machine's;
    ``files``: your own event, see :func:`file_parameters`; ``parameters``: per notebook, on top of the
    size's, as the tests set them). A notebook that cannot run on what the
    earlier ones wrote (:func:`skip_reason`) is skipped, and the series says why."""
    from gtcrec.device import bf16_native

    bf16 = bf16_native() if bf16 is None else bf16
    stems = [stem for stem in notebook_stems() if not only or stem in only]
    own = file_parameters(files, stems)
    times = {}
    for stem in stems:
        params = size_parameters(size, stem)
        params.update(own.get(stem, {}))
        params.update((parameters or {}).get(stem, {}))
        if seed is not None:
            params["SEED"] = seed
        reason = skip_reason(stem, artifacts_dir)
        if reason:
            print(f"[series] {stem} skipped: {reason}", flush=True)
            continue
        start = time.perf_counter()
        print(f"[series] {stem} ...", flush=True)
        run_notebook(stem, artifacts_dir, params, progress_every=progress_every)
        times[stem] = time.perf_counter() - start
        print(f"[series] {stem} done in {times[stem]:.1f} s{budget_note(stem, times[stem], size, bf16)}", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="default",
                        help="small: the CI sizes, minutes; tiny: smaller still, checks that your files go through "
                             "every notebook (its figures mean nothing)")
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--only", nargs="*", help="notebook stems to run (default: all)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                        help="at most one progress line per this many seconds (default 10)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, one line per notebook")
    for kind in FILE_PARAMETERS:  # your own event (docs/your-event.md)
        stem, name = FILE_PARAMETERS[kind]
        parser.add_argument(f"--{kind.replace('_', '-')}", metavar="FILE", help=f"your {kind.replace('_', ' ')} "
                            f"file (CSV or parquet): notebook {stem[:2]}'s {name}")
    args = parser.parse_args(argv)
    from gtcrec.device import bf16_native

    bf16 = bf16_native()
    print(f"[series] {expectation(args.size, args.only, bf16)}", flush=True)
    times = run_series(args.size, args.artifacts_dir, args.only, args.seed,
                       progress_every=None if args.quiet else args.progress_every, bf16=bf16,
                       files={kind: getattr(args, kind) for kind in FILE_PARAMETERS})
    total = sum(times.values())
    whole = budget_note(None, total, args.size, bf16) if not args.only else ""
    print(f"[series] {len(times)} notebooks in {total:.1f} s{whole}; executed copies in "
          f"{Path(args.artifacts_dir).resolve() / 'executed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
