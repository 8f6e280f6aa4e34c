"""The sidecar's own HTTP/1.1 client, for the requests it makes itself: a message to the local app, a batch of
messages to another sidecar's inbound over mTLS. One request, one whole answer, under one deadline.

Theory of operation
-------------------
Connections are kept alive per (address, TLS context, server name): a request takes the most recently used idle
one, or dials (:func:`sidecar.proxy.connector.dial`, so TLS, the SNI and session reuse are the proxy's own). A
context whose SNI names a service (:func:`sidecar.tls.context.service_server_name`) refuses, in the handshake
itself, a server that cannot show that service's certificate: that dial fails with :class:`PeerRefused` and no
byte of the request is written. The request goes in one write; the answer is read by the proxy's compiled
reader (:mod:`sidecar.proxy.clientwire`), its body kept up to the caller's limit.

A connection is dropped on any error, on ``Connection: close``, on a body that runs to the close or past the
limit, and at the deadline; only a connection whose answer ended whole goes back to the pool. An idle connection
the server closed is noticed when its close arrives; one closed while the request was on its way shows as a
close with no byte of answer, and then the request is sent once more on a new connection (the server saw at most
an unanswered request; the callers' deliveries are at least once anyway).

Failures: :class:`~sidecar.proxy.failures.ConnectFailure` (no connection), :class:`PeerRefused` (the TLS peer is
not who the SNI asks for, or the handshake failed), :class:`~sidecar.proxy.failures.UpstreamReset` (closed before
the answer ended), :class:`~sidecar.proxy.failures.UpstreamProtocolError` (not HTTP/1.1, or a head over the
limits), and ``TimeoutError`` when the deadline passes, whatever was under way.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Hashable, Iterable
from typing import Final, cast

from sidecar.proxy.clientwire import AnswerCollector, HttpAnswer, encode_request
from sidecar.proxy.connector import dial
from sidecar.proxy.failures import ConnectFailure, UpstreamProtocolError, UpstreamReset
from sidecar.proxy.http1 import DEFAULT_HEAD_LIMITS, HeadLimits, RemoteProtocolError, ResponseHead, Trailers
from sidecar.proxy.http1read import ResponseReader
from sidecar.proxy.target import Target
from sidecar.tls.context import refusal_of
from sidecar.tls.errors import PeerRefused

IDLE_TIMEOUT: Final = 30.0   # seconds an idle connection is kept (aiohttp's client keeps them 15s, servers 60-75s)
MAX_IDLE: Final = 64         # idle connections kept per (address, TLS context, server name)


class KeptConnection(asyncio.Protocol):
    """One connection: a request at a time, its answer collected by a :class:`AnswerCollector`."""

    __slots__ = ("_collector", "_limits", "_reader", "_waiter", "authority", "closed", "idle_since", "stale",
                 "transport", "used")

    # made with the connection: a dial that fails gets no connection_lost to close it (see UpstreamConnection)
    _reader: ResponseReader

    def __init__(self, authority: str, limits: HeadLimits) -> None:
        self.authority = authority
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False          # carried a request before: a close before any answer may be a stale keep-alive
        self.stale = False         # it was: a reused connection closed before any byte of the answer
        self.idle_since = 0.0
        self._limits = limits
        self._collector: AnswerCollector | None = None
        self._waiter: asyncio.Future[HttpAnswer] | None = None

    # ------------------------------------------------------------------------------------------ requests

    def request(self, data: bytes, limit: int, head: bool = False) -> asyncio.Future[HttpAnswer]:
        """Send ``data`` (a whole request; ``head``: a HEAD request, whose answer has no body); the future gets its
        answer, or the failure."""
        assert self.transport is not None and self._waiter is None
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._collector = AnswerCollector(limit)
        self._reader.expect(head)
        self.transport.write(data)
        return waiter

    @property
    def reusable(self) -> bool:
        return not self.closed and self._waiter is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def expire(self, timeout: float) -> None:
        """The caller's deadline passed with the request unanswered: it fails with TimeoutError, the connection
        closes."""
        if self._waiter is not None and not self._waiter.done():
            self._fail(TimeoutError(f"no answer from {self.authority} within {timeout:.3f}s"))

    # ------------------------------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods
        self.transport = cast(asyncio.Transport, transport)
        self._reader = ResponseReader(self, self._limits)

    def data_received(self, data: bytes) -> None:
        collector = self._collector
        if collector is None:
            self.close()   # bytes no request asked for: the server broke HTTP/1.1; nothing is waiting
            return
        try:
            upgrade = self._reader.feed(data)
        except RemoteProtocolError as e:
            self._fail(UpstreamProtocolError(self.authority, str(e)))
            return
        if upgrade is not None:
            self._fail(UpstreamProtocolError(self.authority, "a protocol switch nobody asked for"))
            return
        if collector.answer is not None:
            self._done(collector)

    def eof_received(self) -> bool:
        return False   # a half-close ends the connection (and a body that runs to the close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._reader.close()   # it and this protocol held each other (see ResponseReader)
        collector = self._collector
        if collector is None:
            return
        if collector.on_eof():
            self._done(collector)
        elif self.used and not collector.started:
            self.stale = True
            self._fail(UpstreamReset(self.authority, "a kept-alive connection closed before the answer"))
        else:
            self._fail(UpstreamReset(self.authority, "connection closed before the answer ended"))

    # ------------------------------------------------------------------------------------------ the sink

    def on_response_interim(self, head: ResponseHead) -> None:
        assert self._collector is not None
        self._collector.on_response_interim(head)

    def on_response_head(self, head: ResponseHead) -> None:
        assert self._collector is not None
        self._collector.on_response_head(head)

    def on_response_body(self, data: bytes) -> None:
        assert self._collector is not None
        self._collector.on_response_body(data)

    def on_response_end(self, trailers: Trailers | None) -> None:
        assert self._collector is not None
        self._collector.on_response_end(trailers)

    # ------------------------------------------------------------------------------------------ outcomes

    def _done(self, collector: AnswerCollector) -> None:
        answer = collector.answer
        assert answer is not None
        waiter = self._waiter
        self._collector = None
        self._waiter = None
        self.used = True
        if not collector.reusable:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        self._collector = None
        self._waiter = None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class HttpClient:
    """Keep-alive HTTP/1.1 connections and whole-answer requests over them (see the module's theory)."""

    def __init__(self, head_limits: HeadLimits = DEFAULT_HEAD_LIMITS, max_idle: int = MAX_IDLE,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._limits = head_limits
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: dict[Hashable, list[KeptConnection]] = {}
        self._targets: dict[Hashable, Target] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.dialed = 0   # connections opened, for tests

    async def post(self, address: tuple[str, int], target: str, body: bytes, headers: Iterable[tuple[str, str]],
                   *, timeout: float, limit: int, authority: str | None = None,
                   tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> HttpAnswer:
        """POST ``body`` to ``target`` at ``address``: :meth:`request`."""
        return await self.request("POST", address, target, body, headers, timeout=timeout, limit=limit,
                                  authority=authority, tls=tls, server_hostname=server_hostname)

    async def request(self, method: str, address: tuple[str, int], target: str, body: bytes,
                      headers: Iterable[tuple[str, str]], *, timeout: float, limit: int, authority: str | None = None,
                      tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> HttpAnswer:
        """``method`` ``target`` at ``address`` (over TLS with ``tls``, offering ``server_hostname``) with ``body``;
        the whole answer, its body up to ``limit`` bytes. ``Host`` is ``authority`` (default: the address)."""
        dest = self._target(address, tls, server_hostname)
        data = encode_request(method, target, authority or dest.authority, headers, body)
        return await self.send(address, data, timeout=timeout, limit=limit, head=method == "HEAD", tls=tls,
                               server_hostname=server_hostname)

    async def send(self, address: tuple[str, int], data: bytes, *, timeout: float, limit: int, head: bool = False,
                   tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> HttpAnswer:
        """:meth:`request` of a request already encoded (``data``: its head and body; ``head``: it is a HEAD).

        On a kept connection the deadline is one timer that fails the answer's waiter (what most requests take);
        a dial, and the request on the new connection, run under ``asyncio.timeout`` for what is left of it."""
        key = (address, tls, server_hostname)
        dest = self._target(address, tls, server_hostname)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._take(key)
        if conn is not None:
            timer = loop.call_at(deadline, conn.expire, timeout)
            try:
                return await self._exchange(key, conn, data, limit, head)
            except UpstreamReset:
                if not conn.stale:
                    raise
                # the server closed it as the request went out: once more, on a new connection
            finally:
                timer.cancel()
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self._dial(dest, timeout)
                return await self._exchange(key, conn, data, limit, head)
        except TimeoutError:
            raise TimeoutError(f"no answer from {dest.authority} within {timeout:.3f}s") from None

    def _target(self, address: tuple[str, int], tls: ssl.SSLContext | None, server_hostname: str | None) -> Target:
        key = (address, tls, server_hostname)
        dest = self._targets.get(key)
        if dest is None:
            if len(self._targets) >= 4096:
                self._targets.clear()
            dest = self._targets[key] = Target(address, tls, server_hostname)
        return dest

    async def _dial(self, dest: Target, timeout: float) -> KeptConnection:
        if self._closed:
            raise ConnectFailure(dest.authority, "the client is closed")
        try:
            # the caller's deadline ends the dial first: a dial that takes it all is a timeout, as any other
            _, conn = await dial(dest, lambda: KeptConnection(dest.authority, self._limits), timeout + 1.0)
        except ConnectFailure as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, ssl.SSLError):
                raise PeerRefused(refusal_of(cause, role="server")) from cause
            raise
        self.dialed += 1
        return conn

    async def _exchange(self, key: Hashable, conn: KeptConnection, data: bytes, limit: int, head: bool
                        ) -> HttpAnswer:
        try:
            answer = await conn.request(data, limit, head)
        except BaseException:
            conn.close()
            raise
        if conn.reusable:
            self._put(key, conn)
        return answer

    # ------------------------------------------------------------------------------------------ the pool

    def _take(self, key: Hashable) -> KeptConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def _put(self, key: Hashable, conn: KeptConnection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self._max_idle:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle longer than the idle timeout; come back while any are left."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self._idle_timeout
        for key in list(self._idle):
            kept = []
            for conn in self._idle[key]:
                if conn.closed or conn.idle_since <= oldest:
                    conn.close()
                else:
                    kept.append(conn)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = loop.call_later(self._idle_timeout / 2, self._sweep)

    @property
    def idle(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close the idle connections; those in use close when their answer ends."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
