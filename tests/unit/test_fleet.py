"""A fleet of real tritonservers behind a real HAProxy, and catalog swaps across it.

The small world of test_swap (a 40-talk "old" catalog, a 60-talk "new" one, a tiny untrained model
exported as version 1) is served by two replicas sharing one repository, behind the balancer. A
client sends requests through the balancer's gRPC port while the fleet swaps, fails to swap (one
replica refuses) and rolls back; each answer says which catalog it came from.

Needs HAProxy (``make env`` unpacks Debian's package into the venv): without it the server tests are
skipped with the reason.
"""
from __future__ import annotations

import json
import time

import pytest

from gtcrec import swap
from gtcrec.serving import balancer as lb
from gtcrec.serving import client as cl
from gtcrec.serving.server import free_ports

from test_swap import K_MODEL, NAME, new_ids, old_ids, world  # noqa: F401 (world is a fixture)

# The fleet's tests share one fleet and build on each other (a version refused, then the next swap's number):
# one pytest-xdist worker runs them all, in order (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("fleet")

HAVE_HAPROXY, HAPROXY_WHY = lb.haproxy_available()
needs_haproxy = pytest.mark.skipif(not HAVE_HAPROXY, reason=f"no load balancer: {HAPROXY_WHY}")
N_REPLICAS = 2


# ------------------------------------------------------------------------------------ no server

def test_config_has_both_protocols_health_checks_and_every_replica():
    text = lb.haproxy_config([("127.0.0.1", 9000, 9001), ("127.0.0.1", 9002, 9003)], http_port=8000,
                             grpc_port=8001, admin_socket="/tmp/x.sock", check_interval_ms=250)
    assert "bind 127.0.0.1:8001 proto h2" in text and "bind 127.0.0.1:8000\n" in text
    assert text.count("option httpchk GET /v2/health/ready") == 2
    assert "option httpchk GET /v2/models/m/ready" in lb.haproxy_config([("h", 1, 2)], check_path=lb.model_ready_path("m"))
    assert "server r0 127.0.0.1:9000 check" in text and "server r1 127.0.0.1:9002 check" in text
    assert "server r1 127.0.0.1:9003 proto h2 check port 9002 check-proto h1" in text
    assert "inter 250ms" in text and "stats socket /tmp/x.sock" in text
    dns = lb.haproxy_config(dns_service="triton", dns_replicas=5, bind="*")
    assert "server-template r 5 triton:8001 proto h2 check port 8000 check-proto h1" in dns
    assert "parse-resolv-conf" in dns
    with pytest.raises(ValueError):
        lb.haproxy_config()


def test_missing_balancer_binary_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(lb.ENV_BINARY, str(tmp_path / "nowhere"))
    with pytest.raises(lb.BalancerError, match="not an executable file.*make env"):
        lb.find_haproxy()
    monkeypatch.delenv(lb.ENV_BINARY)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(lb, "_venv_haproxy", lambda prefix: None)
    with pytest.raises(lb.BalancerError, match="No haproxy found: run `make env`"):
        lb.find_haproxy()
    ok, why = lb.haproxy_available(tmp_path / "nowhere")
    assert not ok and "not an executable" in why


@needs_haproxy
def test_haproxy_checks_configurations():
    good = lb.haproxy_config([("127.0.0.1", 9000, 9001)], 8000, 8001)
    assert lb.check_config(good)[0]
    ok, messages = lb.check_config(good.replace("balance roundrobin", "balance nonsense"))
    assert not ok and "Fatal errors" in messages, messages


def test_several_urls_need_fleet(capsys):
    with pytest.raises(SystemExit) as info:
        swap.main(["--status", "--repository", "r", "--url", "127.0.0.1:1", "--url", "127.0.0.1:2"])
    assert info.value.code == 2 and "--fleet" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ real servers

@pytest.fixture(scope="module")
def fleet(world):  # noqa: F811
    if not HAVE_HAPROXY:
        pytest.skip(f"no load balancer: {HAPROXY_WHY}")
    with swap.Fleet(world["repo"], n_replicas=N_REPLICAS, model_name=NAME, check_interval=0.2) as f:
        yield f


def catalogs(world):  # noqa: F811
    return old_ids(world), new_ids(world)


