"""A fleet of ``tritonserver`` replicas behind a load balancer, and a catalog swap across it.

**One shared model repository.** Every replica reads the same repository folder (a shared volume or
object store in a cluster: the compose file mounts one folder into every replica, the Kubernetes
Deployment one ReadWriteMany claim). A version is therefore exported once, the swap history and
the lock live in one place, and no copy can drift from another. Replicas run in explicit model
control, so a new version folder changes nothing until a replica is told to load it.

**The fleet swap** (:func:`swap_fleet`), built on :mod:`gtcrec.swap.switch`:

1. every replica must serve the same single version (else :class:`FleetSwapError`, nothing done);
2. :func:`gtcrec.swap.switch.swap_catalog` against replica 0 validates the catalog, exports the new
   version once into the shared repository and loads it on replica 0;
3. :func:`gtcrec.swap.switch.load_version` loads it on replicas 1, 2, ... in turn (Triton keeps
   answering with the old version on each until its new one is ready: no failed request);
4. it returns only when every replica reports the new version READY, so a request sent after it
   returned is answered by the new catalog whichever replica the balancer picks.

**The rule for a refusing replica: all or nothing.** If any replica refuses the new version, the
version folder goes to the archive (``load_version`` does that) and every replica already switched
loads the previous version again; the whole fleet is back on the old catalog and
:class:`FleetSwapError` names the replica that refused (``refused``), the server's message and
the replicas switched back (``undone``). While the swap runs, replicas that switched answer
from the new catalog and the others from the old one (each answer comes from one replica and one
version, so it is wholly one catalog).

**Fleet rollback** (:func:`rollback_fleet`): :func:`gtcrec.swap.switch.rollback` on replica 0
(archives the serving version, restores the previous one's configuration, loads it), then a load
of that version on every other replica. If a replica refuses, the fleet goes forward again to the
version it came from.

:class:`Fleet` starts N replicas (:class:`gtcrec.serving.server.TritonServer`) and a
:class:`gtcrec.serving.balancer.Balancer` (HAProxy) in front of them, all on loopback.
``python -m gtcrec.swap.fleet REPOSITORY --host 0.0.0.0`` runs one replica in the foreground (the
command of the compose file's and the Kubernetes Deployment's replicas).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from gtcrec.serving import access
from gtcrec.serving.repository import (ARCHIVE, DEFAULT_MODEL_NAME, Log, SwapError, _quiet, file_lock, grpc_target,
                                       version_config, record_event, serving_versions)
from gtcrec.swap.switch import (LoadResult, Published, RollbackResult, SwapResult, load_version, publish, rollback,
                                swap_catalog)

FLEET_LOCK_FILE = ".gtcrec_fleet.lock"


class FleetSwapError(SwapError):
    """A fleet swap or rollback that did not happen; the fleet serves what it served before.

    ``refused``: the replica (gRPC ``host:port``) that refused, or None; ``undone``: replicas that had
    switched and were switched back; ``serving``: ``{replica: versions READY}`` afterwards."""

    def __init__(self, message: str, version: int | None = None, refused: str | None = None,
                 undone: Sequence[str] = (), serving: dict | None = None, server_error: str | None = None,
                 undo_errors: Sequence[str] = ()):
        super().__init__(message, version=version, server_error=server_error)
        self.refused = refused
        self.undone = list(undone)
        self.fleet_serving = dict(serving or {})
        self.undo_errors = list(undo_errors)


# ----------------------------------------------------------------------------------------------
# State of the fleet
# ----------------------------------------------------------------------------------------------

def fleet_serving(replicas: Sequence, model_name: str = DEFAULT_MODEL_NAME) -> dict[str, list[int] | str]:
    """``{replica gRPC address: versions READY}``; ``"unreachable: ..."`` for a replica that does not answer."""
    serving: dict = {}
    for r in replicas:
        try:
            serving[grpc_target(r)] = serving_versions(r, model_name)
        except access.ControlKeyError:  # no or a wrong key: say so, not "unreachable"
            raise
        except Exception as exc:  # a replica that does not answer (stopped, killed, not started yet)
            serving[grpc_target(r)] = f"unreachable: {str(exc)[:200]}"
    return serving


def common_version(replicas: Sequence, model_name: str = DEFAULT_MODEL_NAME) -> int:
    """The one version every replica serves; :class:`FleetSwapError` when they differ."""
    serving = fleet_serving(replicas, model_name)
    distinct = {tuple(v) if isinstance(v, list) else v for v in serving.values()}
    if len(distinct) != 1 or not isinstance(next(iter(distinct)), tuple) or len(next(iter(distinct))) != 1:
        raise FleetSwapError(f"the replicas do not serve one common version of {model_name}: {serving}; "
                             "bring them in line first (load the same version on each)", serving=serving)
    return next(iter(distinct))[0]


def fleet_lock(repository, model_name: str = DEFAULT_MODEL_NAME):
    """One fleet swap or rollback at a time on a model folder (raises if one is under way). The
    single-server steps inside take the folder's own lock as well."""
    path = Path(repository) / model_name / FLEET_LOCK_FILE
    return file_lock(path, FleetSwapError(f"another fleet swap or rollback holds {path}"))


