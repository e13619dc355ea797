"""``gtcrec-serve`` as a user runs it: a subprocess on an artifacts folder laid out like ``make run``'s,
queried with the README's own request (curl when installed), a ``gtcrec-swap`` in between, a
python-backend stub killed while a client keeps asking, and SIGTERM at the end.

The world is small: a spring catalog of 40 talks (ids S50001...) and a fall one of 60 (F30001...),
an untrained tiny Transformers4Rec model (the serving path does not care), text vectors written
straight into the embedding cache (random unit vectors: no text encoder run), two CPU instances.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from gtcrec import data, embeddings, etl, swap
from gtcrec import model as gm
from gtcrec.trace import trace_topk
from gtcrec.live import log_stats, read_click_log
from gtcrec.manifest import write_manifest
from gtcrec.representation import DEFAULT_SETTINGS, settings_for
from gtcrec.serving import client as cl
from gtcrec.serving import serve
from gtcrec.serving.export import export_ensemble, lean_transform
from gtcrec.serving.server import free_ports, stub_processes

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# The tests of one gtcrec-serve (the module fixture `served`) build on each other (swap, then adapt, then
# heal, then SIGTERM): one pytest-xdist worker runs them all, in order (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("gtcrec-serve")
NAME = "executor_model"
MAX_LEN, K_MODEL, K = 8, 30, 10
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------ no server

def test_serve_refuses_what_it_cannot_serve(tmp_path, capsys):
    assert serve.main(["--artifacts-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "notebook 05-ensemble has not run" in err and "make run" in err
    (tmp_path / "repo" / "other" / "1").mkdir(parents=True)
    assert serve.main([str(tmp_path / "repo")]) == 2
    assert f"has no model {NAME!r}" in capsys.readouterr().err
    assert serve.main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        serve.main([str(tmp_path / "repo"), "--reset"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        serve.main(["--http-port", "70000"])
    assert not (tmp_path / "nothing" / "serve").exists()  # nothing was created


def test_a_taken_port_is_refused_with_a_hint(tmp_path, capsys):
    import socket

    (tmp_path / "repo" / NAME / "1").mkdir(parents=True)
    (tmp_path / "repo" / NAME / "config.pbtxt").write_text(f'name: "{NAME}"\nbackend: "python"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main([str(tmp_path / "repo"), "--http-port", str(port), "--grpc-port", "0"]) == 1
    err = capsys.readouterr().err
    assert f"http_port={port}" in err and "already in use" in err and "--http-port" in err


class FakeClient:
    def __init__(self, loads, fail=None):
        self.loads, self.fail = loads, fail

    def load_model(self, name, client_timeout=None):
        if self.fail:
            raise RuntimeError(self.fail)
        self.loads.append(name)

    def close(self):
        pass


class FakeServer:
    """What the watcher reads from a server: its stubs and a control client."""

    def __init__(self):
        self.stubs, self.loads, self.fail = [], [], None

    def is_running(self):
        return True

    def stub_processes(self, model=None):
        return [s for s in self.stubs if model is None or s.model == model]

    def control_client(self):
        return FakeClient(self.loads, self.fail)


def stub(pid, version, index):
    from gtcrec.serving.server import StubProcess

    return StubProcess(pid=pid, model=NAME, version=version, instance=f"{NAME}_0_{index}", model_file="model.py")


def test_the_watcher_reloads_a_ready_version_that_lost_a_stub_and_nothing_else(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for v in (1, 2):
        (repo / NAME / str(v)).mkdir(parents=True)
    fake = FakeServer()
    ready = [2]
    watcher = serve.InstanceWatcher(fake, repo, NAME, grace=0.0)
    monkeypatch.setattr(watcher, "ready_versions", lambda: list(ready))
    fake.stubs = [stub(10, 2, 0), stub(11, 2, 1), stub(5, 1, 0)]  # version 1's stubs: not served, ignored
    assert watcher.check() is None and fake.loads == []
    fake.stubs = [stub(10, 2, 0)]  # instance 1 of the served version died
    old_time = (repo / NAME / "2").stat().st_mtime_ns
    os.utime(repo / NAME / "2", ns=(old_time - 10**9, old_time - 10**9))
    event = watcher.check()
    assert event.action == "reloaded" and event.version == 2 and event.instances == [f"{NAME}_0_1"]
    assert event.pids == [11] and fake.loads == [NAME]
    assert (repo / NAME / "2").stat().st_mtime_ns > old_time - 10**9  # renewed: Triton reloads newer files
    fake.stubs = [stub(20, 2, 0), stub(21, 2, 1)]  # the new copy
    assert watcher.check() is None and len(fake.loads) == 1
    # a swap: version 3 replaces 2, whose stubs go away normally -> no reload
    (repo / NAME / "3").mkdir()
    ready[:] = [3]
    fake.stubs = [stub(30, 3, 0), stub(31, 3, 1)]
    assert watcher.check() is None and len(fake.loads) == 1
    # a crash while gtcrec-swap holds the model folder's lock: wait for the swap
    fake.stubs = [stub(30, 3, 0)]
    with swap.repository_lock(repo, NAME):
        event = watcher.check()
    assert event.action == "skipped" and "not now" in event.detail and len(fake.loads) == 1
    watcher._not_before = 0.0
    assert watcher.check().action == "reloaded" and len(fake.loads) == 2
    # the newest folder is not the served version: a load would serve it, so no reload
    fake.stubs = [stub(40, 3, 0), stub(41, 3, 1)]
    watcher.check()
    (repo / NAME / "4").mkdir()
    fake.stubs = [stub(40, 3, 0)]
    event = watcher.check()
    assert event.action == "skipped" and "newest version folder is 4" in event.detail and len(fake.loads) == 2
    # a refused reload is reported, and tried again later, not in a loop
    (repo / NAME / "4").rmdir()
    watcher._not_before = 0.0
    fake.fail = "the server refused"
    event = watcher.check()
    assert event.action == "failed" and "the server refused" in event.detail
    assert watcher.check() is None  # within retry_after
    assert [e.action for e in watcher.events] == ["reloaded", "reloaded", "skipped", "failed"]


def readme_request() -> tuple[dict, str]:
    """The request JSON and the URL path of the README's curl example."""
    text = README.read_text()
    body = re.search(r"cat > request\.json <<'EOF'\n(.*?)\nEOF", text, re.S)
    url = re.search(r"curl [^\n]*http://127\.0\.0\.1:8000(/v2/models/\w+/infer)", text)
    assert body and url, "the README's shell path lost its curl example"
    return json.loads(body.group(1)), url.group(1)


