"""The engine's h2c upstream to an app (sidecar.proxy.h2up): a listener whose route names an H2cKey target relays
HTTP/1.1 requests to a real HTTP/2 app (tests.grpcapps.h2app) as streams of one multiplexed connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hyperframe.frame import Frame

from sidecar.http2.preface import PREFACE
from sidecar.proxy import HttpProxy, Target
from sidecar.proxy.h2pool import H2UpstreamPool
from sidecar.proxy.target import H2cKey
from tests.grpcapps.h2app import H2App, serve
from tests.loops import LoopThread


class Rig:
    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.app: asyncio.Server | None = None
        self.proxy: HttpProxy | None = None
        self.address: tuple[str, int] = ("", 0)

    async def start(self) -> Rig:
        self.app = await serve("127.0.0.1", 0, "h2app")
        port = self.app.sockets[0].getsockname()[1]
        target = Target(("127.0.0.1", port), pool_key=H2cKey("127.0.0.1", port))
        self.proxy = HttpProxy(lambda head, conn: target, name="to-h2-app")
        server = await self.proxy.listen("127.0.0.1", 0)
        self.address = server.sockets[0].getsockname()[:2]
        return self

    async def stop(self) -> None:
        assert self.proxy is not None and self.app is not None
        await self.proxy.close()
        self.app.close()

    def app_pool(self) -> H2UpstreamPool:
        assert self.proxy is not None
        pools = self.proxy.pools.http2_pools()
        assert len(pools) == 1 and isinstance(pools[0], H2UpstreamPool)
        return pools[0]


@pytest.fixture
def rig() -> Iterator[Rig]:
    loop = LoopThread(use_uvloop=False)  # the app's protocol wants asyncio's own transports
    rig = loop.run(Rig(loop).start())
    yield rig
    loop.run(rig.stop())
    loop.close()


async def exchange(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 request on its own connection: the status and the app's JSON answer."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), 5)
        return int(lines[0].split()[1]), json.loads(body)
    finally:
        writer.close()


def test_a_bodiless_request_after_another_on_the_same_app_connection_is_answered(rig: Rig) -> None:
    # the second request finds the app connection open: its stream starts before the request's end is known
    status, first = rig.loop.run(exchange(rig.address, b"POST /h2/echo?q=1 HTTP/1.1\r\nHost: app\r\n"
                                                       b"Content-Length: 5\r\n\r\nhello"))
    assert (status, first["protocol"], first["method"], first["received"]) == (200, "HTTP/2", "POST", 5)
    status, second = rig.loop.run(exchange(rig.address, b"GET /from/http1 HTTP/1.1\r\nHost: app\r\n\r\n"))
    assert (status, second["method"], second["path"], second["authority"]) == (200, "GET", "/from/http1", "app")
    assert rig.app_pool().dialed == 1


def test_concurrent_requests_share_one_app_connection(rig: Rig) -> None:
    async def many() -> list[tuple[int, dict[str, Any]]]:
        return await asyncio.gather(*(exchange(rig.address, b"GET /n/%d HTTP/1.1\r\nHost: app\r\n\r\n" % i)
                                      for i in range(20)))
    answers = rig.loop.run(many())
    assert sorted(body["path"] for _, body in answers) == sorted(f"/n/{i}" for i in range(20))
    assert {status for status, _ in answers} == {200}
    assert rig.app_pool().dialed == 1


class FrameRecordingApp(H2App):
    """tests.grpcapps.h2app's app, noting each frame it receives: (type, stream, flags, payload length)."""

    def __init__(self) -> None:
        super().__init__("recording")
        self.frames: list[tuple[str, int, list[str], int]] = []
        self._unparsed = bytearray()
        self._preface = True

    def data_received(self, data: bytes) -> None:
        buf = self._unparsed
        buf += data
        if self._preface:
            if len(buf) < len(PREFACE):
                return super().data_received(data)
            del buf[:len(PREFACE)]
            self._preface = False
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(buf[:9])))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(buf[9:9 + length])))
            self.frames.append((type(frame).__name__, frame.stream_id, sorted(frame.flags), length))
            del buf[:9 + length]
        super().data_received(data)


def test_a_request_read_whole_goes_to_the_app_as_headers_and_one_data_frame_that_ends_it() -> None:
    # a request whose body and end are in when it starts upstream (a unary call) is HEADERS then DATA carrying
    # END_STREAM, written at once: no empty DATA frame after the body, which cost the app a frame (and over TLS
    # a record) and a wake-up of its own
    loop = LoopThread(use_uvloop=False)
    apps: list[FrameRecordingApp] = []

    def recording() -> FrameRecordingApp:
        apps.append(FrameRecordingApp())
        return apps[-1]

    async def start() -> tuple[asyncio.Server, HttpProxy, tuple[str, int]]:
        app = await asyncio.get_running_loop().create_server(recording, "127.0.0.1", 0)
        port = app.sockets[0].getsockname()[1]
        target = Target(("127.0.0.1", port), pool_key=H2cKey("127.0.0.1", port))
        proxy = HttpProxy(lambda head, conn: target, name="to-recording-app")
        server = await proxy.listen("127.0.0.1", 0)
        return app, proxy, server.sockets[0].getsockname()[:2]

    app, proxy, address = loop.run(start())
    try:
        status, answer = loop.run(exchange(address, b"POST /whole HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\n"
                                                    b"hello"))
        assert (status, answer["received"]) == (200, 5)
        frames = loop.call(lambda: [f for f in apps[0].frames if f[1] == 1])
        assert frames == [("HeadersFrame", 1, ["END_HEADERS"], frames[0][3]), ("DataFrame", 1, ["END_STREAM"], 5)]
    finally:
        loop.run(proxy.close())
        app.close()
        loop.close()
