from __future__ import annotations

import ssl
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.catalog.model import HealthStatus
from sidecar.catalog.registry import LocalRegistry
from sidecar.config.model import (
    AuthorizationConfig,
    AuthorizationRule,
    CheckConfig,
    Config,
    PolicyConfig,
    RetryConfig,
    ServiceConfig,
)
from sidecar.config.values import Duration
from sidecar.errors import InvalidArgument, NotFound, Unavailable
from sidecar.events import EventBus
from sidecar.mesh.authorization import Authorizer, Decisions
from sidecar.mesh.inbound_routes import _require_selected, set_caller
from sidecar.mesh.local_apps import LocalServices
from sidecar.mesh.naming import Names, ServiceName
from sidecar.mesh.peers import PeerTargets
from sidecar.mesh.router import Endpoint
from sidecar.mesh.stats import MeshStats
from sidecar.mesh.tunnel_header import MAX_TUNNEL_HEADER, TunnelHeaderError, decode_tunnel_header, encode_tunnel_header
from sidecar.proxy import ConnectionInfo, Headers, RequestHead, RequestStats

# ------------------------------------------------------------------------------------------ tunnel header


@pytest.mark.parametrize("name", [ServiceName("inventory"), ServiceName("inventory", "v2")])
def test_tunnel_header_round_trip(name: ServiceName) -> None:
    line = encode_tunnel_header(name)
    assert decode_tunnel_header(line + b"\x00rest") == (name, b"\x00rest")
    # arriving a byte at a time: nothing until the line is complete
    for cut in range(len(line)):
        assert decode_tunnel_header(line[:cut]) is None


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\n", b"sidecar-tcp/1\n", b"sidecar-tcp/2 inventory\n", b"sidecar-tcp/1  inventory\n",
    b"sidecar-tcp/1 a b c\n", b"sidecar-tcp/1 \xff\n", b"x" * (MAX_TUNNEL_HEADER + 1),
    b"sidecar-tcp/1 " + b"a" * MAX_TUNNEL_HEADER + b"\n",
])
def test_tunnel_header_refusals(raw: bytes) -> None:
    with pytest.raises(TunnelHeaderError):
        decode_tunnel_header(raw)


def test_tunnel_header_accepts_crlf_and_lowercases() -> None:
    assert decode_tunnel_header(b"sidecar-tcp/1 Inventory V2\r\n") == (ServiceName("inventory", "v2"), b"")


# ------------------------------------------------------------------------------------------ caches


def test_a_connection_carries_only_the_service_its_sni_named_read_once() -> None:
    # what the SNI callback leaves on the SSL object (sidecar.tls.context); read at the first request only
    ssl_object: Any = SimpleNamespace(sidecar_service="pay")
    conn = ConnectionInfo("inbound", ("127.0.0.1", 1), ("127.0.0.1", 2), ssl_object)
    _require_selected(conn, ServiceName("pay"))
    _require_selected(conn, ServiceName("Pay", "v2"))
    with pytest.raises(InvalidArgument, match="opened for pay"):
        _require_selected(conn, ServiceName("inv"))
    ssl_object.sidecar_service = "inv"   # never happens after a handshake: shows the first reading is kept
    with pytest.raises(InvalidArgument, match="opened for pay"):
        _require_selected(conn, ServiceName("inv"))
    # no service named (openssl s_client, node-level dials): any service, by Host
    unnamed = ConnectionInfo("inbound", ("127.0.0.1", 1), ("127.0.0.1", 2), SimpleNamespace())  # type: ignore[arg-type]
    for service in ("pay", "inv", "pay"):
        _require_selected(unnamed, ServiceName(service))


def test_names_cache_is_bounded_and_correct() -> None:
    names = Names("mesh", max_entries=3)
    assert names.parse("pay") == ServiceName("pay")
    assert names.parse("v1.pay.service.mesh") == ServiceName("pay", "v1")
    assert names.parse("localhost") is None
    for i in range(10):
        assert names.parse(f"s{i}") == ServiceName(f"s{i}")
    assert len(names._cache) <= 3


def test_decisions_cache_gives_the_authorizers_answers() -> None:
    config = AuthorizationConfig("allow", [AuthorizationRule("pay", ["checkout"], ["POST"], ["/pay*"])])
    decisions = Decisions(Authorizer(config), max_entries=2)
    for _ in range(2):
        assert decisions.decide("checkout", "pay", "POST", "/pay/1").allowed
        denied = decisions.decide("reports", "pay", "POST", "/pay/1")
        assert not denied.allowed and denied.rule == "authorization.rules[0]"
        assert decisions.decide("reports", "other", "GET", "/").rule == "authorization.default"
    assert len(decisions._cache) <= 2


def test_set_caller_removes_spoofs_and_sets_ours() -> None:
    head = RequestHead("GET", b"/", "1.1", Headers(), "pay")
    head.headers.add("X-Sidecar-Caller", "spiffe://evil")
    head.headers.add("accept", "*/*")
    head.headers.add("x-sidecar-caller", "spiffe://evil2")
    set_caller(head, b"spiffe://mesh.local/service/checkout")
    assert head.headers.get_all("x-sidecar-caller") == ["spiffe://mesh.local/service/checkout"]
    assert head.headers.get("accept") == "*/*"
    set_caller(head, None)
    assert "x-sidecar-caller" not in head.headers


