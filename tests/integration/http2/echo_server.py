"""A thin asyncio driver of the HTTP/2 core's server side, for tests with real clients: it answers every
request with ``echo:PATH`` followed by the request body, as soon as the body has ended."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from sidecar.http2.connection import H2Connection
from sidecar.http2.events import ConnectionTerminated, DataReceived, HeadersReceived, StreamEnded, StreamReset


class EchoProtocol(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.core = H2Connection(client_side=False)
        self.paths: dict[int, bytes] = {}
        self.bodies: dict[int, bytearray] = {}
        self.transport: asyncio.Transport | None = None
        self.ending = False
        self.received = bytearray()  # every byte each way, for replaying real clients' traffic
        self.sent = bytearray()
        server.captures.append((self.received, self.sent))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.append(self.core)
        self._write(self.core.data_to_send())

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.sent += data
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.received += data
        for event in self.core.receive_data(data, time.monotonic()):
            if isinstance(event, HeadersReceived):
                self.paths[event.stream_id] = dict(event.headers).get(b":path", b"")
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, DataReceived):
                self.bodies[event.stream_id] += event.data
                self.core.acknowledge(event.stream_id, event.flow_length)
            elif isinstance(event, StreamEnded):
                body = b"echo:" + self.paths.pop(event.stream_id) + bytes(self.bodies.pop(event.stream_id))
                self.core.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", b"text/plain"),
                                                         (b"content-length", str(len(body)).encode())])
                self.core.send_data(event.stream_id, body, end_stream=True)
            elif isinstance(event, StreamReset):
                self.paths.pop(event.stream_id, None)
                self.bodies.pop(event.stream_id, None)
            elif isinstance(event, ConnectionTerminated):
                self.server.terminations.append(event)
        out = self.core.data_to_send()
        if out:
            self._write(out)
        if self.core.closed and not self.ending:
            self.ending = True
            # FIN after the GOAWAY, and read on for a moment: closing with unread input would send a RST,
            # and a RST may discard the GOAWAY before the peer reads it
            self.transport.write_eof()
            asyncio.get_running_loop().call_later(1.0, self.transport.close)

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()  # a peer that does not read gets no more answers queued

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()


class EchoServer:
    def __init__(self) -> None:
        self.connections: list[H2Connection] = []
        self.terminations: list[ConnectionTerminated] = []
        self.captures: list[tuple[bytearray, bytearray]] = []  # (client to server, server to client) each
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> EchoServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: EchoProtocol(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
