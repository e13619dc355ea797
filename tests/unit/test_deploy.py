"""The fleet's deployment files, checked offline by maintained validators (no Docker engine, no cluster).

* ``docker/docker-compose.fleet.yml``: check-jsonschema against the Compose Specification (the helper of
  test_docker), plus this project's rules for a fleet (replicas publish nothing, the balancer publishes
  on loopback only, shared memory, one shared repository mounted from inside the repository).
* ``docker/k8s/*.yaml``: kubernetes-validate (the Kubernetes OpenAPI schemas, strict: unknown fields
  fail), plus the project's rules (probes on Triton's endpoints, selectors that match, the autoscaler's
  target and its ceiling against the balancer's slots, the shared claim).
* ``docker/haproxy.fleet.cfg`` and the ConfigMap's ``haproxy.cfg``: what
  :func:`gtcrec.serving.balancer.haproxy_config` writes, and accepted by ``haproxy -c`` where HAProxy is
  installed.

* The live loop: the replicas log into one shared folder with the logging key as a secret, and one job
  (``gtcrec-adapt --every``, the compose service ``adapt``, the Deployment ``gtcrec-adapt``) reads that
  folder and loads versions on every replica's address with the control key as a secret.

Each validator is also run on a broken input, to show it catches what it is for.
"""
from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gtcrec.serving import balancer as lb
from test_docker import DOCKER, LOOPBACK, MIN_SHM_BYTES, REPO, compose_schema_errors, parse_port, size_bytes

COMPOSE_FLEET = DOCKER / "docker-compose.fleet.yml"
HAPROXY_CFG = DOCKER / "haproxy.fleet.cfg"
K8S = DOCKER / "k8s"
K8S_VERSION = "1.37.0"
MODEL = "executor_model"
SLOTS = 8  # server-template slots in both balancer configurations
HAVE_HAPROXY, HAPROXY_WHY = lb.haproxy_available()


def expected_config(service: str) -> str:
    return lb.haproxy_config(dns_service=service, dns_replicas=SLOTS, bind="*", check_path=lb.model_ready_path(MODEL))


def k8s_documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def k8s_errors(doc: dict) -> str:
    """kubernetes-validate's report on one resource, strict ('' when valid)."""
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return ""


def find(docs, kind: str, name: str) -> dict:
    return next(d for _, d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


# ---------------------------------------------------------------------------------------------
# compose

def fleet_compose_problems(doc: dict, compose_dir: Path) -> list[str]:
    """This project's rules for the fleet's compose file (keys and types are the schema's job)."""
    services = doc.get("services") or {}
    problems = []
    replicas = [n for n, s in services.items() if "gtcrec.swap.fleet" in " ".join(map(str, s.get("command") or []))]
    balancers = [n for n, s in services.items() if str(s.get("image", "")).startswith("haproxy:")]
    if len(replicas) != 1 or len(balancers) != 1:
        return [f"want one replica service and one haproxy service, found {replicas} and {balancers}"]
    rep, bal = services[replicas[0]], services[balancers[0]]
    if int((rep.get("deploy") or {}).get("replicas", 1)) < 2:
        problems.append("fewer than 2 replicas")
    if rep.get("ports"):
        problems.append("a replica publishes ports: clients must go through the balancer")
    if size_bytes(rep.get("shm_size", 0)) < MIN_SHM_BYTES:
        problems.append("replicas need shm_size >= 1 GiB")
    mounts = [str(v) for v in rep.get("volumes") or []]
    if not any(v.endswith(":/models") for v in mounts):
        problems.append("no shared model repository mounted at /models")
    for v in mounts:
        source = (compose_dir / v.split(":")[0]).resolve()
        if source != REPO and REPO not in source.parents:
            problems.append(f"bind mount {v} leaves the repository")
    published = [parse_port(p) for p in bal.get("ports") or []]
    if {p["target"] for p in published} != {"8000", "8001"}:
        problems.append("the balancer must publish 8000 (HTTP) and 8001 (gRPC)")
    if any(p["host_ip"] not in LOOPBACK for p in published):
        problems.append("the balancer publishes on all interfaces, not 127.0.0.1")
    cfg = [str(v).split(":")[0] for v in bal.get("volumes") or [] if "haproxy.cfg" in str(v)]
    if not cfg or not (compose_dir / cfg[0]).is_file():
        problems.append("the balancer's haproxy.cfg is not mounted from an existing file")
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        if image and (":" not in image or image.endswith(":latest")):
            problems.append(f"{name}: image {image!r} not pinned")
    return problems


def test_compose_validators_catch_broken_fleet_files(tmp_path):
    doc = yaml.safe_load(COMPOSE_FLEET.read_text())
    broken = copy.deepcopy(doc)
    broken["services"]["triton"]["deploy"]["replicass"] = 3  # schema: unknown key
    broken["services"]["balancer"]["depends_onn"] = ["triton"]
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(broken))
    report = compose_schema_errors(path)
    assert "replicass" in report and "depends_onn" in report, report
    broken = copy.deepcopy(doc)
    broken["services"]["triton"]["deploy"]["replicas"] = 1
    broken["services"]["triton"]["ports"] = ["8000:8000"]
    broken["services"]["triton"]["shm_size"] = "64m"
    broken["services"]["balancer"]["ports"] = ["8000:8000", "127.0.0.1:8001:8001"]
    broken["services"]["balancer"]["image"] = "haproxy:latest"
    problems = "\n".join(fleet_compose_problems(broken, DOCKER))
    for part in ("fewer than 2", "publishes ports", "shm_size", "all interfaces", "not pinned"):
        assert part in problems, part


