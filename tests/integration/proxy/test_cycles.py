"""A finished connection leaves nothing for the cyclic garbage collector: once clients and the upstream have closed
their connections (HTTP/1.1 kept alive or closed, a WebSocket tunnel, h2c streams), a full collection finds no
unreachable object of the sidecar's types. What a connection leaves is freed by reference counting as it closes.

``sidecar run`` collects the youngest generation rarely (:func:`sidecar.app.tune_gc`), and objects that lived as
long as a connection reach the oldest generation, collected more rarely still: a connection's objects left in
reference cycles would hold its memory (buffers, TLS state, the parser) long after it closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from sidecar.proxy import HttpProxy, Target
from tests.cycles import collector_paused, sidecar_garbage
from tests.h2client import RawH2, get
from tests.harness import wait_for
from tests.loops import LoopThread

ROUNDS = 10   # connections of each kind


@dataclass
class Backend:
    """A raw HTTP/1.1 server: ``hello`` to each request, a 101 and an echo to an Upgrade. Its connections stay open
    until :meth:`close_connections`."""

    port: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    server: asyncio.Server | None = None

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"\r\nupgrade: websocket" in head.lower():
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n\r\n")
                    while data := await reader.read(65536):
                        writer.write(data)
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def close_connections(self) -> None:
        for writer in list(self.writers):
            writer.close()

    async def stop(self) -> None:
        self.close_connections()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Listener:
    loop: LoopThread
    backend: Backend
    proxy: HttpProxy
    port: int


@pytest.fixture
def listener() -> Iterator[Listener]:
    loop = LoopThread()

    async def start() -> Listener:
        backend = await Backend().start()
        target = Target(("127.0.0.1", backend.port), timeout=10.0)
        proxy = HttpProxy(lambda head, conn: target, h2c=True)
        server = await proxy.listen("127.0.0.1", 0)
        return Listener(loop, backend, proxy, server.sockets[0].getsockname()[1])

    running = loop.run(start())
    try:
        yield running
    finally:
        async def stop() -> None:
            await running.proxy.close(grace=1.0)
            await running.backend.stop()

        with contextlib.suppress(Exception):
            loop.run(stop())
        loop.close()


def read_response(sock: socket.socket) -> bytes:
    """One response of the backend (``hello``, Content-Length 5) through the proxy: its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    while len(body) < 5:
        body += sock.recv(65536)
    return body


def http1(port: int, requests: int, close: bool) -> None:
    """``requests`` requests on one connection; the last says ``Connection: close`` (the proxy closes) or not (the
    client does)."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        for i in range(requests):
            last = close and i == requests - 1
            close_it = b"Connection: close\r\n" if last else b""
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: svc\r\n" + close_it + b"\r\n")
            assert read_response(sock) == b"hello"
        if close:
            assert sock.recv(65536) == b""   # closed by the proxy


def upgrade(sock: socket.socket, host: str) -> bytes:
    """Ask for a WebSocket upgrade on ``sock``; asserts the 101, returns what came after its head."""
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 101 "), data
    return data.partition(b"\r\n\r\n")[2]


def websocket(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        echoed = upgrade(sock, "svc")
        sock.sendall(b"ping")
        while len(echoed) < 4:
            echoed += sock.recv(65536)
        assert echoed == b"ping"


def h2c(port: int, streams: int) -> None:
    client = RawH2.connect("127.0.0.1", port)
    try:
        for i in range(streams):
            assert client.exchange(1 + 2 * i, get(b"/hello")) == (200, b"hello")
    finally:
        client.close()


def test_closed_connections_leave_no_reference_cycles(listener: Listener) -> None:
    proxy = listener.proxy
    http1(listener.port, 1, close=True)   # what the first connection imports and caches is not counted
    h2c(listener.port, 1)
    wait_for(lambda: not proxy.connections, 5, what="the first connections closed")
    sidecar_garbage()
    with collector_paused():   # every cycle left is still there when counted
        for _ in range(ROUNDS):
            http1(listener.port, 2, close=False)
            http1(listener.port, 2, close=True)
            websocket(listener.port)
            h2c(listener.port, 3)
        wait_for(lambda: not proxy.connections, 5, what="every client connection closed on the proxy's side")
        pools = list(proxy.pools)
        assert pools and sum(pool.dialed for pool in pools) >= ROUNDS   # tunnels took theirs: new ones were dialed
        listener.loop.call(listener.backend.close_connections)
        # an idle pooled connection the server closed leaves its pool once its connection_lost has run
        wait_for(lambda: all(pool.idle == 0 and pool.busy == 0 for pool in pools), 5,
                 what="the pooled upstream connections closed")
        garbage = sidecar_garbage()
    assert not garbage, f"closed connections left reference cycles: {dict(garbage)}"
