"""``Target.verify``: the identity check on each new upstream TLS connection, before it is used or pooled.

Two engines joined by TLS (outer dials inner), a real aiohttp backend behind; blocking clients in the test thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.proxy import HttpProxy, Target, TcpRelay
from tests.harness import read_response, wait_for
from tests.integration.proxy.conftest import Backend, LoopThread, start_backend
from tests.integration.proxy.pki import SPIFFE_ID, make_pki


@dataclass
class Seen:
    reused: bool
    der: bytes
    uris: list[str]


def recorder(seen: list[Seen]) -> Callable[[ssl.SSLObject], None]:
    def verify(ssl_object: ssl.SSLObject) -> None:
        cert = ssl_object.getpeercert() or {}
        sans: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())  # type: ignore[assignment]
        uris = [value for kind, value in sans if kind == "URI"]
        seen.append(Seen(ssl_object.session_reused, ssl_object.getpeercert(binary_form=True) or b"", uris))

    return verify


def refuse(ssl_object: ssl.SSLObject) -> None:
    raise ValueError("peer presented spiffe://test.local/service/caller, expected spiffe://test.local/service/other")


@dataclass
class Pair:
    outer: HttpProxy
    inner: HttpProxy
    backend: Backend
    port: int


@pytest.fixture
def pair_factory(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Callable[[Callable[[ssl.SSLObject], object]],
                                                                                 Pair]]:
    pki = make_pki(tmp_path)
    made: list[Pair] = []

    def make(verify: Callable[[ssl.SSLObject], object]) -> Pair:
        async def start() -> Pair:
            backend = await start_backend()
            backend_target = Target(("127.0.0.1", backend.port))
            inner = HttpProxy(lambda head, conn: backend_target, name="inbound")
            server = await inner.listen("127.0.0.1", 0, ssl_context=pki.server_context())
            to_inner = Target(("127.0.0.1", server.sockets[0].getsockname()[1]), ssl=pki.client_context(),
                              server_hostname="localhost", verify=verify)
            outer = HttpProxy(lambda head, conn: to_inner, name="outbound")
            outer_server = await outer.listen("127.0.0.1", 0)
            return Pair(outer, inner, backend, outer_server.sockets[0].getsockname()[1])

        pair = loop_thread.run(start())
        made.append(pair)
        return pair

    yield make

    async def stop() -> None:
        for pair in made:
            await pair.outer.close(grace=0.5)
            await pair.inner.close(grace=0.5)
            assert pair.backend.runner is not None
            await pair.backend.runner.cleanup()

    loop_thread.run(stop())


def exchange(sock: socket.socket, path: str, close: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One request on ``sock``; reads one response framed by Content-Length."""
    connection = "Connection: close\r\n" if close else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: svc\r\n{connection}\r\n".encode())
    return read_response(sock)


def drop_idle(loop_thread: LoopThread, proxy: HttpProxy) -> None:
    async def sweep() -> None:
        for pool in proxy.pools:
            pool.sweep(asyncio.get_running_loop().time() + 1e6)

    loop_thread.run(sweep())


def test_verify_runs_once_per_connection_and_sees_the_certificate_of_a_resumed_session(
        loop_thread: LoopThread, pair_factory: Callable[[Callable[[ssl.SSLObject], object]], Pair]) -> None:
    seen: list[Seen] = []
    pair = pair_factory(recorder(seen))
    with socket.create_connection(("127.0.0.1", pair.port), timeout=5) as s:
        for i in range(5):
            status, _, body = exchange(s, f"/hello/{i}")
            assert (status, body) == (200, f"hello /hello/{i}".encode())
    assert len(seen) == 1, "verify must run per connection, not per request"
    assert not seen[0].reused and seen[0].der and seen[0].uris == [SPIFFE_ID]

    drop_idle(loop_thread, pair.outer)  # the next request dials again, offering the TLS session
    with socket.create_connection(("127.0.0.1", pair.port), timeout=5) as s:
        assert exchange(s, "/hello/again")[0] == 200
    assert len(seen) == 2
    resumed = seen[1]
    assert resumed.reused, "the second dial did not resume the TLS session"
    # OpenSSL keeps the peer certificate in the session: a resumed connection still proves who it is
    assert resumed.der == seen[0].der and resumed.uris == [SPIFFE_ID]


def test_a_refused_peer_fails_the_request_with_503_names_the_reason_and_is_not_pooled(
        loop_thread: LoopThread, pair_factory: Callable[[Callable[[ssl.SSLObject], object]], Pair],
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def verify(ssl_object: ssl.SSLObject) -> None:
        calls.append(1)
        refuse(ssl_object)

    pair = pair_factory(verify)
    with caplog.at_level(logging.WARNING, logger="sidecar.proxy.pool"):
        for attempt in range(1, 3):
            with socket.create_connection(("127.0.0.1", pair.port), timeout=5) as s:
                status, headers, body = exchange(s, "/hello", close=True)
            assert status == 503 and headers["x-sidecar-error"] == "UNAVAILABLE"
            error = json.loads(body)["error"]
            assert error["code"] == "UNAVAILABLE"
            assert "peer identity refused" in error["message"]
            assert "expected spiffe://test.local/service/other" in error["message"]
            assert error["details"]["identity"] == "refused"
            assert len(calls) == attempt, "a refused connection must never be reused"
    assert any("peer identity refused" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    async def pool_sizes() -> list[tuple[int, int]]:
        return [(pool.idle, pool.busy) for pool in pair.outer.pools]

    assert loop_thread.run(pool_sizes()) == [(0, 0)]
    # the inner side saw the connections close: none is left open
    wait_for(lambda: not pair.inner.connections, 5, what="refused connections closed on the server side")
    assert pair.backend.peers == set(), "nothing reached the backend"


def test_verify_applies_to_tcp_relay_dials(loop_thread: LoopThread, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    seen: list[Seen] = []

    async def start(verify: Callable[[ssl.SSLObject], object]) -> tuple[asyncio.Server, TcpRelay, int]:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello over tls")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=pki.server_context())
        target = Target(("127.0.0.1", server.sockets[0].getsockname()[1]), ssl=pki.client_context(),
                        server_hostname="localhost", verify=verify)
        relay = TcpRelay(lambda info: target, name="outbound-tcp")
        relay_server = await relay.listen("127.0.0.1", 0)
        return server, relay, relay_server.sockets[0].getsockname()[1]

    def read_all(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    for verify, expected in ((recorder(seen), b"hello over tls"), (refuse, b"")):
        server, relay, port = loop_thread.run(start(verify))
        try:
            assert read_all(port) == expected
        finally:
            async def stop(server: asyncio.Server = server, relay: TcpRelay = relay) -> None:
                await relay.close()
                server.close()

            loop_thread.run(stop())
        if expected:
            assert len(seen) == 1 and seen[0].uris == [SPIFFE_ID]
        else:
            assert relay.failed == 1
