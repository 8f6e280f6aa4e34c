"""The HTTP/2 client side: one h2c connection accepted by a listener, each of its streams an exchange.

The listener's HTTP/1.1 protocol sniffs a connection's first bytes (:func:`sidecar.http2.preface.sniff`) and
hands a connection that opens with the HTTP/2 preface to :class:`H2Downstream`, which runs the sans-IO core
(:class:`~sidecar.http2.connection.H2Core`) over the transport. Each request stream becomes an
:class:`H2Stream`, the :class:`~sidecar.proxy.sides.ClientSide` of one :class:`~sidecar.proxy.exchange.Exchange`:
the same routing, resilience, authorization and records as an HTTP/1.1 request, only the framing differs.

Flow control: a DATA frame's bytes are acknowledged (the client's windows reopened) once the exchange took
them, unless the stream's request is paused (the upstream or the pending buffer is full): then they are
acknowledged on resume, so a slow upstream stalls that one client stream and the core holds at most its
window. The other way, a stream whose outgoing buffer is over the core's high-water mark, or a transport the
client does not read, pauses reading the upstream response.

The core's protections stay whole: a client that breaks the protocol or floods gets the core's GOAWAY and only
its connection ends. Draining sends GOAWAY: streams already open finish, the connection closes after them.
Deadlines as for HTTP/1.1: the first HEADERS must come within the listener's header timeout of the handover, and
a connection with no stream open closes (GOAWAY) after the idle timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

from sidecar.errors import Code, rescue
from sidecar.http2.connection import H2Core, new_connection
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
from sidecar.proxy.engine import Engine
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.h2heads import (
    MAX_ERROR_BODY,
    error_response,
    relayed_error,
    relayed_trailers_only,
    request_head,
    response_headers,
    trailer_headers,
    wants_grpc,
)
from sidecar.proxy.http1 import RemoteProtocolError, RequestHead, ResponseHead, Trailers
from sidecar.proxy.limits import LazyTimer, ProxyLimits, TimerGroup
from sidecar.proxy.sides import ClientSide
from sidecar.proxy.target import ConnectionInfo
from sidecar.proxy.tunnel import Tunnel
from sidecar.proxy.writebatch import write_batch

log = logging.getLogger(__name__)

INTERNAL_ERROR: Final = 0x2
# how long a connection the core ended is read on before it is closed: closing with unread input sends a TCP
# RST, which may discard the GOAWAY before the client reads it
LINGER: Final = 1.0


class H2Acceptor(Protocol):
    """What an HTTP/2 client connection uses of the listener that accepted it (an HttpProxy)."""

    engine: Engine
    protocol_errors: int
    header_timeouts: int
    h2_protections: dict[str, int]

    def add_connection(self, conn: H2Downstream) -> None: ...

    def drop_connection(self, conn: H2Downstream) -> None: ...


def h2_limits(limits: ProxyLimits) -> H2Limits:
    """The listener's limits as the HTTP/2 core's: its streams per connection, the header list as large as an
    HTTP/1.1 head may be."""
    return H2Limits(max_concurrent_streams=limits.max_concurrent_streams,
                    max_header_list_size=limits.head.max_head_bytes,
                    max_header_block_bytes=limits.head.max_head_bytes + 4096)


class H2Stream(ClientSide):
    """One request stream of an HTTP/2 client connection, as the client side of its exchange."""

    __slots__ = ("conn", "exchange", "grpc_request", "held_body", "held_error", "paused_reasons", "sid", "timer",
                 "unacked", "write_blocked", "write_paused_told")

    def __init__(self, conn: H2Downstream, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.exchange: Exchange | None = None
        self.timer = conn.stream_timers.timer(self._on_timer)
        self.paused_reasons: set[str] = set()
        self.unacked = 0           # flow-controlled bytes passed on while paused: acknowledged on resume
        self.write_blocked = False  # the core's buffer for this stream is over its high-water mark
        self.write_paused_told = False
        self.grpc_request = False
        # another sidecar's error to a gRPC call, held to be answered as a status once its body is in
        self.held_error: Code | None = None
        self.held_body = bytearray()

    def _on_timer(self) -> None:
        if self.exchange is not None:
            self.exchange.on_timer()

    # -- from the connection -------------------------------------------------------------------------------

    def on_data(self, data: bytes, flow_length: int) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.finished and data:
            exchange.on_request_body(data)
        if self.paused_reasons and self.sid in self.conn.streams:
            self.unacked += flow_length
        else:
            self.conn.core.acknowledge(self.sid, flow_length)

    def update_write_paused(self) -> None:
        paused = self.write_blocked or self.conn.transport_paused
        if paused != self.write_paused_told:
            self.write_paused_told = paused
            if self.exchange is not None:
                self.exchange.on_client_paused(paused)

    def forget(self) -> None:
        self.end()
        self.conn.stream_gone(self.sid)

    def end(self) -> Exchange | None:
        """The stream is over: its timer lets go of it and it of its exchange, which holds it (nothing of a
        stream is left in a reference cycle); returns the exchange."""
        self.timer.close()
        exchange, self.exchange = self.exchange, None
        return exchange

    # -- ClientSide ----------------------------------------------------------------------------------------

    def connection_info(self) -> ConnectionInfo:
        return self.conn.info

    def write_paused(self) -> bool:
        self.write_paused_told = self.write_blocked or self.conn.transport_paused
        return self.write_paused_told

    def send_interim(self, head: ResponseHead) -> None:
        if head.status != 101:
            self.conn.core.send_headers(self.sid, [(b":status", b"%d" % head.status)])

    def send_head(self, head: ResponseHead, request: RequestHead) -> None:
        if self.grpc_request:
            self.held_error = relayed_error(head)
            if self.held_error is not None:
                return
        self.conn.core.send_headers(self.sid, response_headers(head), end_stream=head.no_body)

    def send_body(self, data: bytes) -> None:
        if self.held_error is not None:
            self.held_body += data[:MAX_ERROR_BODY - len(self.held_body)]
            return
        if not self.conn.core.send_data(self.sid, data) and not self.write_blocked:
            self.write_blocked = True
            self.update_write_paused()

    def send_end(self, trailers: Trailers | None) -> None:
        core = self.conn.core
        if self.held_error is not None:
            core.send_headers(self.sid, relayed_trailers_only(self.held_error, bytes(self.held_body)), end_stream=True)
        elif trailers:
            core.send_trailers(self.sid, trailer_headers(trailers))
        else:
            core.end_stream(self.sid)

    def send_error(self, error: BaseException, request: RequestHead, request_complete: bool) -> int:
        headers, body = error_response(error, request)
        core = self.conn.core
        core.send_headers(self.sid, headers, end_stream=not body)
        if body:
            core.send_data(self.sid, body, end_stream=True)
        # the status of SPEC's table for records, as over HTTP/1.1, also when the wire says 200 (gRPC)
        return rescue(error).status

    def cut(self) -> None:
        self.conn.core.reset(self.sid, INTERNAL_ERROR)
        self.forget()
        self.conn.flush()

    def pause_request(self, reason: str, paused: bool) -> None:
        reasons = self.paused_reasons
        if paused:
            reasons.add(reason)
        elif reason in reasons:
            reasons.discard(reason)
            if not reasons and self.unacked:
                unacked, self.unacked = self.unacked, 0
                self.conn.core.acknowledge(self.sid, unacked)

    def flush(self) -> None:
        self.conn.flush()

    def exchange_done(self, request_complete: bool, now: float) -> None:
        if self.unacked:   # what the client sent that nobody reads any more: its windows reopen
            unacked, self.unacked = self.unacked, 0
            self.conn.core.acknowledge(self.sid, unacked)
        self.forget()

    def open_tunnel(self, server: asyncio.Transport, rest: bytes, on_done: Callable[[Tunnel], None]) -> Tunnel:
        raise RemoteProtocolError("an HTTP/2 stream cannot become a tunnel")  # no upgrade is ever asked for


class H2Downstream(asyncio.Protocol):
    """An accepted connection that opened with the HTTP/2 preface; it takes over the transport."""

    def __init__(self, proxy: H2Acceptor, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                 info: ConnectionInfo) -> None:
        self.proxy = proxy
        self.engine = proxy.engine
        self.loop = loop
        self.transport = transport
        self.info = info
        self.core: H2Core = new_connection(client_side=False, limits=h2_limits(self.engine.limits),
                                           check_outbound=False)
        self.core.counters = proxy.h2_protections   # the listener's totals, counted as they happen
        self.streams: dict[int, H2Stream] = {}
        self.transport_paused = False
        self.closed = False
        self.draining = False
        # streams whose exchange ended while the core still holds their last bytes (the client's windows are
        # closed): a drain closes the connection only once they are out, else the client loses their end
        self.flushing: set[int] = set()
        # no HEADERS yet: the header timeout runs, as for an HTTP/1.1 head, so a client that sends only the
        # preface (and SETTINGS, PINGs...) cannot hold the connection for the idle timeout
        self.awaiting_headers = True
        self.timer = LazyTimer(loop, self._on_timer)
        self.batch = write_batch()
        # the streams' deadlines (each exchange's) on one timer handle: a stream arms none of its own
        self.stream_timers = TimerGroup(loop)
        transport.set_protocol(self)
        proxy.add_connection(self)
        self.timer.set(loop.time() + self.engine.limits.header_timeout)
        if self.engine.draining:
            self.drain()

    # -- asyncio -------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        batch = self.batch
        batch.begin()   # what the read's streams write upstream (and here) goes out once, at its end
        try:
            self._receive(data)
        finally:
            batch.end()

    def _receive(self, data: bytes) -> None:
        events = self.core.receive_data(data, self.loop.time())
        streams = self.streams
        # a stream the client opened and reset in one batch never starts an exchange (rapid reset: no route,
        # no upstream dial for a request nobody waits for)
        reset_now: set[int] | None = None
        if len(events) > 1:
            for event in events:
                if isinstance(event, StreamReset):
                    if reset_now is None:
                        reset_now = set()
                    reset_now.add(event.stream_id)
        starting: list[H2Stream] = []
        for event in events:
            if isinstance(event, DataReceived):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.on_data(event.data, event.flow_length)
                else:  # a stream whose exchange ended: nobody reads it, the windows reopen
                    self.core.acknowledge(event.stream_id, event.flow_length)
            elif isinstance(event, HeadersReceived):
                if reset_now is None or event.stream_id not in reset_now:
                    started = self._start(event.stream_id, event.headers, event.end_stream)
                    if started is not None:
                        starting.append(started)
            elif isinstance(event, StreamEnded):
                stream = streams.get(event.stream_id)
                exchange = None if stream is None else stream.exchange
                if exchange is not None and not exchange.finished and not exchange.request_done:
                    exchange.on_request_end()
            elif isinstance(event, TrailersReceived):
                # the request's end with its trailer section (the StreamEnded that follows finds it done)
                stream = streams.get(event.stream_id)
                exchange = None if stream is None else stream.exchange
                if exchange is not None and not exchange.finished:
                    exchange.on_request_end(event.headers)
            elif isinstance(event, StreamWritable):
                stream = streams.get(event.stream_id)
                if stream is not None and stream.write_blocked:
                    stream.write_blocked = False
                    stream.update_write_paused()
            elif isinstance(event, StreamReset):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    exchange = stream.exchange
                    stream.forget()
                    if exchange is not None:
                        exchange.on_client_lost()   # cancellation travels on: the upstream is cut
            elif isinstance(event, ConnectionTerminated):
                self._terminated(event)
                return
            elif isinstance(event, GoAwayReceived):
                pass  # a client's GOAWAY limits the pushes it accepts; the sidecar pushes nothing
        # the batch's streams start once its DATA and END_STREAM are in: a request whose whole body came with
        # its HEADERS (a unary gRPC call) goes upstream in one write, and an HTTP/1.1 peer reads its end
        # with its head, instead of answering before the request ended and closing the connection for that
        for stream in starting:
            exchange = stream.exchange
            if exchange is not None and streams.get(stream.sid) is stream:
                exchange.begin()
        if self.flushing:
            self._flushed()   # window updates may have let the last bytes of ended streams out
        self.flush()

    def eof_received(self) -> bool | None:
        return True if self.streams else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.timer.close()   # it held this protocol, which holds it
        self.stream_timers.close()
        self.proxy.drop_connection(self)
        self._end_streams()

    def _end_streams(self) -> None:
        """The connection is over: each open stream's exchange learns that its client is gone."""
        for stream in list(self.streams.values()):
            exchange = stream.end()
            if exchange is not None:
                exchange.on_client_lost()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.transport_paused = True
        for stream in list(self.streams.values()):
            stream.update_write_paused()

    def resume_writing(self) -> None:
        self.transport_paused = False
        for stream in list(self.streams.values()):
            stream.update_write_paused()

    # -- streams -------------------------------------------------------------------------------------------

    def _start(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> H2Stream | None:
        """The stream and its exchange, to begin once the batch of frames is read; None if refused here."""
        stream = H2Stream(self, sid)
        self.streams[sid] = stream
        self.awaiting_headers = False
        # the connection's timer stays armed: it does nothing while a stream is open (_on_timer), and a busy
        # connection's next idle deadline then only moves it (LazyTimer), no timer armed and cancelled per stream
        try:
            head = request_head(headers, end_stream, self.engine.limits.head.max_headers)
        except RemoteProtocolError as e:
            self.proxy.protocol_errors += 1
            answer, body = error_response(e, None)
            self.core.send_headers(sid, answer, end_stream=not body)
            if body:
                self.core.send_data(sid, body, end_stream=True)
            stream.forget()
            return None
        stream.grpc_request = wants_grpc(head)
        exchange = stream.exchange = Exchange(self.engine, stream, head, self.loop.time(), self.loop, stream.timer)
        if end_stream:
            exchange.on_request_end()
        return stream

    def stream_gone(self, sid: int) -> None:
        if self.streams.pop(sid, None) is not None:
            if self.core.buffered(sid):
                self.flushing.add(sid)
            self._settle()

    def _settle(self) -> None:
        """No stream open: a draining connection closes once every stream's bytes are out; another waits for
        its idle timeout (which also bounds a client that never opens its windows)."""
        if self.streams:
            return
        if not self.draining:
            self._arm_idle()
        elif not self.flushing:
            self.close()

    def _flushed(self) -> None:
        core = self.core
        self.flushing = {sid for sid in self.flushing if core.buffered(sid)}
        if not self.flushing:
            self._settle()

    # -- connection ----------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the core holds: at the end of the read being handled (:mod:`sidecar.proxy.writebatch`)."""
        self.batch.flush(self)

    def write_out(self) -> None:
        out = self.core.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    def drain(self) -> None:
        """GOAWAY: the streams open finish, no new one is taken; the connection closes after the last."""
        if self.closed or self.draining:
            return
        self.draining = True
        self.core.goaway()
        self.write_out()
        if not self.streams and not self.flushing:
            self.close()

    def _terminated(self, event: ConnectionTerminated) -> None:
        if not event.remote:
            self.proxy.protocol_errors += 1
            log.info("%s: HTTP/2 client %s cut off: %s", self.engine.name, self.info.peername, event.reason)
        self.write_out()
        self.closed = True
        self.timer.cancel()
        self.stream_timers.close()
        self._end_streams()
        self.proxy.drop_connection(self)
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER, transport.close)

    def _arm_idle(self) -> None:
        self.timer.set(self.loop.time() + self.engine.limits.idle_timeout)

    def _on_timer(self) -> None:
        """No stream open: the first HEADERS came too late (header timeout), or none came since the last
        stream ended (idle timeout)."""
        if not self.streams:
            if self.awaiting_headers:
                self.proxy.header_timeouts += 1
            self.close()

    @property
    def idle(self) -> bool:
        return not self.streams and not self.flushing

    def close(self) -> None:
        """GOAWAY, then close once it is written."""
        if self.closed:
            return
        if not self.draining:
            self.draining = True
            self.core.goaway()
        self.write_out()
        self.closed = True
        self.timer.cancel()
        self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.timer.cancel()
        self.stream_timers.close()
        self.transport.abort()
