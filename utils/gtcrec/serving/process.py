"""A local child process serving on two ports (HTTP and gRPC), with a log file: what
:class:`gtcrec.serving.server.TritonServer` and the fleet's :class:`gtcrec.serving.balancer.Balancer`
share. The child runs in its own process group, dies with the thread that started it, is stopped with a
soft signal and then SIGKILL to its group, and every live one is stopped at interpreter exit."""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path

_PR_SET_PDEATHSIG = 1

try:  # loaded in the parent: the child only calls into it between fork and exec
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _LIBC = None


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setpgrp()  # own process group: stop() can reach the child's own children too (python-backend stubs)
    if _LIBC is not None:
        # SIGTERM when the parent *thread* that forked us exits (start servers from a
        # long-lived thread, e.g. the main one)
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _tail(path: Path, n_lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-n_lines:])


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes of process group ``pgid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            found.append(int(stat.parent.name))
    return sorted(found)


def stop_process_group(proc: subprocess.Popen, soft: int | None = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Stop a child started in its own process group: ``soft`` (a signal; None: it was sent already), up to
    ``timeout`` seconds to exit, then SIGKILL to whatever is left of the group (a server and its helpers), and
    wait (at most ``timeout`` seconds more) until none of the group is alive: on a loaded machine a killed
    python-backend stub can outlive its server by a moment, and a caller that checks at once would find it.
    Returns the child's exit code."""
    if proc.poll() is None:
        try:
            if soft is not None:
                proc.send_signal(soft)
            proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    code = proc.wait()
    deadline = time.monotonic() + timeout
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return code


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


_LIVE: "weakref.WeakSet[LocalService]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for service in list(_LIVE):
        try:
            service.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


class LocalService:
    """A child process on ``host`` answering on ``http_port`` and ``grpc_port``, its output in
    ``log_path``. Subclasses set those attributes and ``startup_timeout`` / ``stop_timeout``, then
    call :meth:`_launch` from their ``start``; they say when the child is ready (:meth:`_ready`) and what
    to report when it is not (:meth:`_not_ready`). Use one as a context manager."""

    name = "process"  # in error messages
    error: type[Exception] = RuntimeError  # raised when the child does not come up
    stop_signal = signal.SIGTERM  # the soft stop, before SIGKILL to the group
    poll_seconds = 0.1
    host: str
    http_port: int | None
    grpc_port: int | None
    log_path: Path
    startup_timeout: float
    stop_timeout: float
    process: subprocess.Popen | None = None
    _log_file = None
    _stop_signalled = False  # signal_stop() sent stop_signal; stop() waits without sending it again
    startup_exit_code: int | None = None  # the child's exit status if it ended before it was ready

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http`` (no scheme, as tritonclient expects)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self):  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def _launch(self, args: list[str], env: dict, cwd: os.PathLike | None = None) -> float:
        """Start ``args`` as the child (own process group, output to ``log_path``) and wait until
        :meth:`_ready`; on any failure the child is stopped and the error raised with the log's tail.
        Returns the seconds from launch to ready."""
        self.startup_exit_code = None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, preexec_fn=_child_setup,
                                        close_fds=True, cwd=cwd)
        _LIVE.add(self)
        try:
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return time.perf_counter() - started

    def _wait_ready(self, deadline: float) -> None:
        while True:
            code = self.process.poll()
            if code is not None:
                self.startup_exit_code = code  # negative: the signal that ended it (before stop() ends it)
                raise self.error(f"{self.name} exited with code {code} during start-up; log {self.log_path}:\n"
                                 f"{self.log_tail()}")
            try:
                if self._ready():
                    return
            except (OSError, self.error):
                pass
            if time.perf_counter() > deadline:
                raise self.error(f"{self._not_ready()}; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(self.poll_seconds)

    def _ready(self) -> bool:
        """Whether the child answers on both ports."""
        return port_open(self.host, self.http_port) and port_open(self.host, self.grpc_port)

    def _not_ready(self) -> str:
        return f"{self.name} not ready after {self.startup_timeout:.0f} s"

    def signal_stop(self) -> None:
        """Send ``stop_signal`` and return at once: :meth:`stop` then waits for the child. Several services
        stop side by side this way (a tritonserver takes seconds to unload its models)."""
        if self.is_running() and not self._stop_signalled:
            self.process.send_signal(self.stop_signal)
            self._stop_signalled = True

    def stop(self) -> int | None:
        """Stop the child: ``stop_signal`` (unless :meth:`signal_stop` sent it), then SIGKILL to its process
        group after ``stop_timeout``. Returns the exit code (None if it was never started)."""
        proc = self.process
        if proc is None:
            return None
        signalled, self._stop_signalled = self._stop_signalled, False
        code = stop_process_group(proc, None if signalled else self.stop_signal, self.stop_timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _LIVE.discard(self)
        return code

    def log_tail(self, n_lines: int = 40) -> str:
        """The last lines of the child's log."""
        if self._log_file is not None:
            self._log_file.flush()
        return _tail(self.log_path, n_lines)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
