"""Keep-alive upstream connections, one pool per target key.

``acquire`` hands out the most recently used idle connection at once (LIFO keeps few connections warm and
lets the rest time out), or dials a new one and calls the waiter back. At ``max_connections``, or with
``max_dialing`` dials already under way, waiters queue for a released connection or the next dial (started
as one ends); beyond ``max_pending`` they fail with 429 at once.

Dialing (TLS, identity checks, session reuse) is :func:`sidecar.proxy.connector.dial`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Hashable
from typing import Any, cast

from sidecar.errors import ResourceExhausted
from sidecar.http2.keepalive import KeepalivePolicy
from sidecar.proxy.connector import connect_failure, dial
from sidecar.proxy.failures import ConnectFailure
from sidecar.proxy.http1 import DEFAULT_HEAD_LIMITS, HeadLimits
from sidecar.proxy.limits import DEFAULT_POOL_LIMITS, PoolLimits
from sidecar.proxy.sides import StreamPool, StreamPools, StreamUser, UpstreamStream
from sidecar.proxy.target import H2Key, H2PeerKey, Target
from sidecar.proxy.upstream import UpstreamConnection


class UpstreamPool(StreamPool):
    __slots__ = (
        "_closed",
        "_dialing",
        "_head_limits",
        "_idle",
        "_loop",
        "_waiters",
        "busy",
        "dialed",
        "key",
        "limits",
        "session",
    )

    def __init__(self, key: Hashable, limits: PoolLimits, loop: asyncio.AbstractEventLoop,
                 head_limits: HeadLimits = DEFAULT_HEAD_LIMITS) -> None:
        self.key = key
        self.limits = limits
        self._loop = loop
        self._head_limits = head_limits
        self._idle: list[UpstreamConnection] = []
        self._waiters: deque[tuple[StreamUser, Target]] = deque()
        self._dialing = 0
        self._closed = False
        self.busy = 0
        self.dialed = 0               # connections opened since start, for tests and /clusters
        self.session: ssl.SSLSession | None = None

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def size(self) -> int:
        return len(self._idle) + self.busy + self._dialing

    def acquire(self, target: Target, waiter: StreamUser, fresh: bool = False) -> UpstreamConnection | None:
        """An idle connection now, or None: ``waiter`` is then called back once one is ready or failed.

        ``fresh`` skips idle connections (a retry after a pooled connection turned out to be closed).
        """
        if not fresh:
            idle = self._idle
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    self.busy += 1
                    return conn
        if self.size < self.limits.max_connections and self._dialing < self.limits.max_dialing:
            self._dial(target, waiter)
        elif len(self._waiters) < self.limits.max_pending:
            self._waiters.append((waiter, target))
        else:
            raise ResourceExhausted(f"{self.limits.max_pending} requests already wait for a connection to "
                                    f"{target.authority}", {"upstream": target.authority})
        return None

    def cancel(self, waiter: StreamUser) -> None:
        """The waiter no longer wants a connection (its request timed out or its client left)."""
        for item in self._waiters:
            if item[0] is waiter:
                self._waiters.remove(item)
                return

    def release(self, stream: UpstreamStream, now: float) -> None:
        """A connection whose exchange completed cleanly: to the next waiter, or idle."""
        conn = cast(UpstreamConnection, stream)
        self.busy -= 1
        conn.unbind()
        if conn.closed or self._closed:
            conn.close()
            self._serve_waiters()
            return
        if not conn.reused:
            conn.reused = True
            # once per connection: reading SSLObject.session costs ~100us (OpenSSL copies the session)
            ssl_object = conn.ssl_object
            if ssl_object is not None:
                session = ssl_object.session
                if session is not None:
                    self.session = session
        if self._waiters:
            waiter, _ = self._waiters.popleft()
            self.busy += 1
            waiter.on_connection(conn)
            return
        if len(self._idle) >= self.limits.max_idle:
            conn.close()
            return
        conn.idle_since = now
        self._idle.append(conn)

    def forget(self, stream: UpstreamStream) -> None:
        """A busy connection that will not come back (closed after its exchange)."""
        self.busy -= 1
        cast(UpstreamConnection, stream).close()
        self._serve_waiters()

    def detach(self, stream: UpstreamStream) -> None:
        """A busy connection that leaves the pool open (upgraded to a tunnel)."""
        self.busy -= 1
        cast(UpstreamConnection, stream).pool = None
        self._serve_waiters()

    def discard(self, conn: UpstreamConnection) -> None:
        """An idle connection the server closed."""
        if conn in self._idle:
            self._idle.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than the idle timeout."""
        limit = now - self.limits.idle_timeout
        if self._idle and self._idle[0].idle_since < limit:
            keep = []
            for conn in self._idle:
                if conn.idle_since < limit:
                    conn.close()
                else:
                    keep.append(conn)
            self._idle = keep

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        while self._waiters:
            waiter, target = self._waiters.popleft()
            waiter.on_connect_failed(ConnectFailure(target.authority, "the proxy is shutting down"))

    def _serve_waiters(self) -> None:
        if self._waiters and self.size < self.limits.max_connections and self._dialing < self.limits.max_dialing:
            waiter, target = self._waiters.popleft()
            self._dial(target, waiter)

    def _dial(self, target: Target, waiter: StreamUser) -> None:
        self._dialing += 1
        self._loop.create_task(self._connect(target, waiter))

    async def _connect(self, target: Target, waiter: StreamUser) -> None:
        address = target.authority
        try:
            _, conn = await dial(target, lambda: UpstreamConnection(self, address, self._head_limits),
                                 self.limits.connect_timeout, session=self.session)
        except BaseException as e:
            self._dialing -= 1
            error = e if isinstance(e, ConnectFailure) else connect_failure(address, e, self.limits.connect_timeout)
            self._serve_waiters()
            waiter.on_connect_failed(error)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        self._dialing -= 1
        self.busy += 1
        self.dialed += 1
        if self._closed:
            self.forget(conn)
            waiter.on_connect_failed(ConnectFailure(address, "the proxy is shutting down"))
            return
        self._serve_waiters()   # a dial slot is free: the next waiter's dial starts
        waiter.on_connection(conn)


