"""The upstream side: one pooled keep-alive connection to a server, carrying one exchange at a time.

The protocol only feeds bytes to the :class:`ResponseReader` and tells its current user (an exchange, or
a tunnel after a 101) what happened. Between exchanges it sits idle in its pool; bytes or a close from
the server while idle just drop it from the pool.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

from sidecar.proxy.http1 import DEFAULT_HEAD_LIMITS, HeadLimits, RemoteProtocolError, ResponseHead, ResponseReader
from sidecar.proxy.limits import write_pieces
from sidecar.proxy.tunnel import Tunnel


class UpstreamUser(Protocol):
    """What an upstream connection reports to the exchange that holds it."""

    def on_response_interim(self, head: ResponseHead) -> None: ...
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_upstream_error(self, error: RemoteProtocolError) -> None: ...
    def on_upstream_upgraded(self, rest: bytes) -> None: ...
    def on_upstream_lost(self, exc: BaseException | None) -> None: ...
    def on_upstream_paused(self, paused: bool) -> None: ...
    def flush(self) -> None: ...


class ConnectionOwner(Protocol):
    """What an upstream connection tells the pool that holds it (an :class:`~sidecar.proxy.pool.UpstreamPool`)."""

    def discard(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("_reader", "address", "closed", "idle_since", "paused", "pool", "reused", "tls", "transport",
                 "tunnel", "user")

    def __init__(self, pool: ConnectionOwner | None, address: str, limits: HeadLimits = DEFAULT_HEAD_LIMITS) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.tls = False              # writes of several pieces are joined into one TLS record (write_pieces)
        self.user: UpstreamUser | None = None
        self.tunnel: Tunnel | None = None
        self.closed = False
        self.paused = False
        self.reused = False           # has carried an exchange before: it may have been closed by the server
        self.idle_since = 0.0
        self._reader = ResponseReader(self, limits)

    # --------------------------------------------------------------------------- used by the exchange

    def bind(self, user: UpstreamUser, head_request: bool) -> None:
        self.user = user
        self._reader.expect(head_request)

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

    def on_response_end(self) -> None:
        if self.user is not None:
            self.user.on_response_end()
