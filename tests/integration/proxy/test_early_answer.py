"""An app that answers a POST before reading its body, behind the proxy on loopback. The client plays the caller's
sidecar: its pool takes the connection back once it has read the whole response and has written the whole request,
and sends the next request on it at once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sidecar.proxy import HttpProxy, Target
from tests.harness import read_response
from tests.loops import LoopThread

ANSWER = b"answered"


@dataclass
class EarlyApp:
    """Answers each connection's first request as soon as its head is in, then reads (and drops) to the end."""

    port: int
    connections: int = 0
    close: bool = False   # the answer says Connection: close (and the app still reads on, without closing)


async def start_app(app: EarlyApp) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        app.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            extra = b"Connection: close\r\n" if app.close else b""
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(ANSWER), extra, ANSWER))
            await writer.drain()
            while await reader.read(65536):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@dataclass
class Setup:
    app: EarlyApp
    port: int


@pytest.fixture
def setup(loop_thread: LoopThread) -> Iterator[Setup]:
    app = EarlyApp(0)

    async def start() -> tuple[asyncio.Server, HttpProxy, int]:
        server = await start_app(app)
        app.port = server.sockets[0].getsockname()[1]
        target = Target(("127.0.0.1", app.port), timeout=5.0)
        proxy = HttpProxy(lambda head, info: target)
        listener = await proxy.listen("127.0.0.1", 0)
        return server, proxy, listener.sockets[0].getsockname()[1]

    server, proxy, port = loop_thread.run(start())
    yield Setup(app, port)

    async def stop() -> None:
        await proxy.close(grace=1.0)
        server.close()
        await server.wait_closed()

    loop_thread.run(stop())


def post(length: int) -> bytes:
    return b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % length


def test_the_next_request_on_a_connection_whose_answer_came_before_its_body_end_is_served(setup: Setup) -> None:
    # the first 10 KB go with the head, the app answers, and the last 30 KB follow with the next POST at once:
    # the proxy drops the rest of the first body and serves the second request on the same connection
    with socket.create_connection(("127.0.0.1", setup.port), timeout=5) as s:
        s.sendall(post(40_000) + b"a" * 10_000)
        status, headers, body = read_response(s)
        assert status == 200 and body == ANSWER
        assert "connection" not in headers   # so a pool takes it back
        s.sendall(b"b" * 30_000 + post(5) + b"hello")
        status, _, body = read_response(s)
        assert status == 200 and body == ANSWER
    assert setup.app.connections == 2   # the app's own connection was not reused: its request was not sent whole


def test_a_rest_too_long_to_drop_gets_connection_close_and_the_whole_response(setup: Setup) -> None:
    # 1 MB of body left after the answer, over what the proxy drops: the response says Connection: close, so the
    # caller's pool does not keep the connection, and the response arrives whole while the client still sends
    with socket.create_connection(("127.0.0.1", setup.port), timeout=5) as s:
        s.sendall(post(1_010_000) + b"a" * 10_000)
        status, headers, body = read_response(s)
        assert status == 200 and body == ANSWER
        assert headers.get("connection") == "close"
        assert s.recv(65536) == b""   # half-closed after the response; the rest of the body is still read


def test_an_upstream_answer_with_connection_close_is_not_pooled(setup: Setup) -> None:
    # the app says Connection: close and keeps its socket open: a pooled connection would take the next request to
    # a server that will never answer it. Each request gets a connection of its own
    setup.app.close = True
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", setup.port), timeout=5) as s:
            s.sendall(post(5) + b"hello")
            status, _, body = read_response(s)
            assert status == 200 and body == ANSWER
    assert setup.app.connections == 2