class Pools(StreamPools):
    """Every upstream pool of a process (shared by its listeners), created on first use."""

    def __init__(self, limits: PoolLimits = DEFAULT_POOL_LIMITS, head_limits: HeadLimits = DEFAULT_HEAD_LIMITS,
                 loop: asyncio.AbstractEventLoop | None = None, keepalive: KeepalivePolicy | None = None) -> None:
        self.limits = limits
        self._head_limits = head_limits
        self._loop = loop
        self._pools: dict[Hashable, UpstreamPool] = {}
        # HTTP/2 upstreams (a Target whose pool_key is an H2Key: an h2c app, a peer over h2): streams multiplexed
        # per connection; ``keepalive`` is the PING policy of the connections to peers
        self._h2: dict[Hashable, StreamPool] = {}
        self.keepalive = keepalive
        self._sweeper: asyncio.TimerHandle | None = None

    def get(self, target: Target) -> StreamPool:
        pool = self._pools.get(target.key)
        if pool is None:
            if isinstance(target.key, H2Key):
                return self._http2(target)
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            pool = self._pools[target.key] = UpstreamPool(target.key, self.limits, loop, self._head_limits)
            if self._sweeper is None:
                self._schedule_sweep()
        return pool

    def _http2(self, target: Target) -> StreamPool:
        h2 = self._h2.get(target.key)
        if h2 is None:
            from sidecar.proxy.h2pool import H2UpstreamPool  # HTTP/2 (h2, our HPACK) loaded with the first user
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            h2 = self._h2[target.key] = H2UpstreamPool(target.key, loop, self.limits, keepalive=self.keepalive,
                                                       fallback_pool=self.get)
            if self._sweeper is None:
                self._schedule_sweep()
        return h2

    def __iter__(self) -> Any:
        return iter(self._pools.values())

    def http2_pools(self) -> list[StreamPool]:
        """The HTTP/2 pools (apps over h2c, peers over h2)."""
        return list(self._h2.values())

    def h2_connections(self) -> dict[str, int]:
        """The HTTP/2 pools' connections (apps over h2c, peers over h2) by state: ``idle`` (no stream open) or
        ``busy`` (one or more), from each pool's :meth:`~sidecar.proxy.sides.StreamPool.counts`."""
        out = {"idle": 0, "busy": 0}
        for pool in self._h2.values():
            counts = pool.counts()
            for state in out:
                out[state] += counts.get(state, 0)
        return out

    def h2_peer_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """Per (peer address, service), summed over TLS context generations: the HTTP/2 pools' counts
        (:meth:`~sidecar.proxy.h2pool.H2UpstreamPool.counts`), for /metrics and the admin port."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        for key, pool in self._h2.items():
            if isinstance(key, H2PeerKey):
                host, port = key.address
                peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                slot = out.setdefault((peer, key.service), {})
                for name, n in pool.counts().items():
                    slot[name] = slot.get(name, 0) + n
        return out

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(max(0.05, self.limits.idle_timeout / 4), self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for pool in self._pools.values():
            pool.sweep(now)
        for h2 in self._h2.values():
            h2.sweep(now)
        self._schedule_sweep()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            pool.close()
        for h2 in self._h2.values():
            h2.close()
