"""A small manager for a real Triton Inference Server process (notebooks, tests, benchmarks).

The binary and what it needs come from :mod:`gtcrec.serving.binary`.

``TritonServer`` starts the process on free local ports, waits until it is ready, keeps its log in
a file and stops it (SIGTERM, then SIGKILL of its whole process group). The server never outlives
the Python process that started it: the child asks the kernel for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), and ``atexit`` stops it on a normal exit.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from gtcrec.serving import access
from gtcrec.serving.binary import (ENV_BINARY, PortInUseError, TritonBinary,  # noqa: F401 (re-exported)
                                   TritonServerError, find_tritonserver)
# the click log's settings: the executor (which cannot import gtcrec) reads them from its environment
from gtcrec.serving.click_log import CLICK_LOG_ENV, CLICK_LOG_RECORDS_ENV, CLICK_LOG_SECONDS_ENV, LOG_KEY_ENV
from gtcrec.serving.process import LocalService, port_open



# ----------------------------------------------------------------------------------------------
# Ports and process helpers
# ----------------------------------------------------------------------------------------------

def _port_is_free(host: str, port: int) -> bool:
    """True if nobody listens on (host, port). Binding without SO_REUSEPORT fails when a
    Triton (which sets SO_REUSEPORT) or anything else already holds the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports the kernel reports free right now."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def choose_ports(host: str, wanted: Mapping[str, int | None], in_use_hint: str = "") -> dict[str, int]:
    """Ports by name: the given ones if free (else :class:`PortInUseError`, plus ``in_use_hint``), free
    distinct ones for those given as None."""
    for name, port in wanted.items():
        if port is not None and not _port_is_free(host, port):
            raise PortInUseError(f"{name}={port} on {host} is already in use{in_use_hint}")
    given = [p for p in wanted.values() if p is not None]
    if len(set(given)) != len(given):
        raise ValueError(f"the ports must differ: {dict(wanted)}")
    out, taken = dict(wanted), set(given)
    for name in [k for k, v in wanted.items() if v is None]:
        port = free_ports(1, host)[0]
        while port in taken:
            port = free_ports(1, host)[0]
        taken.add(port)
        out[name] = port
    return out


# Where a TritonServer without a ``log_path`` writes its log (default: the temp folder). The series sets it per
# notebook, so that a notebook that failed can be checked for a crashed server (:func:`crashes`).
SERVER_LOGS_ENV = "GTCREC_SERVER_LOGS"

# What tritonserver prints when it dies of a fatal signal (segmentation fault, abort, bus error, illegal instruction,
# floating-point exception) or an uncaught C++ exception; "Signal (15)" and "(2)" are a normal stop.
FATAL_SIGNALS = (4, 6, 7, 8, 11)  # SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV: a crash (SIGTERM is a normal stop)
_CRASH = re.compile(r"Signal \((%s)\) received|terminate called after throwing[^\n]*" % "|".join(map(str, FATAL_SIGNALS)))


def crashes(folder: str | os.PathLike) -> list[str]:
    """One line per server log under ``folder`` that shows tritonserver crashed: the log's name and what it printed
    (e.g. ``gtcrec-1a2b-x.log: Signal (11) received``). Empty when none did, or the folder is missing."""
    found = []
    for log in sorted(Path(folder).glob("*.log")):
        said = dict.fromkeys(m.group(0) for m in _CRASH.finditer(log.read_text(errors="replace")))
        if said:
            found.append(f"{log.name}: {'; '.join(said)}")
    return found