# ------------------------------------------------------------------------------------------ local services


def registry_with(*specs: ServiceConfig) -> LocalRegistry:
    registry = LocalRegistry("node-b", EventBus())
    for spec in specs:
        registry.register(spec, "config", 0.0, 0)
    return registry


def test_local_services_pick_healthy_then_degraded_and_refuse_unhealthy() -> None:
    ttl = CheckConfig(ttl=Duration(10))
    registry = registry_with(ServiceConfig("pay", 3001, id="p1", check=ttl), ServiceConfig("pay", 3002, id="p2",
                                                                                           check=ttl))
    local = LocalServices(registry)
    with pytest.raises(Unavailable) as unhealthy:
        local.pick(ServiceName("pay"))
    assert unhealthy.value.details["unhealthy"] == 2
    with pytest.raises(NotFound):
        local.pick(ServiceName("nosuch"))
    assert local.known("pay") and not local.known("nosuch")
    registry.heartbeat("p1", HealthStatus.DEGRADED, "", 1.0, 1)
    assert local.pick(ServiceName("pay")).address == ("127.0.0.1", 3001)
    registry.heartbeat("p2", HealthStatus.HEALTHY, "", 1.0, 1)
    assert {local.pick(ServiceName("pay")).address for _ in range(4)} == {("127.0.0.1", 3002)}
    registry.heartbeat("p1", HealthStatus.HEALTHY, "", 1.0, 1)
    assert {local.pick(ServiceName("pay")).address for _ in range(4)} == {("127.0.0.1", 3001), ("127.0.0.1", 3002)}


def test_local_services_by_tag() -> None:
    local = LocalServices(registry_with(ServiceConfig("pay", 3001, tags=["v1"]), ServiceConfig("pay", 3002)))
    assert local.pick(ServiceName("pay", "v1")).address == ("127.0.0.1", 3001)
    with pytest.raises(NotFound) as missing:
        local.pick(ServiceName("pay", "v9"))
    assert "tag 'v9'" in missing.value.message


# ------------------------------------------------------------------------------------------ targets and stats


def _context() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def test_targets_are_cached_per_endpoint_and_rekeyed_by_context() -> None:
    config = Config(policies={"*": PolicyConfig(), "slow": PolicyConfig(timeout=Duration(60),
                                                                         retries=RetryConfig(attempts=0)),
                              "tight": PolicyConfig(retries=RetryConfig(per_try_timeout=Duration(2)))})
    targets = PeerTargets(config, "http")
    pay = Endpoint("pay", "pay:n1", "n1", ("10.0.0.1", 15006), HealthStatus.HEALTHY)
    first, second = _context(), _context()
    t1 = targets.get(pay, 1, first)
    assert targets.get(pay, 1, first) is t1
    assert (t1.timeout, t1.try_timeout, t1.ssl) == (15.0, None, first)   # by default a try has the whole timeout
    # the SNI asks the peer for pay's certificate; the pool is per service on that peer
    assert t1.server_hostname == "pay.svc.p15006.10.0.0.1.sidecar.invalid"
    assert t1.tag is pay and t1.key == ("http", ("10.0.0.1", 15006), "pay", 1)
    t2 = targets.get(pay, 2, first)              # a new snapshot: rebuilt, same pool
    assert t2 is not t1 and t2.key == t1.key
    t3 = targets.get(pay, 2, second)             # a rotated context: a new pool
    assert t3.ssl is second and t3.key == ("http", ("10.0.0.1", 15006), "pay", 2)
    slow = targets.get(Endpoint("slow", "s", "n1", ("10.0.0.1", 15006), HealthStatus.HEALTHY), 2, second)
    assert slow.key != t3.key   # another service on the same peer: never its connections
    assert (slow.timeout, slow.try_timeout) == (60.0, None)  # no retries: no per-try bound
    tight = targets.get(Endpoint("tight", "t", "n1", ("10.0.0.1", 15006), HealthStatus.HEALTHY), 2, second)
    assert (tight.timeout, tight.try_timeout) == (15.0, 2.0)


def _stats(status: int, error: str | None = None) -> RequestStats:
    return RequestStats("GET", "pay", b"/", status, error, 0, 0, 0.0, None, 1.0, 1, None, None, None, None, None,
                        None)


def test_mesh_stats_classes_and_denials() -> None:
    stats = MeshStats()
    for status, error in ((200, None), (204, None), (404, "local"), (503, "connect-failure"), (0, "client-reset"),
                          (101, None)):
        stats.request("outbound", "pay", _stats(status, error))
    assert stats.requests == {("outbound", "pay", "2xx"): 2, ("outbound", "pay", "4xx"): 1,
                              ("outbound", "pay", "5xx"): 1, ("outbound", "pay", "none"): 1,
                              ("outbound", "pay", "1xx"): 1}
    assert stats.errors["outbound", "pay", "connect-failure"] == 1
    stats.denied("pay", "reports", "authorization.rules[0]")
    stats.denied("other", "reports", "authorization.rules[0]")
    stats.denied("pay", "reports", "authorization.default")
    assert stats.denials_by_rule == {"authorization.rules[0]": 2, "authorization.default": 1}
    snapshot = stats.snapshot()
    assert snapshot["denials"][0] == {"service": "other", "caller": "reports", "rule": "authorization.rules[0]",
                                      "count": 1}
