"""The explain core on hand-made facts: a fake clock (plain floats), a seeded RNG, no sockets."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace

from sidecar.catalog.model import CatalogSnapshot, HealthStatus, NodeInfo, ServiceMetadata
from sidecar.config.model import (
    AuthorizationConfig,
    AuthorizationRule,
    CircuitBreakerConfig,
    Config,
    OutlierDetectionConfig,
    PolicyConfig,
    RetryConfig,
    TlsConfig,
)
from sidecar.config.values import Duration
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import endpoint_set
from sidecar.ops.explain import OK, REFUSE, WARN, Explanation, Facts, Question, explain, looks_like_grpc, render_text
from sidecar.resilience.cluster import Cluster
from sidecar.tls.identity import PeerIdentity

NOW = 1000.0          # the loop clock
WALL = 1_700_000_000.0
POLICY = PolicyConfig(retries=RetryConfig(attempts=1),
                      outlier_detection=OutlierDetectionConfig(consecutive_failures=2, max_ejection_percent=50))
TLS = TlsConfig("mesh.local", "ca.pem", "c.pem", "k.pem")


def snapshot(*states: tuple[str, HealthStatus, str]) -> CatalogSnapshot:
    """(node, health, node state) per instance of echo."""
    nodes = {node: NodeInfo(node, "127.0.0.1", 7000 + i, "t", node_state) for i, (node, _, node_state)
             in enumerate(states)}
    instances = tuple(ServiceMetadata(f"echo-{node}", "echo", "1", "127.0.0.1", 80, status=health, node=node)
                      for node, health, _ in states)
    return CatalogSnapshot(1, nodes, instances)


def identity(hours_left: float) -> PeerIdentity:
    return PeerIdentity("spiffe://mesh.local/service/client", "client", "mesh.local",
                        dt.datetime.fromtimestamp(WALL + hours_left * 3600, dt.UTC), 1)


def facts(snap: CatalogSnapshot, dest: Cluster | None = None, config: Config | None = None,
          service: str = "echo", hours_left: float = 20.0) -> Facts:
    config = config or Config(tls=TLS, policies={"*": POLICY})
    name = ServiceName(service)
    return Facts(config, snap, name, endpoint_set(snap, name), dest, identity(hours_left), "a", WALL - 4 * 3600)


def steps(explanation: Explanation) -> dict[str, dict[str, object]]:
    return {s["step"]: s for s in explanation.to_json()["steps"]}


def test_a_fresh_destination_is_ok_and_names_the_default_policy() -> None:
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"), ("b2", HealthStatus.HEALTHY, "alive"))
    out = explain(Question("echo", "GET", "/x"), facts(snap), NOW, WALL)
    assert out.verdict == OK, out.to_json()
    by = steps(out)
    assert by["catalog"]["says"] == "the catalog has 2 instances of echo: 2 healthy"
    assert str(by["policy"]["says"]).startswith("policies.* applies: a 15s deadline, up to 1 retry on connect-failure")
    assert by["authorization"]["data"]["rule"] == "authorization.default"   # type: ignore[index]
    assert "would go to echo-b1" in out.summary


def test_an_ejected_host_is_named_with_its_end_and_left_out_of_the_pick() -> None:
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"), ("b2", HealthStatus.HEALTHY, "alive"))
    f = facts(snap)
    dest = Cluster("echo", POLICY, random.Random(1), NOW - 10)
    assert f.endpoints is not None
    healthy, _ = dest.hosts_of(f.endpoints, NOW - 10)
    for _ in range(2):
        dest.outlier.failure(healthy[1].key, NOW - 5)
    dest.hosts[healthy[0].key].load.observe(0.004, NOW)   # read at once: no decay yet
    out = explain(Question("echo"), facts(snap, dest), NOW, WALL)
    by = steps(out)
    assert by["ejection"]["verdict"] == WARN
    says = str(by["ejection"]["says"])
    assert says.startswith("echo-b2 at 127.0.0.1:7001 is ejected until ") and "(25.0s more)" in says
    assert "ejection 1 in a row, after 2 consecutive failures" in says
    balancer = by["balancer"]["data"]
    assert balancer["pick"]["instance"] == "echo-b1"                   # type: ignore[index]
    assert balancer["pick"]["latencyEwmaMs"] == 4.0                    # type: ignore[index]
    assert "EWMA 4.00 ms" in str(by["balancer"]["says"])
    # read-only: the breaker admitted nothing, the balancer drew nothing, no counter moved
    assert dest.breaker.requests == 0 and dest.panics == 0 and dest.requests == 0


def test_every_host_ejected_is_panic_routing() -> None:
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"))
    f = facts(snap)
    dest = Cluster("echo", POLICY, random.Random(1), NOW)
    assert f.endpoints is not None
    [host], _ = dest.hosts_of(f.endpoints, NOW)
    dest.outlier.failure(host.key, NOW)
    dest.outlier.failure(host.key, NOW)
    by = steps(explain(Question("echo"), facts(snap, dest), NOW + 1, WALL))
    assert "panic" in str(by["ejection"]["says"])
    assert by["balancer"]["data"]["tier"] == "panic"                    # type: ignore[index]
    assert dest.panics == 0


def test_a_host_held_after_a_refused_connection_is_left_out_as_the_pick_leaves_it_out() -> None:
    """explain reads the cluster's own rules: the connect hold (resilience/readiness) included."""
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"), ("b2", HealthStatus.HEALTHY, "alive"))
    f = facts(snap)
    dest = Cluster("echo", POLICY, random.Random(1), NOW)
    assert f.endpoints is not None
    healthy, _ = dest.hosts_of(f.endpoints, NOW)
    healthy[0].readiness.connect_failed(NOW)              # b1 refused a connection just now
    by = steps(explain(Question("echo"), facts(snap, dest), NOW + 0.01, WALL))
    balancer = by["balancer"]["data"]
    assert balancer["tier"] == "healthy"                                # type: ignore[index]
    assert [c["instance"] for c in balancer["candidates"]] == ["echo-b2"]   # type: ignore[index]
    assert balancer["pick"]["instance"] == "echo-b2"                    # type: ignore[index]
    assert dest.choose(f.endpoints, NOW + 0.01).endpoint.instance == "echo-b2"
    # every healthy host held: the pick still has one, among the held
    healthy[1].readiness.connect_failed(NOW)
    by = steps(explain(Question("echo"), facts(snap, dest), NOW + 0.01, WALL))
    assert by["balancer"]["data"]["tier"] == "held"                     # type: ignore[index]
    assert len(by["balancer"]["data"]["candidates"]) == 2               # type: ignore[index]


