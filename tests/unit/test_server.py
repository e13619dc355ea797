"""gtcrec.serving.server against a REAL tritonserver (the nvidia-pytriton wheel's, or the one found).

The models are trivial python-backend models written into tmp folders here.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import pytest

from gtcrec.serving import server as srv
from gtcrec.serving.server import PortInUseError, TritonServer, TritonServerError, find_tritonserver

DOUBLE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (2 * x).astype(np.float32))]))
        return responses
"""

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [{{ name: "x" data_type: TYPE_FP32 dims: [-1] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [-1] }}]
instance_group [{{ kind: KIND_CPU count: 1 }}]
"""


def write_model(repo: Path, name: str, code: str = DOUBLE_MODEL) -> Path:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(code))
    (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("repo"), "double")


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo, model_control="none", startup_timeout=90) as s:
        yield s


def tree_pids(pid: int) -> list[int]:
    proc = psutil.Process(pid)
    return [pid] + [c.pid for c in proc.children(recursive=True)]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, timeout=20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


# ------------------------------------------------------------------------------------------------

def test_find_tritonserver_assembles_the_python_backend(tmp_path, monkeypatch):
    monkeypatch.delenv(srv.ENV_BINARY, raising=False)  # tests/conftest.py points it at a stub here
    binary = find_tritonserver(cache_root=tmp_path)
    assert binary.executable.is_file() and os.access(binary.executable, os.X_OK)
    if not binary.bundled:
        pytest.skip(f"tritonserver comes from {binary.source}, not the wheel")
    py = binary.backend_directory / "python"
    assert sorted(p.name for p in py.iterdir()) == [
        "libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    assert os.access(py / "triton_python_backend_stub", os.X_OK)
    ld = binary.env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert any(Path(p).name == "nvidia_pytriton.libs" for p in ld)
    assert any((Path(p) / f"libpython{sys.version_info.major}.{sys.version_info.minor}.so").exists() for p in ld)
    assert binary.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    # a second call reuses the assembled folder
    assert find_tritonserver(cache_root=tmp_path).backend_directory == binary.backend_directory


def test_explicit_binary_that_does_not_exist_is_refused(tmp_path, monkeypatch):
    with pytest.raises(TritonServerError, match="not an executable"):
        find_tritonserver(tmp_path / "nope")
    monkeypatch.setenv(srv.ENV_BINARY, str(tmp_path / "nope"))
    with pytest.raises(TritonServerError, match="GTCREC|env|not an executable"):
        find_tritonserver()


def test_a_repository_path_with_a_space_is_refused_before_start(tmp_path):
    """The python backend starts an instance's process through a command line split at spaces: from such a path
    the process dies and the load never ends (seen: "terminate called ... stol", then a 300 s start-up timeout)."""
    repo = tmp_path / "my models"
    repo.mkdir()
    with pytest.raises(TritonServerError, match="has a space in its path"):
        srv.TritonServer(repo)


@pytest.mark.server
def test_server_is_ready_and_infers_over_http_and_grpc(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    assert server.is_running()
    assert 0 < server.startup_seconds < 90
    cmd = " ".join(server.command())
    assert f"--id={server.server_id}" in cmd and "--allow-metrics=false" in cmd
    assert "--pinned-memory-pool-byte-size=0" in cmd
    x = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    for mod, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        client = mod.InferenceServerClient(url)
        try:
            assert client.is_server_ready()
            inp = mod.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            y = client.infer("double", [inp]).as_numpy("y")
        finally:
            client.close()
        np.testing.assert_array_equal(y, 2 * x)
    assert "double" in server.log_path.read_text()
    assert "Started HTTPService" in server.log_tail(200)


@pytest.mark.server
def test_taken_ports_are_refused(server, repo):
    with pytest.raises(PortInUseError, match="already in use"):
        TritonServer(repo, http_port=server.http_port).start()
    with pytest.raises(PortInUseError, match="grpc_port"):
        TritonServer(repo, grpc_port=server.grpc_port).start()
    # any listener counts, not only a Triton
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(PortInUseError):
            TritonServer(repo, http_port=s.getsockname()[1]).start()


@pytest.mark.server
def test_explicit_mode_loads_and_unloads_over_grpc(repo, tmp_path):
    with TritonServer(repo, model_control="explicit", log_path=tmp_path / "explicit.log") as s:
        assert not s.is_model_ready("double")
        seconds = s.load_model("double")
        assert s.is_model_ready("double") and seconds > 0
        states = {m["name"]: m.get("state") for m in s.model_index()}
        assert states["double"] == "READY"
        s.unload_model("double")
        deadline = time.monotonic() + 20
        while s.is_model_ready("double") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not s.is_model_ready("double")
    assert (tmp_path / "explicit.log").stat().st_size > 0


@pytest.mark.server
def test_stop_leaves_no_process(repo):
    s = TritonServer(repo, model_control="none").start()
    pids = tree_pids(s.pid)
    assert len(pids) >= 2, "the python model should run in a stub child process"
    code = s.stop()
    assert code is not None and not s.is_running()
    assert wait_gone(pids, timeout=5) == []
    # the ports are free again
    assert srv._port_is_free(s.host, s.http_port) and srv._port_is_free(s.host, s.grpc_port)
    assert s.stop() == code  # idempotent


@pytest.mark.server
def test_servers_stop_side_by_side_gracefully(repo):
    """signal_stop() on each (what Fleet.stop does), then stop(): one SIGTERM each, so each unloads its models and
    exits 0 (a second signal, or the SIGKILL after the stop timeout, would show in the exit code)."""
    servers = [TritonServer(repo, model_control="none").start() for _ in range(2)]
    pids = [pid for s in servers for pid in tree_pids(s.pid)]
    for s in servers:
        s.signal_stop()
    assert [s.stop() for s in servers] == [0, 0]
    assert wait_gone(pids, timeout=5) == [] and not any(s.is_running() for s in servers)


@pytest.mark.server
def test_startup_timeout_raises_with_log_tail(tmp_path):
    slow = DOUBLE_MODEL.replace("class TritonPythonModel:",
                                "class TritonPythonModel:\n    def initialize(self, args):\n"
                                "        import time\n        time.sleep(60)\n")
    repo = write_model(tmp_path / "repo", "sleepy", slow)
    s = TritonServer(repo, model_control="none", startup_timeout=4)
    started = time.monotonic()
    with pytest.raises(TritonServerError) as info:
        s.start()
    assert time.monotonic() - started < 4 + s.stop_timeout + 5
    msg = str(info.value)
    assert "not ready after 4 s" in msg
    assert "sleepy" in msg  # the log tail is in the message
    assert not s.is_running()


@pytest.mark.server
def test_broken_model_makes_start_fail_with_its_error(tmp_path):
    broken = DOUBLE_MODEL.replace("class TritonPythonModel:",
                                  "class TritonPythonModel:\n    def initialize(self, args):\n"
                                  "        raise RuntimeError('deliberately broken model')\n")
    repo = write_model(tmp_path / "repo", "broken", broken)
    with pytest.raises(TritonServerError) as info:
        TritonServer(repo, model_control="none", startup_timeout=60).start()
    assert "exited with code" in str(info.value)
    assert "deliberately broken model" in str(info.value)


@pytest.mark.server
def test_server_dies_with_the_process_that_started_it(repo, tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from gtcrec.serving.server import TritonServer
        s = TritonServer({str(repo)!r}, model_control="none").start()
        print(s.pid, flush=True)
        time.sleep(600)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        line = owner.stdout.readline()
        assert line.strip().isdigit(), line
        pids = tree_pids(int(line))
        owner.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only PR_SET_PDEATHSIG acts
        owner.wait(timeout=10)
        assert wait_gone(pids, timeout=30) == []
    finally:
        if owner.poll() is None:
            owner.kill()
        for pid in pids:  # do not leave a server behind when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _fake_tritonserver(folder, body: str):
    """An executable named tritonserver that notes each start in ``starts`` and then runs ``body`` (asked for
    its ``--help``, as the project asks what a binary supports, it prints nothing)."""
    exe = folder / "bin" / "tritonserver"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\ncase "$*" in *--help*) exit 0;; esac\necho started >> {folder / "starts"}\n{body}\n')
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("body, starts, retried", [("kill -ABRT $$", 2, True), ("exit 3", 1, False)])
def test_a_server_that_aborts_while_it_starts_is_started_once_more(tmp_path, body, starts, retried):
    """A signal during start-up (seen once in CI: tritonserver's gRPC poller failed with "Bad file descriptor"
    and aborted) gets one more start; a second, or an exit status of its own (a bad flag, a bad repository),
    fails as before."""
    repo = tmp_path / "repo"
    repo.mkdir()
    server = srv.TritonServer(repo, tritonserver=_fake_tritonserver(tmp_path, body), startup_timeout=20)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with pytest.raises(TritonServerError, match="exited with code"):
            server.start()
    assert (tmp_path / "starts").read_text().count("started") == starts
    assert any("starting it once more" in str(w.message) for w in said) == retried
    assert not server.is_running()
