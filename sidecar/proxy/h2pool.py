"""The pool of HTTP/2 upstream connections of one key (:mod:`sidecar.proxy.h2up` has the connections and streams):
one connection carries every stream until the peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached or it drains,
waiters queue while connections are dialed or get ready, a peer without h2 is sent HTTP/1.1 through the
key's ``fallback`` Target, idle connections are swept.

A burst of waiters dials as many connections at once as it needs (each expected to take as many streams as the
peer's last SETTINGS allowed), up to the pool's ``max_dialing``: 500 streams arriving at a peer that allows 100
per connection open 5 connections in one handshake's time, not one after another (Envoy's HTTP/2 pool likewise
counts the stream capacity of connections still connecting)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

from sidecar.errors import ResourceExhausted
from sidecar.http2.keepalive import KeepalivePolicy
from sidecar.http2.limits import H2Limits
from sidecar.proxy.connector import connect_failure, dial
from sidecar.proxy.failures import ConnectFailure
from sidecar.proxy.h2up import H2UpstreamConnection, H2UpstreamStream
from sidecar.proxy.limits import PoolLimits
from sidecar.proxy.sides import StreamPool, StreamUser, UpstreamStream
from sidecar.proxy.target import H2PeerKey, Target

log = logging.getLogger("sidecar.proxy.pool")

# how long a peer whose handshake did not select h2 is sent HTTP/1.1 before h2 is offered again (a rolling
# upgrade replaces it with a sidecar that speaks h2 within minutes)
HTTP1_RECHECK: Final = 300.0
# streams a connection is expected to take before its peer's SETTINGS say: RFC 9113's recommended floor, what
# sidecars, Envoy, nginx and Go advertise
DEFAULT_STREAMS_PER_CONN: Final = 100


class H2UpstreamPool(StreamPool):
    """The HTTP/2 connections of one key: streams multiplexed, waiters queued while a connection is dialed.

    ``fallback_pool`` gives the HTTP/1.1 pool of a Target (``Pools.get``): where a peer's requests go when it
    does not speak h2. ``keepalive`` None: no PINGs (an app on this host)."""

    def __init__(self, key: Hashable, loop: asyncio.AbstractEventLoop, limits: PoolLimits,
                 h2_limits: H2Limits | None = None, keepalive: KeepalivePolicy | None = None,
                 fallback_pool: Callable[[Target], StreamPool] | None = None) -> None:
        self.key = key
        self.peer = key if isinstance(key, H2PeerKey) else None
        self.loop = loop
        self.limits = limits
        self.h2_limits = h2_limits
        self.keepalive = keepalive if self.peer is not None else None
        self.fallback_pool = fallback_pool
        self.conns: list[H2UpstreamConnection] = []
        self.waiters: deque[tuple[StreamUser, Target]] = deque()
        self.dialing = 0           # connections being dialed (TCP, TLS) now
        self.streams_per_conn = DEFAULT_STREAMS_PER_CONN   # the peer's SETTINGS_MAX_CONCURRENT_STREAMS, last seen
        self.session: ssl.SSLSession | None = None
        self.http1_until = 0.0     # loop time until which the peer is sent HTTP/1.1 (its handshake chose it)
        self._fallback: StreamPool | None = None
        self._closed = False
        # counters since start, for /metrics
        self.dialed = 0
        self.pings_sent = 0
        self.pings_acked = 0
        self.ping_timeouts = 0
        self.goaways = 0
        self.http1_fallbacks = 0   # dials whose handshake did not select h2

    def counts(self) -> dict[str, int]:
        """Gauges (``connections``, ``idle`` of them with no stream open, ``busy`` with one or more, ``streams``
        open and ``waiting`` for one: now) and counters since start (the rest)."""
        busy = sum(1 for conn in self.conns if conn.streams)
        return {"connections": len(self.conns), "idle": len(self.conns) - busy, "busy": busy,
                "streams": sum(len(conn.streams) for conn in self.conns), "waiting": len(self.waiters),
                "dialed": self.dialed, "pings_sent": self.pings_sent, "pings_acked": self.pings_acked,
                "ping_timeouts": self.ping_timeouts, "goaways": self.goaways,
                "http1_fallbacks": self.http1_fallbacks}

    def acquire(self, target: Target, user: StreamUser, fresh: bool = False) -> UpstreamStream | None:
        if self.http1_until:
            if self.loop.time() < self.http1_until:
                return self._over_http1(target, user, fresh)
            self.http1_until = 0.0   # time to offer h2 again
        for conn in self.conns:
            if conn.room():
                conn.reserved += 1
                return H2UpstreamStream(conn)
        if len(self.waiters) >= self.limits.max_pending:
            raise ResourceExhausted(f"too many requests waiting for a connection to {target.authority}",
                                    {"max_pending_requests": self.limits.max_pending})
        self.waiters.append((user, target))
        self._dial_if_needed(target)
        return None

    def _dial_if_needed(self, target: Target) -> None:
        """Dial as many connections as the waiters need beyond those being dialed or not yet ready."""
        coming = self.dialing + sum(1 for conn in self.conns if not conn.ready and not conn.closed)
        per_conn = max(1, self.streams_per_conn)
        need = -(-len(self.waiters) // per_conn) - coming
        room = min(self.limits.max_dialing - self.dialing, self.limits.max_connections - len(self.conns) - self.dialing)
        for _ in range(min(need, room)):
            self.dialing += 1
            self.loop.create_task(self._dial(target))

    async def _dial(self, target: Target) -> None:
        conn = H2UpstreamConnection(self, target.authority, self.h2_limits)
        timeout = self.limits.connect_timeout
        try:
            await dial(target, lambda: conn, timeout, session=self.session)
        except BaseException as e:
            self.dialing -= 1
            failure = e if isinstance(e, ConnectFailure) else connect_failure(target.authority, e, timeout)
            if self.dialing and not isinstance(e, asyncio.CancelledError):
                return   # the waiters go to the dials still running; the last to fail fails them
            waiters, self.waiters = self.waiters, deque()
            for user, _ in waiters:
                user.on_connect_failed(failure)
                user.flush()
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        self.dialing -= 1
        self.dialed += 1
        if self._closed:
            conn.close()
            return
        if not conn.h2:
            self._learn_http1(conn)
            return
        self.conns.append(conn)
        self.has_room(conn)

    def _learn_http1(self, conn: H2UpstreamConnection) -> None:
        """The peer's handshake did not select h2: close the connection unused, send HTTP/1.1 for a while."""
        self.http1_fallbacks += 1
        self.http1_until = self.loop.time() + HTTP1_RECHECK
        log.info("peer %s does not speak HTTP/2 (ALPN): its requests go over HTTP/1.1 for %.0fs", conn.address,
                 HTTP1_RECHECK)
        conn.abort()   # nothing was written on it
        waiters, self.waiters = self.waiters, deque()
        for user, target in waiters:
            try:
                stream = self._over_http1(target, user, False)
            except Exception as e:   # the HTTP/1.1 pool's own refusal (its pending cap)
                user.on_connect_failed(e)
            else:
                if stream is not None:
                    user.on_connection(stream)
            user.flush()

    def _over_http1(self, target: Target, user: StreamUser, fresh: bool) -> UpstreamStream | None:
        peer = self.peer
        if peer is None or peer.fallback is None or self.fallback_pool is None:
            raise ConnectFailure(target.authority, "the peer does not speak HTTP/2 and no HTTP/1.1 route is known")
        base = peer.fallback
        fallback = base.derive(target.timeout, target.try_timeout, target.retry, target.observer, target.tag)
        pool = self._fallback = self.fallback_pool(fallback)
        return pool.acquire(fallback, user, fresh)

    def has_room(self, conn: H2UpstreamConnection) -> None:
        """Hand streams of ``conn`` to the requests waiting, while it has room; dial again for the rest."""
        if conn.ready:
            self.streams_per_conn = conn.core.peer_max_streams()
        while self.waiters and conn.room():
            user, _ = self.waiters.popleft()
            conn.reserved += 1
            user.on_connection(H2UpstreamStream(conn))
            user.flush()
        if self.waiters and not conn.room():
            self._dial_if_needed(self.waiters[0][1])

    def draining(self, conn: H2UpstreamConnection) -> None:
        """The peer sent GOAWAY on ``conn``: its streams finish, no new one goes there."""
        self.goaways += 1
        if conn in self.conns:
            self.conns.remove(conn)
        if not conn.streams and not conn.reserved:
            conn.close()   # the waiters go on as gone() decides
        elif self.waiters:
            self._dial_if_needed(self.waiters[0][1])

    def gone(self, conn: H2UpstreamConnection) -> None:
        """``conn`` takes no more streams (closed, lost or drained and done)."""
        if conn in self.conns:
            self.conns.remove(conn)
        if not self.waiters or self._closed or not conn.h2:
            return
        if conn.ready and (conn.started or not conn.draining):
            self._dial_if_needed(self.waiters[0][1])
            return
        if self.dialing or any(not c.ready and not c.closed for c in self.conns):
            return   # connections still coming take the waiters, or fail them
        # refused before it took a stream (closed before its SETTINGS, or a GOAWAY at once: an overloaded or
        # draining peer): the requests waiting for it fail over rather than dial the same peer again
        reason = "refused new streams (GOAWAY)" if conn.draining else "closed the connection before its SETTINGS"
        waiters, self.waiters = self.waiters, deque()
        for user, target in waiters:
            user.on_connect_failed(ConnectFailure(target.authority, f"the {conn.who} {reason}"))
            user.flush()

    def cancel(self, user: StreamUser) -> None:
        self.waiters = deque(w for w in self.waiters if w[0] is not user)
        if self._fallback is not None:
            self._fallback.cancel(user)

    def release(self, stream: UpstreamStream, now: float) -> None:
        if isinstance(stream, H2UpstreamStream):
            self.forget(stream)
        elif self._fallback is not None:
            self._fallback.release(stream, now)

    def forget(self, stream: UpstreamStream) -> None:
        if isinstance(stream, H2UpstreamStream):
            stream.unbind()
            if stream.sid == 0 and not stream.done:  # handed out, never started
                stream.done = True
                conn = stream.conn
                conn.reserved -= 1
                if conn.draining and not conn.streams and not conn.reserved:
                    conn.close()
                else:
                    self.has_room(conn)
            elif not stream.done:
                stream.abort()
        elif self._fallback is not None:
            self._fallback.forget(stream)

    def detach(self, stream: UpstreamStream) -> None:
        if isinstance(stream, H2UpstreamStream):
            self.forget(stream)
        elif self._fallback is not None:
            self._fallback.detach(stream)

    def close(self) -> None:
        self._closed = True
        for conn in list(self.conns):
            conn.core.goaway()
            conn.close()
        self.conns = []
        waiters, self.waiters = self.waiters, deque()
        for user, target in waiters:
            user.on_connect_failed(ConnectFailure(target.authority, "the proxy is shutting down"))

    def sweep(self, now: float) -> None:
        """Close connections that carried no stream for the idle timeout (a peer or app rarely called keeps no
        socket); GOAWAY first, so the peer knows no stream is coming."""
        limit = now - self.limits.idle_timeout
        for conn in list(self.conns):
            if not conn.ready:
                # a peer that accepted the connection but sent no SETTINGS within the connect timeout: its
                # waiters fail over (gone) and the next request dials again
                if conn.idle_since < now - self.limits.connect_timeout:
                    conn.abort()
            elif not conn.streams and not conn.reserved and conn.idle_since < limit:
                conn.core.goaway()
                conn.close()
