"""The HTTP/1.1 client side: one accepted connection (plain or TLS), its requests one at a time.

Requests are parsed as bytes arrive; the first starts an :class:`Exchange`. Pipelined requests that
arrive while one is in flight are parsed and their events held in order (the client stops being read
beyond ``max_pipelined_bytes``), then replayed when the exchange in flight ends. One lazy timer covers
the connection's deadlines: the header timeout while a head is incomplete, the idle timeout between
requests, and the exchange's deadlines while one is in flight.

As the :class:`~sidecar.proxy.sides.ClientSide` of its exchange it writes HTTP/1.1: a response head with
its framing towards this client (as received, chunked, or close-delimited for an HTTP/1.0 client), the
sidecar's own errors as complete responses, and whether the connection stays open after each exchange.
Writes are collected in ``out`` and flushed once per event (one ``writev`` for a response head and body
that arrive together).

Reading from the client is paused for three independent reasons, tracked as a set: the upstream's write
buffer is full ("upstream"), body bytes pile up while no upstream connection is ready ("pending"), or
pipelined requests pile up ("pipeline").

A response may end before its request (an app that answers a POST without reading its body). The client, a peer
sidecar's pool most often, may then reuse the connection as soon as it has the response, so it is not simply
closed (RFC 9112 9.6, nginx's lingering close): the rest of the request body is read and dropped, within
``linger_bytes`` and ``linger_timeout``, and the connection serves the next request if the body ended in time.
When the rest is known to be longer (Content-Length), the response head says ``Connection: close`` so that the
client does not pool the connection, and reading goes on for that long after the response (half-closed where the
transport allows) so that the close does not reset the connection under the response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, cast

from sidecar.errors import SidecarError, Unavailable, rescue
from sidecar.http2.preface import Sniffed, sniff
from sidecar.proxy.engine import Engine
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.http1 import (
    LAST_CHUNK,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
    Trailers,
    encode_chunk,
    last_chunk,
    simple_response,
)
from sidecar.proxy.http1read import RequestReader
from sidecar.proxy.limits import LazyTimer, write_pieces
from sidecar.proxy.sides import ClientSide
from sidecar.proxy.target import ConnectionInfo
from sidecar.proxy.tunnel import Tunnel

log = logging.getLogger(__name__)


class ClientConnection(Protocol):
    """A client connection as its listener counts, drains and closes it, whatever its protocol."""

    @property
    def idle(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Acceptor(Protocol):
    """What a client connection uses of the proxy that accepted it (an :class:`~sidecar.proxy.HttpProxy`)."""

    engine: Engine
    connections: set[ClientConnection]
    accepted: int
    rejected: int
    protocol_errors: int
    header_timeouts: int
    h2c: bool

    def displace_idle(self) -> bool: ...

    def start_h2c(self, transport: asyncio.Transport, first: bytes, info: ConnectionInfo) -> None: ...

_HEAD, _BODY, _END = 0, 1, 2


class DownstreamProtocol(ClientSide, asyncio.Protocol):
    __slots__ = ("_backlog", "_backlog_bytes", "_chunked", "_close_after", "_draining_backlog", "_early",
                 "_feeding", "_linger_left", "_pause_reasons", "_sniffed", "_starting", "client_paused", "closed",
                 "engine", "exchange", "info", "limits", "loop", "out", "proxy", "reader", "timer", "transport",
                 "tunnel")

    def __init__(self, proxy: Acceptor, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = proxy
        engine = self.engine = proxy.engine
        self.limits = engine.limits   # read per request: held with its type, not looked up through Acceptor
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.info = ConnectionInfo(engine.name, None, None, None)
        self.reader = RequestReader(self, engine.limits.head)
        self.exchange: Exchange | None = None
        self.tunnel: Tunnel | None = None
        self.out: list[bytes] = []
        self.timer = LazyTimer(loop, self._on_timer)
        self.closed = False
        self.client_paused = False    # our write buffer to the client is full
        self._pause_reasons: set[str] = set()
        self._backlog: list[tuple[int, object]] = []
        self._backlog_bytes = 0
        self._draining_backlog = False
        # the response in flight: chunked towards the client; the connection closes after it
        self._chunked = False
        self._close_after = False
        # client bytes after an upgrade request, held until the 101 arrives
        self._early: list[bytes] = []
        # the connection's first bytes while they may still be the HTTP/2 preface (None: HTTP/1.1 decided)
        self._sniffed: bytes | None = None
        # a read is being parsed; an exchange whose head it carried begins once the read's body and end are in
        self._feeding = False
        self._starting: Exchange | None = None
        # bytes of an unfinished request body still accepted (and dropped) after its response ended; None: no such
        self._linger_left: int | None = None

    # ------------------------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        proxy = self.proxy
        engine = self.engine
        limits = engine.limits
        overload = engine.overload
        if overload is not None and overload.refusing:
            self._refuse(transport, overload.refuse(engine.name))
            return
        if len(proxy.connections) >= limits.max_connections and not proxy.displace_idle():
            proxy.rejected += 1
            # 503 UNAVAILABLE, as Envoy's overflow: a peer sidecar retries it on another instance (a 429 it would not)
            self._refuse(transport, Unavailable(f"over {limits.max_connections} connections on this listener",
                                                {"reason": "connection-limit", "limit": limits.max_connections}))
            return
        proxy.connections.add(self)
        proxy.accepted += 1
        transport.set_write_buffer_limits(limits.high_water, limits.low_water)
        self.info = ConnectionInfo(engine.name, transport.get_extra_info("peername"),
                                   transport.get_extra_info("sockname"), transport.get_extra_info("ssl_object"))
        self.timer.set(self.loop.time() + limits.header_timeout)
        if proxy.h2c:
            self._sniffed = b""

    def _refuse(self, transport: asyncio.Transport, error: SidecarError) -> None:
        self.closed = True
        rescued = rescue(error)
        transport.write(simple_response(rescued.status, rescued.headers, rescued.body, close=True))
        # half-close and drain what the client sends for a moment: closing with unread bytes would
        # reset the connection and the client would never read the answer
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(1.0, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.closed:
            return  # a refused or finished connection: what the client still sends is dropped
        if self._sniffed is not None:
            data = self._sniff(data)
            if not data:
                return
        exchange = self.exchange
        if exchange is not None and exchange.head.upgrade is not None and exchange.request_done:
            self._early.append(data)
            return
        if exchange is None and not self.reader.in_head:
            self.timer.set(self.loop.time() + self.limits.header_timeout)
        self._feeding = True
        try:
            offset = self.reader.feed(data)
        except RemoteProtocolError as e:
            self._feeding = False
            self._starting = None   # answered 400 from its routing phase, never sent upstream
            self._protocol_error(e)
            return
        self._feeding = False
        if offset is not None and self.exchange is not None and offset < len(data):
            self._early.append(data[offset:])
        starting = self._starting
        if starting is not None:
            # the request's body and end that came in this read go upstream with its head, in one write
            self._starting = None
            if starting is self.exchange and not self.closed:
                starting.begin()
        self.flush()

    def _sniff(self, data: bytes) -> bytes:
        """The first bytes: HTTP/1.1 goes on here (returned), h2c is handed to the listener's HTTP/2 side."""
        assert self._sniffed is not None
        first = self._sniffed + data
        kind = sniff(first)
        if kind is Sniffed.NEED_MORE:
            self._sniffed = first
            return b""
        self._sniffed = None
        if kind is Sniffed.HTTP1 or self.transport is None:
            return first
        self.closed = True
        self.proxy.connections.discard(self)
        self.proxy.start_h2c(self.transport, first, self.info)
        self._release()   # the transport has a new protocol: this one gets no connection_lost
        return b""

    def eof_received(self) -> bool | None:
        exchange = self.exchange
        if self.tunnel is not None:
            return self.tunnel.client_eof()
        if exchange is not None and exchange.request_done and not exchange.finished and self.info.ssl_object is None:
            # the client half-closed after its request: the response can still be sent (TLS has no half-close:
            # asyncio closes an SSL transport on EOF whatever this returns, and warns if it is True)
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        self._release()
        if self.tunnel is not None:
            self.tunnel.client_lost(exc)
        elif self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            exchange.on_client_lost()

    def _release(self) -> None:
        """The connection is over: the timer and the reader let go of this protocol, so that nothing of the
        connection is left in a reference cycle (it is freed when the last reference goes, with no wait for the
        cyclic garbage collector, which ``sidecar run`` runs rarely)."""
        self.timer.close()
        self.reader.close()

    def pause_writing(self) -> None:
        self.client_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_server(True)
        elif self.exchange is not None:
            self.exchange.on_client_paused(True)

    def resume_writing(self) -> None:
        self.client_paused = False
        if self.tunnel is not None:
            self.tunnel.pause_server(False)
        elif self.exchange is not None:
            self.exchange.on_client_paused(False)

    # ------------------------------------------------------------------------------------ reader sink

    def on_request_head(self, head: RequestHead) -> None:
        if self.closed:
            return
        if self.exchange is not None or (self._backlog and not self._draining_backlog):
            self._hold(_HEAD, head, 256)
            return
        exchange = self.exchange = Exchange(self.engine, self, head, self.loop.time(), self.loop, self.timer)
        if self._feeding:
            self._starting = exchange
        else:
            exchange.begin()

    def on_request_body(self, data: bytes) -> None:
        if self.closed:
            return
        if self._backlog and not self._draining_backlog:
            self._hold(_BODY, data, len(data))
        elif self.exchange is not None and not self.exchange.finished:
            self.exchange.on_request_body(data)
        elif self.exchange is None:
            left = self._linger_left
            if left is None:
                self._hold(_BODY, data, len(data))
            elif left < len(data):
                self.close()   # more than the budget: the rest of this body is not worth reading
            else:
                self._linger_left = left - len(data)

    def on_request_end(self, trailers: Trailers | None) -> None:
        if self.closed:
            return
        if self._backlog and not self._draining_backlog:
            self._hold(_END, trailers, 0)
        elif self.exchange is not None:
            if not self.exchange.finished:
                self.exchange.on_request_end(trailers)
        elif self._linger_left is not None:
            # the rest of an answered request was dropped in time: the connection goes on with the next request
            self._linger_left = None
            self.timer.set(self.loop.time() + self.limits.idle_timeout)
        else:
            self._hold(_END, trailers, 0)

    def _hold(self, kind: int, payload: object, size: int) -> None:
        self._backlog.append((kind, payload))
        self._backlog_bytes += size
        if self._backlog_bytes > self.limits.max_pipelined_bytes:
            self.pause_for("pipeline", True)

    # ------------------------------------------------------------------------------------ exchanges

    # ------------------------------------------------------------------------------------ ClientSide

    def connection_info(self) -> ConnectionInfo:
        return self.info

    def write_paused(self) -> bool:
        return self.client_paused

    def send_interim(self, head: ResponseHead) -> None:
        self.out.append(head.to_bytes(chunked=False, close=False))

    def send_head(self, head: ResponseHead, request: RequestHead) -> None:
        if head.upgrade is not None:   # a 101: the tunnel follows
            self.out.append(head.to_bytes(chunked=False, close=False))
            return
        close = not request.keep_alive or self.engine.draining
        chunked = False
        if head.chunked or head.close_delimited:
            if request.version == "1.1":
                chunked = True
            else:
                close = True
        if request.upgrade is not None:
            close = True  # a refused upgrade: the client may already have sent bytes of the new protocol
        exchange = self.exchange
        if not close and exchange is not None and not exchange.request_done:
            close = self._rest_too_long(request, exchange.request_bytes)
        self._chunked = chunked
        self._close_after = close
        self.out.append(head.to_bytes(chunked, close))

    def _rest_too_long(self, request: RequestHead, received: int) -> bool:
        """A response head goes out before its request's end: True when what is left of the body is known to be
        more than the connection would read after the response, so the response must say ``Connection: close``
        (a chunked body's rest is unknown: it is read, within the limits, if the response ends first)."""
        length = request.content_length
        return length is not None and length - received > self.limits.linger_bytes

    def send_body(self, data: bytes) -> None:
        if self._chunked:
            self.out += encode_chunk(data)
        else:
            self.out.append(data)

    def send_end(self, trailers: Trailers | None) -> None:
        if self._chunked:
            # trailers go in the last chunk; a response not chunked towards the client has no place for them
            self.out.append(LAST_CHUNK if trailers is None else last_chunk(trailers))

    def send_error(self, error: BaseException, request: RequestHead, request_complete: bool) -> int:
        rescued = rescue(error)
        close = not request_complete or not request.keep_alive or request.upgrade is not None
        self._close_after = close
        self.out.append(simple_response(rescued.status, rescued.headers, rescued.body, close))
        return rescued.status

    def cut(self) -> None:
        self.abort()

    def pause_request(self, reason: str, paused: bool) -> None:
        self.pause_for(reason, paused)

    def open_tunnel(self, server: asyncio.Transport, rest: bytes, on_done: Callable[[Tunnel], None]) -> Tunnel:
        assert self.transport is not None
        tunnel = Tunnel(self.transport, server, on_done)
        self.enter_tunnel(tunnel)
        if rest:
            tunnel.from_server(rest)
        early, self._early = self._early, []
        for data in early:
            tunnel.from_client(data)
        return tunnel

    def exchange_done(self, request_complete: bool, now: float) -> None:
        """The exchange in flight has ended at loop time ``now``; go on with the next request (after the rest of an
        answered body), or close."""
        close_after = self._close_after
        self._chunked = False
        self._close_after = False
        if self._early:
            self._early = []
        self.exchange = None
        if self.closed:
            return
        if not request_complete:
            self._linger(close_after)
            return
        if close_after:
            self.close()
            return
        if self._backlog and not self._draining_backlog:
            self._drain_backlog()
        if self.exchange is None and not self.closed:
            self.timer.set(now + self.limits.idle_timeout)

    def _linger(self, close_after: bool) -> None:
        """The response ended before its request: the rest of the body is read and dropped, for the next request
        (``close_after`` False) or only so that closing does not reset the connection under the response."""
        # the exchange that paused reading is gone
        self.pause_for("upstream", False)
        self.pause_for("pending", False)
        timeout = self.limits.linger_timeout
        if not close_after:
            self._linger_left = self.limits.linger_bytes
            self.timer.set(self.loop.time() + timeout)
            return
        transport = self.transport
        if transport is None:
            return
        self.flush()
        self.closed = True   # what the client still sends is dropped (data_received)
        self.timer.cancel()
        if self.info.ssl_object is None and transport.can_write_eof():
            transport.write_eof()   # TLS has no half-close: the client closes once it has read the response
        self.loop.call_later(timeout, transport.close)

    def _drain_backlog(self) -> None:
        self._draining_backlog = True
        try:
            backlog = self._backlog
            while backlog and not self.closed:
                kind, payload = backlog[0]
                if kind == _HEAD and self.exchange is not None:
                    break
                backlog.pop(0)
                if kind == _HEAD:
                    assert isinstance(payload, RequestHead)
                    self._backlog_bytes -= 256
                    self.on_request_head(payload)
                elif kind == _BODY:
                    assert isinstance(payload, bytes)
                    self._backlog_bytes -= len(payload)
                    self.on_request_body(payload)
                else:
                    self.on_request_end(cast("Trailers | None", payload))
        finally:
            self._draining_backlog = False
        if self._backlog_bytes <= self.limits.max_pipelined_bytes:
            self.pause_for("pipeline", False)

    def enter_tunnel(self, tunnel: Tunnel) -> None:
        """After a 101: every byte from now on is relayed as is."""
        self.tunnel = tunnel
        self.exchange = None
        self.timer.cancel()
        if self._pause_reasons:
            self._pause_reasons.clear()
            if self.transport is not None:
                self.transport.resume_reading()
        if self.client_paused:
            tunnel.pause_server(True)

    def _on_timer(self) -> None:
        if self.exchange is not None:
            self.exchange.on_timer()
            return
        # a client that did not finish a request head in time, or stayed idle too long: just close
        if self.reader.in_head:
            self.proxy.header_timeouts += 1
        self.close()

    def _protocol_error(self, error: RemoteProtocolError) -> None:
        self.proxy.protocol_errors += 1
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            if exchange.response is not None:
                exchange.error = "protocol-error"
                exchange.on_client_lost()
                self.abort()
                return
            exchange.error = "protocol-error"
            exchange.head.keep_alive = False
            exchange.fail_local(error)
            self.close()
            return
        if self.transport is not None and not self.closed:
            rescued = rescue(error)
            self.flush()
            self.transport.write(simple_response(rescued.status, rescued.headers, rescued.body, close=True))
        self.close()

    # ------------------------------------------------------------------------------------ I/O helpers

    def flush(self) -> None:
        out = self.out
        if out:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                write_pieces(transport, out, self.info.ssl_object is not None)
            out.clear()

    def pause_for(self, reason: str, paused: bool) -> None:
        reasons = self._pause_reasons
        if not paused and reason not in reasons:
            return   # nothing to resume: every request's call once its upstream connection is ready
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            return
        if paused:
            if not reasons:
                transport.pause_reading()
            reasons.add(reason)
        elif reason in reasons:
            reasons.discard(reason)
            if not reasons:
                transport.resume_reading()

    def close(self) -> None:
        """Close after what is buffered has been written."""
        if self.transport is not None and not self.closed:
            self.flush()
            self.closed = True
            self.timer.cancel()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.timer.cancel()
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self.exchange is None and self.tunnel is None and not self.reader.in_head
