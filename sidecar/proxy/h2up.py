"""h2c to a local app: the engine's upstream side over HTTP/2 with prior knowledge (``protocol: grpc|http2``).

One :class:`H2AppConnection` per app carries many requests at once, each an :class:`H2AppStream` (the
:class:`~sidecar.proxy.sides.UpstreamStream` of one exchange); :class:`H2AppPool` opens a second connection
only when every open one is at the app's SETTINGS_MAX_CONCURRENT_STREAMS (or draining after its GOAWAY).

A request head goes out as HEADERS (pseudo-headers from the method, target and ``Host``; ``te: trailers``, which
gRPC servers require), its body as DATA, its trailers as a trailing HEADERS. The response's ``:status`` and
fields become the engine's head (chunked, so that an HTTP/1.1 hop after it has a place for trailers), DATA its
body, trailing HEADERS the trailers handed to ``on_response_end``. RST_STREAM, a stream refused by GOAWAY or a
lost connection is ``on_upstream_lost``. Flow control: a DATA frame is acknowledged once the exchange took it,
unless the client side paused reading: then on resume, so a slow client holds the app to one window.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable
from http import HTTPStatus
from typing import cast

from sidecar.errors import ResourceExhausted
from sidecar.http2.connection import H2Connection
from sidecar.http2.events import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    StreamEnded,
    StreamReset,
    StreamWritable,
    TrailersReceived,
)
from sidecar.http2.limits import H2Limits
from sidecar.proxy.connector import connect_failure
from sidecar.proxy.failures import ConnectFailure, UpstreamReset
from sidecar.proxy.h2heads import CONNECTION_SPECIFIC, H2Headers, trailer_headers
from sidecar.proxy.http1 import RequestHead, ResponseHead, Trailers
from sidecar.proxy.limits import PoolLimits
from sidecar.proxy.sides import StreamPool, StreamUser, UpstreamStream
from sidecar.proxy.target import Target
from sidecar.proxy.tunnel import Tunnel

log = logging.getLogger(__name__)

# HTTP/2 has no reason phrase: the HTTP/1.1 hop after it gets the standard one
_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus}


def request_headers(head: RequestHead) -> H2Headers:
    """The HTTP/2 header block of a request the engine relays to an h2c app."""
    out: H2Headers = [(b":method", head.method.encode()), (b":scheme", b"http"), (b":path", head.target),
                      (b":authority", head.host.encode("latin-1"))]
    for lname, _, value in head.headers.items:
        if lname not in CONNECTION_SPECIFIC:
            out.append((lname, value))
    if head.content_length is not None and not head.chunked:
        out.append((b"content-length", b"%d" % head.content_length))
    out.append((b"te", b"trailers"))
    return out


def response_head(headers: H2Headers, end_stream: bool) -> ResponseHead:
    """The engine's head of an h2c app's response: ``:status`` and the end-to-end fields as header lines."""
    status = 0
    lines: list[bytes] = []
    length: int | None = None
    for name, value in headers:
        if name == b":status":
            status = int(value) if value.isdigit() else 0
        elif name == b"content-length" and value.isdigit():
            length = int(value)
        elif name[:1] != b":" and name not in CONNECTION_SPECIFIC:
            lines.append(name + b": " + value + b"\r\n")
    if not 100 <= status <= 999:
        raise UpstreamReset("?", "the app's HTTP/2 response has no valid :status")
    no_body = end_stream or status in (204, 304) or status < 200
    return ResponseHead(status, _REASONS.get(status, b"Unknown"), b"".join(lines), None if no_body else length,
                        chunked=not no_body and length is None, no_body=no_body)


class H2AppStream(UpstreamStream):
    """One request to the app, on one stream of a shared connection; used once."""

    __slots__ = ("conn", "done", "paused", "sid", "trailers", "unacked", "user")

    def __init__(self, conn: H2AppConnection) -> None:
        self.conn = conn
        self.user: StreamUser | None = None
        self.sid = 0
        self.done = False
        self.paused = False
        self.unacked = 0
        self.trailers: Trailers | None = None

    def start(self, user: StreamUser, head: RequestHead, body: list[bytes], end: bool,
              trailers: Trailers | None) -> None:
        self.user = user
        conn = self.conn
        conn.reserved -= 1
        core = conn.core
        if not core.can_open():
            self.done = True
            user.on_upstream_lost(UpstreamReset(conn.address, "the app's HTTP/2 connection took no more streams"))
            return
        empty = end and not trailers and not any(body)
        self.sid = core.start_request(request_headers(head), end_stream=empty)
        conn.streams[self.sid] = self
        if not empty:
            for piece in body:
                if piece:
                    self.send_body(piece)
            if end:
                self.send_end(trailers)
        conn.flush()

    def send_body(self, data: bytes) -> None:
        if not self.conn.core.send_data(self.sid, data) and self.user is not None:
            self.user.on_upstream_paused(True)
        self.conn.flush()

    def send_end(self, trailers: Trailers | None) -> None:
        core = self.conn.core
        if trailers:
            core.send_trailers(self.sid, trailer_headers(trailers))
        else:
            core.end_stream(self.sid)
        self.conn.flush()

    def pause_reading(self, paused: bool) -> None:
        self.paused = paused
        if not paused and self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.conn.core.acknowledge(self.sid, unacked)
            self.conn.flush()

    def unbind(self) -> None:
        self.user = None

    def abort(self) -> None:
        if not self.done:
            self.done = True
            self.conn.core.reset(self.sid)
            self.conn.stream_gone(self.sid)
            self.conn.flush()

    def is_closed(self) -> bool:
        return self.done or self.conn.closed  # released or forgotten, a stream is never handed out again

    def was_reused(self) -> bool:
        return False

    def tunnel_transport(self) -> asyncio.Transport | None:
        return None

    def attach_tunnel(self, tunnel: Tunnel) -> None:
        raise RuntimeError("an HTTP/2 stream to an app is not turned into a tunnel")

    # -- from the connection

    def on_data(self, data: bytes, flow_length: int) -> None:
        if self.user is not None:
            self.user.on_response_body(data)
        if self.paused:
            self.unacked += flow_length
        else:
            self.conn.core.acknowledge(self.sid, flow_length)

    def lost(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        user = self.user
        if user is not None:
            user.on_upstream_lost(exc)
            user.flush()


class H2AppConnection(asyncio.Protocol):
    """One h2c connection to an app and its streams.

    It takes streams once the app's first SETTINGS arrived (``settled``): until then the app's
    SETTINGS_MAX_CONCURRENT_STREAMS is unknown, and streams over it would be refused, or taken by an app that
    applies its limit only once we acknowledge it."""

    def __init__(self, pool: H2AppPool, address: str, limits: H2Limits | None) -> None:
        self.pool = pool
        self.address = address
        self.core = H2Connection(client_side=True, limits=limits)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2AppStream] = {}
        self.reserved = 0            # streams handed out whose request is not started yet
        self.closed = False
        self.settled: asyncio.Future[None] = pool.loop.create_future()
        self.idle_since = pool.loop.time()   # loop time the last stream ended (or the connection opened)

    def room(self) -> bool:
        """Whether one more stream may be handed out on this connection."""
        if self.closed or not self.core.can_open():
            return False
        return self.core.open_streams + self.reserved < self.core.peer_max_streams()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self.flush()

    def data_received(self, data: bytes) -> None:
        loop = self.pool.loop
        users: set[StreamUser] = set()
        events = self.core.receive_data(data, loop.time())
        if self.core.settings_received and not self.settled.done():
            self.settled.set_result(None)
        for event in events:
            if isinstance(event, ConnectionTerminated):
                self._fail_all(UpstreamReset(self.address, f"the app ended the HTTP/2 connection: {event.reason}"))
                continue
            if isinstance(event, GoAwayReceived):
                self.pool.draining(self)
                continue
            sid = getattr(event, "stream_id", 0)
            stream = self.streams.get(sid)
            if stream is None:
                continue
            user = stream.user
            if isinstance(event, HeadersReceived):
                if user is not None:
                    try:
                        head = response_head(event.headers, event.end_stream)
                    except UpstreamReset as e:
                        self.core.reset(sid)
                        self.stream_gone(sid)
                        stream.lost(e)
                        continue
                    if head.status < 200:
                        user.on_response_interim(head)
                    else:
                        user.on_response_head(head)
            elif isinstance(event, DataReceived):
                stream.on_data(event.data, event.flow_length)
            elif isinstance(event, TrailersReceived):
                stream.trailers = [(name, value) for name, value in event.headers]
            elif isinstance(event, StreamEnded):
                stream.done = True
                self.stream_gone(sid)
                if user is not None:
                    user.on_response_end(stream.trailers)
            elif isinstance(event, StreamReset):
                self.stream_gone(sid)
                stream.lost(UpstreamReset(self.address, f"the app reset the stream (error code {event.error_code})"))
            elif isinstance(event, StreamWritable) and user is not None:
                user.on_upstream_paused(False)
            if user is not None:
                users.add(user)
        self.flush()
        for user in users:
            user.flush()
        if self.core.closed:
            self.close()

    def stream_gone(self, sid: int) -> None:
        self.streams.pop(sid, None)
        if not self.streams:
            self.idle_since = self.pool.loop.time()
        self.pool.has_room(self)

    def flush(self) -> None:
        transport = self.transport
        out = self.core.data_to_send()
        if out and transport is not None and not transport.is_closing():
            transport.write(out)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.settled.done():
            self.settled.set_exception(ConnectionResetError("the app closed the connection before its SETTINGS"))
        self.pool.gone(self)
        self._fail_all(UpstreamReset(self.address, f"the app closed the HTTP/2 connection{f': {exc}' if exc else ''}"))

    def _fail_all(self, exc: BaseException) -> None:
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.lost(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.flush()
            self.transport.close()


class H2AppPool(StreamPool):
    """The h2c connections to one app: streams multiplexed, waiters queued while a connection is dialed."""

    def __init__(self, key: Hashable, loop: asyncio.AbstractEventLoop, limits: PoolLimits,
                 h2_limits: H2Limits | None = None) -> None:
        self.key = key
        self.loop = loop
        self.limits = limits
        self.h2_limits = h2_limits
        self.conns: list[H2AppConnection] = []
        self.waiters: deque[tuple[StreamUser, Target]] = deque()
        self.dialing = False
        self.dialed = 0
        self._closed = False

    def acquire(self, target: Target, user: StreamUser, fresh: bool = False) -> UpstreamStream | None:
        for conn in self.conns:
            if conn.room():
                conn.reserved += 1
                return H2AppStream(conn)
        if len(self.waiters) >= self.limits.max_pending:
            raise ResourceExhausted(f"too many requests waiting for a connection to {target.authority}",
                                    {"max_pending_requests": self.limits.max_pending})
        self.waiters.append((user, target))
        if not self.dialing:
            self.dialing = True
            self.loop.create_task(self._dial(target))
        return None

    async def _dial(self, target: Target) -> None:
        conn = H2AppConnection(self, target.authority, self.h2_limits)
        timeout = self.limits.connect_timeout
        try:
            await asyncio.wait_for(self._connect(conn, target), timeout)
        except (OSError, TimeoutError) as e:
            self.dialing = False
            conn.close()
            failure = connect_failure(target.authority, e, timeout)
            waiters, self.waiters = self.waiters, deque()
            for user, _ in waiters:
                user.on_connect_failed(failure)
                user.flush()
            return
        self.dialing = False
        self.dialed += 1
        if self._closed:
            conn.close()
            return
        self.conns.append(conn)
        self.has_room(conn)

    async def _connect(self, conn: H2AppConnection, target: Target) -> None:
        """TCP, then the app's SETTINGS (an app that accepts but never speaks HTTP/2 is a failed connect)."""
        host, port = target.address
        await self.loop.create_connection(lambda: conn, host, port)
        await conn.settled

    def has_room(self, conn: H2AppConnection) -> None:
        """Hand streams of ``conn`` to the requests waiting, while it has room; dial again for the rest."""
        while self.waiters and conn.room():
            user, _ = self.waiters.popleft()
            conn.reserved += 1
            user.on_connection(H2AppStream(conn))
            user.flush()
        if self.waiters and not self.dialing and not self._closed:
            self.dialing = True
            self.loop.create_task(self._dial(self.waiters[0][1]))
        if conn.core.goaway_received is not None and not conn.streams and not conn.reserved:
            conn.close()   # the app drained it and its last stream is over

    def draining(self, conn: H2AppConnection) -> None:
        """The app sent GOAWAY on ``conn``: no new stream goes there; it closes after its last stream."""
        if conn in self.conns:
            self.conns.remove(conn)
        if not conn.streams and not conn.reserved:
            conn.close()

    def gone(self, conn: H2AppConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    def cancel(self, user: StreamUser) -> None:
        self.waiters = deque(w for w in self.waiters if w[0] is not user)

    def release(self, stream: UpstreamStream, now: float) -> None:
        self.forget(stream)

    def forget(self, stream: UpstreamStream) -> None:
        if isinstance(stream, H2AppStream):
            stream.unbind()
            if stream.sid == 0 and not stream.done:  # handed out, never started
                stream.done = True
                stream.conn.reserved -= 1
                self.has_room(stream.conn)
            elif not stream.done:
                stream.abort()

    def detach(self, stream: UpstreamStream) -> None:
        self.forget(stream)

    def close(self) -> None:
        """GOAWAY and close every connection; requests still waiting for one fail."""
        self._closed = True
        for conn in list(self.conns):
            conn.core.goaway()
            conn.close()
        self.conns = []
        waiters, self.waiters = self.waiters, deque()
        for user, target in waiters:
            user.on_connect_failed(ConnectFailure(target.authority, "the proxy is shutting down"))
            user.flush()

    def sweep(self, now: float) -> None:
        """GOAWAY and close connections that carried no stream for the idle timeout (an app rarely called
        keeps no socket open, and a connection the app forgot is not kept for ever)."""
        limit = now - self.limits.idle_timeout
        for conn in list(self.conns):
            if not conn.streams and not conn.reserved and conn.idle_since < limit:
                self.conns.remove(conn)
                conn.core.goaway()
                conn.close()