def _has_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def server_processes(server_id: str) -> list[int]:
    """Pids of live (non-zombie) ``tritonserver`` processes started with ``--id=<server_id>``
    (read from /proc; empty where /proc is missing)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and f"--id={server_id}".encode() in args:
            found.append(int(proc.name))
    return sorted(found)


@dataclass(frozen=True)
class StubProcess:
    """A live python-backend stub: one per model instance (``<model>_<group>_<index>``)."""

    pid: int
    model: str  # the model folder's name
    version: int | None  # the version folder its model.py was loaded from
    instance: str  # Triton's instance name, e.g. "executor_model_0_1"
    model_file: str


def _proc_stat(pid: int | str) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc/<pid>/stat; None when the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The live (not zombie) python-backend stub processes of the tritonserver ``server_pid``.

    A stub's command line names the ``model.py`` it runs (``<repo>/<model>/<version>/model.py``)
    and, as its 9th argument, the instance it serves. A stub that crashed or was killed stays a
    zombie child of the server until the server reaps it, so it is not listed."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        stat = _proc_stat(proc.name)
        if stat is None or stat[1] != server_pid or stat[0] == "Z":
            continue
        try:
            args = [a.decode("utf-8", "replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if not args or not Path(args[0]).name.startswith("triton_python_backend_stub") or len(args) < 9:
            continue
        model_file = Path(args[1])
        version = model_file.parent.name
        found.append(StubProcess(pid=int(proc.name), model=model_file.parent.parent.name,
                                 version=int(version) if version.isdigit() else None,
                                 instance=args[8], model_file=str(model_file)))
    return sorted(found, key=lambda s: (s.model, s.version or 0, s.instance, s.pid))

# ----------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------

class TritonServer(LocalService):
    """A ``tritonserver`` child process on local ports. Use it as a context manager.

    Parameters
    ----------
    model_repository: folder (or folders) of models.
    model_control: ``"explicit"`` (load/unload through the API; ``load_models`` are loaded at
        start) or ``"none"`` (every model in the repository is loaded at start; a model that fails
        to load makes the start fail).
    http_port, grpc_port: ``None`` picks free ports; a given port that is already taken raises
        ``PortInUseError`` (Triton listens with SO_REUSEPORT and would silently share it).
    host: address both endpoints bind to.
    log_path: where stdout/stderr of the server go (default: a new file in the temp folder).
    startup_timeout: seconds to wait for readiness before giving up (the process is then killed).
    gpu: ``None`` detects ``/dev/nvidia*``; without a GPU the CUDA memory pool is disabled.
    control_key: the key of Triton's control APIs (:mod:`gtcrec.serving.access`: model repository,
        config, shared memory, statistics, trace, logging); ``None`` takes
        :func:`gtcrec.serving.access.read_key` or, when there is none, a new random key that only this
        object knows. Inference, health and metadata need no key; :meth:`control_client` sends it.
    click_log: a folder (created) where the gtcrec executor's instances log the clicks of the requests
        they answered (:class:`gtcrec.serving.click_log.ClickLog`; read it back with
        :func:`gtcrec.live.read_click_log`): the child gets ``$GTCREC_CLICK_LOG`` (absolute path), and
        ``click_log_seconds`` / ``click_log_records`` (segment rotation) when given. ``None``: no click
        log, even if this process's environment has those variables (they are not passed on).
    log_key: with ``click_log``, the logging key a request must carry (request parameter
        ``gtcrec_log_key``) to be logged; the child gets it as ``$GTCREC_LOG_KEY``. ``None`` takes
        :func:`gtcrec.serving.access.read_log_key` or, when there is none, a new random key that only this
        object knows (:attr:`log_key`: what the app, a replay or a test sends). A key of characters it
        cannot hold raises :class:`gtcrec.serving.access.LogKeyError`.

    Close your clients before :meth:`stop`: an open keep-alive connection delays Triton's exit.
    """

    name = "tritonserver"
    error = TritonServerError

    def __init__(self, model_repository: str | os.PathLike | Sequence[str | os.PathLike],
                 model_control: str = "explicit", http_port: int | None = None,
                 grpc_port: int | None = None, host: str = "127.0.0.1",
                 log_path: str | os.PathLike | None = None, startup_timeout: float = 60.0,
                 load_models: Iterable[str] = (), tritonserver: str | os.PathLike | None = None,
                 server_id: str | None = None, gpu: bool | None = None, log_verbose: int = 0,
                 exit_timeout: int = 10, stop_timeout: float = 15.0,
                 extra_args: Sequence[str] = (), control_key: str | None = None,
                 click_log: str | os.PathLike | None = None, click_log_seconds: float | None = None,
                 click_log_records: int | None = None, log_key: str | None = None):
        if model_control not in ("explicit", "none"):
            raise ValueError("model_control must be 'explicit' or 'none'")
        repos = [model_repository] if isinstance(model_repository, (str, os.PathLike)) else list(model_repository)
        self.model_repositories = [Path(r).resolve() for r in repos]
        for repo in self.model_repositories:
            if not repo.is_dir():
                raise TritonServerError(f"model repository {repo} is not a folder")
            if any(c.isspace() for c in str(repo)):
                # the python backend starts each instance's process through a shell command line that splits the
                # model's path there: the process dies ("terminate called ... stol") and the load never ends
                raise TritonServerError(f"model repository {str(repo)!r} has a space in its path: Triton's python "
                                        "backend cannot start a model from there; use a path without spaces")
        self.model_control = model_control
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.startup_timeout = float(startup_timeout)
        self.load_models = list(load_models)
        if self.load_models and model_control != "explicit":
            raise ValueError("load_models needs model_control='explicit'")
        self.binary = find_tritonserver(tritonserver)
        self.server_id = server_id or f"gtcrec-{uuid.uuid4().hex[:8]}"
        self.gpu = _has_gpu() if gpu is None else gpu
        self.log_verbose = int(log_verbose)
        self.exit_timeout = int(exit_timeout)
        self.stop_timeout = float(stop_timeout)
        self.extra_args = list(extra_args)
        self.control_key = access.read_key(control_key) or access.new_key()
        # Triton older than 2.41 (release 23.12, e.g. in NVIDIA's merlin-pytorch:23.08) cannot restrict its APIs
        self.restricted = self.binary.supports_restricted_api()
        if not self.restricted:
            warnings.warn(f"{self.binary.executable} has no --http-restricted-api / --grpc-restricted-protocol "
                          "(Triton older than 2.41): its control APIs (load, unload, shared memory, ...) are open to "
                          "every client that reaches its ports. Keep it on loopback, or use Triton 2.41 or newer.",
                          stacklevel=2)
        if log_path is None:
            folder = os.environ.get(SERVER_LOGS_ENV) or None
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"{self.server_id}-", suffix=".log", dir=folder)
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path).resolve()
        self.click_log = Path(click_log).resolve() if click_log is not None else None
        for name, value in (("click_log_seconds", click_log_seconds), ("click_log_records", click_log_records)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.click_log_seconds = None if click_log_seconds is None else float(click_log_seconds)
        self.click_log_records = None if click_log_records is None else int(click_log_records)
        self.log_key = None
        if self.click_log is not None:
            self.log_key = (access.check_log_key(log_key) if log_key is not None
                            else access.read_log_key()[0] or access.new_key())
        self.startup_seconds: float | None = None

    def command(self) -> list[str]:
        """The command line (for the record and for debugging)."""
        args = [str(self.binary.executable)]
        args += [f"--model-repository={r}" for r in self.model_repositories]
        args += [
            f"--model-control-mode={self.model_control}",
            f"--id={self.server_id}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
        ]
        if not self.gpu:
            args.append("--cuda-memory-pool-byte-size=0:0")
        if self.binary.backend_directory:
            args.append(f"--backend-directory={self.binary.backend_directory}")
        if self.binary.cache_directory:
            args.append(f"--cache-directory={self.binary.cache_directory}")
        args += [f"--load-model={m}" for m in self.load_models]
        if self.restricted:
            args += access.server_args(self.control_key)
        return args + self.extra_args

    def command_line(self) -> str:
        """The command line to show (the control key hidden)."""
        return access.redact(" ".join(self.command()), self.control_key)

    # -- lifecycle ----------------------------------------------------------------------------
    def _choose_ports(self) -> None:
        ports = choose_ports(self.host, {"http_port": self.http_port, "grpc_port": self.grpc_port},
                             in_use_hint=" (another Triton?). Triton binds with SO_REUSEPORT, so a second server "
                             "there would start and silently share the traffic; pick another port or leave it "
                             "to None for a free one.")
        self.http_port, self.grpc_port = ports["http_port"], ports["grpc_port"]

    def click_log_env(self) -> dict[str, str]:
        """The click log's variables for the child (empty without ``click_log``); creates the folder."""
        if self.click_log is None:
            return {}
        self.click_log.mkdir(parents=True, exist_ok=True)
        env = {CLICK_LOG_ENV: str(self.click_log), LOG_KEY_ENV: self.log_key}
        if self.click_log_seconds is not None:
            env[CLICK_LOG_SECONDS_ENV] = repr(self.click_log_seconds)
        if self.click_log_records is not None:
            env[CLICK_LOG_RECORDS_ENV] = str(self.click_log_records)
        return env

    def start(self) -> "TritonServer":
        """Start the server and wait until it reports ready (raises with the log tail if not)."""
        if self.is_running():
            return self
        self._choose_ports()
        env = dict(os.environ)
        env.update(self.binary.env)
        for name in (CLICK_LOG_ENV, CLICK_LOG_SECONDS_ENV, CLICK_LOG_RECORDS_ENV, LOG_KEY_ENV):
            env.pop(name, None)  # only what this object says
        env.update(self.click_log_env())
        try:
            self.startup_seconds = self._launch(self.command(), env)
        except self.error:
            code = self.startup_exit_code
            if code is None or -code not in FATAL_SIGNALS:
                raise
            # tritonserver aborted while it started (seen once in CI: its gRPC poller's "epoll_wait error: Bad file
            # descriptor", then SIGABRT): started once more, on new ports; the log keeps both starts
            warnings.warn(f"{self.name} died of signal {-code} during start-up (log {self.log_path}); "
                          "starting it once more")
            self._choose_ports()
            self.startup_seconds = self._launch(self.command(), env)
        return self

    def _ready(self) -> bool:
        """HTTP health says ready and the gRPC port accepts connections."""
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        try:
            with opener.open(url, timeout=1.0) as resp:
                return resp.status == 200 and port_open(self.host, self.grpc_port)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def __del__(self):  # pragma: no cover - last resort
        try:
            if self.is_running():
                self.stop()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return (f"TritonServer(id={self.server_id!r}, http={self.http_url}, grpc={self.grpc_url}, "
                f"{state}, log={str(self.log_path)!r})")

    # -- clients and models -------------------------------------------------------------------
    def grpc_client(self):
        """A new ``tritonclient.grpc.InferenceServerClient`` (close it when done): inference, health and
        metadata. Control calls need :meth:`control_client`."""
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.grpc_url)

    def http_client(self, **kwargs):
        """A new ``tritonclient.http.InferenceServerClient`` (close it when done): inference, health and
        metadata. Control calls need :meth:`control_client`."""
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.http_url, **kwargs)

    def control_client(self, protocol: str = "grpc") -> access.ControlClient:
        """A client that sends this server's control key with every control call (load, unload,
        repository index, statistics, ...); close it when done."""
        return access.control_client(self.grpc_url if protocol == "grpc" else self.http_url, self.control_key,
                                     protocol)

    def load_model(self, name: str, config: str | None = None, files: Mapping[str, bytes] | None = None) -> float:
        """Load (or reload) a model over gRPC (a load over HTTP stalls in-flight HTTP requests).

        Blocks until the model is loaded; returns the seconds it took. A failed load raises
        ``tritonclient.utils.InferenceServerException``; the old version, if any, keeps serving."""
        started = time.perf_counter()
        client = self.control_client()
        try:
            client.load_model(name, config=config, files=files)
        finally:
            client.close()
        return time.perf_counter() - started

    def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        client = self.control_client()
        try:
            client.unload_model(name, unload_dependents=unload_dependents)
        finally:
            client.close()

    def is_model_ready(self, name: str, version: str = "") -> bool:
        client = self.grpc_client()
        try:
            return bool(client.is_model_ready(name, version))
        finally:
            client.close()

    def stub_processes(self, model: str | None = None) -> list[StubProcess]:
        """Live python-backend stubs of this server (optionally of one model): see
        :func:`stub_processes`."""
        if not self.is_running():
            return []
        return [s for s in stub_processes(self.pid) if model is None or s.model == model]

    def model_index(self) -> list[dict]:
        """The repository index (name, version, state, reason) as plain dicts."""
        client = self.control_client()
        try:
            index = client.get_model_repository_index(as_json=True)
        finally:
            client.close()
        return list(index.get("models", []))
