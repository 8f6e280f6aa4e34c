"""One client connection of a :class:`~sidecar.httpd.site.Site`: bytes in through the proxy's llhttp reader,
requests to the app one at a time, responses out.

Theory of operation
-------------------
The connection is in one of four states:

* ``WAITING``: no byte of a request yet. A new connection must send a complete head within ``header_timeout``; a
  kept-alive one (``served``) is closed after ``idle_timeout`` without a request.
* ``READING``: a request's head or body is arriving and nothing is in the app's hands. The head must be complete
  ``header_timeout`` after its first byte, and the body ``header_timeout`` after the head (a slow body is a waiting
  client, not a request being served): else the connection is closed (slowloris).
* ``BUSY``: a request is in the app's hands. No timer runs; bytes that arrive meanwhile are parsed and complete
  requests queued in order (pipelining), reading paused beyond ``max_pipelined`` of them.
* ``CLOSED``.

A request reaches the app whole: the body is read before the handler runs, within the app's ``max_body``. What
the reader refuses (a malformed or too-large head, a body over the limit) is answered in SPEC's error shape after
any response in progress, and the connection half-closed, read for ``refuse_linger`` seconds, then closed (closing
with unread bytes would reset the connection under the answer).

At ``max_connections``, a new connection makes room by closing the one that waited longest without a request in
the app's hands (an idle keep-alive first); when every connection is busy, it is answered 429 and closed. While the
overload guard refuses, new connections are answered 503 and closed; while it sheds, every request is.

A whole response goes out in one write. A streaming one (:class:`~sidecar.httpd.response.StreamResponse`) writes
its head on ``prepare`` and each piece at once, chunked (to the close for an HTTP/1.0 client), waiting while the
transport's buffer is full. A client that leaves during a streaming response has its handler cancelled; a
handler of a whole response runs to its end (a publish is not cut half-way) and its answer is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sidecar.errors import ResourceExhausted, SidecarError, rescue
from sidecar.httpd.limits import WebLimits, body_too_large, refusal
from sidecar.httpd.request import Request
from sidecar.httpd.response import Response, Streamed, StreamResponse, encode_head, error_response
from sidecar.proxy.http1 import LAST_CHUNK, HeadLimits, RequestHead, Trailers, encode_chunk, simple_response
from sidecar.proxy.http1read import RequestReader
from sidecar.proxy.limits import LazyTimer

if TYPE_CHECKING:
    from sidecar.httpd.app import App
    from sidecar.overload.guard import OverloadGuard

log = logging.getLogger("sidecar.web")

WAITING = 0
READING = 1
BUSY = 2
CLOSED = 3

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class WebStats:
    """Counters of one listener since start, for metrics and tests."""

    __slots__ = ("accepted", "displaced", "header_timeouts", "live", "malformed", "open", "refused")

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.refused = 0            # connections over max_connections
        self.displaced = 0          # waiting connections closed to make room at max_connections
        self.live: dict[HttpConnection, None] = {}  # open connections, oldest first
        self.malformed = 0          # requests answered 400/431 before reaching the app
        self.header_timeouts = 0    # connections closed for a slow request head or body

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "live"}


@dataclass(frozen=True, slots=True)
class Listener:
    """What every connection of one listener shares."""

    name: str
    app: App
    limits: WebLimits
    head_limits: HeadLimits
    stats: WebStats
    loop: asyncio.AbstractEventLoop
    overload: OverloadGuard | None = None


class HttpConnection(asyncio.Protocol):
    """See the module's doc."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.state = WAITING
        self.served = False          # a response was sent: between requests, this is an idle keep-alive
        self.waiting_since = 0.0     # when it began to wait for a request head or body
        self.close_after = False     # close after the response in progress (the listener stops, the client half-closed)
        self.closed: asyncio.Future[None] = listener.loop.create_future()
        self.remote: str | None = None
        self.local: str | None = None
        self._transport: asyncio.Transport | None = None
        self._reader: RequestReader | None = None
        self._timer = LazyTimer(listener.loop, self._timed_out)
        self._counted = False        # counted in the listener's open connections
        self._refused = False        # answered and closing; whatever else arrives is dropped
        self._queue: deque[Request | SidecarError] = deque()
        self._head: RequestHead | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._task: asyncio.Task[None] | None = None
        self._streaming = False
        self._chunked = False
        self._head_only = False
        self._read_paused = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        listener = self.listener
        stats, limits = listener.stats, listener.limits
        overload = listener.overload
        if overload is not None and overload.refusing:
            self._refuse(overload.refuse(listener.name))
            return
        if stats.open >= limits.max_connections and not _displace_one(stats):
            stats.refused += 1
            limit = limits.max_connections
            self._refuse(ResourceExhausted(f"over {limit} connections on this listener", {"limit": limit}))
            return
        stats.open += 1
        stats.accepted += 1
        stats.live[self] = None
        self._counted = True
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self.local = str(local[0]) if isinstance(local, tuple) and local else None
        self._reader = RequestReader(self, listener.head_limits)
        self.waiting_since = listener.loop.time()
        self._timer.set(self.waiting_since + limits.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.state = CLOSED
        # the reader and the timer let go of this connection: freed by reference counting, not by the collector
        self._timer.close()
        self._drop_reader()
        self._uncount()
        if self._task is not None and self._streaming:
            self._task.cancel()   # a client that left a stream: its handler ends now, not at its next write
        self._wake_writer()
        if not self.closed.done():
            self.closed.set_result(None)

    def eof_received(self) -> bool:
        if self._task is not None and not self._streaming:
            self.close_after = True   # half-closed after its request: answered, then closed
            return True
        return False

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if self._refused or reader is None:
            return   # drained and dropped until the linger ends
        if self.state == WAITING:
            self.state = READING
            if self.served:   # the first byte of a request head after an idle keep-alive period
                self._wait(self.listener.limits.header_timeout)
        try:
            upgraded = reader.feed(data)
        except SidecarError as e:
            self._refuse_request(e)
            return
        if upgraded is not None:
            self.close_after = True   # no protocol is offered to upgrade to: the request is answered, then closed
            self._drop_reader()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # ------------------------------------------------------------------------------------ the reader's sink

    def on_request_head(self, head: RequestHead) -> None:
        self._head = head
        self._parts = []
        self._size = 0
        limit = self.listener.app.max_body
        if head.content_length is not None and head.content_length > limit:
            raise body_too_large(limit)
        if head.has_body and self.state != BUSY:
            self._wait(self.listener.limits.header_timeout)
            transport = self._transport
            expect = head.headers.get_bytes(b"expect")
            if expect is not None and expect.lower() == b"100-continue" and head.version == "1.1" \
                    and transport is not None:
                transport.write(_CONTINUE)

    def on_request_body(self, data: bytes) -> None:
        self._size += len(data)
        limit = self.listener.app.max_body
        if self._size > limit:
            raise body_too_large(limit)
        self._parts.append(data)

    def on_request_end(self, trailers: Trailers | None) -> None:
        head = self._head
        if head is None:
            return
        self._head = None
        parts, self._parts = self._parts, []
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._queue.append(Request(head, body, self.remote, self.local, self))
        self._next()

    # ------------------------------------------------------------------------------------ serving

    def _next(self) -> None:
        """Start serving the queue, or pause reading when it is long."""
        if self._task is None:
            self.state = BUSY
            # no deadline while the app has the request; the armed handle is kept for the next one (a handle
            # made and cancelled a request costs more than the rest of the bookkeeping)
            self._timer.set(None)
            self._task = self.listener.loop.create_task(self._serve_queue())
        elif len(self._queue) >= self.listener.limits.max_pipelined and not self._read_paused:
            self._read_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    async def _serve_queue(self) -> None:
        keep = True
        try:
            while self._queue and keep and self.state != CLOSED:
                item = self._queue.popleft()
                if self._read_paused and len(self._queue) < self.listener.limits.max_pipelined:
                    self._read_paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                if isinstance(item, SidecarError):
                    self._answer_and_close(item)
                    return
                keep = await self._serve(item)
        except Exception:
            log.exception("error serving a request on %s", self.listener.name)
            keep = False
        finally:
            self._task = None
            self._streaming = False
        if self.state == CLOSED or self._refused:
            return
        if not keep:
            self.close()
        elif self._head is not None or (self._reader is not None and self._reader.in_head):
            self.state = READING     # a pipelined request is partly in
            self._wait(self.listener.limits.header_timeout)
        else:
            self.state = WAITING
            self.served = True
            self._timer.set(self.listener.loop.time() + self.listener.limits.idle_timeout)

    async def _serve(self, request: Request) -> bool:
        """Answer one request; whether the connection stays open after it."""
        listener = self.listener
        overload = listener.overload
        try:
            if overload is not None and overload.shedding:
                response: StreamResponse = error_response(overload.shed(listener.name))
            else:
                response = await listener.app.handle(request)
        except asyncio.CancelledError:
            return False   # the client left its stream, or the listener stops
        except Exception as e:   # an app without the error middleware, or the middleware itself failed
            log.exception("internal error handling %s %s", request.method, request.path)
            if self._streaming:
                return False
            response = error_response(e)
        keep = request.keep_alive and not response.closing and not self.close_after and self.state != CLOSED
        if not isinstance(response, Response) or self._streaming:
            if not self._streaming:
                self.start(response, request)
            if not response.ended:
                response.ended = True
                self.finish()
            return keep and self._chunked and not response.closing
        try:
            head = response.head_bytes(close=not keep)
        except ValueError as e:
            log.error("a handler's response to %s %s is not valid HTTP: %s", request.method, request.path, e)
            head, response = self._internal_error_head(not keep)
        self._write(head if request.method == "HEAD" or not response.body else head + response.body)
        return keep

    def _internal_error_head(self, close: bool) -> tuple[bytes, Response]:
        response = error_response(RuntimeError("the handler's response is not valid HTTP"))
        return response.head_bytes(close), response

    # ------------------------------------------------------------------------------------ streaming (ResponseWriter)

    def start(self, response: StreamResponse, request: Streamed) -> None:
        self._streaming = True
        self._chunked = chunked = request.version == "1.1"
        self._head_only = request.method == "HEAD"
        if not chunked or not request.keep_alive or self.close_after:
            response.closing = True
        self._write(encode_head(response.status, response.headers, None, chunked, response.closing))

    async def send(self, data: bytes) -> None:
        transport = self._transport
        if self.state == CLOSED or transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._head_only:
            return
        if self._chunked:
            transport.writelines(encode_chunk(data))
        else:
            transport.write(data)
        if self._write_paused:
            self._drained = drained = self.listener.loop.create_future()
            await drained
            if self.state == CLOSED:
                raise ConnectionResetError("the client closed the connection")

    def finish(self) -> None:
        if self._chunked and not self._head_only:
            self._write(LAST_CHUNK)

    # ------------------------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close now (a request in the app's hands finishes; its answer is dropped)."""
        if self._transport is not None and self.state != CLOSED:
            self._transport.close()
        self.state = CLOSED
        self._timer.cancel()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        if self._task is not None:
            self._task.cancel()

    def shutdown(self) -> None:
        """The listener stops: a waiting connection closes now, a stream ends now, a request being served
        finishes and its answer says ``Connection: close``."""
        self.close_after = True
        if self._task is None:
            self.close()
        elif self._streaming:
            self._task.cancel()

    def displace(self) -> None:
        """Closed to make room for a newer connection (the listener counted it out already)."""
        self._counted = False
        self.close()

    @property
    def displaceable(self) -> bool:
        return self.state in (WAITING, READING) and self._task is None

    # ------------------------------------------------------------------------------------ internals

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _wait(self, seconds: float) -> None:
        self.waiting_since = now = self.listener.loop.time()
        self._timer.set(now + seconds)

    def _drop_reader(self) -> None:
        """No more requests are read: the reader lets go of its parser and of this connection."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _wake_writer(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        self._drained = None

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            stats = self.listener.stats
            stats.open -= 1
            stats.live.pop(self, None)

    def _timed_out(self) -> None:
        if self.state not in (WAITING, READING) or self._task is not None:
            return
        if self.state == READING or not self.served:
            self.listener.stats.header_timeouts += 1
            log.info("closed a connection from %s: no complete request within %gs", self.remote,
                     self.listener.limits.header_timeout)
        self.close()

    def _refuse_request(self, error: SidecarError) -> None:
        """The reader refused what the client sent: answered after any response in progress, then closed."""
        answer = refusal(error)
        self.listener.stats.malformed += 1
        log.info("refused a malformed request from %s: %s", self.remote, answer.message)
        self._drop_reader()
        self._head = None
        if self._task is not None:
            self._queue.append(answer)
        else:
            self._answer_and_close(answer)

    def _answer_and_close(self, error: SidecarError) -> None:
        self._timer.cancel()
        self._uncount()
        self._refuse(error)

    def _refuse(self, error: SidecarError) -> None:
        """Answer ``error`` and close: half-closed, then read and dropped for ``refuse_linger`` seconds, so
        that the close does not reset the connection before the client reads the answer."""
        self._refused = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        rescued = rescue(error)
        transport.write(simple_response(rescued.status, rescued.headers, rescued.body, True))
        if transport.can_write_eof():
            transport.write_eof()
        self.listener.loop.call_later(self.listener.limits.refuse_linger, transport.close)


def _displace_one(stats: WebStats) -> bool:
    """At the cap, close the connection that has waited longest without a request in the app's hands: an idle
    keep-alive first, else the oldest slow head or body (a slowloris client). Requests being served are never cut.
    False when every connection is busy."""
    idle = waiting = None
    for connection in stats.live:
        if not connection.displaceable:
            continue
        if connection.state == WAITING and connection.served:
            idle = connection
            break
        if waiting is None or connection.waiting_since < waiting.waiting_since:
            waiting = connection
    victim = idle or waiting
    if victim is None:
        return False
    stats.open -= 1
    stats.live.pop(victim, None)
    stats.displaced += 1
    victim.displace()
    return True