def test_no_usable_instance_refuses_with_the_data_plane_message() -> None:
    snap = snapshot(("b1", HealthStatus.UNHEALTHY, "alive"), ("b2", HealthStatus.HEALTHY, "dead"))
    out = explain(Question("echo"), facts(snap), NOW, WALL)
    by = steps(out)
    assert out.verdict == REFUSE and by["catalog"]["verdict"] == REFUSE
    assert by["catalog"]["says"] == ("no healthy instance of echo: 2 instances, 1 unhealthy, "
                                     "1 on nodes that are down or have no address")
    whys = {i["instance"]: i["why"] for i in by["catalog"]["data"]["instances"]}  # type: ignore[index]
    assert whys == {"echo-b1": "unhealthy: no traffic",
                    "echo-b2": "its node is dead or has no inbound address: no traffic"}
    assert "balancer" not in by


def test_instances_of_members_declared_dead_are_listed_and_named_in_the_refusal() -> None:
    gone = ServiceMetadata("echo-b9", "echo", "1", "127.0.0.1", 80, node="b9")
    snap = CatalogSnapshot(1, {}, (), down=(gone,))
    by = steps(explain(Question("echo"), facts(snap), NOW, WALL))
    assert by["catalog"]["verdict"] == REFUSE
    assert by["catalog"]["says"] == "no live instance of echo: 1 instance on members that are down"
    data = by["catalog"]["data"]
    assert data["counts"]["down"] == 1 and data["counts"]["total"] == 0     # type: ignore[index]
    assert [(i["instance"], i["nodeState"]) for i in data["instances"]] == [("echo-b9", "dead")]  # type: ignore[index]
    live = replace(snapshot(("b1", HealthStatus.HEALTHY, "alive")), down=(gone,))   # a live one beside it
    by = steps(explain(Question("echo"), facts(live), NOW, WALL))
    assert by["catalog"]["verdict"] == OK and by["catalog"]["data"]["counts"]["down"] == 1   # type: ignore[index]


def test_degraded_instances_are_used_only_without_healthy_ones() -> None:
    snap = snapshot(("b1", HealthStatus.DEGRADED, "alive"), ("b2", HealthStatus.HEALTHY, "suspect"))
    by = steps(explain(Question("echo"), facts(snap), NOW, WALL))
    whys = {i["instance"]: i["why"] for i in by["catalog"]["data"]["instances"]}  # type: ignore[index]
    assert whys["echo-b1"] == "degraded: used only when no instance is healthy"
    assert by["balancer"]["data"]["pick"]["instance"] == "echo-b2"     # type: ignore[index]


def test_a_deny_rule_and_an_allow_list_name_their_rules() -> None:
    rules = [AuthorizationRule("echo", ["client"], ["DELETE"], ["/admin/*"], "deny"),
             AuthorizationRule("echo", ["web"])]
    config = Config(tls=TLS, policies={"*": POLICY}, authorization=AuthorizationConfig("allow", rules))
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"))
    denied = explain(Question("echo", "DELETE", "/admin/x"), facts(snap, config=config), NOW, WALL)
    by = steps(denied)
    assert denied.verdict == REFUSE
    assert by["authorization"]["data"]["rule"] == "authorization.rules[0]"   # type: ignore[index]
    assert "spiffe://mesh.local/service/echo" in str(by["authorization"]["says"])
    listed = explain(Question("echo", "GET", "/x"), facts(snap, config=config), NOW, WALL)
    assert "matches none of the rules for echo (authorization.rules[1])" in listed.summary
    web = explain(Question("echo", "GET", "/x", caller="web"), facts(snap, config=config), NOW, WALL)
    assert web.verdict == OK


