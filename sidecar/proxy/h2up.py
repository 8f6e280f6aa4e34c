"""HTTP/2 upstreams: the engine's upstream side over HTTP/2, to a local app over h2c (``protocol: grpc|http2``,
an :class:`~sidecar.proxy.target.H2cKey` Target) or to a peer sidecar over mTLS with ALPN ``h2`` (an
:class:`~sidecar.proxy.target.H2PeerKey` Target).

One :class:`H2UpstreamConnection` carries many requests at once, each an :class:`H2UpstreamStream` (the
:class:`~sidecar.proxy.sides.UpstreamStream` of one exchange); the pool of a key
(:class:`~sidecar.proxy.h2pool.H2UpstreamPool`) keeps one connection and opens a second only when every open one
is at the peer's SETTINGS_MAX_CONCURRENT_STREAMS or draining after its GOAWAY. A new connection takes streams once
the peer's first bytes (its SETTINGS) are in, so the peer's limit is known before it is used. Dialing (TLS, the
SPIFFE check of the answering peer, session reuse) is :func:`sidecar.proxy.connector.dial`, as for HTTP/1.1.

A request head goes out as HEADERS (pseudo-headers from the method, target and ``Host``; ``te: trailers``, which
gRPC servers require), its body as DATA, its trailers as a trailing HEADERS. The response's ``:status`` and
fields become the engine's head (chunked, so that an HTTP/1.1 hop after it has a place for trailers), DATA its
body, trailing HEADERS the trailers handed to ``on_response_end``. RST_STREAM, a stream refused by GOAWAY or a
lost connection is ``on_upstream_lost`` (a reset, retried elsewhere when the request can be replayed). Flow
control: a DATA frame is acknowledged once the exchange took it, unless the client side paused reading: then on
resume, so a slow client holds the upstream to one window, across every hop.

Peers only:

* Keepalive (:mod:`sidecar.http2.keepalive`): a PING after ``interval`` of silence; no answer within
  ``timeout`` closes the connection and fails its streams as lost.
* GOAWAY (the peer drains): the streams at or below its last stream id finish, no new one goes there, new
  streams go to a new connection (or, once the peer stops accepting, another instance); the connection closes
  after its last stream.
* A peer whose handshake does not select ``h2`` (a sidecar that speaks HTTP/1.1 only) is remembered as such for
  :data:`~sidecar.proxy.h2pool.HTTP1_RECHECK` seconds: its connection is closed before any byte is written, and
  the requests waiting for it, and every request to it meanwhile, go through the HTTP/1.1 pool of the key's
  ``fallback`` Target.
* Connections without a stream for the pool's idle timeout are closed by the sweeper, like idle HTTP/1.1 ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from http import HTTPStatus
from typing import Final, Protocol, cast

from sidecar.http2.connection import H2Core, new_connection
from sidecar.http2.events import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    PingAcked,
    StreamEnded,
    StreamReset,
    StreamWritable,
    TrailersReceived,
)
from sidecar.http2.keepalive import Action, Keepalive, KeepalivePolicy
from sidecar.http2.limits import H2Limits
from sidecar.proxy.failures import UpstreamReset
from sidecar.proxy.h2heads import CONNECTION_SPECIFIC, H2Headers, trailer_headers
from sidecar.proxy.http1 import RequestHead, ResponseHead, Trailers
from sidecar.proxy.sides import StreamUser, UpstreamStream
from sidecar.proxy.target import H2PeerKey
from sidecar.proxy.tunnel import Tunnel
from sidecar.proxy.writebatch import write_batch

log = logging.getLogger("sidecar.proxy.pool")

CONNECT_TIMEOUT: Final = 5.0
ALPN_H2: Final = "h2"
# HTTP/2 has no reason phrase: the HTTP/1.1 hop after it gets the standard one
_REASONS: Final = {int(s): s.phrase.encode() for s in HTTPStatus}


def request_headers(head: RequestHead, scheme: bytes = b"http") -> H2Headers:
    """The HTTP/2 header block of a request the engine relays over HTTP/2 (``scheme`` https over TLS)."""
    out: H2Headers = [(b":method", head.method.encode()), (b":scheme", scheme), (b":path", head.target),
                      (b":authority", head.host.encode("latin-1"))]
    for lname, _, value in head.headers.items:
        if lname not in CONNECTION_SPECIFIC:
            out.append((lname, value))
    if head.content_length is not None and not head.chunked:
        out.append((b"content-length", b"%d" % head.content_length))
    out.append((b"te", b"trailers"))
    return out


def response_head(headers: H2Headers, end_stream: bool) -> ResponseHead:
    """The engine's head of an HTTP/2 response: ``:status`` and the end-to-end fields as header lines."""
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
        raise UpstreamReset("?", "the HTTP/2 response has no valid :status")
    no_body = end_stream or status in (204, 304) or status < 200
    return ResponseHead(status, _REASONS.get(status, b"Unknown"), b"".join(lines), None if no_body else length,
                        chunked=not no_body and length is None, no_body=no_body)