def test_fleet_compose_file_is_valid():
    assert compose_schema_errors(COMPOSE_FLEET) == ""
    assert fleet_compose_problems(yaml.safe_load(COMPOSE_FLEET.read_text()), DOCKER) == []


# ---------------------------------------------------------------------------------------------
# the balancer's configuration files

def test_balancer_configurations_are_what_the_code_writes():
    assert HAPROXY_CFG.read_text() == expected_config("triton")
    cm = find(k8s_documents(), "ConfigMap", "gtcrec-haproxy")
    triton = find(k8s_documents(), "Service", "gtcrec-triton")
    fqdn = f"{triton['metadata']['name']}.{triton['metadata']['namespace']}.svc.cluster.local"
    assert cm["data"]["haproxy.cfg"].rstrip("\n") == expected_config(fqdn).rstrip("\n")


@pytest.mark.skipif(not HAVE_HAPROXY, reason=f"no haproxy to check configurations: {HAPROXY_WHY}")
def test_haproxy_accepts_the_deployed_configurations():
    assert lb.check_config(HAPROXY_CFG.read_text())[0]
    cm = find(k8s_documents(), "ConfigMap", "gtcrec-haproxy")
    ok, messages = lb.check_config(cm["data"]["haproxy.cfg"])
    assert ok, messages
    ok, messages = lb.check_config(HAPROXY_CFG.read_text().replace("server-template r", "server-templat r"))
    assert not ok and "Fatal errors" in messages


# ---------------------------------------------------------------------------------------------
# Kubernetes