def _newest_archive(repository, version: int, model_name: str) -> Path | None:
    folder = Path(repository) / model_name / ARCHIVE
    found = sorted(folder.glob(f"{version}-*")) if folder.is_dir() else []
    return found[-1] if found else None


def _undo(replicas: Sequence, repository, version: int, model_name: str, timeout: float,
          log: Log) -> tuple[list[str], list[str]]:
    """Load ``version`` (now the newest folder) on each replica; (replicas done, errors)."""
    done, errors = [], []
    for r in replicas:
        try:
            load_version(r, repository, version, model_name, timeout=timeout, action="fleet-undo")
            done.append(grpc_target(r))
            log(f"{grpc_target(r)} back on version {version}")
        except Exception as exc:  # keep going: the others must come back too
            errors.append(f"{grpc_target(r)}: {exc}")
    return done, errors


# ----------------------------------------------------------------------------------------------
# Swap and rollback
# ----------------------------------------------------------------------------------------------

def load_on_the_others(replicas: Sequence, repository, version: int, previous: int,
                       model_name: str = DEFAULT_MODEL_NAME, timeout: float = 300.0, action: str = "fleet-swap",
                       log: Log | None = None,
                       _before_replica_load: Callable[[int, Path], None] | None = None) -> dict[str, LoadResult]:
    """The second half of a fleet swap: ``version`` (exported into the shared repository and serving
    on ``replicas[0]``) is loaded on replicas 1, 2, ... in turn, all or nothing. If one refuses it (or
    does not answer), the version folder is archived (:func:`load_version`), every replica already
    switched, the first included, loads ``previous`` again, the failure is recorded as
    ``<action>-failed`` and :class:`FleetSwapError` names the replica. Returns every other replica's
    load. Call it holding :func:`fleet_lock`. Used by :func:`swap_fleet` and by the live event's
    fleet cycle (:func:`gtcrec.live.cycle.run_cycle`)."""
    log = log or _quiet
    repo = Path(repository)
    names = [grpc_target(r) for r in replicas]
    config_before = version_config(repo, previous, model_name)
    folder = repo / model_name / str(version)
    loads: dict[str, LoadResult] = {}
    for i, r in enumerate(replicas[1:], start=1):
        if _before_replica_load is not None:
            _before_replica_load(i, folder)
        try:
            loads[names[i]] = load_version(r, repo, version, model_name, restore_config=config_before,
                                           timeout=timeout, action=action)
            log(f"{names[i]} serving version {version} ({loads[names[i]].seconds:.1f} s)")
        except SwapError as exc:
            log(f"{names[i]} refused version {version}; switching {i} replica(s) back to {previous}")
            done, errors = _undo(replicas[:i], repo, previous, model_name, timeout, log)
            serving = fleet_serving(replicas, model_name)
            record_event(repo, model_name, action=f"{action}-failed", version=version, ok=False,
                         refused=names[i], undone=done, undo_errors=errors, serving=serving,
                         error=exc.server_error)
            state = ("the whole fleet serves version %d again" % previous if not errors
                     else f"could not switch back {errors}")
            raise FleetSwapError(f"replica {names[i]} refused version {version}: {state}. {exc}",
                                 version=version, refused=names[i], undone=done, serving=serving,
                                 server_error=exc.server_error, undo_errors=errors) from exc
    return loads