def speaks_h2(transport: asyncio.BaseTransport) -> bool:
    """A dialed connection may carry HTTP/2: plaintext (h2c with prior knowledge), or TLS whose ALPN chose h2."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is None or ssl_object.selected_alpn_protocol() == ALPN_H2


class H2UpstreamStream(UpstreamStream):
    """One request upstream, on one stream of a shared connection; used once."""

    __slots__ = ("conn", "done", "paused", "sid", "trailers", "unacked", "user")

    def __init__(self, conn: H2UpstreamConnection) -> None:
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
        if conn.closed or not core.can_open():
            self.done = True
            user.on_upstream_lost(UpstreamReset(conn.address, f"the {conn.who}'s HTTP/2 connection took no more"
                                                              " streams"))
            return
        pieces = [piece for piece in body if piece]
        empty = end and not trailers and not pieces
        self.sid = core.start_request(request_headers(head, conn.scheme), end_stream=empty)
        conn.streams[self.sid] = self
        conn.started += 1
        if not empty:
            # a request read whole (a unary call) leaves as one write: HEADERS, then DATA whose last frame carries
            # END_STREAM (no empty DATA frame after it, a second TLS record and a second wake-up for the peer)
            last = len(pieces) - 1
            for i, piece in enumerate(pieces):
                self._queue_body(piece, end and not trailers and i == last)
            if end and (trailers or not pieces):
                self._queue_end(trailers)
        conn.flush()

    def _queue_body(self, data: bytes, end: bool) -> None:
        if not self.conn.core.send_data(self.sid, data, end_stream=end) and self.user is not None:
            self.user.on_upstream_paused(True)

    def _queue_end(self, trailers: Trailers | None) -> None:
        core = self.conn.core
        if trailers:
            core.send_trailers(self.sid, trailer_headers(trailers))
        else:
            core.end_stream(self.sid)

    def send_body(self, data: bytes) -> None:
        self._queue_body(data, False)
        self.conn.flush()

    def send_end(self, trailers: Trailers | None) -> None:
        self._queue_end(trailers)
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
        raise RuntimeError("an HTTP/2 upstream stream is not turned into a tunnel")

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


class H2ConnectionOwner(Protocol):
    """What a connection uses of its pool (:class:`~sidecar.proxy.h2pool.H2UpstreamPool`): the loop, who it
    talks to, the PING policy and counters, the TLS session to offer next, and where to report its changes."""

    loop: asyncio.AbstractEventLoop
    peer: H2PeerKey | None      # None: an app over h2c
    keepalive: KeepalivePolicy | None
    session: ssl.SSLSession | None
    pings_sent: int
    pings_acked: int
    ping_timeouts: int

    def has_room(self, conn: H2UpstreamConnection) -> None: ...

    def draining(self, conn: H2UpstreamConnection) -> None: ...

    def gone(self, conn: H2UpstreamConnection) -> None: ...


class H2UpstreamConnection(asyncio.Protocol):
    """One HTTP/2 connection upstream and its streams."""

    def __init__(self, pool: H2ConnectionOwner, address: str, limits: H2Limits | None) -> None:
        self.pool = pool
        self.address = address
        self.who = "peer sidecar" if pool.peer is not None else "app"
        self.scheme = b"https" if pool.peer is not None else b"http"
        self.core: H2Core = new_connection(client_side=True, limits=limits)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2UpstreamStream] = {}
        self.reserved = 0            # streams handed out whose request is not started yet
        self.started = 0             # streams started since it opened
        self.closed = False
        self.ready = False           # the peer's first bytes (its SETTINGS) are in: its stream limit is known
        self.h2 = True               # False: the TLS handshake chose another protocol; nothing was written
        self.draining = False        # the peer sent GOAWAY
        self.idle_since = pool.loop.time()   # since connected, or since its last stream ended
        self.session_taken = False
        self.keepalive: Keepalive | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self.batch = write_batch()

    def room(self) -> bool:
        """Whether one more stream may be handed out on this connection."""
        if self.closed or not self.ready or self.draining or not self.core.can_open():
            return False
        return self.core.open_streams + self.reserved < self.core.peer_max_streams()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self.idle_since = self.pool.loop.time()
        if not speaks_h2(transport):
            self.h2 = False   # an HTTP/1.1 server must not see our preface: the pool closes this connection
            return
        self.flush()
        policy = self.pool.keepalive
        if policy is not None:
            now = self.pool.loop.time()
            self.keepalive = Keepalive(policy, now)
            self._ticker = self.pool.loop.call_at(now + policy.interval, self._tick)

    def data_received(self, data: bytes) -> None:
        batch = self.batch
        batch.begin()   # what the read's streams write to their clients (and here) goes out once, at its end
        try:
            self._receive(data)
        finally:
            batch.end()

    def _receive(self, data: bytes) -> None:
        pool = self.pool
        now = pool.loop.time()
        if self.keepalive is not None:
            self.keepalive.heard(now)
        users: set[StreamUser] = set()
        for event in self.core.receive_data(data, now):
            if isinstance(event, ConnectionTerminated):
                self._fail_all(UpstreamReset(self.address, f"the {self.who} ended the HTTP/2 connection:"
                                                           f" {event.reason}"))
                continue
            if isinstance(event, GoAwayReceived):
                self.draining = True
                pool.draining(self)
                continue
            if isinstance(event, PingAcked):
                pool.pings_acked += 1
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
                    except UpstreamReset:
                        self.core.reset(sid)
                        self.stream_gone(sid)
                        stream.lost(UpstreamReset(self.address, f"the {self.who}'s HTTP/2 response has no valid"
                                                                " :status"))
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
                stream.lost(UpstreamReset(self.address, f"the {self.who} reset the stream (error code"
                                                        f" {event.error_code})"))
            elif isinstance(event, StreamWritable) and user is not None:
                user.on_upstream_paused(False)
            if user is not None:
                users.add(user)
        self.flush()
        for user in users:
            user.flush()
        if self.core.closed:
            self.close()
        elif not self.ready and self.core.settings_received:
            self.ready = True
            if not self.closed:
                pool.has_room(self)

    def stream_gone(self, sid: int) -> None:
        if self.streams.pop(sid, None) is not None and not self.streams:
            self.idle_since = self.pool.loop.time()
            if not self.session_taken:
                self._take_session()
        if self.draining and not self.streams and not self.reserved:
            self.close()
            return
        self.pool.has_room(self)

    def _take_session(self) -> None:
        # once per connection, after a response: TLS 1.3 tickets have arrived by then (reading the session
        # costs ~100us, OpenSSL copies it)
        self.session_taken = True
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None and ssl_object.session is not None:
            self.pool.session = ssl_object.session

    def _tick(self) -> None:
        self._ticker = None
        keepalive = self.keepalive
        if keepalive is None or self.closed:
            return
        loop = self.pool.loop
        action, wake_at = keepalive.tick(loop.time())
        if action is Action.PING:
            self.pool.pings_sent += 1
            self.core.ping(os.urandom(8))
            self.flush()
        elif action is Action.DEAD:
            policy = keepalive.policy
            self.pool.ping_timeouts += 1
            log.warning("HTTP/2 connection to %s closed: no answer to PING within %.1fs", self.address,
                        policy.timeout)
            self._fail_all(UpstreamReset(self.address, f"no answer to PING within {policy.timeout:.1f}s"))
            self.abort()
            return
        self._ticker = loop.call_at(wake_at, self._tick)

    def flush(self) -> None:
        """Write what the core holds: at the end of the read being handled (:mod:`sidecar.proxy.writebatch`)."""
        self.batch.flush(self)

    def write_out(self) -> None:
        transport = self.transport
        out = self.core.data_to_send()
        if out and transport is not None and not transport.is_closing():
            transport.write(out)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_ticker()
        self.pool.gone(self)
        self._fail_all(UpstreamReset(self.address, f"the {self.who} closed the HTTP/2 connection"
                                                   f"{f': {exc}' if exc else ''}"))

    def _fail_all(self, exc: BaseException) -> None:
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.lost(exc)

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def close(self) -> None:
        self.closed = True
        self._stop_ticker()
        self.pool.gone(self)
        if self.transport is not None:
            self.write_out()
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._stop_ticker()
        self.pool.gone(self)
        if self.transport is not None:
            self.transport.abort()