def test_caps_at_their_limit_refuse_or_queue() -> None:
    policy = PolicyConfig(circuit_breaker=CircuitBreakerConfig(max_connections=1, max_pending_requests=1,
                                                               max_requests=10))
    config = Config(tls=TLS, policies={"*": policy})
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"))
    dest = Cluster("echo", policy, random.Random(1), NOW)
    dest.breaker.admit()
    by = steps(explain(Question("echo"), facts(snap, dest, config), NOW, WALL))
    assert by["caps"]["verdict"] == WARN and "would wait" in str(by["caps"]["says"])
    dest.breaker.admit()
    by = steps(explain(Question("echo"), facts(snap, dest, config), NOW, WALL))
    assert by["caps"]["verdict"] == REFUSE and "429" in str(by["caps"]["says"])


def test_the_certificate_warns_in_its_last_fifth_and_refuses_once_expired() -> None:
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"))
    fine = steps(explain(Question("echo"), facts(snap, hours_left=20), NOW, WALL))["identity"]
    assert fine["verdict"] == OK and str(fine["says"]).endswith("expires in 20.0 h")
    soon = steps(explain(Question("echo"), facts(snap, hours_left=0.5), NOW, WALL))["identity"]
    assert soon["verdict"] == WARN
    gone = steps(explain(Question("echo"), facts(snap, hours_left=-0.1), NOW, WALL))["identity"]
    assert gone["verdict"] == REFUSE and "expired 6 min ago" in str(gone["says"])


def test_a_name_that_is_no_service_and_the_text_rendering() -> None:
    out = explain(Question("10.0.0.1"), Facts(Config(), CatalogSnapshot(), None, None, None, None), NOW, WALL)
    assert out.verdict == REFUSE and "names no service" in out.summary
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"))
    text = render_text(explain(Question("echo"), facts(snap), NOW, WALL).to_json())
    lines = text.splitlines()
    assert lines[0].startswith("GET / to echo would go to echo-b1 at 127.0.0.1:7000")
    assert "  [ok  ] catalog: the catalog has 1 instance of echo: 1 healthy" in lines
    assert any(line.strip().startswith("echo-b1 on b1 (alive), healthy, 127.0.0.1:7000: usable") for line in lines)


def test_a_grpc_method_is_matched_by_a_path_glob_and_names_its_deadline_and_grpc_retries() -> None:
    rules = [AuthorizationRule("echo", paths=["/test.Echo/Set*"], action="deny")]
    policy = PolicyConfig(timeout=Duration(2.0),
                          retries=RetryConfig(attempts=2, retry_on=["reset", "unavailable", "resource-exhausted"]))
    config = Config(tls=TLS, policies={"*": policy}, authorization=AuthorizationConfig("allow", rules))
    snap = snapshot(("b1", HealthStatus.HEALTHY, "alive"))
    denied = explain(Question("echo", "POST", "/test.Echo/SetHealth", grpc=True), facts(snap, config=config), NOW,
                     WALL)
    assert denied.verdict == REFUSE
    assert steps(denied)["authorization"]["data"]["rule"] == "authorization.rules[0]"   # type: ignore[index]
    allowed = explain(Question("echo", "POST", "/test.Echo/Unary", grpc=True), facts(snap, config=config), NOW,
                      WALL)
    assert allowed.verdict == OK
    body = allowed.to_json()
    assert body["grpc"] is True
    policy_step = steps(allowed)["policy"]
    assert policy_step["data"]["grpcRetryOn"] == ["unavailable", "resource-exhausted"]  # type: ignore[index]
    says = str(policy_step["says"])
    assert "2s deadline for the whole call" in says and "grpc-timeout" in says, says
    assert "gRPC statuses unavailable, resource-exhausted retried" in says, says
    # an HTTP request to the same path is explained without the gRPC words
    http = steps(explain(Question("echo", "POST", "/test.Echo/Unary"), facts(snap, config=config), NOW, WALL))
    assert "grpcRetryOn" not in http["policy"]["data"] and "whole call" not in str(http["policy"]["says"])  # type: ignore[operator]


def test_looks_like_grpc_wants_a_package_qualified_service_and_a_method() -> None:
    assert looks_like_grpc("/test.Echo/Unary")
    assert looks_like_grpc("/grpc.health.v1.Health/Check")
    assert not looks_like_grpc("/Echo/Unary")          # no package: more likely a REST path
    assert not looks_like_grpc("/test.Echo/Unary/x")
    assert not looks_like_grpc("/test.Echo")