@dataclass
class FleetSwapResult:
    version: int
    previous_version: int
    swap: SwapResult  # the export and the first replica's load
    loads: dict[str, LoadResult]  # every replica's load, in order
    started: float  # time.perf_counter(): the first replica's load request
    ended: float  # ... every replica serves the new version
    total_seconds: float
    serving: dict[str, list[int]] = field(default_factory=dict)

    @property
    def rollout_seconds(self) -> float:
        """From the first replica's load request to the last replica serving."""
        return self.ended - self.started

    def summary(self) -> dict:
        return {"version": self.version, "previous_version": self.previous_version,
                "replicas": list(self.loads), "load_seconds": {k: round(v.seconds, 3) for k, v in self.loads.items()},
                "rollout_seconds": round(self.rollout_seconds, 3), "total_seconds": round(self.total_seconds, 3),
                "serving": self.serving, "swap": self.swap.summary()}


def swap_fleet(catalog_file, model_repository, replicas: Sequence, model_dir, cache_dir,
               k_model: int | None = None, model_name: str = DEFAULT_MODEL_NAME, timeout: float = 300.0,
               progress: bool = False, log: Log | None = None,
               _before_replica_load: Callable[[int, Path], None] | None = None) -> FleetSwapResult:
    """Swap a new catalog into every replica (gRPC addresses or ``TritonServer`` objects) that serves
    ``model_repository`` (shared): see the module's description for the steps and the all-or-nothing
    rule. Returns when every replica serves the new version. Raises :class:`DataValidationError` (bad
    catalog: nothing changed) or :class:`FleetSwapError` (a replica refused: the fleet is back on the
    old version). ``_before_replica_load(index, version_folder)`` (tests) runs before each load."""
    log = log or _quiet
    replicas = list(replicas)
    if not replicas:
        raise ValueError("a fleet swap needs at least one replica")
    repo = Path(model_repository).resolve()
    names = [grpc_target(r) for r in replicas]
    if len(set(names)) != len(names):
        raise ValueError(f"a replica is listed twice: {names}")
    t0 = time.perf_counter()
    with fleet_lock(repo, model_name):
        previous = common_version(replicas, model_name)
        log(f"fleet of {len(replicas)} replicas serving version {previous}")
        before0 = None if _before_replica_load is None else (lambda folder: _before_replica_load(0, folder))
        try:
            swapped = swap_catalog(catalog_file, repo, replicas[0], model_dir, cache_dir, k_model=k_model,
                                   model_name=model_name, timeout=timeout, progress=progress, log=log,
                                   _before_load=before0)
        except SwapError as exc:
            raise FleetSwapError(f"replica {names[0]} refused the new version; no replica switched. {exc}",
                                 version=exc.version, refused=names[0], serving=fleet_serving(replicas, model_name),
                                 server_error=exc.server_error) from exc
        version = swapped.version
        loads = {names[0]: swapped.load, **load_on_the_others(replicas, repo, version, previous, model_name,
                                                              timeout, "fleet-swap", log, _before_replica_load)}
        ended = time.perf_counter()
        serving = fleet_serving(replicas, model_name)
        record_event(repo, model_name, action="fleet-swap", version=version, from_version=previous, ok=True,
                     replicas=names, rollout_seconds=round(ended - swapped.load.started, 3))
    log(f"fleet serving version {version}: rollout {ended - swapped.load.started:.1f} s over {len(replicas)} "
        "replicas")
    return FleetSwapResult(version=version, previous_version=previous, swap=swapped, loads=loads,
                           started=swapped.load.started, ended=ended, total_seconds=ended - t0, serving=serving)


@dataclass
class FleetPublished:
    version: int
    first: Published  # the trace, the export and the first replica's load
    loads: dict[str, LoadResult]  # every replica's load, in order
    serving: dict[str, list[int]]


