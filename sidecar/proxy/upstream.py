"""The upstream side: one pooled keep-alive connection to a server, carrying one exchange at a time.

As the HTTP/1.1 :class:`~sidecar.proxy.sides.UpstreamStream` it writes the request: the head, then the body
chunked or as is (as the client framed it). The protocol only feeds bytes to the :class:`ResponseReader` and
tells its current user (an exchange, or a tunnel after a 101) what happened. Between exchanges it sits idle
in its pool; bytes or a close from the server while idle just drop it from the pool.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

from sidecar.proxy.http1 import (
    DEFAULT_HEAD_LIMITS,
    LAST_CHUNK,
    HeadLimits,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
    Trailers,
    encode_chunk,
    last_chunk,
)
from sidecar.proxy.http1read import ResponseReader
from sidecar.proxy.limits import write_pieces
from sidecar.proxy.sides import StreamUser, UpstreamStream
from sidecar.proxy.tunnel import Tunnel


class ConnectionOwner(Protocol):
    """What an upstream connection tells the pool that holds it (an :class:`~sidecar.proxy.pool.UpstreamPool`)."""

    def discard(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection(UpstreamStream, asyncio.Protocol):
    __slots__ = ("_chunked", "_limits", "_reader", "address", "closed", "idle_since", "paused", "pool", "reused",
                 "tls", "transport", "tunnel", "user")

    # made with the connection: a dial that fails (refused, TLS) gets no connection_lost to close it, and
    # would leave the two in a reference cycle
    _reader: ResponseReader

    def __init__(self, pool: ConnectionOwner | None, address: str, limits: HeadLimits = DEFAULT_HEAD_LIMITS) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.tls = False              # writes of several pieces are joined into one TLS record (write_pieces)
        self.user: StreamUser | None = None
        self.tunnel: Tunnel | None = None
        self.closed = False
        self.paused = False
        self.reused = False           # has carried an exchange before: it may have been closed by the server
        self.idle_since = 0.0
        self._chunked = False         # the request in flight has a chunked body
        self._limits = limits

    # --------------------------------------------------------------------------- UpstreamStream

    def start(self, user: StreamUser, head: RequestHead, body: list[bytes], end: bool,
              trailers: Trailers | None) -> None:
        self.user = user
        self._reader.expect(head.method == "HEAD")
        chunked = self._chunked = head.chunked
        out = [head.to_bytes()]
        if body:
            if chunked:
                for piece in body:
                    out += encode_chunk(piece)
            else:
                out += body
        if end and chunked:
            out.append(LAST_CHUNK if trailers is None else last_chunk(trailers))
        self.writelines(out)

    def send_body(self, data: bytes) -> None:
        if self._chunked:
            self.writelines(encode_chunk(data))
        else:
            self.write(data)

    def send_end(self, trailers: Trailers | None) -> None:
        # trailers go in the last chunk; a request framed by Content-Length has no place for them
        if self._chunked and not self.closed:
            self.write(LAST_CHUNK if trailers is None else last_chunk(trailers))

    def is_closed(self) -> bool:
        return self.closed

    def was_reused(self) -> bool:
        return self.reused

    def tunnel_transport(self) -> asyncio.Transport | None:
        return self.transport

    def attach_tunnel(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        if self.paused:
            self.pause_reading(False)

    def unbind(self) -> None:
        self.user = None
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        write_pieces(self.transport, parts, self.tls)

    def pause_reading(self, paused: bool) -> None:
        if paused != self.paused and self.transport is not None and not self.closed:
            self.paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def ssl_object(self) -> Any:
        return None if self.transport is None else self.transport.get_extra_info("ssl_object")

    # --------------------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.tls = transport.get_extra_info("ssl_object") is not None
        self._reader = ResponseReader(self, self._limits)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_server(data)
            return
        user = self.user
        if user is None:
            # a server speaking while no request is outstanding: the connection cannot be trusted
            self.close()
            return
        try:
            offset = self._reader.feed(data)
        except RemoteProtocolError as e:
            user.on_upstream_error(e)
        else:
            if offset is not None:
                user.on_upstream_upgraded(data[offset:])
        user.flush()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.server_eof()
        return None  # close; connection_lost tells the user

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._reader.close()   # it and this protocol held each other (see ResponseReader)
        if self.tunnel is not None:
            self.tunnel.server_lost(exc)
            return
        user = self.user
        if user is not None:
            self.user = None
            user.on_upstream_lost(exc)
            user.flush()
        elif self.pool is not None:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_client(True)
        elif self.user is not None:
            self.user.on_upstream_paused(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_client(False)
        elif self.user is not None:
            self.user.on_upstream_paused(False)

    # --------------------------------------------------------------------------- reader sink

    def on_response_interim(self, head: ResponseHead) -> None:
        if self.user is not None:
            self.user.on_response_interim(head)

    def on_response_head(self, head: ResponseHead) -> None:
        if self.user is not None:
            self.user.on_response_head(head)

    def on_response_body(self, data: bytes) -> None:
        if self.user is not None:
            self.user.on_response_body(data)

    def on_response_end(self, trailers: Trailers | None) -> None:
        if self.user is not None:
            self.user.on_response_end(trailers)