def test_the_readme_request_follows_the_serving_contract():
    request, path = readme_request()
    assert path == f"/v2/models/{NAME}/infer"
    inputs = {i["name"]: i for i in request["inputs"]}
    assert set(inputs) == {"session_id", "talk_id", "timestamp"}
    assert [inputs[n]["datatype"] for n in ("session_id", "talk_id", "timestamp")] == ["BYTES", "BYTES", "INT64"]
    assert len({len(i["data"]) for i in inputs.values()}) == 1
    assert all(i["shape"] == [len(i["data"])] for i in inputs.values())


# ------------------------------------------------------------------------------------------------ the world

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    art, cache = root / "artifacts", root / "data" / "cache" / "embeddings"  # gtcrec-swap's default --cache
    old, _ = data.generate_catalog(40, seed=1, event="spring", id_prefix="S")
    new, _ = data.generate_catalog(60, seed=2, event="fall", id_prefix="F", id_start=30001)
    new.to_csv(root / "fall.csv", index=False)
    (art / "00-data" / "fall").mkdir(parents=True)
    new.to_parquet(art / "00-data" / "fall" / "catalog.parquet")  # where make run leaves it (the README's swap)
    rng = np.random.default_rng(0)
    texts = embeddings.talk_text(old) + embeddings.talk_text(new)
    vectors = rng.normal(size=(len(texts), embeddings.DIM)).astype(np.float32)
    embeddings.EmbeddingCache(cache).add([embeddings.text_key(t) for t in texts],
                                         vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    old_vectors, newly = embeddings.embed_catalog(old, cache, progress=False)
    assert newly == 0
    old_table = etl.item_table(old_vectors)
    model = gm.build_model(gm.make_schema(len(old_table), MAX_LEN), old_table, d_model=16, n_layer=1, n_head=2,
                           max_len=MAX_LEN, arch="gpt2", masking="clm", seed=0,
                           item_repr=settings_for(DEFAULT_SETTINGS, old))  # per-talk parts: gtcrec-adapt needs them
    model_dir = gm.save_model(model, art / "04-item-representation" / "model")
    traced = trace_topk(model, gm.sessions_to_batch(swap.example_sessions(len(old_table), MAX_LEN), MAX_LEN),
                           k=K_MODEL)
    traced.save(str(root / "topk.pt"))
    ensemble, _ = export_ensemble(old["talk_id"].tolist(), root / "topk.pt", art / "05-ensemble" / "model_repository",
                                  max_len=MAX_LEN, k=K, name=NAME, instance_count=2)
    # the manifests `make run` leaves (only what gtcrec-serve reads)
    write_manifest(art, "04-item-representation", {}, {"model": model_dir})
    write_manifest(art, "05-ensemble", {}, {"model_repository": art / "05-ensemble" / "model_repository"})
    return {"root": root, "art": art, "cache": cache, "old": old, "new": new, "model_dir": model_dir,
            "ensemble_v1": ensemble, "fall": root / "fall.csv"}


class Served:
    """``gtcrec-serve`` in a subprocess; its stdout lines are collected by a thread."""

    def __init__(self, args, cwd):
        self.http_port, self.grpc_port = free_ports(2)
        self.proc = subprocess.Popen([str(BIN / "gtcrec-serve"), *map(str, args), "--http-port", str(self.http_port),
                                      "--grpc-port", str(self.grpc_port)], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 180.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"gtcrec-serve never printed {text!r}:\n" + "\n".join(self.lines[-30:]))

    def server_pid(self) -> int:
        children = psutil.Process(self.proc.pid).children()
        assert len(children) == 1 and children[0].name().startswith("tritonserver"), children
        return children[0].pid

    def tree(self) -> list[int]:
        proc = psutil.Process(self.proc.pid)
        return [proc.pid] + [c.pid for c in proc.children(recursive=True)]

    def kill(self):
        if self.proc.poll() is None:
            for pid in reversed(self.tree()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(world):
    from gtcrec.serving.binary import find_tritonserver

    s = Served(["--artifacts-dir", world["art"], "--click-log", world["root"] / "clicklog", "--click-log-seconds", "1",
                "--log-key-file", world["root"] / "log.key", "--model-name", NAME, "--startup-timeout", "300",
                "--watch-interval", "0.2", "--tritonserver", find_tritonserver().executable,
                "--reset"], cwd=world["root"])  # --reset: the README's swap (above) is dropped
    try:
        s.wait_for("Ctrl-C or SIGTERM stops it")
        yield s
    finally:
        s.kill()  # the last test stops it with SIGTERM; this is for a failed test


def post(url: str, body: dict) -> dict:
    """POST JSON with curl (as the README does) when it is installed, else with urllib."""
    payload = json.dumps(body)
    if shutil.which("curl"):
        done = subprocess.run(["curl", "-s", "-X", "POST", url, "-H", "Content-Type: application/json", "-d", payload],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    import urllib.request

    req = urllib.request.Request(url, payload.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def outputs(answer: dict) -> dict:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def request_arrays(body: dict) -> dict:
    inputs = {i["name"]: i["data"] for i in body["inputs"]}
    return {"session_id": np.array([s.encode() for s in inputs["session_id"]], dtype=object),
            "talk_id": np.array([s.encode() for s in inputs["talk_id"]], dtype=object),
            "timestamp": np.asarray(inputs["timestamp"], dtype=np.int64)}


def clicks_of(table) -> set:
    """(session, talk, epoch ms) of request arrays or of a click log's rows."""
    if isinstance(table, pd.DataFrame):
        ms = table["timestamp"].dt.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
        return set(zip(table["session_id"], table["talk_id"], ms.tolist()))
    return {(s.decode(), t.decode(), int(ts)) for s, t, ts in zip(table["session_id"], table["talk_id"],
                                                                   table["timestamp"])}


def load_version_ensemble(repo: Path, version: int):
    from merlin.dag import postorder_iter_nodes
    from merlin.systems.dag import Ensemble

    path = repo / NAME / str(version) / "ensemble"
    ensemble = Ensemble.load(str(path))
    for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
        node.op.load_artifacts(str(path))
    return ensemble


def assert_answer_equals(answer: dict, want: dict):
    got = outputs(answer)
    np.testing.assert_array_equal(got["session_ids"].astype(str), np.asarray(want["session_ids"]).astype(str))
    np.testing.assert_array_equal(got["talk_ids"].astype(str), np.asarray(want["talk_ids"]).astype(str))
    np.testing.assert_allclose(got["scores"].astype(np.float32), want["scores"], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the shell path

def readme_shell_blocks() -> list[str]:
    """The ```bash blocks of the README's "Serve and swap from a shell"."""
    section = README.read_text().split("## Serve and swap from a shell", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)


@pytest.mark.server
def test_the_readme_shell_lines_as_written(world, tmp_path):
    """``make serve``, then the README's curl and gtcrec-swap lines, as written, in a folder laid out as the
    repository after ``make run`` (its Makefile, and ``artifacts`` as notebooks 00-05 leave it); only the ports
    differ (``HTTP_PORT`` / ``GRPC_PORT`` for make, the same numbers in the lines). Ctrl-C stops it."""
    serve_line, ask, swap_and_ask = readme_shell_blocks()
    assert serve_line.split("#")[0].strip() == "make serve"
    root = world["root"]
    for name in ("Makefile", "requirements.lock", "utils", ".venv"):
        if not (root / name).exists():
            (root / name).symlink_to(REPO / name)
    http_port, grpc_port = free_ports(2)
    # VENV by its real path: were `make env` to run here, the venv's scripts must not point into tmp_path
    env = {**os.environ, "VENV": str(REPO / ".venv"), "HTTP_PORT": str(http_port), "GRPC_PORT": str(grpc_port),
           "SERVE_OPTIONS": f"--no-heal --log {tmp_path / 'tritonserver.log'}"}
    make = subprocess.Popen(["bash", "-c", serve_line], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    printed = []
    try:
        for line in make.stdout:
            printed.append(line)
            if "stops it" in line:
                break
        said = "".join(printed)
        assert "[gtcrec-serve] Ctrl-C or SIGTERM stops it" in said, said[-3000:]  # --no-heal: no watcher
        assert f"127.0.0.1:{grpc_port}" in said and (tmp_path / "tritonserver.log").stat().st_size > 0  # --log

        def shell(block: str) -> str:
            block = block.replace("127.0.0.1:8000", f"127.0.0.1:{http_port}").replace("127.0.0.1:8001",
                                                                                      f"127.0.0.1:{grpc_port}")
            done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=root, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            return done.stdout

        answer = json.loads(shell(ask))
        assert answer["model_version"] == "1"
        assert set(outputs(answer)["talk_ids"].ravel()) <= set(world["old"]["talk_id"])
        answer = json.loads(shell(swap_and_ask))
        assert answer["model_version"] == "2"  # "The answer now comes from "model_version":"2" and holds fall talks"
        assert set(outputs(answer)["talk_ids"].ravel()) <= set(world["new"]["talk_id"])
    finally:
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground process group
        make.wait(timeout=60)  # make reports the interrupt; gtcrec-serve stops its server first
    assert "[gtcrec-serve] stopped" in make.stdout.read()
    from gtcrec.serving.server import _port_is_free

    assert _port_is_free("127.0.0.1", http_port) and _port_is_free("127.0.0.1", grpc_port)
    # the module's own server (`served`) starts from notebook 05's export again: --reset drops this swap


@pytest.mark.server
def test_serve_curl_swap_curl_as_the_readme_says(world, served):
    repo = world["art"] / "serve" / "model_repository"
    url = f"http://127.0.0.1:{served.http_port}"
    from gtcrec.serving.binary import find_tritonserver

    # --tritonserver: the wheel's binary named explicitly is set up as the wheel's (its backends, its libraries)
    started = re.search(r"starting (\S+) \(pytriton-wheel\)", served.wait_for("starting "))
    assert started and Path(started.group(1)).resolve() == Path(find_tritonserver().executable).resolve()
    assert served.wait_for("HTTP ").endswith(f"http://127.0.0.1:{served.http_port}  "
                                             f"(KServe v2: POST /v2/models/{NAME}/infer)")
    assert f"gRPC  127.0.0.1:{served.grpc_port}" in served.wait_for("gRPC ")
    assert f"serving {NAME} version 1 from {repo} (2 instances" in served.wait_for("serving ")
    assert f"--model-dir {world['model_dir']}" in served.wait_for("swap a catalog")
    click_log = world["root"] / "clicklog"
    assert f"logging clicks to {click_log} (parquet segments clicks-*.parquet, a new one every 1 s" in \
        served.wait_for("logging clicks")
    # the control key: made on first use, readable by its owner only, never printed (tests/conftest.py points
    # XDG_CONFIG_HOME at a temporary folder, so this is not the user's own file)
    key_file = Path(os.environ["XDG_CONFIG_HOME"]) / "gtcrec" / "control.key"
    assert served.wait_for("need the key in").endswith(f"need the key in {key_file}")
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 40 and key not in "\n".join(served.lines)
    assert (repo / NAME / "1").is_dir()  # a copy: swaps leave notebook 05's export alone
    export = world["art"] / "05-ensemble" / "model_repository" / NAME

    body, path = readme_request()
    answer = post(url + path, body)
    assert answer["model_version"] == "1"
    # the logging key: made by --log-key-file, readable by its owner only, never printed; the app sends it
    assert (world["root"] / "log.key").stat().st_mode & 0o777 == 0o600
    assert log_key(world) not in "\n".join(served.lines)
    vouched = {**body, "parameters": {"gtcrec_log_key": log_key(world), "gtcrec_client_id": "readme-app"}}
    assert outputs(post(url + path, vouched))["talk_ids"].tolist() == outputs(answer)["talk_ids"].tolist()
    assert_answer_equals(answer, lean_transform(world["ensemble_v1"], request_arrays(body)))
    assert set(outputs(answer)["talk_ids"].ravel()) <= set(world["old"]["talk_id"])

    # anyone can ask for recommendations, nobody without the key can unload the model
    refused = post(f"{url}/v2/repository/models/{NAME}/unload", {})
    assert "restricted, expecting header 'gtcrec-control-key'" in refused["error"]
    assert post(url + path, body)["model_version"] == "1"
    wrong = world["root"] / "wrong.key"
    wrong.write_text("not-the-key\n")
    denied = subprocess.run([str(BIN / "gtcrec-swap"), "--status", "--repository", str(repo), "--url",
                             f"127.0.0.1:{served.grpc_port}", "--control-key-file", str(wrong)],
                            capture_output=True, text=True, timeout=120)
    assert denied.returncode == 2 and "a key that does not match" in denied.stderr, denied.stderr
    assert "not-the-key" not in denied.stderr + denied.stdout

    done = subprocess.run([str(BIN / "gtcrec-swap"), str(world["fall"]), "--repository", str(repo),
                           "--url", f"127.0.0.1:{served.grpc_port}", "--model-dir", str(world["model_dir"]),
                           "--cache", str(world["cache"])], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "version 2 serving" in done.stderr
    # version 1 is unloaded (a few seconds after version 2 serves): its instances wrote what they held when
    # Triton finalized them
    deadline = time.monotonic() + 60
    while True:
        v1 = [doc for doc in log_stats(click_log)["by_writer"].values() if doc["version"] == "1"]
        if all(doc["closed"] for doc in v1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(v1) == 2 and all(doc["closed"] and doc["clicks_dropped"] == 0 for doc in v1), v1
    logged = pd.concat([pd.read_parquet(f) for f in sorted(click_log.glob("clicks-*.parquet"))], ignore_index=True)
    readme_clicks = clicks_of(request_arrays(body))
    assert readme_clicks <= clicks_of(logged[logged["model_version"] == 1])  # the copy the app vouched for
    assert set(logged.loc[logged["model_version"] == 1, "client_id"]) == {"readme-app"}
    assert sum(doc["requests_unvouched"] for doc in v1) >= 2  # the README's own request, sent twice without the key

    fall_ids = world["new"]["talk_id"].tolist()
    fall_body = json.loads(json.dumps(body))
    talks = next(i for i in fall_body["inputs"] if i["name"] == "talk_id")
    talks["data"] = [fall_ids[i] for i in (0, 6, 11)][:len(talks["data"])]
    answer = post(url + path, fall_body)
    assert answer["model_version"] == "2"
    assert_answer_equals(answer, lean_transform(load_version_ensemble(repo, 2), request_arrays(fall_body)))
    got = outputs(answer)["talk_ids"].ravel().tolist()
    assert set(got) <= set(fall_ids) and not set(got) & set(talks["data"])
    # the spring request now gets the new catalog's fallback: catalog order, NaN scores
    old_answer = outputs(post(url + path, body))
    assert old_answer["talk_ids"].ravel().tolist() == fall_ids[:K] and np.isnan(old_answer["scores"]).all()

    status = subprocess.run([str(BIN / "gtcrec-swap"), "--status", "--repository", str(repo), "--url",
                             f"127.0.0.1:{served.grpc_port}"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["serving"] == [2] and doc["agree"]
    assert sorted(p.name for p in export.iterdir() if p.name.isdigit()) == ["1"]  # notebook 05's export untouched


# ------------------------------------------------------------------------------------------------ adapting

@pytest.mark.server
def test_adapt_killed_mid_cycle_changes_nothing_and_the_next_run_proceeds(world, served):
    """Attendees of the fall event click (pairs the talks' text does not show); gtcrec-adapt is killed while it
    fits, then runs again: the first run leaves the served version, the repository and the log as they were."""
    import tritonclient.grpc as grpcclient

    repo = world["art"] / "serve" / "model_repository"
    click_log = world["root"] / "clicklog"
    fall = world["new"]["talk_id"].tolist()
    follow = np.random.default_rng(3).permutation(len(fall))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    rng = np.random.default_rng(4)
    app = cl.log_parameters(log_key(world), "")  # the app's clicks (each session its own client)
    for i in range(260):  # the newest 52 choose (some set aside as repeated walks): 100+ clicks (MIN_CHOOSE_CLICKS)
        walk = [int(rng.integers(len(fall)))]
        for _ in range(3):
            walk.append(int(follow[walk[-1]]))
        session = pd.DataFrame({"session_id": f"live-{i}", "talk_id": [fall[j] for j in walk],
                                "timestamp": np.int64(1_730_000_000_000) + 600_000 * i + 60_000 * np.arange(4)})
        for t in range(1, 5):  # each request carries the session so far
            cl.infer_arrays(client, cl.request_arrays(session.head(t)), parameters=app)
    client.close()
    time.sleep(2.5)  # the log writes a segment every second
    before = {f.name: f.stat().st_size for f in click_log.iterdir()}
    versions = swap.repository_versions(repo, NAME)
    args = [str(BIN / "gtcrec-adapt"), "--repository", str(repo), "--url", f"127.0.0.1:{served.grpc_port}",
            "--model-dir", str(world["model_dir"]), "--click-log", str(click_log), "--cache", str(world["cache"]),
            "--budget", "10"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    said = []
    for line in proc.stderr:  # the choice has started: nothing is written until the load
        said.append(line)
        if "sessions to fit" in line:
            proc.kill()
            break
    assert proc.wait(timeout=60) == -signal.SIGKILL, "".join(said)[-3000:]
    assert swap.serving_versions(f"127.0.0.1:{served.grpc_port}", NAME) == [2]
    assert swap.repository_versions(repo, NAME) == versions and not (repo / NAME / "gtcrec_live.json").exists()
    assert {n: (click_log / n).stat().st_size for n in before} == before  # the log as it was (new segments may come)

    # again, as a repeat loop of one cycle (it runs the first at once), with the options spelled out
    done = subprocess.run(args + ["--json", "-", "--every-seconds", "1", "--cycles", "1", "--timeout", "300",
                                  "--model-name", NAME, "--catalog", str(world["fall"])],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cycle = json.loads(done.stdout.strip().splitlines()[-1])
    assert cycle["log"]["sessions"] >= 200 and cycle["serving_before"] == 2
    assert cycle["published"] and cycle["version"] == 3, cycle["reason"]  # the untrained model cannot know the pairs
    assert swap.serving_versions(f"127.0.0.1:{served.grpc_port}", NAME) == [3]
    assert (repo / NAME / "live" / "3").is_dir()  # the eager model, for the next cycle's guard
    status = subprocess.run([str(BIN / "gtcrec-adapt"), "--status", "--repository", str(repo)],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and len(json.loads(status.stdout)) == 1


# ------------------------------------------------------------------------------------------------ healing

def log_key(world) -> str:
    """The logging key gtcrec-serve made (--log-key-file): what the app sends with the clicks it vouches for."""
    return (world["root"] / "log.key").read_text().strip()


def probe(world) -> dict[str, np.ndarray]:
    fall = world["new"]["talk_id"].tolist()
    clicks = pd.DataFrame({"session_id": ["a", "a", "b", "b", "b"], "talk_id": [fall[1], fall[4], fall[9], fall[2], fall[7]],
                           "timestamp": np.arange(5, dtype=np.int64) * 60_000})
    return cl.request_arrays(clicks)


@pytest.mark.server
def test_a_killed_stub_is_healed_while_a_client_keeps_asking(world, served, tmp_path):
    """Kill one of the two stub processes (SIGKILL, as an out-of-memory kill would) while one client
    sends requests for 30 s, alternating the client helpers (one retry on the unhealthy-stub error)
    and plain requests (no retry). Target: correct answers again within 5 s of the kill, at most 2% of
    the requests of the next 60 s failed; held here over the first 30 s, where every failure falls
    (the stub is reloaded within ~12 s), which is the stricter share."""
    import tritonclient.grpc as grpcclient

    server_pid = served.server_pid()
    stubs = {s.instance: s for s in stub_processes(server_pid) if s.model == NAME}
    assert sorted(stubs) == [f"{NAME}_0_0", f"{NAME}_0_1"], stubs
    request = probe(world)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    app = cl.log_parameters(log_key(world), "probe-app")  # the app vouches: every answered click is logged
    want = cl.infer_arrays(client, request, parameters=app)
    for _ in range(20):  # both instances answer alike before the kill
        got = cl.infer_arrays(client, request, retries=0, parameters=app)
        np.testing.assert_array_equal(got["talk_ids"], want["talk_ids"])
    mark = len(served.lines)
    victim = stubs[f"{NAME}_0_1"]
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    rows = []
    while time.monotonic() - killed_at < 30.0:
        for retries in (1, 0):  # helpers, then a plain request
            sent = time.monotonic()
            try:
                got = cl.infer_arrays(client, request, retries=retries, parameters=app)
                ok = bool(np.array_equal(got["talk_ids"], want["talk_ids"])
                          and np.allclose(got["scores"], want["scores"], rtol=1e-5, equal_nan=True))
                error = "" if ok else "wrong answer"
            except Exception as exc:  # noqa: BLE001 - counted
                ok, error = False, str(exc)[:200]
            rows.append({"helpers": retries == 1, "sent": sent - killed_at, "ms": (time.monotonic() - sent) * 1e3,
                         "ok": ok, "error": error})
    client.close()
    frame = pd.DataFrame(rows)
    healed = served.wait_for("reloaded: version ", timeout=5, after=mark)
    seconds = float(re.search(r"reloaded in ([0-9.]+) s", healed).group(1))
    helpers, plain = frame[frame["helpers"]], frame[~frame["helpers"]]

    def last_failure(part):
        bad = part[~part["ok"]]
        return float(bad["sent"].max() + bad["ms"].max() / 1e3) if len(bad) else 0.0

    result = {"requests": len(frame), "helpers_failed": int((~helpers["ok"]).sum()),
              "helpers_requests": len(helpers), "plain_failed": int((~plain["ok"]).sum()),
              "plain_requests": len(plain), "helpers_correct_after_s": last_failure(helpers),
              "plain_correct_after_s": last_failure(plain), "reload_seconds": seconds,
              "errors": sorted(set(frame.loc[~frame["ok"], "error"]))[:3]}
    (tmp_path / "heal.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    # the instance was healed: both instances have live stubs again, none of them the killed one
    after = {s.instance: s.pid for s in stub_processes(server_pid) if s.model == NAME}
    assert sorted(after) == sorted(stubs) and victim.pid not in after.values()
    assert not psutil.pid_exists(victim.pid) or psutil.Process(victim.pid).status() == psutil.STATUS_ZOMBIE
    # what a client sees
    assert result["helpers_correct_after_s"] <= 5.0, result
    assert result["helpers_failed"] <= 0.02 * len(helpers), result
    assert result["plain_failed"] <= 0.02 * len(plain), result
    assert all("is not healthy" in e for e in result["errors"]), result  # no other kind of failure
    assert len(helpers) > 250  # the client really kept asking
    # answers after the heal are those of before the kill
    late = frame[frame["sent"] > result["plain_correct_after_s"] + 1]
    assert len(late) > 100 and late["ok"].all()


# ------------------------------------------------------------------------------------------------ stopping

@pytest.mark.server
def test_sigterm_stops_the_server_and_leaves_no_process(world, served):
    from gtcrec.serving.server import _port_is_free

    pids = served.tree()
    assert len(pids) >= 4  # gtcrec-serve, tritonserver, two stubs
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                                              psutil.STATUS_ZOMBIE for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert left == []
    assert served.wait_for("[gtcrec-serve] stopped", timeout=5)
    assert "SIGTERM: stopping" in "\n".join(served.lines)
    assert _port_is_free("127.0.0.1", served.http_port) and _port_is_free("127.0.0.1", served.grpc_port)
    # the click log (--click-log): the instances serving at the stop closed their logs (finalize). The copy that
    # the healing test replaced keeps two open ones: the stub it killed, and its healthy sibling, because Triton
    # never finishes unloading a copy with a dead stub and exits without finalizing it (that writer's time
    # rotation had written what it got)
    clicks, report = read_click_log(world["root"] / "clicklog", catalog_ids=world["new"]["talk_id"])
    writers = report["writers"]
    docs = sorted(writers["by_writer"].values(), key=lambda d: d["started_at"])
    states = [(d["version"], d["instance"], d["pid"], d["closed"]) for d in docs]
    assert all(d["closed"] for d in docs[-2:]) and writers["open"] <= 2, states
    assert writers["clicks_dropped"] == 0 and writers["clicks_lost"] == 0 and writers["write_errors"] == 0
    assert not report["files_skipped"]
    assert clicks_of(probe(world)) <= clicks_of(clicks)
