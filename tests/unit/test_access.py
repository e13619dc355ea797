"""Only the project's tools may change what is served (gtcrec.serving.access).

No server: where the key comes from, the key file, the flags and headers. Against a REAL tritonserver
(a trivial python-backend model) and a REAL HAProxy in front of it: every control group is refused
without the key over gRPC and HTTP, a wrong key is refused with a clear message, the key works for
the project's clients, the balancer's public ports forward inference, health and metadata only,
and the model keeps serving throughout. ``gtcrec-serve`` / ``gtcrec-swap`` with the key file:
tests/unit/test_serve.py; the fleet swap with one key on every replica: tests/unit/test_fleet.py.
"""
from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gtcrec.serving import access
from gtcrec.serving import balancer as lb
from gtcrec.serving.server import TritonServer
from test_server import write_model

MODEL = "double"
HAVE_HAPROXY, HAPROXY_WHY = lb.haproxy_available()


# ------------------------------------------------------------------------------------------------ no server

def test_the_key_comes_from_argument_env_env_file_then_default_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert access.read_key() is None
    default = access.ensure_key_file()
    assert default == tmp_path / "config" / "gtcrec" / "control.key"
    from_default = access.read_key()
    assert from_default and len(from_default) >= 40
    other = tmp_path / "secret"
    other.write_text("from-the-secret-file\n")
    monkeypatch.setenv(access.ENV_KEY_FILE, str(other))
    assert access.read_key() == "from-the-secret-file"
    monkeypatch.setenv(access.ENV_KEY, "from-the-environment")
    assert access.read_key() == "from-the-environment"
    assert access.read_key("given") == "given"
    monkeypatch.delenv(access.ENV_KEY)
    monkeypatch.setenv(access.ENV_KEY_FILE, str(tmp_path / "missing"))
    with pytest.raises(access.ControlKeyError, match="no such file"):
        access.read_key()


