"""Starting an aiohttp app (admin port, app API) on a possibly-zero port, with the listener's protocol hygiene.

Protocol hygiene of the two aiohttp listeners
---------------------------------------------
aiohttp's C parser (llhttp, strict) already refuses the request-smuggling shapes: Content-Length with
Transfer-Encoding, duplicate or list-valued Content-Length, unknown transfer codings, obs-fold, bare LF,
invalid bytes in names and values, a missing or duplicate Host. What it does not do is answer in SPEC's
shape: it sends a plain-text 400 for everything, 431 included. :class:`Site` therefore serves each
connection with :class:`_Connection`, aiohttp's ``RequestHandler`` with:

* ``handle_error`` answering SPEC's JSON with ``x-sidecar-error`` (431 HEADERS_TOO_LARGE for an over-long line
  or field and for too many headers, 400 INVALID_ARGUMENT for the rest), the connection closed after it;
* checks aiohttp's parser leaves to the application, run before the app sees the request: the whole head
  over ``max_head_bytes`` (431), a Transfer-Encoding other than exactly ``chunked`` (aiohttp waits for the
  end of the connection on ``identity, chunked``), Transfer-Encoding on HTTP/1.0, a version other than 1.x;
* a header read timeout (slowloris): a request head must be complete ``header_timeout`` seconds after the
  connection opens or after its first byte arrives; else the connection is closed. aiohttp itself only has
  ``keepalive_timeout``, which closes a connection idle between requests (``idle_timeout`` here) but lets a
  client trickle a head for as long as it keeps sending;
* a connection limit (aiohttp has none): over ``max_connections`` open connections a new one gets 429
  RESOURCE_EXHAUSTED and is closed. aiohttp's own limits stay on: ``max_line_size`` and ``max_field_size``
  (one request line; one header name plus value), ``max_headers``.
* overload shedding (``Site(overload=guard)``, the app API; never the admin port): while the guard sheds, every
  request is answered 503 UNAVAILABLE with ``Retry-After`` before anything else; while memory is over its limit,
  new connections are answered so and closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from sidecar.config.values import HostPort
from sidecar.errors import (
    DeadlineExceeded,
    HeadersTooLarge,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    SidecarError,
    rescue,
)

if TYPE_CHECKING:
    from sidecar.overload.guard import OverloadGuard

from sidecar.web import error_response

log = logging.getLogger("sidecar.web")


@dataclass(frozen=True, slots=True)
class WebLimits:
    """Protocol limits of one aiohttp listener, with the reason for each default."""

    # the whole request head, like the data plane's listeners (HeadLimits: 60 KiB, 100 headers)
    max_head_bytes: int = 60 * 1024
    max_headers: int = 100
    # one request line, or one header's name and value together: aiohttp's parser refuses longer ones as it
    # reads, so a connection buffers at most max_headers of these; nginx's large_client_header_buffers is 8k
    max_field_bytes: int = 8190
    # a request head must be complete this soon after the connection opens or its first byte arrives
    header_timeout: float = 10.0
    # a kept-alive connection with no request is closed after this (aiohttp's keepalive_timeout); longer
    # than the keep-alive of common client pools (15-60 s), so the client usually closes first
    idle_timeout: float = 75.0
    # open connections; the APIs are local and used by one app and a few operators' tools
    max_connections: int = 256
    # a refused connection is half-closed and read for this long before closing, so the client reads the 429
    refuse_linger: float = 1.0


DEFAULT_WEB_LIMITS = WebLimits()


class WebStats:
    """Counters of one listener since start, for metrics and tests."""

    __slots__ = ("accepted", "displaced", "header_timeouts", "live", "malformed", "open", "refused")

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.refused = 0            # connections over max_connections
        self.displaced = 0          # waiting connections closed to make room at max_connections
        self.live: dict[_Connection, None] = {}  # open connections, oldest first
        self.malformed = 0          # requests answered 400/431 before reaching the app
        self.header_timeouts = 0    # connections closed for a slow request head

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "live"}


def malformed_request(status: int, exc: BaseException | None, message: str | None,
                      limits: WebLimits = DEFAULT_WEB_LIMITS) -> SidecarError:
    """The error to answer for what aiohttp's ``handle_error`` reports (a parse error, a timeout, a crash)."""
    if isinstance(exc, LineTooLong):
        return HeadersTooLarge(f"request head too large: a request line or header field is over "
                               f"{limits.max_field_bytes} bytes", {"limit": limits.max_field_bytes})
    if isinstance(exc, BadHttpMessage) and exc.message.startswith("Too many headers"):
        return HeadersTooLarge(f"request head too large: over {limits.max_headers} header fields",
                               {"limit": limits.max_headers})
    if status == HTTPStatus.GATEWAY_TIMEOUT:
        return DeadlineExceeded("the request handler timed out")
    if status >= 500:
        return Internal(f"internal error: {type(exc).__name__}" if exc is not None else "internal error")
    # aiohttp's messages are "what:\n  more:\n\n  <the offending bytes>\n  <caret>": keep the words, not the bytes
    text = (exc.message if isinstance(exc, BadHttpMessage) else message) or ""
    words = []
    for line in text.strip().splitlines():
        if not line.strip():
            break
        words.append(line.strip().rstrip(":"))
    reason = ": ".join(words)[:200] or "malformed request"
    return InvalidArgument(f"malformed HTTP request: {reason}", {"reason": reason})


