"""The tier guard of tests/conftest.py: a test without the ``server`` marker cannot start tritonserver."""
import os
import subprocess

import pytest

from gtcrec.serving import server as srv


def test_an_unmarked_test_gets_the_stub_instead_of_tritonserver(tmp_path):
    binary = srv.find_tritonserver(cache_root=tmp_path)
    assert binary.source == "env" and binary.executable.name == "tritonserver"
    run = subprocess.run([str(binary.executable), "--model-repository", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 3 and "without the `server` marker" in run.stderr


def test_starting_a_server_without_the_marker_fails_with_the_reason(tmp_path):
    (tmp_path / "repo").mkdir()
    with pytest.raises(srv.TritonServerError, match="without the `server` marker"):
        srv.TritonServer(tmp_path / "repo", model_control="none", startup_timeout=10).start()


@pytest.mark.server
def test_a_marked_test_sees_the_environment_it_was_given():
    assert "gtcrec-no-server-" not in os.environ.get(srv.ENV_BINARY, "")
