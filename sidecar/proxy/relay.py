"""The plain TCP relay (``protocol: tcp`` upstreams, gRPC among them).

Each relayed connection is a :class:`~sidecar.proxy.tunnel.Tunnel` between the client's transport and one
dialed (:func:`~sidecar.proxy.connector.dial`) to the upstream.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sidecar.proxy.connector import dial
from sidecar.proxy.limits import DEFAULT_PROXY_LIMITS, ProxyLimits
from sidecar.proxy.target import ConnectionInfo, Target
from sidecar.proxy.tunnel import Tunnel

if TYPE_CHECKING:
    from sidecar.overload.guard import OverloadGuard

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ TCP relay


ConnectFn = Callable[[ConnectionInfo], Target | Awaitable[Target]]


@dataclass(frozen=True, slots=True)
class RelayStats:
    """One finished relayed connection."""

    upstream: str | None
    bytes_up: int
    bytes_down: int
    started: float
    ended: float
    error: str | None                 # "connect-failure: ..." when the upstream could not be reached
    tag: Any = None


class _RelayServerSide(asyncio.Protocol):
    """The dialed connection of a TCP relay."""

    def __init__(self) -> None:
        self.tunnel: Tunnel | None = None
        self.early: list[bytes] = []
        self.early_eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_server(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.server_eof()
        self.early_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.tunnel is not None:
            self.tunnel.server_lost(exc)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_client(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_client(False)


class _RelayClientSide(asyncio.Protocol):
    """An accepted connection of a TCP relay: paused until the upstream is dialed, then spliced to it."""

    def __init__(self, relay: TcpRelay, data: dict[str, Any] | None = None) -> None:
        self.relay = relay
        self.data = data
        self.transport: asyncio.Transport | None = None
        self.tunnel: Tunnel | None = None
        self.early: list[bytes] = []
        self.early_eof = False
        self.lost = False
        self.started = 0.0
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        relay = self.relay
        overload = relay.overload
        if overload is not None and overload.shedding:
            overload.shed(relay.name)
            relay.rejected += 1
            transport.abort()
            return
        if len(relay.connections) >= relay.limits.max_connections:
            relay.rejected += 1
            transport.abort()
            return
        relay.connections.add(self)
        transport.set_write_buffer_limits(relay.limits.high_water, relay.limits.low_water)
        transport.pause_reading()
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self.task = loop.create_task(self._start())

    async def _start(self) -> None:
        assert self.transport is not None
        relay = self.relay
        transport = self.transport
        info = ConnectionInfo(relay.name, transport.get_extra_info("peername"), transport.get_extra_info("sockname"),
                              transport.get_extra_info("ssl_object"))
        if self.data:
            info.data.update(self.data)
        target: Target | None = None
        try:
            result = relay.connect(info)
            target = await result if inspect.isawaitable(result) else result
            assert isinstance(target, Target)
            server_transport, server = await dial(target, _RelayServerSide, relay.limits_connect_timeout,
                                                  relay.sessions.get(target.key))
            if relay.preamble is not None:
                server_transport.write(relay.preamble(target, info))
        except Exception as e:
            log.info("tcp relay %s: %s", relay.name, e)
            relay.failed += 1
            transport.abort()
            relay.connections.discard(self)
            relay.report(RelayStats(None if target is None else target.authority, 0, 0, self.started,
                                    asyncio.get_running_loop().time(), f"connect-failure: {e}",
                                    None if target is None else target.tag))
            return
        if self.lost:
            server_transport.close()
            relay.connections.discard(self)
            return
        server_transport.set_write_buffer_limits(relay.limits.high_water, relay.limits.low_water)
        authority, tag = target.authority, target.tag

        def done(tunnel: Tunnel) -> None:
            relay.connections.discard(self)
            ssl_object = server_transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.session is not None:
                relay.sessions[target.key] = ssl_object.session
            relay.report(RelayStats(authority, tunnel.bytes_up, tunnel.bytes_down, self.started,
                                    asyncio.get_running_loop().time(), None, tag))

        tunnel = self.tunnel = server.tunnel = Tunnel(transport, server_transport, done)
        for data in server.early:
            tunnel.from_server(data)
        for data in self.early:
            tunnel.from_client(data)
        if server.lost:
            tunnel.close()
            return
        if server.early_eof and not tunnel.server_eof():
            return
        if self.early_eof and not tunnel.client_eof():
            return
        transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.client_eof()
        self.early_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.tunnel is not None:
            self.tunnel.client_lost(exc)
        else:
            self.relay.connections.discard(self)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_server(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_server(False)

    def close(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
        elif self.transport is not None:
            self.transport.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class TcpRelay:
    """Accepts TCP (or TLS) connections and splices each to a new connection to ``connect(info)``'s target.

    ``connect`` may raise to refuse a connection (it is closed at once). ``on_connection_done`` gets a
    :class:`RelayStats` per connection. ``preamble(target, info)``, when given, returns bytes written to each
    dialed connection before any of the client's (the mesh's tunnel header).
    """

    def __init__(self, connect: ConnectFn, *, name: str = "tcp", limits: ProxyLimits = DEFAULT_PROXY_LIMITS,
                 connect_timeout: float = 5.0,
                 on_connection_done: Callable[[RelayStats], None] | None = None,
                 preamble: Callable[[Target, ConnectionInfo], bytes] | None = None) -> None:
        self.connect = connect
        self.preamble = preamble
        self.name = name
        self.limits = limits
        self.limits_connect_timeout = connect_timeout
        self.on_connection_done = on_connection_done
        self.connections: set[_RelayClientSide] = set()
        self.sessions: dict[Hashable, ssl.SSLSession] = {}
        self.rejected = 0
        self.failed = 0
        self._servers: list[asyncio.Server] = []
        # the process's overload guard, set by the wiring: while it sheds, new connections are closed at once (a
        # tunnel has no request to answer 503 on); connections already relaying go on
        self.overload: OverloadGuard | None = None

    def report(self, stats: RelayStats) -> None:
        if self.on_connection_done is not None:
            try:
                self.on_connection_done(stats)
            except Exception:
                log.exception("on_connection_done failed")

    def protocol(self, data: dict[str, Any] | None = None) -> asyncio.Protocol:
        """A client-side protocol for a connection accepted elsewhere; ``data`` goes into the
        :class:`ConnectionInfo` that ``connect`` gets (e.g. the service a tunnel header named)."""
        return _RelayClientSide(self, data)

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                     backlog: int = 1024) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _RelayClientSide(self), host, port, ssl=ssl_context,
                                          backlog=backlog)
        self._servers.append(server)
        return server

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