def framing_problem(request: web.BaseRequest, limits: WebLimits = DEFAULT_WEB_LIMITS) -> SidecarError | None:
    """What aiohttp's parser accepted but this listener refuses, checked before the app sees the request."""
    size = len(request.method) + len(request.raw_path) + 12  # "METHOD TARGET HTTP/1.1\r\n"
    for name, value in request.raw_headers:
        size += len(name) + len(value) + 4
    if size > limits.max_head_bytes:
        return HeadersTooLarge(f"request head too large: {size} bytes, over {limits.max_head_bytes}",
                               {"limit": limits.max_head_bytes, "size": size})
    version = request.version
    if version.major != 1:
        return InvalidArgument(f"HTTP/{version.major}.{version.minor} is not supported here; use HTTP/1.1")
    te = request.headers.get("Transfer-Encoding")
    if te is not None:
        if version.minor == 0:
            return InvalidArgument("Transfer-Encoding is not allowed in an HTTP/1.0 request")
        if te.strip().lower() != "chunked":
            return InvalidArgument(f"Transfer-Encoding must be chunked (got {te[:100]!r})")
    return None


def _closing(error: SidecarError) -> web.Response:
    response = error_response(error)
    response.force_close()
    return response


class _Connection(web.RequestHandler):
    """aiohttp's connection protocol with SPEC's error shape, a header read timeout and a connection limit
    (see the module's doc). Everything else is aiohttp's."""

    __slots__ = ("_busy", "_displaced", "_header_timer", "_limits", "_listener", "_overload", "_refused", "_stats",
                 "_waiting_since")

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, limits: WebLimits,
                 stats: WebStats, overload: OverloadGuard | None = None, listener: str = "") -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.idle_timeout,
                         max_line_size=limits.max_field_bytes, max_field_size=limits.max_field_bytes,
                         max_headers=limits.max_headers,
                         access_log=None)  # type: ignore[arg-type]  # None: no access log (AppRunner's way)
        self._limits = limits
        self._stats = stats
        self._overload = overload
        self._listener = listener
        self._header_timer: asyncio.TimerHandle | None = None
        self._busy = False      # a request is in the app's hands
        self._refused = False   # over the connection limit: answered 429, not served
        self._displaced = False  # closed to make room for a newer connection
        self._waiting_since = 0.0  # when this connection began to wait for a request head or body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stats, limits = self._stats, self._limits
        overload = self._overload
        if overload is not None and overload.refusing:
            self._refuse(transport, overload.refuse(self._listener))
            return
        if stats.open >= limits.max_connections and not self._displace_one():
            self._stats.refused += 1
            limit = limits.max_connections
            self._refuse(transport, ResourceExhausted(f"over {limit} connections on this listener", {"limit": limit}))
            return
        stats.open += 1
        stats.accepted += 1
        stats.live[self] = None
        self._waiting_since = self._loop.time()
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        if not self._refused and not self._displaced:
            self._stats.open -= 1
            self._stats.live.pop(self, None)
        super().connection_lost(exc)

    def _displace_one(self) -> bool:
        """At the cap, close the connection that has waited longest without a request in the app's hands: an
        idle keep-alive first, else the oldest slow head or body (a slowloris client). Requests being served
        are never cut. False when every connection is busy."""
        idle = waiting = None
        for connection in self._stats.live:
            if connection._busy:
                continue
            if connection._header_timer is None:  # between requests: idle keep-alive
                idle = connection
                break
            if waiting is None or connection._waiting_since < waiting._waiting_since:
                waiting = connection
        victim = idle or waiting
        if victim is None or victim.transport is None:
            return False
        victim._displaced = True
        victim._disarm_header_timer()
        self._stats.open -= 1
        self._stats.live.pop(victim, None)
        self._stats.displaced += 1
        victim.transport.close()
        return True

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # drained and dropped until the linger ends
        if data and not self._busy and self._header_timer is None:
            self._waiting_since = self._loop.time()
            self._arm_header_timer()  # the first byte of a request head after an idle keep-alive period
        super().data_received(data)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        error = malformed_request(status, exc, message, self._limits)
        if status >= 500:
            log.error("error handling a request from %s: %s", request.remote, error.message, exc_info=exc)
        else:
            self._stats.malformed += 1
            log.info("refused a malformed request from %s: %s", request.remote, error.message)
        if request.writer.output_size > 0:  # aiohttp's rule: part of a response is out, the connection is lost
            raise ConnectionError("a response was already started; cannot send the error")
        return _closing(error)

    # ------------------------------------------------------------------------ used by the request wrapper

    def request_started(self) -> None:
        self._busy = True
        self._disarm_header_timer()

    def request_ended(self) -> None:
        self._busy = False

    def body_pending(self) -> None:
        """The head is in; the body is still arriving: as displaceable as a slow head."""
        self._busy = False
        self._waiting_since = self._loop.time()
        self._arm_header_timer()

    def refused_request(self) -> None:
        self._stats.malformed += 1

    # ------------------------------------------------------------------------ internals

    def _refuse(self, transport: asyncio.BaseTransport, error: SidecarError) -> None:
        self._refused = True
        rescued = rescue(error)
        head = [f"HTTP/1.1 {rescued.status} {HTTPStatus(rescued.status).phrase}",
                *(f"{k}: {v}" for k, v in rescued.headers.items()),
                f"content-length: {len(rescued.body)}", "connection: close", "", ""]
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport.write("\r\n".join(head).encode("latin-1") + rescued.body)
        # half-close and keep reading a moment: closing with unread bytes would reset the connection before
        # the client reads the answer
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(self._limits.refuse_linger, transport.close)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self._loop.call_later(self._limits.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._busy:
            return
        self._stats.header_timeouts += 1
        log.info("closed a connection from %s: no complete request head within %gs",
                 self.peername, self._limits.header_timeout)
        self.force_close()


def _guarded(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], limits: WebLimits,
             overload: OverloadGuard | None = None,
             listener: str = "") -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The app's request handler behind :func:`framing_problem`, telling the connection when it is busy; while
    the overload guard sheds, every request gets its 503 first."""

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        if overload is not None and overload.shedding:
            return error_response(overload.shed(listener))   # not raised: the guard's error is shared
        connection = request.protocol
        if not isinstance(connection, _Connection):  # a connection made by something else than Site
            return await handler(request)
        connection.request_started()
        try:
            problem = framing_problem(request, limits)
            if problem is not None:
                connection.refused_request()
                log.info("refused a malformed request from %s: %s", request.remote, problem.message)
                return _closing(problem)
            if request.body_exists:
                # the APIs take small bodies: read them before the handler, within the head's time limit, so a
                # slow body counts as waiting (displaceable, timed out) rather than as a request being served
                connection.body_pending()
                try:
                    await request.read()
                except web.HTTPRequestEntityTooLarge:
                    connection.refused_request()
                    limit = request.client_max_size
                    return _closing(InvalidArgument(f"request body is larger than {limit} bytes", {"limit": limit}))
                finally:
                    connection.request_started()
            return await handler(request)
        finally:
            connection.request_ended()

    return guarded


class _ListenerSite(web.BaseSite):
    """aiohttp's TCPSite, but each connection is a :class:`_Connection`."""

    __slots__ = ("_factory", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, factory: Callable[[], asyncio.Protocol],
                 backlog: int) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._factory = factory

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self._host, self._port, backlog=self._backlog,
                                                reuse_address=True)

    @property
    def sockets(self) -> list[Any]:
        return list(getattr(self._server, "sockets", None) or [])


