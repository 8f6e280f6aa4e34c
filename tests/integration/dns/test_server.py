"""The responder's driver on loopback: forwarding, catalog changes, TCP connections, limits, binding."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from sidecar.catalog.model import HealthStatus
from sidecar.clock import FakeClock
from sidecar.config.values import HostPort
from sidecar.dns.forwarder import Forwarder, ForwardOutcome, ForwardResult
from sidecar.dns.server import DnsListenFailed, DnsServer
from tests.harness import wait_for

Running = Any  # conftest.Running
StartServer = Callable[..., Any]


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def read_frame(sock: socket.socket) -> bytes:
    size = int.from_bytes(read_exactly(sock, 2), "big")
    return read_exactly(sock, size)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


# -------------------------------------------------------------------------------------- forwarding


def test_forwarding_to_an_upstream(dns_server: StartServer, upstream: Any) -> None:
    fake, port = upstream()
    running = dns_server(upstreams=[("127.0.0.1", port)])
    result = running.dig("www.example.test", "A")
    assert result.status == "NOERROR" and result.rdata() == ["192.0.2.1"]
    assert running.kdig("www.example.test", "A").rdata() == ["192.0.2.1"]
    assert running.dig("nothing.example.org", "A").status == "NXDOMAIN"
    # names of the domain are still ours, and RA says the sidecar recurses
    mesh = running.dig("web.service.mesh", "A")
    assert len(mesh.answer) == 3 and "ra" in mesh.flags
    assert running.server.counters.forwarded == 3
    assert fake.udp_queries == 3


def test_forwarded_answer_too_big_for_udp_goes_over_tcp(dns_server: StartServer, upstream: Any) -> None:
    fake, port = upstream()
    running = dns_server(upstreams=[("127.0.0.1", port)])
    result = running.dig("big.example.test", "TXT", "+bufsize=1232")
    assert "Truncated, retrying in TCP mode" in result.text
    assert result.status == "NOERROR" and len(result.answer) == 40
    assert fake.tcp_queries >= 1  # the forwarder itself retried over TCP when the upstream truncated
    query = dns.message.make_query("big.example.test", "TXT")
    udp = dns.query.udp(query, running.host, port=running.port, timeout=3)
    assert udp.flags & dns.flags.TC and udp.id == query.id
    tcp = dns.query.tcp(query, running.host, port=running.port, timeout=3)
    assert len(tcp.answer[0]) == 40


def test_failover_when_the_first_upstream_is_dead(dns_server: StartServer, upstream: Any, dead_udp_port: int) -> None:
    _, port = upstream()
    running = dns_server(upstreams=[("127.0.0.1", dead_udp_port), ("127.0.0.1", port)], upstream_timeout=2.0)
    started = time.monotonic()
    assert running.message("www.example.test").answer[0][0].address == "192.0.2.1"
    # the dead port answers with ICMP port unreachable: failover without waiting for the timeout
    assert time.monotonic() - started < 2.0
    assert running.server.forwarder.failures == {f"127.0.0.1:{dead_udp_port}": 1}


def test_failover_when_the_first_upstream_is_silent(dns_server: StartServer, upstream: Any,
                                                    silent_udp_port: int) -> None:
    _, port = upstream()
    running = dns_server(upstreams=[("127.0.0.1", silent_udp_port), ("127.0.0.1", port)], upstream_timeout=0.3)
    started = time.monotonic()
    assert running.message("www.example.test").answer[0][0].address == "192.0.2.1"
    assert time.monotonic() - started >= 0.3  # waited for the silent one first
    # the upstream that answered is asked first from now on
    started = time.monotonic()
    assert running.message("www2.example.test").answer[0][0].address == "192.0.2.1"
    assert time.monotonic() - started < 0.3
    assert running.server.forwarder.failures == {f"127.0.0.1:{silent_udp_port}": 1}


def test_servfail_when_every_upstream_fails(dns_server: StartServer, dead_udp_port: int,
                                            silent_udp_port: int) -> None:
    running = dns_server(upstreams=[("127.0.0.1", dead_udp_port), ("127.0.0.1", silent_udp_port)],
                         upstream_timeout=0.2)
    response = running.message("www.example.test")
    assert response.rcode() == dns.rcode.SERVFAIL
    assert running.server.counters.forward_failed == 1


def test_refused_without_upstreams(dns_server: StartServer) -> None:
    running = dns_server()
    assert running.message("example.com").rcode() == dns.rcode.REFUSED
    assert running.message("example.com", tcp=True).rcode() == dns.rcode.REFUSED
    assert running.server.counters.queries_by_rcode() == {"REFUSED": 2}


# ---------------------------------------------------------------------------------- catalog changes


def test_an_instance_turning_unhealthy_disappears(dns_server: StartServer, snapshots: Any) -> None:
    running = dns_server(snapshots.catalog(version=1))
    before = {rd.address for rd in running.message("web.service.mesh").answer[0]}
    assert before == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert len(running.message("web.service.mesh").answer[0]) == 3  # now from the cache
    assert running.server.counters.cache_hits >= 1
    running.set(snapshots.catalog(version=2, web3=HealthStatus.UNHEALTHY))
    after = {rd.address for rd in running.message("web.service.mesh").answer[0]}
    assert after == {"10.0.0.1", "10.0.0.2"}
    blue = {rd.address for rd in running.message("blue.web.service.mesh").answer[0]}
    assert blue == {"10.0.0.1"}
    assert running.message("nope.service.mesh").authority[0][0].serial == 2


def test_answers_rotate(dns_server: StartServer) -> None:
    running = dns_server()
    firsts = [running.message("web.service.mesh").answer[0][0].address for _ in range(4)]
    assert set(firsts) == {"10.0.0.1", "10.0.0.2"}  # healthy ones take turns; the degraded one stays last
    assert all(running.message("web.service.mesh").answer[0][2].address == "10.0.0.3" for _ in range(3))


# ----------------------------------------------------------------------------------------- TCP


def test_several_queries_on_one_tcp_connection(dns_server: StartServer, upstream: Any) -> None:
    _, port = upstream()
    running = dns_server(upstreams=[("127.0.0.1", port)])
    names = ["web.service.mesh", "www.example.test", "nope.service.mesh", "n1.node.mesh"]
    queries = [dns.message.make_query(name, "A") for name in names]
    with socket.create_connection((running.host, running.port), timeout=3) as sock:
        sock.sendall(b"".join(frame(q.to_wire()) for q in queries))  # pipelined in one write
        answers = {m.id: m for m in (dns.message.from_wire(read_frame(sock)) for _ in queries)}
        # byte by byte: partial frames wait for the rest
        last = dns.message.make_query("api.service.mesh", "AAAA")
        for byte in frame(last.to_wire()):
            sock.sendall(bytes([byte]))
        answers[last.id] = dns.message.from_wire(read_frame(sock))
    assert [answers[q.id].rcode() for q in queries] == [0, 0, dns.rcode.NXDOMAIN, 0]
    assert answers[queries[1].id].answer[0][0].address == "192.0.2.1"
    assert answers[last.id].answer[0][0].address == "fd00::6"
    assert running.server.counters.tcp_connections == 1


def test_idle_tcp_connections_are_closed(dns_server: StartServer) -> None:
    running = dns_server(tcp_idle_timeout=0.3)
    with socket.create_connection((running.host, running.port), timeout=3) as sock:
        sock.sendall(frame(dns.message.make_query("web.service.mesh", "A").to_wire()))
        assert dns.message.from_wire(read_frame(sock)).rcode() == 0
        started = time.monotonic()
        assert sock.recv(1) == b""  # EOF from the server, within the socket timeout
        assert 0.2 <= time.monotonic() - started < 3.0


def test_tcp_connections_are_capped(dns_server: StartServer) -> None:
    running = dns_server(max_tcp_connections=2)
    query = frame(dns.message.make_query("web.service.mesh", "A").to_wire())
    kept = [socket.create_connection((running.host, running.port), timeout=3) for _ in range(2)]
    try:
        for sock in kept:
            sock.sendall(query)
            read_frame(sock)
        with socket.create_connection((running.host, running.port), timeout=3) as extra:
            try:
                extra.sendall(query)
                assert extra.recv(2) == b""
            except ConnectionResetError:
                pass  # aborted: the reset can beat our read
        wait_for(lambda: running.server.counters.tcp_rejected == 1, 3.0, what="the rejection to be counted")
        for sock in kept:  # the others are unaffected
            sock.sendall(query)
            assert dns.message.from_wire(read_frame(sock)).rcode() == 0
    finally:
        for sock in kept:
            sock.close()


# ------------------------------------------------------------------------------------- rate limit


def test_rate_limit_per_client(dns_server: StartServer) -> None:
    clock = FakeClock()
    running = dns_server(qps=1.0, burst=3, clock=clock)
    rcodes = [running.message("web.service.mesh").rcode() for _ in range(4)]
    assert rcodes == [0, 0, 0, dns.rcode.REFUSED]
    assert running.server.counters.rate_limited == 1
    clock.advance(1.0)
    assert running.message("web.service.mesh").rcode() == 0


# ----------------------------------------------------------------------------------------- binding


def test_udp_and_tcp_share_the_port(dns_server: StartServer) -> None:
    running = dns_server()
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock, pytest.raises(OSError) as caught:
            sock.bind(("127.0.0.1", running.port))
        assert caught.value.errno == errno.EADDRINUSE
    assert running.message("web.service.mesh").rcode() == 0
    assert running.message("web.service.mesh", tcp=True).rcode() == 0
    assert running.server.address == (running.host, running.port)


def test_a_taken_port_is_a_clear_error(dns_server: StartServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(DnsListenFailed, match=f"127.0.0.1:{port} \\(udp\\)"):
            dns_server(port=port)


def test_ipv6_loopback(dns_server: StartServer) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    running = dns_server(host="::1")
    assert running.host == "::1"
    assert running.dig("web.service.mesh", "A").status == "NOERROR"
    assert running.message("n6.node.mesh", "AAAA", tcp=True).answer[0][0].address == "fd00::6"


def test_plain_asyncio_loop_too(dns_server_on_asyncio: StartServer) -> None:
    running = dns_server_on_asyncio()
    assert len(running.message("web.service.mesh").answer[0]) == 3
    assert len(running.message("big.service.mesh", tcp=True).answer[0]) == 100


def test_stop_closes_everything(dns_server: StartServer) -> None:
    running = dns_server()
    server: DnsServer = running.server
    sock = socket.create_connection((running.host, running.port), timeout=3)
    with sock:
        sock.sendall(frame(dns.message.make_query("web.service.mesh", "A").to_wire()))
        read_frame(sock)
        running.loop.run(server.stop())
        assert sock.recv(1) == b""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", running.port))  # the port is free again


def test_counters(dns_server: StartServer) -> None:
    running = dns_server()
    for _ in range(3):
        running.message("web.service.mesh")
    running.message("nope.service.mesh")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x12\x34\x01\x00\x00\x01garbage", (running.host, running.port))
        sock.settimeout(3)
        formerr = dns.message.from_wire(sock.recv(512))
    assert formerr.rcode() == dns.rcode.FORMERR and formerr.id == 0x1234
    counters = running.server.counters.as_dict()
    assert counters["cache_misses"] == 3 and counters["cache_hits"] == 2
    assert counters["queries_by_rcode"] == {"NOERROR": 3, "NXDOMAIN": 1, "FORMERR": 1}
    assert counters["malformed"] == 1


def test_forwarder_caps_queries_in_flight(loop_thread: Any, silent_udp_port: int) -> None:
    forwarder = Forwarder([HostPort("127.0.0.1", silent_udp_port)], timeout=0.3, max_in_flight=1)

    async def two_at_once() -> list[ForwardResult]:
        queries = [dns.message.make_query(f"q{i}.example.test", "A") for i in range(2)]
        return list(await asyncio.gather(*(forwarder.forward(q, 512) for q in queries)))

    started = time.monotonic()
    first, second = loop_thread.run(two_at_once())
    assert first.outcome is ForwardOutcome.ALL_FAILED  # waited for the silent upstream
    assert second.outcome is ForwardOutcome.OVERLOADED  # refused at once, nothing queued
    for result in (first, second):
        assert dns.message.from_wire(result.wire).rcode() == dns.rcode.SERVFAIL
    assert 0.3 <= time.monotonic() - started < 3.0
