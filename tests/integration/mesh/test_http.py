"""HTTP through two sidecars over mTLS with curl: naming forms, fixed upstream ports, identity, tracing, errors."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import replace

from sidecar.catalog.model import HealthStatus, NodeInfo, ServiceMetadata
from sidecar.proxy.tracecontext import parse
from tests.harness import wait_for
from tests.integration.mesh.clients import curl, needs_curl
from tests.integration.mesh.conftest import Mesh, Pki

pytestmark = needs_curl

CALLER = "spiffe://mesh.local/service/checkout"


def test_host_header_reaches_the_app_with_caller_identity_request_id_and_trace(mesh: Mesh) -> None:
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    mesh.a.requests.clear()
    mesh.b.requests.clear()
    reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/headers/x?q=1", "-H", "Host: inventory",
                 "-H", f"traceparent: 00-{trace_id}-{caller_span}-01",
                 "-H", "x-sidecar-caller: spiffe://mesh.local/service/admin")   # a spoofing attempt
    assert reply.status == 200, reply
    seen = reply.seen_headers
    assert reply.json()["path"] == "/headers/x?q=1"
    assert seen["host"] == ["inventory"]                      # forwarded unchanged
    assert seen["x-sidecar-caller"] == [CALLER]                 # set by B from A's certificate, the spoof gone
    assert len(seen["x-request-id"]) == 1 and len(seen["x-request-id"][0]) == 36
    arrived = parse(seen["traceparent"][0])
    assert arrived is not None and arrived.trace_id == trace_id and arrived.sampled
    # one span per hop: the app's parent is B's span, whose parent is A's span, whose parent is the caller's
    wait_for(lambda: mesh.a.requests and mesh.b.requests, 5, what="request records")
    (a_listener, a_stats), (b_listener, b_stats) = mesh.a.requests[-1], mesh.b.requests[-1]
    assert (a_listener, b_listener) == ("outbound", "inbound")
    assert a_stats.parent_span_id == caller_span and a_stats.trace_id == trace_id
    assert b_stats.parent_span_id == a_stats.span_id and b_stats.trace_id == trace_id
    assert arrived.span_id == b_stats.span_id
    assert len({caller_span, a_stats.span_id, b_stats.span_id}) == 3
    assert a_stats.request_id == b_stats.request_id == seen["x-request-id"][0]


def test_an_incoming_request_id_is_kept_and_a_new_trace_is_started(mesh: Mesh) -> None:
    reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/headers", "-H", "Host: inventory", "-H", "x-request-id: abc-1")
    seen = reply.seen_headers
    assert seen["x-request-id"] == ["abc-1"]
    assert parse(seen["traceparent"][0]) is not None


def test_every_naming_form_routes(mesh: Mesh) -> None:
    port = mesh.a.outbound
    for host in ("inventory", "inventory:8080", "inventory.service.mesh", "INVENTORY.service.mesh.",
                 "v1.inventory.service.mesh:80"):
        reply = curl(f"http://127.0.0.1:{port}/headers", "-H", f"Host: {host}")
        assert reply.status == 200, (host, reply)
        assert reply.seen_headers["host"] == [host]
    # absolute form, as HTTP_PROXY makes clients send it
    reply = curl("-x", f"http://127.0.0.1:{port}", "http://inventory.service.mesh/headers/proxied")
    assert reply.status == 200, reply
    assert reply.json()["path"] == "/headers/proxied"
    assert reply.seen_headers["x-sidecar-caller"] == [CALLER]


def test_fixed_upstream_port_sends_everything_to_its_service(mesh: Mesh) -> None:
    port = mesh.a.port("upstream:inventory")
    reply = curl(f"http://127.0.0.1:{port}/headers/fixed", "-X", "PUT", "--data-binary", "hello")
    assert reply.status == 200, reply
    assert reply.json() | {"headers": None} == {"method": "PUT", "path": "/headers/fixed", "body": 5, "headers": None}
    assert reply.seen_headers["host"] == ["inventory"]
    assert reply.seen_headers["x-sidecar-caller"] == [CALLER]
    wait_for(lambda: mesh.a.dataplane.stats.requests.get(("upstream", "inventory", "2xx"), 0) >= 1, 5, what="counted")


def test_a_service_on_this_node_is_reached_through_its_own_inbound(mesh: Mesh) -> None:
    before = mesh.a.dataplane.stats.requests.get(("inbound", "checkout", "2xx"), 0)
    reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/headers", "-H", "Host: checkout")
    assert reply.status == 200, reply
    assert reply.seen_headers["x-sidecar-caller"] == [CALLER]
    wait_for(lambda: mesh.a.dataplane.stats.requests.get(("inbound", "checkout", "2xx"), 0) == before + 1, 5,
             what="counted")


# ------------------------------------------------------------------------------------------ errors


def _assert_error(reply: object, status: int, code: str) -> dict[str, object]:
    from tests.integration.mesh.clients import Reply

    assert isinstance(reply, Reply)
    assert reply.status == status, reply
    assert reply.headers["x-sidecar-error"] == code
    error = reply.error
    assert error["code"] == code
    return error


def test_unknown_service_is_404(mesh: Mesh) -> None:
    reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/x", "-H", "Host: nosuch")
    error = _assert_error(reply, 404, "NOT_FOUND")
    assert "nosuch" in str(error["message"])
    wait_for(lambda: mesh.a.dataplane.stats.requests.get(("outbound", "unknown", "4xx"), 0) >= 1, 5, what="counted")


def test_host_naming_no_service_is_400_with_a_hint(mesh: Mesh) -> None:
    for host in ("localhost", "127.0.0.1:15001", "[::1]:80", "example.com"):
        reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/x", "-H", f"Host: {host}")
        error = _assert_error(reply, 400, "INVALID_ARGUMENT")
        assert "names no service" in str(error["message"]) and "Host: SERVICE" in str(error["message"])


def test_no_healthy_instance_is_503_with_details(mesh: Mesh) -> None:
    # sleepy is registered on B with a TTL check and no heartbeat: unhealthy, so A has nowhere to send it
    reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/x", "-H", "Host: sleepy")
    error = _assert_error(reply, 503, "UNAVAILABLE")
    assert error["details"] == {"service": "sleepy", "instances": 1, "unhealthy": 1, "unreachable": 0}
    assert "no healthy instance of sleepy" in str(error["message"])
    # a tag no instance has
    reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/x", "-H", "Host: v9.inventory.service.mesh")
    error = _assert_error(reply, 503, "UNAVAILABLE")
    assert error["details"]["tagged"] == 0  # type: ignore[index]


def test_instances_on_a_dead_node_are_not_used(mesh: Mesh) -> None:
    ghost = ServiceMetadata("ghost:node-x:1", "ghost", "1", "127.0.0.1", 1, node="node-x")

    def add() -> None:
        mesh.a.catalog.node_state(NodeInfo("node-x", "127.0.0.1", 1, "test", state="dead"))
        mesh.a.catalog.apply_node("node-x", 1, [ghost])

    mesh.loop.call(add)
    try:
        reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/x", "-H", "Host: ghost")
        error = _assert_error(reply, 503, "UNAVAILABLE")
        assert error["details"]["unreachable"] == 1  # type: ignore[index]
    finally:
        mesh.loop.call(mesh.a.catalog.remove_node, "node-x")


def test_a_peer_that_refuses_connections_is_503(mesh: Mesh) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    gone = ServiceMetadata("gone:node-y:1", "gone", "1", "127.0.0.1", 1, node="node-y")

    def add() -> None:
        mesh.a.catalog.node_state(NodeInfo("node-y", "127.0.0.1", dead_port, "test"))
        mesh.a.catalog.apply_node("node-y", 1, [gone])

    mesh.loop.call(add)
    try:
        reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/x", "-H", "Host: gone")
        error = _assert_error(reply, 503, "UNAVAILABLE")
        assert "connection refused" in str(error["message"])
    finally:
        mesh.loop.call(mesh.a.catalog.remove_node, "node-y")


def test_destination_refuses_a_service_it_does_not_have_or_that_is_unhealthy(mesh: Mesh, pki: Pki) -> None:
    """Straight to B's inbound with checkout's certificate: 404 for a service B does not host, 503 for an
    unhealthy one (A's catalog may be stale; B's registry decides)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki.directory / "ca.pem")
    context.load_cert_chain(pki.directory / "checkout.pem", pki.directory / "checkout-key.pem")

    def ask(host: str) -> bytes:
        with socket.create_connection(("127.0.0.1", mesh.b.port("inbound")), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(f"GET /headers HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data

    assert ask("checkout").startswith(b"HTTP/1.1 404 ")
    unhealthy = ask("sleepy")
    assert unhealthy.startswith(b"HTTP/1.1 503 ") and b"unhealthy" in unhealthy
    assert ask("inventory").startswith(b"HTTP/1.1 200 ")


def test_a_healthy_looking_instance_that_is_unhealthy_at_its_node_is_503(mesh: Mesh) -> None:
    """A's catalog says sleepy is healthy (stale gossip); B's registry knows better and answers 503."""
    def stale() -> None:
        instances = [replace(i, status=HealthStatus.HEALTHY) for i in mesh.b.registry.instances()]
        mesh.a.catalog.apply_node("node-b", 1000, instances)

    mesh.loop.call(stale)
    try:
        reply = curl(f"http://127.0.0.1:{mesh.a.outbound}/x", "-H", "Host: sleepy")
        error = _assert_error(reply, 503, "UNAVAILABLE")
        assert "registered on node node-b but unhealthy" in str(error["message"])
    finally:
        mesh.loop.call(lambda: mesh.a.catalog.apply_node("node-b", 1001, mesh.b.registry.instances()))


# ------------------------------------------------------------------------------------------ authorization


def test_authorization_allows_and_denies_by_caller_method_and_path(mesh: Mesh) -> None:
    a, c = mesh.a.outbound, mesh.c.outbound
    denials = mesh.b.dataplane.stats.denials
    before = denials.copy()
    assert curl(f"http://127.0.0.1:{a}/headers", "-H", "Host: inventory").status == 200
    assert curl(f"http://127.0.0.1:{a}/count", "-H", "Host: inventory", "--data-binary", "abc").body == b"3"
    # method: checkout may GET/POST/PUT inventory, not DELETE
    error = _assert_error(curl(f"http://127.0.0.1:{a}/headers", "-X", "DELETE", "-H", "Host: inventory"),
                          403, "PERMISSION_DENIED")
    assert error["details"] == {"rule": "authorization.rules[1]", "caller": CALLER, "service": "inventory",
                                "method": "DELETE", "path": "/headers"}
    # path: /admin/* is denied to everyone, first
    error = _assert_error(curl(f"http://127.0.0.1:{a}/admin/users", "-H", "Host: inventory"), 403, "PERMISSION_DENIED")
    assert error["details"]["rule"] == "authorization.rules[0]"  # type: ignore[index]
    assert "deny rule" in str(error["message"])
    # caller: reports is not among inventory's allowed callers
    link_c = mesh.c.catalog.snapshot().service("inventory")
    assert link_c, "node C should know inventory"
    error = _assert_error(curl(f"http://127.0.0.1:{c}/headers", "-H", "Host: inventory"), 403, "PERMISSION_DENIED")
    assert error["details"]["caller"] == "spiffe://mesh.local/service/reports"  # type: ignore[index]
    assert error["details"]["rule"] == "authorization.rules[1]"  # type: ignore[index]
    # counted by service, caller and rule
    assert denials["inventory", "checkout", "authorization.rules[1]"] == before["inventory", "checkout",
                                                                                "authorization.rules[1]"] + 1
    assert denials["inventory", "checkout", "authorization.rules[0]"] == before["inventory", "checkout",
                                                                                "authorization.rules[0]"] + 1
    assert denials["inventory", "reports", "authorization.rules[1]"] == before["inventory", "reports",
                                                                               "authorization.rules[1]"] + 1
    assert mesh.b.dataplane.stats.denials_by_rule["authorization.rules[1]"] >= 2


def test_a_quiet_spell_keeps_the_pooled_connection_to_the_peer(mesh: Mesh) -> None:
    # pooled connections to a peer sidecar live until just before the peer's inbound would close them (60 s idle),
    # not the 10 s of pools to apps: a few quiet seconds must not cost new TLS handshakes
    def counts() -> tuple[int, int]:
        dialed = sum(pool.dialed for pool in mesh.a.dataplane.pools)
        assert mesh.b.dataplane.inbound is not None
        return dialed, sum(mesh.b.dataplane.inbound.handshakes.values())

    assert curl(f"http://127.0.0.1:{mesh.a.outbound}/headers", "-H", "Host: inventory").status == 200
    before = counts()
    time.sleep(13.0)   # past the old 10 s idle timeout and its 2.5 s sweep: the stimulus, not a wait for a result
    assert curl(f"http://127.0.0.1:{mesh.a.outbound}/headers", "-H", "Host: inventory").status == 200
    assert counts() == before