def publish_fleet(model, vocab: Sequence[str], repository, replicas: Sequence, previous: int, settings,
                  k_model: int, model_name: str = DEFAULT_MODEL_NAME, popularity: Sequence[float] | None = None,
                  timeout: float = 300.0, action: str = "adapt", log: Log | None = None,
                  _before_replica_load: Callable[[int, Path], None] | None = None) -> FleetPublished:
    """:func:`gtcrec.swap.switch.publish` for a fleet: an eager ``model`` is traced and exported once
    into the shared repository and loaded on ``replicas[0]``, then on every other replica
    (:func:`load_on_the_others`: all or nothing). Raises :class:`FleetSwapError` when a replica refuses
    (the whole fleet serves ``previous`` again, the version is archived). Call it holding
    :func:`fleet_lock` and :func:`gtcrec.serving.repository.repository_lock`. The live event's fleet
    cycle publishes through it."""
    log = log or _quiet
    replicas = list(replicas)
    names = [grpc_target(r) for r in replicas]
    before0 = None if _before_replica_load is None else (lambda folder: _before_replica_load(0, folder))
    try:
        first = publish(model, vocab, repository, replicas[0], previous, settings, k_model, model_name,
                        popularity=popularity, timeout=timeout, action=action, log=log, _before_load=before0)
    except SwapError as exc:
        raise FleetSwapError(f"replica {names[0]} refused the new version; no replica switched. {exc}",
                             version=exc.version, refused=names[0], serving=fleet_serving(replicas, model_name),
                             server_error=exc.server_error) from exc
    loads = {names[0]: first.load, **load_on_the_others(replicas, repository, first.version, previous, model_name,
                                                        timeout, action, log, _before_replica_load)}
    return FleetPublished(first.version, first, loads, fleet_serving(replicas, model_name))


def replica_addresses(service: str) -> list[str]:
    """``host:port`` of every address ``service`` (``name:port``) resolves to, sorted: the replicas of a
    Docker Compose service or of a Kubernetes headless Service (one DNS record per ready pod). Resolved
    when called, so a fleet that scaled since is seen as it is now."""
    import socket

    host, _, port = service.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{service!r} is not name:port")
    found = {info[4][0] for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)}
    if not found:
        raise ValueError(f"{host} resolves to no address")
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in sorted(found)]


@dataclass
class FleetRollbackResult:
    from_version: int
    to_version: int
    first: RollbackResult
    loads: dict[str, LoadResult]
    started: float
    ended: float
    serving: dict[str, list[int]]


def rollback_fleet(model_repository, replicas: Sequence, model_name: str = DEFAULT_MODEL_NAME,
                   timeout: float = 300.0, log: Log | None = None) -> FleetRollbackResult:
    """Every replica back to the previous version (see the module's description). Raises
    :class:`FleetSwapError` when the replicas disagree, there is nothing to return to, or a replica
    refuses (then the fleet returns to the version it served)."""
    log = log or _quiet
    replicas = list(replicas)
    repo = Path(model_repository).resolve()
    names = [grpc_target(r) for r in replicas]
    with fleet_lock(repo, model_name):
        current = common_version(replicas, model_name)
        started = time.perf_counter()
        try:
            first = rollback(replicas[0], repo, model_name, timeout=timeout, log=log)
        except SwapError as exc:
            raise FleetSwapError(f"rollback refused on {names[0]}; no replica changed. {exc}", version=exc.version,
                                 refused=names[0], serving=fleet_serving(replicas, model_name),
                                 server_error=exc.server_error) from exc
        target = first.to_version
        loads = {names[0]: first.load}
        for i, r in enumerate(replicas[1:], start=1):
            try:
                loads[names[i]] = load_version(r, repo, target, model_name, timeout=timeout, action="fleet-rollback")
            except SwapError as exc:
                # the target went to the archive as failed; bring both folders back and go forward again
                for v in (target, current):
                    archived = _newest_archive(repo, v, model_name)
                    if archived is not None and not (repo / model_name / str(v)).exists():
                        os.replace(archived, repo / model_name / str(v))
                config_now = version_config(repo, current, model_name)
                if config_now is not None:
                    (repo / model_name / "config.pbtxt").write_text(config_now)
                done, errors = _undo(replicas[:i], repo, current, model_name, timeout, log)
                serving = fleet_serving(replicas, model_name)
                record_event(repo, model_name, action="fleet-rollback-failed", version=target, ok=False,
                             refused=names[i], undone=done, undo_errors=errors, serving=serving)
                raise FleetSwapError(f"replica {names[i]} refused version {target}; the fleet went forward to "
                                     f"{current} again{'' if not errors else f' except {errors}'}. {exc}",
                                     version=target, refused=names[i], undone=done, serving=serving,
                                     server_error=exc.server_error, undo_errors=errors) from exc
        ended = time.perf_counter()
        serving = fleet_serving(replicas, model_name)
        record_event(repo, model_name, action="fleet-rollback", version=target, from_version=current, ok=True,
                     replicas=names)
    log(f"fleet back on version {target} ({ended - started:.1f} s)")
    return FleetRollbackResult(current, target, first, loads, started, ended, serving)