def through_balancer(fleet, world, n=1):  # noqa: F811
    """Catalogs answering ``n`` requests sent through the balancer's gRPC port."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(fleet.grpc_url)
    try:
        out = []
        for _ in range(n):
            answer = cl.infer_arrays(client, swap.probe_request(*catalogs(world)), model_name=NAME)
            out.append(swap.answer_catalog(answer["talk_ids"], *map(set, catalogs(world))))
        return out
    finally:
        client.close()


def traffic(fleet, world):  # noqa: F811
    t = swap.Traffic(fleet.balancer, swap.probe_request(*catalogs(world)), *catalogs(world), model_name=NAME,
                     pause=0.005, max_requests=20000, max_seconds=180).start()
    t.wait_for(20)
    return t


@pytest.mark.server
def test_balancer_spreads_http_and_grpc_over_the_replicas(world, fleet):  # noqa: F811
    before = fleet.balancer.requests_per_replica("grpc")
    assert set(through_balancer(fleet, world, 10)) == {"old"}
    after = fleet.balancer.requests_per_replica("grpc")
    assert all(after[r] - before[r] == 10 // N_REPLICAS for r in after), (before, after)  # round robin
    assert all(s == "UP" for s in fleet.balancer.backend_states().values())
    # HTTP/1.1 passes through too: the ready endpoint and an inference over tritonclient.http
    assert fleet.balancer.ready()
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(fleet.http_url)
    try:
        answer = cl.infer_arrays(client, swap.probe_request(*catalogs(world)), model_name=NAME)
    finally:
        client.close()
    assert swap.answer_catalog(answer["talk_ids"], *map(set, catalogs(world))) == "old"


@pytest.mark.server
def test_health_checks_take_a_dead_replica_out(world, fleet):  # noqa: F811
    dead_http, dead_grpc = free_ports(2)  # nothing listens there
    with lb.Balancer([fleet.replicas[0], ("127.0.0.1", dead_http, dead_grpc)], wait_all=False,
                     check_interval=0.2) as b:
        b.wait_for_state("r1", "DOWN")
        assert b.backend_states()[("grpc", "r0")] == "UP"
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(b.grpc_url)
        try:
            for _ in range(6):  # all answered by r0: the dead one gets none
                cl.infer_arrays(client, swap.probe_request(*catalogs(world)), model_name=NAME)
        finally:
            client.close()
        assert b.requests_per_replica("grpc")["r1"] == 0
        b.set_state("r0", "maint")  # the runtime API takes a replica out as well
        b.wait_for_state("r0", "MAINT")
        b.set_state("r0", "ready")


@pytest.mark.server
def test_a_refusing_replica_leaves_the_whole_fleet_on_the_old_catalog(world, fleet):  # noqa: F811
    assert fleet.serving() == {r.grpc_url: [1] for r in fleet.replicas}

    def break_for_replica_1(index, folder):
        if index == 1:  # replica 0 has loaded the version already; replica 1 gets a truncated model file
            artifact = folder / "ensemble" / "topk_model.pt"
            artifact.write_bytes(artifact.read_bytes()[:1024])

    t = traffic(fleet, world)
    with pytest.raises(swap.FleetSwapError) as info:
        swap.swap_fleet(world["new_csv"], world["repo"], fleet.replicas, world["model_dir"], world["cache"],
                        model_name=NAME, _before_replica_load=break_for_replica_1)
    failed_at = t.at(time.perf_counter())
    t.wait_for(len(t.rows) + 35)  # 30 sent after the failure, and the few in flight at that moment
    frame = t.stop()
    err = info.value
    assert err.refused == fleet.replicas[1].grpc_url and err.undone == [fleet.replicas[0].grpc_url]
    assert err.version == 2 and err.server_error and not err.undo_errors
    assert fleet.serving() == {r.grpc_url: [1] for r in fleet.replicas}
    assert not (world["repo"] / NAME / "2").exists()
    assert int((~frame["ok"]).sum()) == 0, (frame[~frame["ok"]]["error"].head().tolist(), fleet.balancer.log_tail(200))
    assert set(frame["catalog"]) <= {"old", "new"}  # every answer wholly from one catalog
    after = frame[frame["sent"] >= failed_at]
    assert len(after) >= 30 and (after["catalog"] == "old").all()
    assert set(through_balancer(fleet, world, 4)) == {"old"}
    events = swap.read_history(world["repo"], NAME)["events"]
    assert events[-1]["action"] == "fleet-swap-failed" and events[-1]["refused"] == err.refused


@pytest.fixture(scope="module")
def fleet_swapped(world, fleet, tmp_path_factory):  # noqa: F811
    """The fleet swap from the command line (``gtcrec-swap NEW --fleet --url A --url B``), with ``--k`` (two more
    candidates than the serving version's) and ``--timeout``; its ``--json`` is the result."""
    folder = tmp_path_factory.mktemp("fleet-swap")
    (folder / "control.key").write_text(fleet.control_key)
    urls = [a for r in fleet.replicas for a in ("--url", r.grpc_url)]
    t = traffic(fleet, world)
    started = time.perf_counter()
    code = swap.main([str(world["new_csv"]), "--fleet", "--repository", str(world["repo"]), "--model-name", NAME,
                      "--model-dir", str(world["model_dir"]), "--cache", str(world["cache"]), "--k", str(K_MODEL + 2),
                      "--timeout", "120", "--control-key-file", str(folder / "control.key"),
                      "--json", str(folder / "swap.json")] + urls)
    ended = time.perf_counter()
    assert code == 0
    t.wait_for(len(t.rows) + 41)  # 40 sent after the swap returned, plus the one that may be in flight then
    frame = t.stop()
    summary = swap.traffic_summary(frame, t.at(started), t.at(ended))
    return json.loads((folder / "swap.json").read_text()), frame, summary


@pytest.mark.server
def test_fleet_swap_through_the_balancer_drops_nothing_and_ends_on_the_new_catalog(world, fleet,  # noqa: F811
                                                                                     fleet_swapped):
    result, frame, summary = fleet_swapped
    v = result["version"]
    assert result["action"] == "fleet-swap" and result["swap"]["k_model"] == K_MODEL + 2  # --k
    assert result["previous_version"] == 1 and v == 3  # 2 was refused and archived: numbers are never reused
    assert result["serving"] == {r.grpc_url: [v] for r in fleet.replicas} == fleet.serving()
    assert result["replicas"] == [r.grpc_url for r in fleet.replicas]
    assert summary["failed"] == 0, (frame[~frame["ok"]]["error"].head().tolist(), fleet.balancer.log_tail(200))
    assert set(frame["catalog"]) <= {"old", "new"}  # no mixed answer
    assert summary["before_only"] and summary["after_only"] and summary["requests_after"] >= 40
    assert set(through_balancer(fleet, world, 4)) == {"new"}
    print(f"\nfleet swap: {summary['requests']} requests, {summary['failed']} failed, "
          f"rollout {result['rollout_seconds']:.1f} s, total {result['total_seconds']:.1f} s, answers {summary['answers']}")


@pytest.mark.server
def test_fleet_rollback_from_the_command_line(world, fleet, fleet_swapped, tmp_path, monkeypatch):  # noqa: F811
    urls = [a for r in fleet.replicas for a in ("--url", r.grpc_url)]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))  # no key file either: refused
    assert swap.main(["--fleet", "--status", "--repository", str(world["repo"]), "--model-name", NAME] + urls) == 2
    key_file = tmp_path / "control.key"  # one key on every replica, in a file as a deployment's secret
    key_file.write_text(fleet.control_key)
    urls += ["--control-key-file", str(key_file)]
    assert swap.main(["--fleet", "--status", "--repository", str(world["repo"]), "--model-name", NAME,
                      "--json", str(tmp_path / "status.json")] + urls) == 0
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["consistent"] and set(map(tuple, status["serving"].values())) == {(3,)}
    t = traffic(fleet, world)
    started = t.at(time.perf_counter())
    assert swap.main(["--fleet", "--rollback", "--repository", str(world["repo"]), "--model-name", NAME,
                      "--json", str(tmp_path / "rb.json")] + urls) == 0
    ended = t.at(time.perf_counter())
    t.wait_for(len(t.rows) + 30)
    frame = t.stop()
    summary = swap.traffic_summary(frame, started, ended, before="new", after="old")
    assert summary["failed"] == 0 and summary["before_only"] and summary["after_only"]
    assert set(frame["catalog"]) <= {"old", "new"}
    assert json.loads((tmp_path / "rb.json").read_text())["to_version"] == 1
    assert fleet.serving() == {r.grpc_url: [1] for r in fleet.replicas}
    assert set(through_balancer(fleet, world, 4)) == {"old"}
    # nothing older left: the fleet refuses, every replica unchanged
    assert swap.main(["--fleet", "--rollback", "--repository", str(world["repo"]), "--model-name", NAME] + urls) == 1
    assert fleet.serving() == {r.grpc_url: [1] for r in fleet.replicas}


@pytest.mark.server
def test_replicas_that_disagree_are_refused(world, fleet):  # noqa: F811
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(swap.FleetSwapError, match="common version") as info:
        swap.swap_fleet(world["new_csv"], world["repo"], [fleet.replicas[0], dead], world["model_dir"],
                        world["cache"], model_name=NAME)
    assert "unreachable" in str(info.value)
