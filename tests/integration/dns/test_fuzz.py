"""Random bytes at the responder over UDP and TCP: it must keep answering everyone else."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import dns.message
import dns.name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import wait_for

StartServer = Callable[..., Any]
DEADLINE = 3.0

VALID = [
    dns.message.make_query("web.service.mesh", "A").to_wire(),
    dns.message.make_query("_web._tcp.service.mesh", "SRV", use_edns=0, payload=1232).to_wire(),
    dns.message.make_query("example.com", "A").to_wire(),
    dns.message.make_query("big.service.mesh", "A", want_dnssec=True).to_wire(),
]


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """Pure noise, or a real query with bytes flipped, cut or appended: noise that gets past the header."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=700))
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    tail = draw(st.binary(max_size=40))
    return bytes(data[:cut] + tail) if draw(st.booleans()) else bytes(data)


def answered_over_udp(sock: socket.socket, address: tuple[str, int]) -> None:
    """A normal query gets its answer; replies to the noise are skipped."""
    query = dns.message.make_query("web.service.mesh", "A")
    sock.sendto(query.to_wire(), address)
    deadline = time.monotonic() + DEADLINE
    for _ in range(100):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65535)
        if data[:2] == query.id.to_bytes(2, "big"):
            response = dns.message.from_wire(data)
            assert response.rcode() == 0 and len(response.answer[0]) == 3
            return
    raise AssertionError("no answer to a normal query after the noise")


def answered_over_tcp(sock: socket.socket) -> None:
    query = dns.message.make_query("web.service.mesh", "A")
    wire = query.to_wire()
    sock.sendall(len(wire).to_bytes(2, "big") + wire)
    for _ in range(100):
        size = int.from_bytes(_read(sock, 2), "big")
        data = _read(sock, size)
        if data[:2] == query.id.to_bytes(2, "big"):
            assert dns.message.from_wire(data).rcode() == 0
            return
    raise AssertionError("no answer to a normal query after the noise")


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the server closed a connection that sent well-framed messages"
        data += chunk
    return data


def test_udp_noise(dns_server: StartServer) -> None:
    running = dns_server()
    address = (running.host, running.port)

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(noise=st.lists(hostile(), min_size=1, max_size=5))
    def check(noise: list[bytes]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for data in noise:
                sock.sendto(data, address)
            answered_over_udp(sock, address)

    check()
    assert running.server.counters.internal_errors == 0
    assert running.server.counters.malformed > 0  # the noise did reach the parser


def test_tcp_noise(dns_server: StartServer) -> None:
    running = dns_server()
    address = (running.host, running.port)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(noise=st.lists(hostile(), min_size=1, max_size=4), framed=st.booleans())
    def check(noise: list[bytes], framed: bool) -> None:
        if framed:  # well-framed garbage: the same connection must keep answering
            with socket.create_connection(address, timeout=DEADLINE) as sock:
                sock.sendall(b"".join(len(d).to_bytes(2, "big") + d for d in noise))
                answered_over_tcp(sock)
        else:  # raw noise, then hang up: other connections are unaffected
            with socket.create_connection(address, timeout=DEADLINE) as sock:
                sock.sendall(b"".join(noise))
            with socket.create_connection(address, timeout=DEADLINE) as sock:
                answered_over_tcp(sock)

    check()
    assert running.server.counters.internal_errors == 0
    assert running.server.counters.malformed > 0  # the noise did reach the parser
    # every noisy connection was closed by us or released: none is left behind
    wait_for(lambda: len(running.server._connections) == 0, DEADLINE, 0.01, what="every noisy connection released")
