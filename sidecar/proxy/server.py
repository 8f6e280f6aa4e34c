"""An HTTP/1.1 proxy listener: the engine's entry point.

    proxy = HttpProxy(route, name="outbound", on_request_done=metrics.record)
    server = await proxy.listen("127.0.0.1", 15001)              # plain
    server = await proxy.listen("0.0.0.0", 15006, ssl_context=ctx)  # TLS; the route sees the peer certificate
    ...
    await proxy.close(grace=5.0)

Several listeners may share one :class:`HttpProxy` (and several proxies one :class:`Pools`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.proxy.downstream import ClientConnection, DownstreamProtocol
from sidecar.proxy.engine import Engine
from sidecar.proxy.limits import DEFAULT_PROXY_LIMITS, ProxyLimits
from sidecar.proxy.pool import Pools
from sidecar.proxy.target import ConnectionInfo, RequestStats, RouteFn
from sidecar.proxy.tracecontext import IdSource

if TYPE_CHECKING:
    from sidecar.overload.guard import OverloadGuard
    from sidecar.proxy.h2down import H2Downstream

log = logging.getLogger(__name__)


class HttpProxy:
    """Accepts HTTP/1.1 clients and proxies each request to the target ``route(head, conn)`` names.

    ``edit_headers`` adds ``x-request-id`` when missing and continues or starts the W3C trace with a new
    span id (one hop = one span). ``on_request_done`` is called once per request with its
    :class:`RequestStats`; it runs on the hot path, so keep it to counters and appends. ``h2c``: a connection
    that opens with the HTTP/2 preface is served as HTTP/2 with prior knowledge (:mod:`sidecar.proxy.h2down`),
    on the same port as HTTP/1.1.
    """

    def __init__(self, route: RouteFn, *, name: str = "http", limits: ProxyLimits = DEFAULT_PROXY_LIMITS,
                 pools: Pools | None = None, on_request_done: Callable[[RequestStats], None] | None = None,
                 ids: IdSource | None = None, edit_headers: bool = True, h2c: bool = False) -> None:
        self._own_pools = pools is None
        self.pools = pools if pools is not None else Pools(head_limits=limits.head)
        # what every exchange shares; route, limits, ids, edit_headers, on_request_done, overload and draining
        # below read and write it, so a change (a reload, the overload guard) reaches the next request
        self.engine = Engine(name, route, limits, self.pools, ids or IdSource(), edit_headers, on_request_done)
        self.connections: set[ClientConnection] = set()
        self.h2_connections: set[H2Downstream] = set()   # the HTTP/2 ones among them, for GOAWAY on close
        # a connection opening with the HTTP/2 preface is served as h2c (prior knowledge) on the same port
        self.h2c = h2c
        # counters since start, for metrics
        self.accepted = 0
        self.rejected = 0
        self.protocol_errors = 0
        self.header_timeouts = 0
        self.displaced = 0  # idle connections closed to make room for a new one at max_connections
        # HTTP/2 protections that fired on this listener's connections, by the core's counter name (rapid_reset,
        # refused_streams, control_flood...): every connection's core counts into this one dict
        self.h2_protections: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def route(self) -> RouteFn:
        return self.engine.route

    @route.setter
    def route(self, route: RouteFn) -> None:
        self.engine.route = route

    @property
    def limits(self) -> ProxyLimits:
        return self.engine.limits

    @property
    def ids(self) -> IdSource:
        return self.engine.ids

    @property
    def edit_headers(self) -> bool:
        return self.engine.edit_headers

    @edit_headers.setter
    def edit_headers(self, edit: bool) -> None:
        self.engine.edit_headers = edit

    @property
    def on_request_done(self) -> Callable[[RequestStats], None] | None:
        return self.engine.on_request_done

    @on_request_done.setter
    def on_request_done(self, callback: Callable[[RequestStats], None] | None) -> None:
        self.engine.on_request_done = callback

    @property
    def overload(self) -> OverloadGuard | None:
        """The process's overload guard, set by the wiring: while ``shedding``, new requests get its 503; while
        ``refusing``, new connections too (one attribute read per request and per connection)."""
        return self.engine.overload

    @overload.setter
    def overload(self, guard: OverloadGuard | None) -> None:
        self.engine.overload = guard

    @property
    def draining(self) -> bool:
        return self.engine.draining

    @draining.setter
    def draining(self, draining: bool) -> None:
        self.engine.draining = draining

    def displace_idle(self) -> bool:
        """Close one connection with no request in flight and no head started; False if there is none.

        At ``max_connections`` a new connection is worth more than an idle one: the idle client has nothing
        in flight and reconnects, as keep-alive clients must anyway, while refusing the new one would let a
        client holding that many idle sockets deny the listener to every other (nginx reuses idle keep-alive
        connections the same way). Connections in the middle of a head are not idle: the header timeout
        bounds them.
        """
        for conn in self.connections:
            if conn.idle:
                self.connections.discard(conn)
                self.displaced += 1
                conn.close()
                return True
        return False

    def start_h2c(self, transport: asyncio.Transport, first: bytes, info: ConnectionInfo) -> None:
        """Serve an accepted connection as HTTP/2: its first bytes were the preface."""
        from sidecar.proxy.h2down import H2Downstream  # HTTP/2 (h2, our HPACK) loaded with the first h2c client
        conn = H2Downstream(self, asyncio.get_running_loop(), transport, info)
        conn.data_received(first)

    def serve_h2(self, transport: asyncio.Transport, info: ConnectionInfo) -> asyncio.Protocol:
        """Serve a connection that chose HTTP/2 in its TLS handshake (ALPN ``h2``): the protocol that now owns
        the transport. Admitted as an HTTP/1.1 connection is; one refused (overload, ``max_connections`` with
        no idle connection to displace) gets a GOAWAY that took no stream (the caller's sidecar retries
        elsewhere) and is closed."""
        from sidecar.proxy.h2down import H2Downstream
        engine = self.engine
        overload = engine.overload
        refused = overload is not None and overload.refusing
        if refused:
            assert overload is not None
            overload.refuse(engine.name)   # counted as the guard counts every refused connection
        elif len(self.connections) >= engine.limits.max_connections and not self.displace_idle():
            self.rejected += 1
            refused = True
        if not refused:
            self.accepted += 1
        transport.set_write_buffer_limits(engine.limits.high_water, engine.limits.low_water)
        conn = H2Downstream(self, asyncio.get_running_loop(), transport, info)
        if refused:
            conn.drain()
        return conn

    def add_connection(self, conn: H2Downstream) -> None:
        self.connections.add(conn)
        self.h2_connections.add(conn)

    def drop_connection(self, conn: H2Downstream) -> None:
        self.connections.discard(conn)
        self.h2_connections.discard(conn)

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                     backlog: int = 1024) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: DownstreamProtocol(self, loop), host, port, ssl=ssl_context,
                                          backlog=backlog)
        self._servers.append(server)
        return server

    def protocol(self) -> asyncio.Protocol:
        """A client-side protocol for a connection accepted elsewhere (the mesh's inbound listener runs the
        mTLS handshake itself, then hands the TLS transport over with ``transport.set_protocol``)."""
        return DownstreamProtocol(self, asyncio.get_running_loop())

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    def goaway(self) -> None:
        """GOAWAY to every open HTTP/2 connection: its streams finish, its client opens new ones elsewhere or on a
        new connection, which the listener still accepts (Envoy's drain: clients move off before the close)."""
        for h2 in list(self.h2_connections):
            h2.drain()

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` seconds, then cut the rest."""
        self.draining = True
        for server in self._servers:
            server.close()
        self.goaway()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._own_pools:
            self.pools.close()
