"""The inbound listener: peer sidecars only, over mutual TLS; each connection carries HTTP/2, HTTP/1.1 or one raw
tunnel.

Theory of operation
-------------------
Sockets are accepted raw and the handshake is run by :func:`sidecar.tls.handshake.accept_socket`, which
logs and counts every refusal with a reason a person can act on (``create_server(ssl=...)`` would swallow
them). A connection must send its first bytes within ``hello_timeout`` (3 s) and finish the handshake
within ``handshake_timeout`` (10 s); handshakes in progress are held in :class:`sidecar.tls.slots.HandshakeSlots`,
which always takes a new connection and closes the oldest pending handshake of the source holding the most to
make room, so idle connections from a few hosts cannot lock real peers out (each closure is counted in ``shed``
and logged through the refusal log, a line per host and kind now and then).

The protocol ``accept_socket`` is given is a switch: when the handshake completes, ALPN says what the connection
carries and the switch hands the TLS transport (``transport.set_protocol``) to

* the HTTP engine's HTTP/2 side (ALPN ``h2``; :meth:`sidecar.proxy.HttpProxy.serve_h2`): many requests at once
  on one connection, each stream routed, authorized and recorded as an HTTP/1.1 request is; closing the
  listener (drain) sends GOAWAY, so streams open finish and the caller opens new ones elsewhere,
* the HTTP engine's HTTP/1.1 client-side protocol (ALPN ``http/1.1``, or none offered), or
* a tunnel header reader (ALPN ``sidecar-tcp/1``): one line, ``sidecar-tcp/1 SERVICE [TAG]\\n``, names the
  target service; then the bytes are relayed to that service's app as they are (a ``protocol: tcp`` upstream).

The protocol may see bytes before ``accept_socket`` has checked the caller's SPIFFE ID, so the routes
(:mod:`sidecar.mesh.inbound_routes`) check the caller too, once per connection (kept in ``ConnectionInfo.data``):
nothing is forwarded for a caller that is not verified.

A request names its service by ``Host`` (as the caller's app wrote it). A caller's sidecar names the service in
its SNI too, which picks the certificate we answer with (one per hosted service, see
:func:`sidecar.tls.context.sni_selector`); such a connection carries requests for that service only. The service
must be registered on this node; the caller's service (from its certificate) must be allowed by
``authorization`` for the method and path (tunnels: method ``CONNECT``, path ``""``); then the request goes to
the app in plain HTTP with ``x-sidecar-caller: spiffe://...`` set (any such header from the caller is removed first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from sidecar.clock import Clock
from sidecar.mesh.inbound_routes import CALLER_KEY
from sidecar.mesh.tunnel_header import TunnelHeaderError, decode_tunnel_header
from sidecar.proxy import ConnectionInfo, HttpProxy, TcpRelay
from sidecar.tls.context import ALPN_H2, ALPN_TCP_TUNNEL
from sidecar.tls.errors import PeerRefused
from sidecar.tls.handshake import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HELLO_TIMEOUT,
    accept_socket,
    accepted,
    listening_socket,
    peer_text,
)
from sidecar.tls.identity import PeerIdentity
from sidecar.tls.reasons import Refusal, RefusalReason
from sidecar.tls.reloader import IdentityStore
from sidecar.tls.slots import HandshakeSlots, source_of

log = logging.getLogger("sidecar.mesh")


class _Switch(asyncio.Protocol):
    """Lives from the end of the handshake to the first call: hands the transport to what ALPN names."""

    __slots__ = ("delegate", "listener")

    def __init__(self, listener: InboundListener) -> None:
        self.listener = listener
        self.delegate: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        http = self.listener.http
        if alpn == ALPN_H2:
            # the client's first bytes are the HTTP/2 preface (ALPN said so): no sniffing
            info = ConnectionInfo(http.name, transport.get_extra_info("peername"),
                                  transport.get_extra_info("sockname"), ssl_object)
            self.delegate = http.serve_h2(cast(asyncio.Transport, transport), info)
            return
        delegate = _TunnelHeaderReader(self.listener) if alpn == ALPN_TCP_TUNNEL else http.protocol()
        self.delegate = delegate
        transport.set_protocol(delegate)
        delegate.connection_made(transport)

    def verified(self, identity: PeerIdentity) -> None:
        """``accept_socket`` checked the caller: routes need not check again."""
        info = getattr(self.delegate, "info", None)
        if isinstance(info, ConnectionInfo):
            info.data.setdefault(CALLER_KEY, identity)
        elif isinstance(self.delegate, _TunnelHeaderReader):
            self.delegate.caller = identity

    # only reached if a transport calls back before set_protocol took effect
    def data_received(self, data: bytes) -> None:
        if self.delegate is not None:
            self.delegate.data_received(data)

    def eof_received(self) -> bool | None:
        return self.delegate.eof_received() if self.delegate is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.delegate is not None:
            self.delegate.connection_lost(exc)


class _TunnelHeaderReader(asyncio.Protocol):
    """Reads the tunnel header line, then gives the connection to the tunnel relay."""

    def __init__(self, listener: InboundListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.caller: PeerIdentity | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.listener.header_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self.done or self.transport is None:
            return
        self.buffer += data
        try:
            parsed = decode_tunnel_header(self.buffer)
        except TunnelHeaderError as exc:
            self._refuse(str(exc))
            return
        if parsed is None:
            return
        name, rest = parsed
        self.done = True
        self._cancel_timer()
        self.buffer = b""
        data_for_relay: dict[str, Any] = {"service": name}
        if self.caller is not None:
            data_for_relay[CALLER_KEY] = self.caller
        relay = self.listener.tunnels.protocol(data_for_relay)
        transport = self.transport
        transport.set_protocol(relay)
        relay.connection_made(transport)
        if rest:
            relay.data_received(rest)

    def eof_received(self) -> bool | None:
        if not self.done:
            self._refuse("connection closed before the tunnel header")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _too_slow(self) -> None:
        self.timer = None
        if not self.done:
            self._refuse(f"no tunnel header within {self.listener.header_timeout:.1f}s")

    def _refuse(self, reason: str) -> None:
        self.done = True
        self._cancel_timer()
        self.listener.tunnel_refused += 1
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.warning("inbound tunnel from %s refused: %s", peer, reason)
        if self.transport is not None:
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _peer_of(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return None


class InboundListener:
    """Accepts peer sidecars: mTLS handshake (refusals logged and counted by the store's RefusalLog), then
    HTTP through ``http`` or raw tunnels through ``tunnels``."""

    def __init__(self, store: IdentityStore, http: HttpProxy, tunnels: TcpRelay, clock: Clock, *,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT, hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
                 header_timeout: float = 10.0, max_handshakes: int = 512, max_handshakes_per_source: int = 128,
                 backlog: int = 1024) -> None:
        self.store = store
        self.http = http
        self.tunnels = tunnels
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.hello_timeout = hello_timeout
        self.header_timeout = header_timeout
        # handshakes in progress: a new connection is always taken, the oldest of the busiest source closed
        # to make room (sidecar.tls.slots)
        self.slots: HandshakeSlots[asyncio.Task[None]] = HandshakeSlots(max_handshakes, max_handshakes_per_source)
        self.backlog = backlog
        self.handshakes: Counter[str] = Counter()  # verified connections by caller SPIFFE ID
        self.serials: dict[str, str] = {}            # caller SPIFFE ID -> serial of its latest certificate
        self.refused = 0                             # handshakes refused (the reasons are in store.refusals)
        self.shed = 0                                # handshakes closed to make room (slots.evicted)
        self.tunnel_refused = 0                      # tunnels with a bad or missing header
        self.on_verified: Callable[[PeerIdentity], None] | None = None
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pending: dict[asyncio.Task[None], str] = {}              # handshakes in progress -> peer
        self._unstarted: dict[asyncio.Task[None], socket.socket] = {}   # handshakes not yet begun

    async def start(self, host: str, port: int) -> tuple[str, int]:
        sock = listening_socket(host, port, self.backlog)
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(sock))
        bound_host, bound_port = sock.getsockname()[:2]
        return str(bound_host), int(bound_port)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        async for sock in accepted(listener, "the inbound listener", self.clock):
            address = _peer_of(sock)
            host = str(address[0]) if isinstance(address, tuple) and address else "unknown"
            task = loop.create_task(self._handshake(sock))
            self._pending[task] = peer_text(address)
            self._unstarted[task] = sock
            task.add_done_callback(self._handshake_done)
            for victim in self.slots.admit(task, source_of(host)):
                self._evict(victim)

    def _handshake_done(self, task: asyncio.Task[None]) -> None:
        self._pending.pop(task, None)
        self.slots.done(task)
        sock = self._unstarted.pop(task, None)
        if sock is not None:   # cancelled before it ran: the socket is still ours alone
            sock.close()

    def _evict(self, victim: asyncio.Task[None]) -> None:
        """Close a pending handshake to make room (the task closes its socket when cancelled); logged through the
        refusal log, one line per host and a while."""
        self.shed += 1
        victim.cancel()
        slots = self.slots
        reason = RefusalReason(Refusal.EVICTED, f"handshake not done, closed to make room for a new connection"
                                                f" ({len(slots)} pending: at most {slots.max_pending},"
                                                f" {slots.max_per_source} from one source)")
        self.store.refusals.record(self._pending.get(victim, "unknown peer"), reason, self.clock.wall())

    async def _handshake(self, sock: socket.socket) -> None:
        # from here accept_socket owns the socket: it closes it when refused or cancelled
        self._unstarted.pop(cast(asyncio.Task[None], asyncio.current_task()), None)
        try:
            _, switch, identity = await accept_socket(
                sock, lambda: _Switch(self), self.store.server_context, self.store.trust_domain,
                refusals=self.store.refusals, timeout=self.handshake_timeout, hello_timeout=self.hello_timeout,
                clock=self.clock)
        except PeerRefused:
            self.refused += 1
            return
        switch.verified(identity)
        self.handshakes[identity.spiffe_id] += 1
        self.serials[identity.spiffe_id] = identity.serial_hex
        if self.on_verified is not None:
            self.on_verified(identity)

    def drain(self) -> None:
        """GOAWAY to the peers' HTTP/2 connections, so they move to other instances; still accepting."""
        self.http.goaway()

    async def close(self, grace: float) -> None:
        """Stop accepting, drop handshakes in progress, let requests in flight end within ``grace``."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=1.0)
        await asyncio.gather(self.http.close(grace), self.tunnels.close())