def test_the_key_file_is_made_once_and_readable_by_its_owner_only(tmp_path):
    path = access.ensure_key_file(tmp_path / "a" / "control.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert access.ensure_key_file(path) == path and path.read_text().strip() == key  # kept, not renewed
    assert access.ensure_key_file(tmp_path / "b.key").read_text().strip() != key  # random


@pytest.mark.parametrize("bad", ["", "  \n", "a,b", "a:b", "a=b", "a b"])
def test_keys_triton_cannot_parse_are_refused(bad, tmp_path):
    with pytest.raises(access.ControlKeyError):
        access.read_key(bad)
    (tmp_path / "k").write_text(bad)
    with pytest.raises(access.ControlKeyError):
        access.key_for_command(tmp_path / "k")


def test_flags_headers_and_redaction():
    flags = access.server_args("s3cret")
    groups = "model-repository,model-config,shared-memory,statistics,trace,logging"
    assert flags == [f"--http-restricted-api={groups}:gtcrec-control-key=s3cret",
                     f"--grpc-restricted-protocol={groups}:gtcrec-control-key=s3cret"]
    assert access.headers("s3cret", "http") == {"gtcrec-control-key": "s3cret"}
    assert access.headers("s3cret", "grpc") == {"triton-grpc-protocol-gtcrec-control-key": "s3cret"}
    assert access.headers(None) == {}
    assert access.redact("--x=s3cret --y", "s3cret") == "--x=<control key> --y"


@pytest.mark.server  # runs the binary (its --help: which flags it has)
def test_a_server_shows_its_command_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no key file, whatever ran before
    server = TritonServer(write_model(tmp_path, MODEL), control_key="s3cret-key", http_port=1, grpc_port=2)
    assert server.restricted  # the bundled Triton 2.51 has the flags
    assert any("s3cret-key" in a for a in server.command())  # Triton takes it on its command line...
    assert "s3cret-key" not in server.command_line() and "<control key>" in server.command_line()  # ...shown hidden
    assert TritonServer(tmp_path).control_key != TritonServer(tmp_path).control_key  # no key anywhere: a random one


# ------------------------------------------------------------------------------------------------ a real server

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = write_model(tmp_path_factory.mktemp("repo"), MODEL)
    with TritonServer(repo, load_models=[MODEL], startup_timeout=90) as server:
        yield server


def infer_double(url: str, protocol: str) -> np.ndarray:
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    client = tc.InferenceServerClient(url)
    try:
        x = tc.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
        return client.infer(MODEL, [x]).as_numpy("y")
    finally:
        client.close()


def control_calls(client, repo: Path) -> dict:
    """One call of each restricted group (a plain tritonclient client: no key unless ``headers``)."""
    return {
        "repository index": lambda: client.get_model_repository_index(),
        "load": lambda: client.load_model(MODEL),
        "load with a new config": lambda: client.load_model(MODEL, config=json.dumps(
            {"backend": "python", "max_batch_size": 0, "instance_group": [{"kind": "KIND_CPU", "count": 4}]})),
        "unload": lambda: client.unload_model(MODEL),
        "model config": lambda: client.get_model_config(MODEL),
        "shared-memory registration": lambda: client.register_system_shared_memory("r", "/gtcrec-x", 64),
        "statistics": lambda: client.get_inference_statistics(MODEL),
        "trace settings": lambda: client.update_trace_settings(MODEL, {"trace_level": ["TIMESTAMPS"]}),
        "log settings": lambda: client.update_log_settings({"log_verbose_level": 1}),
    }


def refusal(call) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value)


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_without_the_key_every_control_group_is_refused_and_the_model_keeps_serving(served, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    plain = (grpcclient.InferenceServerClient(served.grpc_url) if protocol == "grpc"
             else httpclient.InferenceServerClient(served.http_url))
    url = served.grpc_url if protocol == "grpc" else served.http_url
    try:
        for name, call in control_calls(plain, served.model_repositories[0]).items():
            message = refusal(call)
            assert "restricted, expecting header" in message, (name, message)
        # open: health, metadata, inference
        assert plain.is_server_live() and plain.is_server_ready() and plain.is_model_ready(MODEL)
        assert plain.get_server_metadata() and plain.get_model_metadata(MODEL)
    finally:
        plain.close()
    np.testing.assert_array_equal(infer_double(url, protocol), [2, 4, 6])
    # the project's client sends the key: the same server answers its control calls
    with served.control_client() as client:
        index = client.get_model_repository_index(as_json=True)["models"]
        assert [(m["name"], m["state"]) for m in index] == [(MODEL, "READY")]
    with served.control_client("http") as client:
        assert client.get_inference_statistics(MODEL)["model_stats"][0]["name"] == MODEL
    assert served.control_key not in served.log_path.read_text()  # never logged


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_wrong_key_is_refused_with_a_clear_message(served, protocol):
    url = served.grpc_url if protocol == "grpc" else served.http_url
    with access.control_client(url, "not-the-key", protocol) as client:
        with pytest.raises(access.ControlKeyError) as info:
            client.unload_model(MODEL)
    message = str(info.value)
    assert f"refused unload_model ({protocol})" in message and "a key that does not match" in message
    assert "--control-key-file" in message and "not-the-key" not in message
    assert served.is_model_ready(MODEL)


@pytest.mark.server
def test_the_project_loads_and_unloads_with_the_key(tmp_path):
    repo = write_model(tmp_path, MODEL)
    with TritonServer(repo, load_models=[], startup_timeout=90, control_key="a-key-for-this-test") as server:
        assert server.load_model(MODEL) > 0 and server.is_model_ready(MODEL)
        server.unload_model(MODEL)
        assert not server.is_model_ready(MODEL)
        # any process that holds the key can: the environment variable, as a deployment's secret
        with access.control_client(server.grpc_url, "a-key-for-this-test") as client:
            client.load_model(MODEL)
        np.testing.assert_array_equal(infer_double(server.grpc_url, "grpc"), [2, 4, 6])


@pytest.mark.server
@pytest.mark.skipif(not HAVE_HAPROXY, reason=f"no load balancer: {HAPROXY_WHY}")
def test_the_balancer_forwards_inference_health_and_metadata_only(served):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    with lb.Balancer([served], model_name=MODEL) as balancer:
        for protocol, url in (("grpc", balancer.grpc_url), ("http", balancer.http_url)):
            np.testing.assert_array_equal(infer_double(url, protocol), [2, 4, 6])
            client = (grpcclient.InferenceServerClient(url) if protocol == "grpc"
                      else httpclient.InferenceServerClient(url))
            key = access.headers(served.control_key, protocol)
            try:
                assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
                assert client.get_model_metadata(MODEL) and client.get_server_metadata()
                # refused at the balancer, even with the right key: control goes to the replicas' own ports
                for name, call in control_calls(client, served.model_repositories[0]).items():
                    message = refusal(call)
                    assert lb.REFUSED in message, (protocol, name, message)
                message = refusal(lambda: client.unload_model(MODEL, headers=key))
                assert lb.REFUSED in message and ("PERMISSION_DENIED" in message or "[403]" in message), message
            finally:
                client.close()
        for path in ("/v2/models/stats", f"/v2/models/{MODEL}/stats", f"/v2/models/{MODEL}/config",
                     f"/v2/models/{MODEL}%2Fconfig", "/v2/repository/index", "/v2/logging", "/v2/trace/setting",
                     "/v2/systemsharedmemory/status"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"http://{balancer.http_url}{path}", timeout=5)
            assert info.value.code == 403, path
        with urllib.request.urlopen(f"http://{balancer.http_url}/v2/models/{MODEL}/versions/1/ready", timeout=5) as r:
            assert r.status == 200
    assert served.is_model_ready(MODEL)