def fleet_status(model_repository, replicas: Sequence, model_name: str = DEFAULT_MODEL_NAME) -> dict:
    """:func:`gtcrec.swap.switch.status` of every replica, and whether they serve one version."""
    from gtcrec.swap.switch import status

    per = {grpc_target(r): status(r, model_repository, model_name) for r in replicas}
    serving = {k: v["serving"] for k, v in per.items()}
    return {"model": model_name, "repository": str(Path(model_repository).resolve()), "serving": serving,
            "consistent": len({tuple(v) for v in serving.values()}) == 1,
            "agree": all(v["agree"] for v in per.values()), "replicas": per}


# ----------------------------------------------------------------------------------------------
# N replicas and the balancer, on loopback
# ----------------------------------------------------------------------------------------------

class Fleet:
    """``n_replicas`` tritonservers on ONE shared ``model_repository`` (explicit model control,
    ``model_name`` loaded) behind HAProxy. Start it from a long-lived thread (the main one): the
    processes die with the thread that started them. Use it as a context manager.

    ``grpc_url`` / ``http_url`` are the balancer's; ``replicas`` the servers (pass them to
    :func:`swap_fleet` / :func:`rollback_fleet`, or to :func:`gtcrec.live.run_cycle`). With
    ``click_log=FOLDER`` every replica logs into that one folder, with one logging key
    (:attr:`log_key`)."""

    def __init__(self, model_repository, n_replicas: int = 2, model_name: str = DEFAULT_MODEL_NAME,
                 startup_timeout: float = 180.0, check_interval: float = 0.25, haproxy=None,
                 tritonserver=None, **server_kwargs):
        if n_replicas < 1:
            raise ValueError("n_replicas must be at least 1")
        self.model_repository = Path(model_repository).resolve()
        self.n_replicas, self.model_name = int(n_replicas), model_name
        self.startup_timeout, self.check_interval = float(startup_timeout), float(check_interval)
        self.haproxy, self.tritonserver, self.server_kwargs = haproxy, tritonserver, server_kwargs
        # one control key for every replica, as in a deployment (where a secret holds it)
        self.control_key = access.read_key(server_kwargs.pop("control_key", None)) or access.new_key()
        # with a click log (one folder shared by every replica: the writers' names carry host, pid and
        # instance), one logging key for every replica too: the app vouches once, whichever replica answers
        self.log_key = None
        if server_kwargs.get("click_log") is not None:
            self.log_key = (access.check_log_key(server_kwargs.pop("log_key")) if server_kwargs.get("log_key")
                            else access.read_log_key()[0] or access.new_key())
            server_kwargs["log_key"] = self.log_key
        self.replicas: list = []
        self.balancer = None
        self.startup_seconds: float | None = None

    @property
    def grpc_url(self) -> str:
        return self.balancer.grpc_url

    @property
    def http_url(self) -> str:
        return self.balancer.http_url

    def start(self) -> "Fleet":
        from gtcrec.serving.balancer import Balancer, find_haproxy
        from gtcrec.serving.server import TritonServer

        find_haproxy(self.haproxy)  # fail before starting servers when there is no balancer
        started = time.perf_counter()
        try:
            for i in range(self.n_replicas):
                server = TritonServer(self.model_repository, load_models=[self.model_name],
                                      startup_timeout=self.startup_timeout, tritonserver=self.tritonserver,
                                      server_id=f"gtcrec-replica{i}-{os.getpid()}", control_key=self.control_key,
                                      **self.server_kwargs)
                self.replicas.append(server)
                server.start()
            self.balancer = Balancer(self.replicas, check_interval=self.check_interval, haproxy=self.haproxy,
                                     model_name=self.model_name)
            self.balancer.start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.close()
        for server in self.replicas:  # every replica unloads its models at once, then each is waited for
            server.signal_stop()
        for server in reversed(self.replicas):
            server.stop()

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Fleet({len(self.replicas)} replicas of {self.model_name} on {self.model_repository}, {self.balancer})"

    def serving(self) -> dict[str, list[int]]:
        return fleet_serving(self.replicas, self.model_name)

    def swap(self, catalog_file, model_dir, cache_dir, **kwargs) -> FleetSwapResult:
        return swap_fleet(catalog_file, self.model_repository, self.replicas, model_dir, cache_dir,
                          model_name=self.model_name, **kwargs)

    def rollback(self, **kwargs) -> FleetRollbackResult:
        return rollback_fleet(self.model_repository, self.replicas, model_name=self.model_name, **kwargs)