class Site:
    """An aiohttp app bound to one address with the listener hygiene above; reports the bound address
    (port 0 picks one). ``stats`` counts connections and refusals. With ``overload`` (never on the admin
    port), requests are shed with 503 while the guard sheds, and new connections refused while it refuses."""

    def __init__(self, name: str, app: web.Application, listen: HostPort, shutdown_timeout: float = 5.0,
                 limits: WebLimits = DEFAULT_WEB_LIMITS, overload: OverloadGuard | None = None) -> None:
        self.name = name
        self.overload = overload
        self.app = app
        self.listen = listen
        self.limits = limits
        self.stats = WebStats()
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
        self.bound: HostPort | None = None

    async def start(self) -> HostPort:
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        # read by each connection when it is made: every request passes the framing checks first
        server.request_handler = _guarded(server.request_handler, self.limits, self.overload, self.name)
        loop = asyncio.get_running_loop()
        limits, stats, overload, name = self.limits, self.stats, self.overload, self.name

        def connection() -> _Connection:
            return _Connection(server, loop=loop, limits=limits, stats=stats, overload=overload, listener=name)

        site = _ListenerSite(self.runner, self.listen.host, self.listen.port, connection,
                             backlog=min(1024, limits.max_connections * 2))
        await site.start()
        sockets = site.sockets
        if not sockets:
            raise OSError(f"no socket bound for {self.listen}")
        host, port = sockets[0].getsockname()[:2]
        self.bound = HostPort(host, port)
        return self.bound

    async def stop(self) -> None:
        await self.runner.cleanup()
