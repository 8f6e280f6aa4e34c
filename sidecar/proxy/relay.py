"""Byte relays: the :class:`Tunnel` after an HTTP upgrade (WebSocket, h2c) and the plain TCP relay
(``protocol: tcp`` upstreams, gRPC among them).

A tunnel splices two transports: bytes from one are written to the other; when one side's write buffer
is above its high-water mark the other side stops being read (flat memory whatever the speeds); an EOF
from one side is passed on as a half-close where the transport can (plain TCP), so request-then-shutdown
protocols work; when both directions are done, or either side is lost, both are closed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sidecar.proxy.limits import DEFAULT_PROXY_LIMITS, ProxyLimits
from sidecar.proxy.pool import dial
from sidecar.proxy.target import ConnectionInfo, Target

if TYPE_CHECKING:
    from sidecar.overload.guard import OverloadGuard

log = logging.getLogger(__name__)


class Tunnel:
    __slots__ = ("_client_paused", "_on_done", "_server_paused", "bytes_down", "bytes_up", "client", "client_eof_seen",
                 "done", "server", "server_eof_seen")

    def __init__(self, client: asyncio.Transport, server: asyncio.Transport,
                 on_done: Callable[[Tunnel], None] | None = None) -> None:
        self.client = client
        self.server = server
        self._on_done = on_done
        self.bytes_up = 0             # client to server
        self.bytes_down = 0           # server to client
        self.client_eof_seen = False
        self.server_eof_seen = False
        self._client_paused = False
        self._server_paused = False
        self.done = False

    def from_client(self, data: bytes) -> None:
        self.bytes_up += len(data)
        if not self.server.is_closing():
            self.server.write(data)

    def from_server(self, data: bytes) -> None:
        self.bytes_down += len(data)
        if not self.client.is_closing():
            self.client.write(data)

    def client_eof(self) -> bool:
        self.client_eof_seen = True
        return self._half_close(self.server, self.server_eof_seen)

    def server_eof(self) -> bool:
        self.server_eof_seen = True
        return self._half_close(self.client, self.client_eof_seen)

    def _half_close(self, other: asyncio.Transport, other_done: bool) -> bool:
        if other_done or not other.can_write_eof():
            self.close()
            return False
        other.write_eof()
        return True

    def client_lost(self, exc: BaseException | None) -> None:
        self.close(abort=exc is not None)

    def server_lost(self, exc: BaseException | None) -> None:
        self.close(abort=exc is not None)

    def pause_client(self, paused: bool) -> None:
        """Stop or resume reading the client (the server's write buffer is full or drained)."""
        if paused != self._client_paused and not self.client.is_closing():
            self._client_paused = paused
            if paused:
                self.client.pause_reading()
            else:
                self.client.resume_reading()

    def pause_server(self, paused: bool) -> None:
        if paused != self._server_paused and not self.server.is_closing():
            self._server_paused = paused
            if paused:
                self.server.pause_reading()
            else:
                self.server.resume_reading()

    def close(self, abort: bool = False) -> None:
        if self.done:
            return
        self.done = True
        for transport in (self.client, self.server):
            if abort:
                transport.abort()
            else:
                transport.close()  # writes what is buffered first
        if self._on_done is not None:
            self._on_done(self)


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