def test_kubernetes_validate_catches_broken_manifests():
    docs = k8s_documents()
    deployment = copy.deepcopy(find(docs, "Deployment", "gtcrec-triton"))
    deployment["spec"]["replicas"] = "two"
    assert "'two' is not of type 'integer'" in k8s_errors(deployment)
    deployment = copy.deepcopy(find(docs, "Deployment", "gtcrec-triton"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"  # strict
    assert "paht" in k8s_errors(deployment)
    hpa = copy.deepcopy(find(docs, "HorizontalPodAutoscaler", "gtcrec-triton"))
    del hpa["spec"]["maxReplicas"]
    assert "maxReplicas" in k8s_errors(hpa)


def test_kubernetes_manifests_are_valid():
    docs = k8s_documents()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap",
                                            "PersistentVolumeClaim", "Namespace"}
    for name, doc in docs:
        assert k8s_errors(doc) == "", f"{name}: {doc['kind']}/{doc['metadata']['name']}"


def test_kubernetes_manifests_fit_together():
    docs = k8s_documents()
    triton = find(docs, "Deployment", "gtcrec-triton")
    pod = triton["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    assert container["readinessProbe"]["httpGet"]["path"] == lb.model_ready_path(MODEL)
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "gtcrec.swap.fleet" in container["command"] and "0.0.0.0" in container["command"]
    assert "cpu" in container["resources"]["requests"]  # the autoscaler's utilisation needs a request
    assert triton["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    headless = find(docs, "Service", "gtcrec-triton")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    hpa = find(docs, "HorizontalPodAutoscaler", "gtcrec-triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gtcrec-triton"}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= SLOTS
    claim = find(docs, "PersistentVolumeClaim", "gtcrec-models")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # one repository, written by the swap, read by all
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "gtcrec-models" for v in pod["spec"]["volumes"])
    balancer = find(docs, "Deployment", "gtcrec-balancer")
    front = find(docs, "Service", "gtcrec")
    assert front["spec"]["selector"].items() <= balancer["spec"]["template"]["metadata"]["labels"].items()
    assert {p["port"] for p in front["spec"]["ports"]} == {8000, 8001}
    namespaces = {d["metadata"].get("namespace") for _, d in docs if d["kind"] != "Namespace"}
    assert namespaces == {find(docs, "Namespace", "gtcrec")["metadata"]["name"]}


# ---------------------------------------------------------------------------------------------
# the live loop: every replica logs into one folder, one job adapts and loads on every replica

def _arg(command, flag):
    return command[command.index(flag) + 1] if flag in command else None


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host source of a compose service's bind mounts (options dropped)."""
    return {v.split(":")[1]: v.split(":")[0] for v in map(str, service.get("volumes") or [])}


def live_loop_problems(doc: dict) -> list[str]:
    """This project's rules for the live loop in the fleet's compose file."""
    from gtcrec.live.cycle import _parser

    services = doc.get("services") or {}
    rep = services.get("triton") or {}
    loops = [n for n, s in services.items() if (s.get("command") or [None])[0] == "gtcrec-adapt"]
    if len(loops) != 1:
        return [f"want one gtcrec-adapt service, found {loops}"]
    loop = services[loops[0]]
    problems = []
    args = _parser().parse_args(loop["command"][1:])  # the command parses
    if args.replicas_of != "triton:8001" or args.every is None:
        problems.append("the loop must run --every N over --replicas-of triton:8001 (every replica's gRPC port)")
    logged = _arg(rep.get("command") or [], "--click-log")
    if logged is None or _mounts(rep).get(logged) != _mounts(loop).get(args.click_log):
        problems.append("the replicas do not log into the folder the loop reads")
    if _mounts(rep).get("/models") != _mounts(loop).get(args.repository):
        problems.append("the loop does not publish into the replicas' repository")
    key_files = {"triton": ("GTCREC_LOG_KEY_FILE", "gtcrec_log_key"), loops[0]: ("GTCREC_CONTROL_KEY_FILE",
                                                                                  "gtcrec_control_key")}
    for name, (env, secret) in key_files.items():
        svc = services[name]
        if (svc.get("environment") or {}).get(env) != f"/run/secrets/{secret}" or secret not in (svc.get("secrets") or []):
            problems.append(f"{name}: the key {secret} is not a mounted secret named by ${env}")
        if secret not in (doc.get("secrets") or {}):
            problems.append(f"no top-level secret {secret}")
    return problems


def test_fleet_compose_runs_the_live_loop_on_every_replicas_log():
    doc = yaml.safe_load(COMPOSE_FLEET.read_text())
    assert live_loop_problems(doc) == []
    broken = copy.deepcopy(doc)
    broken["services"]["triton"]["volumes"][1] = "../artifacts/serve/elsewhere:/clicklog"
    broken["services"]["adapt"]["environment"] = {}
    broken["services"]["adapt"]["command"][2] = "triton:8000"
    del broken["secrets"]["gtcrec_log_key"]
    problems = "\n".join(live_loop_problems(broken))
    for part in ("folder the loop reads", "adapt: the key gtcrec_control_key", "--replicas-of", "gtcrec_log_key"):
        assert part in problems, part


def test_kubernetes_runs_the_live_loop_on_every_pods_log():
    from gtcrec.live.cycle import _parser

    docs = k8s_documents()
    triton, loop = find(docs, "Deployment", "gtcrec-triton"), find(docs, "Deployment", "gtcrec-adapt")
    headless = find(docs, "Service", "gtcrec-triton")
    assert loop["spec"]["replicas"] == 1 and loop["spec"]["strategy"]["type"] == "Recreate"  # one cycle at a time
    args = _parser().parse_args(loop["spec"]["template"]["spec"]["containers"][0]["command"][1:])
    fqdn = f"{headless['metadata']['name']}.{headless['metadata']['namespace']}.svc.cluster.local"
    assert args.replicas_of == f"{fqdn}:8001" and args.every

    def pod(deployment):
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        return container, mounts, volumes, env

    def claim(mounts, volumes, path):
        return volumes[mounts[path]["name"]].get("persistentVolumeClaim", {}).get("claimName")

    def secret_of(mounts, volumes, env, variable):
        folder = str(Path(env[variable]).parent)
        return volumes[mounts[folder]["name"]].get("secret", {}).get("secretName")

    t_container, t_mounts, t_volumes, t_env = pod(triton)
    l_container, l_mounts, l_volumes, l_env = pod(loop)
    logged = _arg(t_container["command"], "--click-log")
    assert claim(t_mounts, t_volumes, logged) == claim(l_mounts, l_volumes, args.click_log) == "gtcrec-clicklog"
    assert l_mounts[args.click_log].get("readOnly") is True  # the loop only reads the log
    assert claim(t_mounts, t_volumes, "/models") == claim(l_mounts, l_volumes, args.repository) == "gtcrec-models"
    assert secret_of(t_mounts, t_volumes, t_env, "GTCREC_LOG_KEY_FILE") == "gtcrec-log-key"
    assert secret_of(t_mounts, t_volumes, t_env, "GTCREC_CONTROL_KEY_FILE") == "gtcrec-control-key"
    assert secret_of(l_mounts, l_volumes, l_env, "GTCREC_CONTROL_KEY_FILE") == "gtcrec-control-key"
    for name in ("gtcrec-clicklog", "gtcrec-artifacts"):
        assert "ReadWriteMany" in find(docs, "PersistentVolumeClaim", name)["spec"]["accessModes"]
    assert args.model_dir.startswith("/artifacts/") and claim(l_mounts, l_volumes, "/artifacts") == "gtcrec-artifacts"
