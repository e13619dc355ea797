"""``gtcrec-serve``: the served recommender from a shell, with crashed instances healed.

    gtcrec-serve [REPOSITORY] [--artifacts-dir artifacts] [--model-name executor_model]
                 [--http-port 8000] [--grpc-port 8001] [--tritonserver PATH] [--log FILE]
                 [--reset] [--no-heal] [--control-key-file FILE]
                 [--click-log DIR --log-key-file FILE [--click-log-seconds S]]

Starts ``tritonserver`` (:class:`gtcrec.serving.server.TritonServer`: the bundled copy or a given
one) on loopback, in explicit model control on ``REPOSITORY``, loads the served model, prints the
HTTP and gRPC addresses and the version served, and stays in the foreground until Ctrl-C or
SIGTERM; it then stops the server and its python-backend processes and exits 0. ``gtcrec-swap``
swaps a new catalog into that server (the command line to use is printed).

Without ``REPOSITORY`` it serves ``ARTIFACTS_DIR/serve/model_repository``, a copy of the repository
that notebook 05 exported (``make run`` leaves it in ``ARTIFACTS_DIR/05-ensemble/``). The copy is made
the first time (or again with ``--reset``), so swaps never change notebook 05's export, which
notebooks 06 and 07 read.

Control: Triton's control APIs (model repository, config, shared memory, statistics, trace,
logging) need the key of :mod:`gtcrec.serving.access`; ``gtcrec-serve`` creates the key file
(``~/.config/gtcrec/control.key``, mode 0600) when there is no key, and ``gtcrec-swap`` and the healing
watcher send it. Inference, health and metadata are open.

Healing (:class:`InstanceWatcher`; ``--no-heal`` turns it off): every python-backend instance
runs in a stub process. When one dies (an out-of-memory kill, a crash in native code), Triton keeps
the model READY but every request routed to that instance fails with ``Stub process '<instance>'
is not healthy`` (after about a second), for as long as the server runs. The watcher lists the
server's stub processes every ``--watch-interval`` seconds; when an instance of a READY version has
no live stub any more, it makes Triton load that version again (the version folder's time is
renewed: Triton reloads a version only if its files are newer). Triton keeps answering with the
running copy, healthy instance included, until the new copy is ready, then switches, so healing
drops no request of the healthy instance. It does not heal while ``gtcrec-swap`` holds the model
folder's lock (that swap loads a new copy anyway), nor when the newest version folder is not the
one served (a load would serve that folder).

Click log (``--click-log DIR``): the model's instances write the clicks of the requests they
answered into parquet segments in ``DIR`` (a new segment every ``--click-log-seconds``, default 10,
while clicks come; the rest when the server stops). :func:`gtcrec.live.read_click_log` reads them.
Only requests that carry the logging key are logged (the app sends it as the request parameter
``gtcrec_log_key``, with the attendee's id in ``gtcrec_client_id``); every other request is answered
and counted, never logged. The key comes from ``--log-key-file FILE`` (created with a new key, mode
0600, when missing), ``$GTCREC_LOG_KEY`` or ``$GTCREC_LOG_KEY_FILE``; ``--click-log`` without one, or
with a key it cannot use, refuses to start and says why. The key is never printed.

Exit status: 0 stopped by Ctrl-C / SIGTERM; 1 the server failed to start or died; 2 bad
arguments or no repository.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from gtcrec.serving import access
from gtcrec.serving import repository as repo_state  # versions, locking (shared with the swap)
from gtcrec.serving.client import DEFAULT_MODEL_NAME
from gtcrec.serving.click_log import CLICK_LOG_SECONDS
from gtcrec.serving.server import PortInUseError, TritonServer, TritonServerError

SERVE_DIR = "serve"  # ARTIFACTS_DIR/serve/model_repository
EXPORT_STAGE = "05-ensemble"

Log = Callable[[str], None]


class ServeError(RuntimeError):
    """Nothing to serve (no repository, no model folder): exit status 2."""


# ----------------------------------------------------------------------------------------------
# The repository
# ----------------------------------------------------------------------------------------------

def artifacts_repository(artifacts_dir, model_name: str = DEFAULT_MODEL_NAME, reset: bool = False,
                         log: Log | None = None) -> Path:
    """``ARTIFACTS_DIR/serve/model_repository``: a copy of notebook 05's exported repository, made
    when missing (or when ``reset``). Raises :class:`ServeError` when notebook 05 has not run."""
    from gtcrec.manifest import read_manifest

    artifacts_dir = Path(artifacts_dir).resolve()
    target = artifacts_dir / SERVE_DIR / "model_repository"
    if target.is_dir() and not reset:
        return target
    try:
        exported = read_manifest(artifacts_dir, EXPORT_STAGE).path("model_repository")
    except (FileNotFoundError, KeyError) as exc:
        raise ServeError(
            f"no exported model repository under {artifacts_dir}: notebook {EXPORT_STAGE} has not run there "
            f"({exc}). Run `make run` (or `make run SIZE=small`) first, or pass a REPOSITORY.") from None
    if not (Path(exported) / model_name).is_dir():
        raise ServeError(f"{exported} has no model {model_name!r}")
    tmp = target.with_name(target.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(exported, tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    if log:
        log(f"copied notebook {EXPORT_STAGE}'s repository {exported} to {target}")
    return target


def check_repository(repository, model_name: str) -> Path:
    repo = Path(repository).resolve()
    if not repo.is_dir():
        raise ServeError(f"model repository {repo} is not a folder")
    folder = repo / model_name
    if not (folder / "config.pbtxt").is_file():
        raise ServeError(f"{repo} has no model {model_name!r} ({folder / 'config.pbtxt'} is missing)")
    if not any(p.is_dir() and p.name.isdigit() for p in folder.iterdir()):
        raise ServeError(f"{folder} has no version folder")
    return repo


# ----------------------------------------------------------------------------------------------
# Healing crashed instances
# ----------------------------------------------------------------------------------------------

@dataclass
class HealEvent:
    """One crash seen by the watcher and what it did."""

    version: int
    instances: list[str]
    pids: list[int]
    died_by: float  # time.time() when the stub was first seen gone
    action: str  # "reloaded", "failed", "skipped"
    detail: str = ""
    reload_seconds: float | None = None
    healed_at: float | None = None  # time.time() when the new copy was ready


@dataclass
class _Seen:
    pids: dict[str, int] = field(default_factory=dict)  # instance -> pid of its live stub
    missing_since: dict[str, float] = field(default_factory=dict)


class InstanceWatcher:
    """Watches the stub processes of ``model_name`` on ``server`` and reloads a version whose
    instance lost its stub (see the module docstring). A background thread; use as a context
    manager or call :meth:`start` / :meth:`stop`. ``events`` lists what it saw and did."""

    def __init__(self, server: TritonServer, repository, model_name: str = DEFAULT_MODEL_NAME,
                 interval: float = 0.2, grace: float = 0.3, load_timeout: float = 300.0,
                 retry_after: float = 30.0, log: Log | None = None):
        self.server = server
        self.repository = Path(repository).resolve()
        self.model_name = model_name
        self.interval, self.grace = float(interval), float(grace)
        self.load_timeout, self.retry_after = float(load_timeout), float(retry_after)
        self.log = log or (lambda msg: None)
        self.events: list[HealEvent] = []
        self._seen: dict[int, _Seen] = {}
        self._not_before = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "InstanceWatcher":
        self._thread = threading.Thread(target=self._run, name="gtcrec-serve-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)  # a reload in flight ends when the server stops

    def __enter__(self) -> "InstanceWatcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.server.is_running():
                return
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive a failed look
                self.errors += 1
                if self.errors <= 3 or self.errors % 100 == 0:
                    self.log(f"watcher: could not check the instances ({type(exc).__name__}: {exc})")

    # -- one look -------------------------------------------------------------------------------
    def ready_versions(self) -> list[int]:
        return repo_state.serving_versions(self.server, self.model_name)

    def check(self) -> HealEvent | None:
        """Compare the live stubs with those seen before; heal a READY version that lost one.
        Returns the event when it acted."""
        ready = self.ready_versions()
        stubs = self.server.stub_processes(self.model_name)
        now = time.time()
        for version in list(self._seen):
            if version not in ready:
                del self._seen[version]  # unloaded (a swap, a rollback): its stubs left normally
        crashed: dict[int, list[str]] = {}
        for version in ready:
            seen = self._seen.setdefault(version, _Seen())
            live = {s.instance: s.pid for s in stubs if s.version == version}
            for instance in list(seen.pids):
                if instance in live:
                    seen.missing_since.pop(instance, None)
                    continue
                since = seen.missing_since.setdefault(instance, now)
                if now - since >= self.grace:
                    crashed.setdefault(version, []).append(instance)
            seen.pids.update(live)
        if not crashed or now < self._not_before:
            return None
        version = max(crashed)
        return self.heal(version, sorted(crashed[version]))

    def heal(self, version: int, instances: Sequence[str]) -> HealEvent:
        """Load ``version`` again (its folder's time renewed) so that Triton builds a new copy with
        every instance, serving the old copy until then."""
        seen = self._seen[version]
        event = HealEvent(version=version, instances=list(instances), pids=[seen.pids[i] for i in instances],
                          died_by=min(seen.missing_since[i] for i in instances), action="skipped")
        folder = self.repository / self.model_name
        try:
            with repo_state.repository_lock(self.repository, self.model_name):
                newest = max(repo_state.repository_versions(self.repository, self.model_name), default=None)
                if newest != version:
                    event.detail = (f"the newest version folder is {newest}, not the served {version}: a load "
                                    f"would serve it; not reloading")
                else:
                    self.log(f"instance {', '.join(instances)} of {self.model_name} version {version} lost its "
                             f"stub process (pid {', '.join(map(str, event.pids))}); loading version {version} "
                             "again")
                    os.utime(folder / str(version))  # Triton reloads a version only if its files are newer
                    started = time.perf_counter()
                    client = self.server.control_client()
                    try:
                        client.load_model(self.model_name, client_timeout=self.load_timeout)
                    finally:
                        client.close()
                    event.reload_seconds = time.perf_counter() - started
                    event.healed_at = time.time()
                    event.action = "reloaded"
                    event.detail = f"version {version} reloaded in {event.reload_seconds:.1f} s"
                    self._seen.pop(version, None)  # the new copy's stubs are seen afresh
        except repo_state.SwapError as exc:  # a swap holds the lock: its load replaces this copy anyway
            event.detail = f"not now: {exc}"
            self._not_before = time.time() + 1.0
            return event
        except Exception as exc:  # noqa: BLE001 - e.g. the server refused the load
            event.action = "failed"
            event.detail = f"{type(exc).__name__}: {exc}"[:500]
        if event.action != "reloaded":
            self._not_before = time.time() + self.retry_after
        self.events.append(event)
        self.log(f"{event.action}: {event.detail}")
        return event


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _model_dir(artifacts_dir) -> str:
    """Notebook 04's saved model (what ``gtcrec-swap --model-dir`` needs), or a placeholder."""
    from gtcrec.manifest import read_manifest

    try:
        return str(read_manifest(artifacts_dir, "04-item-representation").path("model"))
    except (FileNotFoundError, KeyError):
        return "MODEL_DIR"


class _Stop(Exception):
    """Raised in the main thread by SIGINT / SIGTERM."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gtcrec-serve",
        description="Serve the session recommender on a real Triton server on loopback (explicit model control), "
                    "in the foreground, until Ctrl-C or SIGTERM. Crashed model instances are reloaded.",
        epilog="Exit status: 0 stopped by Ctrl-C/SIGTERM; 1 the server failed to start or died; 2 bad arguments "
               "or no repository.")
    parser.add_argument("repository", nargs="?", help="a Triton model repository (default: ARTIFACTS_DIR/serve/"
                        "model_repository, copied from notebook 05's export when missing)")
    parser.add_argument("--artifacts-dir", default="artifacts", help="where `make run` wrote the notebooks' "
                        "files (default: %(default)s)")
    parser.add_argument("--reset", action="store_true", help="copy notebook 05's export again (drops swapped "
                        "versions of ARTIFACTS_DIR/serve); only without REPOSITORY")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="the model to load (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000, help="default: %(default)s; 0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="default: %(default)s; 0 picks a free port")
    parser.add_argument("--tritonserver", help="the tritonserver binary (default: $GTCREC_TRITONSERVER, PATH, "
                        "or the one bundled in the nvidia-pytriton wheel)")
    parser.add_argument("--log", help="the server's log file (default: a new file in the temp folder)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds (default: %(default)s)")
    parser.add_argument("--control-key-file", help="the key of Triton's control APIs (model repository, "
                        "config, shared memory, statistics, trace, logging); created, readable by you only, when "
                        "missing (default: $GTCREC_CONTROL_KEY, $GTCREC_CONTROL_KEY_FILE, or "
                        "~/.config/gtcrec/control.key). gtcrec-swap reads the same file")
    parser.add_argument("--no-heal", action="store_true", help="do not reload versions whose instances crashed")
    parser.add_argument("--watch-interval", type=float, default=0.2, help="seconds between two looks at the "
                        "instances (default: %(default)s)")
    parser.add_argument("--click-log", metavar="DIR", help="log the clicks of every answered request into parquet "
                        "segments in DIR (created); read them with gtcrec.live.read_click_log")
    parser.add_argument("--log-key-file", metavar="FILE", help="with --click-log: the key the app sends with each "
                        "request it vouches for (request parameter gtcrec_log_key); only those are logged. Created "
                        "with a new key, readable by you only, when missing (else $GTCREC_LOG_KEY or "
                        "$GTCREC_LOG_KEY_FILE)")
    parser.add_argument("--click-log-seconds", type=float, metavar="S", help="a new click log segment at least "
                        "every S seconds while clicks come (default: 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[gtcrec-serve] {msg}", flush=True)

    for name in ("http_port", "grpc_port"):
        if not 0 <= getattr(args, name) <= 65535:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 65535")
    if args.repository and args.reset:
        parser.error("--reset copies notebook 05's export; it does not apply to a REPOSITORY given")
    if args.click_log_seconds is not None and (args.click_log is None or not args.click_log_seconds > 0):
        parser.error("--click-log-seconds needs --click-log and a number > 0")
    if args.log_key_file is not None and args.click_log is None:
        parser.error("--log-key-file needs --click-log")
    try:
        log_key, log_key_source = (access.read_log_key(args.log_key_file, create=True) if args.click_log
                                   else (None, "nowhere"))
    except (access.LogKeyError, OSError) as exc:
        print(f"gtcrec-serve: {exc}", file=sys.stderr)
        return 2
    if args.click_log is not None and log_key is None:
        parser.error("--click-log logs only the requests the app vouches for, and needs the key they carry: pass "
                     "--log-key-file FILE (created with a new key, mode 0600, when missing; give the same key to the "
                     f"app), or set ${access.ENV_LOG_KEY_FILE} / ${access.ENV_LOG_KEY}")
    try:
        repo = (Path(args.repository) if args.repository
                else artifacts_repository(args.artifacts_dir, args.model_name, reset=args.reset, log=log))
        repo = check_repository(repo, args.model_name)
        key, key_source = access.key_for_command(args.control_key_file, create=True)
    except (ServeError, access.ControlKeyError, OSError) as exc:
        print(f"gtcrec-serve: {exc}", file=sys.stderr)
        return 2

    def stop_now(signum, frame):  # noqa: ARG001
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop_now) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = watcher = None
    code = 0
    try:
        try:
            server = TritonServer(repo, model_control="explicit", load_models=[args.model_name],
                                  http_port=args.http_port or None, grpc_port=args.grpc_port or None,
                                  host="127.0.0.1", log_path=args.log, startup_timeout=args.startup_timeout,
                                  tritonserver=args.tritonserver, control_key=key, click_log=args.click_log,
                                  click_log_seconds=args.click_log_seconds,
                                  log_key=log_key if args.click_log is not None else None)
            log(f"starting {server.binary.executable} ({server.binary.source}) on {repo}; log {server.log_path}")
            server.start()
        except (TritonServerError, PortInUseError, ValueError) as exc:
            hint = " (pass --http-port / --grpc-port, 0 for free ones)" if isinstance(exc, PortInUseError) else ""
            print(f"gtcrec-serve: the server did not start{hint}: {exc}", file=sys.stderr)
            return 1
        versions = [int(m["version"]) for m in server.model_index()
                    if m.get("name") == args.model_name and m.get("state") == "READY" and m.get("version")]
        stubs = server.stub_processes(args.model_name)
        log(f"serving {args.model_name} version {max(versions) if versions else '?'} from {repo} "
            f"({len(stubs)} instance{'s' if len(stubs) != 1 else ''}; ready in {server.startup_seconds:.1f} s)")
        log(f"HTTP  http://{server.http_url}  (KServe v2: POST /v2/models/{args.model_name}/infer)")
        log(f"gRPC  {server.grpc_url}")
        log(f"open to every client: inference, health, metadata; the control APIs ({', '.join(access.RESTRICTED)}) "
            f"need the key in {key_source}")
        if server.click_log is not None:
            every = server.click_log_seconds or CLICK_LOG_SECONDS
            log(f"logging clicks to {server.click_log} (parquet segments clicks-*.parquet, a new one every "
                f"{every:g} s while clicks come; read with gtcrec.live.read_click_log): only requests that carry "
                f"the logging key in {log_key_source} (request parameter gtcrec_log_key); others are answered "
                "and counted, never logged")
        log(f"swap a catalog: gtcrec-swap NEW_CATALOG --repository {repo} --url {server.grpc_url} "
            f"--model-name {args.model_name} --model-dir {_model_dir(args.artifacts_dir)}")
        if not args.no_heal:
            watcher = InstanceWatcher(server, repo, args.model_name, interval=args.watch_interval, log=log).start()
        log(f"{'watching its instances; ' if watcher else ''}Ctrl-C or SIGTERM stops it")
        while server.is_running():
            time.sleep(0.5)
        print(f"gtcrec-serve: tritonserver exited by itself with code {server.process.returncode}; log "
              f"{server.log_path}:\n{server.log_tail(20)}", file=sys.stderr)
        code = 1
    except (_Stop, KeyboardInterrupt) as exc:
        log(f"{exc or 'SIGINT'}: stopping")
    finally:
        for sig in previous:  # a second signal must not interrupt the stop
            signal.signal(sig, signal.SIG_IGN)
        if watcher is not None:
            watcher.stop()
        if server is not None:
            server.stop()
            log("stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
