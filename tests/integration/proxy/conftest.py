"""Fixtures for the proxy engine on loopback: a uvloop thread running an aiohttp backend and the engine,
with blocking clients (curl, raw sockets, grpcio) in the test thread."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from sidecar.errors import NotFound
from sidecar.proxy import ConnectionInfo, HttpProxy, ProxyLimits, RequestHead, RequestStats, Target
from tests.integration.mesh.app import big, count  # the same streaming handlers as the mesh suite's app
from tests.loops import LoopThread

ACK = web.AppKey("ack", asyncio.Queue)   # the client saw what the backend sent so far


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@dataclass
class Backend:
    port: int
    peers: set[Any] = field(default_factory=set)      # client addresses of requests: one per connection
    runner: web.AppRunner | None = None


def backend_app(backend: Backend) -> web.Application:
    async def track(request: web.Request) -> None:
        backend.peers.add(request.transport.get_extra_info("peername") if request.transport else None)

    async def hello(request: web.Request) -> web.Response:
        await track(request)
        headers = {f"x-seen-{k.lower()}": v for k, v in request.headers.items()}
        return web.Response(text=f"hello {request.path_qs}", headers=headers)

    async def echo(request: web.Request) -> web.StreamResponse:
        await track(request)
        response = web.StreamResponse()
        if request.headers.get("x-chunked-reply"):
            response.enable_chunked_encoding()
        else:
            response.content_length = request.content_length or 0
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(65536):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def chunks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"part{i};".encode())
        await response.write_eof()
        return response

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(f"data: event{i}\n\n".encode())
            # the next event only after the client saw this one: proves events are not buffered
            await asyncio.wait_for(request.app[ACK].get(), 10)
        await response.write_eof()
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            if message.type == WSMsgType.TEXT:
                await socket_.send_str("echo:" + message.data)
            elif message.type == WSMsgType.BINARY:
                await socket_.send_bytes(message.data)
        return socket_

    async def reset(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"partial")
        await asyncio.wait_for(request.app[ACK].get(), 10)   # the reset comes after the client has the bytes
        assert request.transport is not None
        request.transport.abort()
        return response

    app = web.Application(client_max_size=1 << 30)
    app[ACK] = asyncio.Queue()
    app.router.add_get("/hello", hello)
    app.router.add_get("/hello/{tail:.*}", hello)
    app.router.add_post("/echo", echo)
    app.router.add_put("/echo", echo)
    app.router.add_post("/count", count)
    app.router.add_get("/big", big)
    app.router.add_get("/chunks", chunks)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws)
    app.router.add_get("/reset", reset)
    return app


async def start_backend() -> Backend:
    backend = Backend(0)
    app = backend_app(backend)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    backend.runner = runner
    backend.port = runner.addresses[0][1]
    return backend


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Harness:
    loop_thread: LoopThread
    backend: Backend
    proxy: HttpProxy
    port: int
    stats: list[RequestStats]
    infos: list[ConnectionInfo]

    def ack(self) -> None:
        """Tell the backend the client saw what it sent so far (the /sse and /reset handlers wait for it)."""
        app = self.backend.runner.app if self.backend.runner else None
        assert app is not None
        self.loop_thread.loop.call_soon_threadsafe(app[ACK].put_nowait, None)


def make_route(backend_port: int, refused_port: int, infos: list[ConnectionInfo]):  # type: ignore[no-untyped-def]
    backend = Target(("127.0.0.1", backend_port), timeout=10.0)
    refused = Target(("127.0.0.1", refused_port), timeout=10.0)

    def route(head: RequestHead, conn: ConnectionInfo) -> Target:
        infos.append(conn)
        name = head.host.split(":")[0]
        if name == "refused":
            return refused
        if name == "missing":
            raise NotFound(f"no service {name}")
        return backend

    return route


@pytest.fixture
def harness(loop_thread: LoopThread) -> Iterator[Harness]:
    yield from _harness(loop_thread, ProxyLimits())


def _harness(loop_thread: LoopThread, limits: ProxyLimits) -> Iterator[Harness]:
    stats: list[RequestStats] = []
    infos: list[ConnectionInfo] = []

    async def start() -> Harness:
        backend = await start_backend()
        proxy = HttpProxy(make_route(backend.port, closed_port(), infos), limits=limits, on_request_done=stats.append)
        server = await proxy.listen("127.0.0.1", 0)
        return Harness(loop_thread, backend, proxy, server.sockets[0].getsockname()[1], stats, infos)

    h = loop_thread.run(start())
    yield h

    async def stop() -> None:
        await h.proxy.close(grace=1.0)
        if h.backend.runner is not None:
            await h.backend.runner.cleanup()

    loop_thread.run(stop())