# ----------------------------------------------------------------------------------------------
# One replica in the foreground (containers)
# ----------------------------------------------------------------------------------------------

def replica_main(argv: Sequence[str] | None = None) -> int:
    """``python -m gtcrec.swap.fleet REPOSITORY [--host 0.0.0.0] [--http-port 8000] [--grpc-port 8001]
    [--click-log SHARED_FOLDER]``: one tritonserver replica on a (shared) repository, in the foreground
    until SIGTERM/Ctrl-C."""
    from gtcrec.serving.server import TritonServer, TritonServerError

    parser = argparse.ArgumentParser(prog="python -m gtcrec.swap.fleet",
                                     description="Run one tritonserver replica of the fleet in the foreground.")
    parser.add_argument("repository", help="the (shared) model repository")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--host", default="127.0.0.1", help="address both endpoints bind to (a container: 0.0.0.0)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--click-log", help="log the clicks of the requests that carry the logging key into this "
                        "folder (shared by every replica: each writer's files carry its host, pid and instance); the "
                        f"key comes from ${access.ENV_LOG_KEY_FILE} (a mounted secret) or ${access.ENV_LOG_KEY}")
    parser.add_argument("--click-log-seconds", type=float, help="a new log segment at least this often")
    args = parser.parse_args(argv)
    try:
        key = access.read_key()
        log_key = access.read_log_key()[0] if args.click_log else None
    except access.ControlKeyError as exc:
        print(f"replica: {exc}", file=sys.stderr)
        return 2
    if args.click_log and log_key is None:  # a key nobody knows would log nothing
        print(f"replica: --click-log needs the logging key; mount a secret and set ${access.ENV_LOG_KEY_FILE} to its "
              f"path (or set ${access.ENV_LOG_KEY})", file=sys.stderr)
        return 2
    if key is None:  # a replica nobody can swap would be useless: the deployment must hand it the key
        print(f"replica: no control key; mount a secret and set ${access.ENV_KEY_FILE} to its path "
              f"(or set ${access.ENV_KEY})", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = TritonServer(args.repository, load_models=[args.model_name], host=args.host,
                              http_port=args.http_port, grpc_port=args.grpc_port,
                              startup_timeout=args.startup_timeout, control_key=key, click_log=args.click_log,
                              click_log_seconds=args.click_log_seconds, log_key=log_key).start()
    except (TritonServerError, ValueError) as exc:
        print(f"replica: {exc}", file=sys.stderr)
        return 1
    print(f"replica serving {args.model_name} on http {server.http_url}, grpc {server.grpc_url}", flush=True)
    try:
        while not stop.wait(1.0):
            if not server.is_running():
                print(f"replica: tritonserver died; log tail:\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(replica_main())
