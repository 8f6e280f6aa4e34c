"""The inbound listener: peer sidecars only, over mutual TLS; each connection carries HTTP/1.1 or one raw tunnel.

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

* the HTTP engine's client-side protocol (ALPN ``http/1.1``, or none offered), or
* a tunnel header reader (ALPN ``sidecar-tcp/1``): one line, ``sidecar-tcp/1 SERVICE [TAG]\\n``, names the
  target service; then the bytes are relayed to that service's app as they are (a ``protocol: tcp`` upstream).

The protocol may see bytes before ``accept_socket`` has checked the caller's SPIFFE ID, so the routes check
the caller too, once per connection (kept in ``ConnectionInfo.data``): nothing is forwarded for a caller
that is not verified.

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
from dataclasses import dataclass
from typing import Any, cast

from sidecar.catalog.model import HealthStatus
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import Clock
from sidecar.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from sidecar.mesh.authorization import AccessDecision, Authorizer
from sidecar.mesh.naming import ServiceName, parse_service
from sidecar.mesh.stats import MeshStats
from sidecar.proxy import ConnectionInfo, HttpProxy, RequestHead, Target, TcpRelay
from sidecar.proxy.h2up import H2cKey
from sidecar.tls.context import ALPN_TCP_TUNNEL, selected_service
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

CALLER_HEADER = b"x-sidecar-caller"
TOPIC_HEADER = b"x-sidecar-topic"  # a push delivery of a published message names its topic
INTERNAL_PREFIX = b"/.sidecar/"  # paths between sidecars (messaging deliveries); never an app's
TUNNEL_MAGIC = b"sidecar-tcp/1"
# a service name and a tag are DNS labels: a header line longer than this is not ours
MAX_TUNNEL_HEADER = 256
_CALLER = "caller"
_CALLER_VALUE = "caller-header"


# ------------------------------------------------------------------------------------------ the tunnel header


class TunnelHeaderError(ValueError):
    """The first line of a tunnel is not ``sidecar-tcp/1 SERVICE [TAG]``."""


def encode_tunnel_header(name: ServiceName) -> bytes:
    """The line a tunnel starts with, naming the service (and tag) its bytes are for."""
    tag = b"" if name.tag is None else b" " + name.tag.encode("ascii")
    return TUNNEL_MAGIC + b" " + name.service.encode("ascii") + tag + b"\n"


def decode_tunnel_header(buffer: bytes) -> tuple[ServiceName, bytes] | None:
    """``(name, rest)`` once ``buffer`` holds the whole header line, None while it may still come;
    :class:`TunnelHeaderError` when it is not a tunnel header."""
    end = buffer.find(b"\n")
    if end < 0:
        if len(buffer) > MAX_TUNNEL_HEADER:
            raise TunnelHeaderError(f"no tunnel header line within {MAX_TUNNEL_HEADER} bytes")
        return None
    if end > MAX_TUNNEL_HEADER:
        raise TunnelHeaderError(f"tunnel header line longer than {MAX_TUNNEL_HEADER} bytes")
    words = buffer[:end].rstrip(b"\r").split(b" ")
    if len(words) not in (2, 3) or words[0] != TUNNEL_MAGIC or not all(words[1:]):
        raise TunnelHeaderError(f"not a tunnel header: {buffer[:min(end, 64)]!r}")
    try:
        service = words[1].decode("ascii").lower()
        tag = words[2].decode("ascii").lower() if len(words) == 3 else None
    except UnicodeDecodeError:
        raise TunnelHeaderError("tunnel header is not ASCII") from None
    return ServiceName(service, tag), buffer[end + 1:]


# ------------------------------------------------------------------------------------------ small caches


class Names:
    """``parse_service`` with a bounded cache: a client sends the same few Host values again and again."""

    __slots__ = ("_cache", "_domain", "_max")

    def __init__(self, domain: str, max_entries: int = 4096) -> None:
        self._domain = domain
        self._cache: dict[str, ServiceName | None] = {}
        self._max = max_entries

    def parse(self, host: str) -> ServiceName | None:
        try:
            return self._cache[host]
        except KeyError:
            pass
        name = parse_service(host, self._domain)
        if len(self._cache) >= self._max:
            self._cache.clear()  # a client spraying Host values costs a re-parse, never memory
        self._cache[host] = name
        return name


class Decisions:
    """:class:`Authorizer` with a bounded cache of its answers (a pure function of its four inputs)."""

    __slots__ = ("_cache", "_max", "authorizer")

    def __init__(self, authorizer: Authorizer, max_entries: int = 8192) -> None:
        self.authorizer = authorizer
        self._cache: dict[tuple[str, str, str, str], AccessDecision] = {}
        self._max = max_entries

    def decide(self, caller: str, service: str, method: str, path: str) -> AccessDecision:
        key = (caller, service, method, path)
        found = self._cache.get(key)
        if found is None:
            found = self.authorizer.decide(caller, service, method, path)
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = found
        return found


def refuse_internal(head: RequestHead) -> None:
    """Outbound: paths under ``/.sidecar/`` are for peer sidecars only; an app that sends one through its own
    sidecar would otherwise reach a peer's internal receiver with this sidecar's identity."""
    if head.target.startswith(INTERNAL_PREFIX):
        raise PermissionDenied(f"{head.path} is sidecar-internal: apps cannot call paths under /.sidecar/",
                               {"path": head.path})


def no_service_named(host: str) -> InvalidArgument:
    return InvalidArgument(
        f"Host {host!r} names no service: use Host: SERVICE or SERVICE.service.DOMAIN, "
        "or http://SERVICE/path with this listener as HTTP proxy", {"host": host})


# ------------------------------------------------------------------------------------------ local apps


@dataclass(frozen=True, slots=True)
class LocalApp:
    """One app instance on this node, as the inbound route's Target.tag."""

    service: str
    instance: str
    status: HealthStatus


@dataclass(frozen=True, slots=True)
class _LocalSet:
    healthy: tuple[Target, ...]
    degraded: tuple[Target, ...]
    unhealthy: int


class LocalServices:
    """The apps registered on this node by service name (and tag), as Targets; rebuilt when the registry
    changes. Healthy instances first; degraded only when none is healthy; unhealthy never."""

    __slots__ = ("_names", "_sets", "_targets", "_turn", "_version", "node", "registry")

    def __init__(self, registry: LocalRegistry) -> None:
        self.registry = registry
        self.node = registry.node
        self._version = -1
        self._sets: dict[ServiceName, _LocalSet] = {}
        self._names: frozenset[str] = frozenset()
        self._targets: dict[tuple[str, int, str], Target] = {}
        self._turn = 0

    def _fresh(self) -> None:
        if self.registry.version != self._version:
            self._version = self.registry.version
            self._sets = {}
            self._names = frozenset(entry.spec.name for entry in self.registry.services.values())

    def known(self, service: str) -> bool:
        """Whether any instance of ``service`` is registered here, whatever its health."""
        self._fresh()
        return service in self._names

    def pick(self, name: ServiceName) -> Target:
        """A Target for one request or tunnel; NotFound when not registered here, Unavailable when unhealthy."""
        self._fresh()
        found = self._sets.get(name)
        if found is None:
            found = self._sets[name] = self._build(name)
        usable = found.healthy or found.degraded
        if not usable:
            if found.unhealthy:
                raise Unavailable(f"{name.service} is registered on node {self.node} but unhealthy",
                                  {"service": name.service, "node": self.node, "unhealthy": found.unhealthy})
            where = f"{name.service} with tag {name.tag!r}" if name.tag and self.known(name.service) else name.service
            raise NotFound(f"{where} is not registered on node {self.node}",
                           {"service": name.service, "node": self.node})
        if len(usable) == 1:
            return usable[0]
        self._turn += 1
        return usable[self._turn % len(usable)]

    def _build(self, name: ServiceName) -> _LocalSet:
        healthy: list[Target] = []
        degraded: list[Target] = []
        unhealthy = 0
        for entry in self.registry.services.values():
            meta = entry.metadata
            if meta.name != name.service or (name.tag is not None and name.tag not in meta.tags):
                continue
            if meta.status is HealthStatus.UNHEALTHY:
                unhealthy += 1
                continue
            key = (entry.spec.host, entry.spec.port, meta.id)
            target = self._targets.get(key)
            spec = entry.spec
            if target is None or target.tag.status is not meta.status or (target.pool_key is not None) != spec.h2c:
                # an h2c app (protocol grpc or http2) gets its own pool of multiplexed HTTP/2 connections
                target = self._targets[key] = Target((spec.host, spec.port),
                                                     pool_key=H2cKey(spec.host, spec.port) if spec.h2c else None,
                                                     tag=LocalApp(meta.name, meta.id, meta.status))
            (healthy if meta.status is HealthStatus.HEALTHY else degraded).append(target)
        return _LocalSet(tuple(healthy), tuple(degraded), unhealthy)


# ------------------------------------------------------------------------------------------ the routes


class InboundRoutes:
    """The inbound route callbacks: who calls (verified once per connection), which local app, may it."""

    def __init__(self, store: IdentityStore, local: LocalServices, decisions: Decisions, names: Names,
                 stats: MeshStats) -> None:
        self.store = store
        self.local = local
        self.decisions = decisions
        self.names = names
        self.stats = stats
        # sidecar-internal requests (path under INTERNAL_PREFIX) from verified peers: messaging's receiver
        # (wire: ``dataplane.routes.internal = messaging.internal_route``); never routed to an app. It is given
        # the authorization check, to apply to the local services the request is for
        self.internal: Callable[[RequestHead, PeerIdentity, Callable[[PeerIdentity, str, str, str], None]],
                                Target] | None = None
        # topic scopes, when any topic is scoped (wire: ``routes.may_publish = messaging.scopes.may_publish``): a
        # request that says it delivers a topic (x-sidecar-topic) must come from a service that may publish it
        self.may_publish: Callable[[str, str], bool] | None = None

    def caller(self, conn: ConnectionInfo) -> PeerIdentity:
        data = conn.data
        caller = data.get(_CALLER)
        if caller is None:
            if conn.ssl_object is None:
                raise Unauthenticated("peer presented no client certificate")
            try:
                caller = self.store.verify_peer(conn.ssl_object)
            except PeerRefused as exc:
                raise Unauthenticated(exc.reason.message, {"reason": exc.reason.kind.value}) from None
            data[_CALLER] = caller
        return cast(PeerIdentity, caller)

    def _authorize(self, caller: PeerIdentity, service: str, method: str, path: str) -> None:
        decision = self.decisions.decide(caller.service, service, method, path)
        if not decision.allowed:
            self.stats.denied(service, caller.service, decision.rule or "authorization")
            raise PermissionDenied(
                f"{caller.service} may not call {service}: {decision.reason}",
                {"rule": decision.rule, "caller": caller.spiffe_id, "service": service, "method": method,
                 "path": path})

    def http(self, head: RequestHead, conn: ConnectionInfo) -> Target:
        caller = self.caller(conn)
        if head.target.startswith(INTERNAL_PREFIX):
            if self.internal is None:
                raise NotFound(f"no such sidecar-internal resource: {head.path}", {"path": head.path})
            return self.internal(head, caller, self._authorize)
        name = self.names.parse(head.host)
        if name is None:
            raise no_service_named(head.host)
        _require_selected(conn, name)
        # 404, then 403, then 503: which services live here is no secret, their health is the callers' business
        self._require_registered(name)
        self._authorize(caller, name.service, head.method, head.path)
        if self.may_publish is not None:
            self._check_topic(caller, head)
        target = self.local.pick(name)
        value = conn.data.get(_CALLER_VALUE)
        if value is None:
            value = conn.data[_CALLER_VALUE] = caller.spiffe_id.encode("latin-1")
        set_caller(head, value)
        return target

    def _check_topic(self, caller: PeerIdentity, head: RequestHead) -> None:
        may_publish = self.may_publish
        topic = head.headers.get(TOPIC_HEADER)
        if topic is not None and may_publish is not None and not may_publish(caller.service, topic):
            raise PermissionDenied(f"{caller.service} may not publish to {topic}: the topic's scope does not list it",
                                   {"caller": caller.spiffe_id, "topic": topic, "header": TOPIC_HEADER.decode()})

    def tunnel(self, info: ConnectionInfo) -> Target:
        caller = self.caller(info)
        name: ServiceName = info.data["service"]
        _require_selected(info, name)
        self._require_registered(name)
        self._authorize(caller, name.service, "CONNECT", "")
        return self.local.pick(name)

    def _require_registered(self, name: ServiceName) -> None:
        if not self.local.known(name.service):
            raise NotFound(f"{name.service} is not registered on node {self.local.node}",
                           {"service": name.service, "node": self.local.node})


def _require_selected(conn: ConnectionInfo, name: ServiceName) -> None:
    """A connection whose SNI named a service (the caller checked our certificate for it) carries that service's
    requests only; one that named none (``openssl s_client``, node-level dials) goes by Host alone."""
    selected = selected_service(conn.ssl_object)
    if selected is not None and selected != name.service.lower():
        raise InvalidArgument(f"this connection was opened for {selected} (TLS server name); {name.service} needs its"
                              " own connection", {"service": name.service, "connection": selected})


def set_caller(head: RequestHead, value: bytes | None) -> None:
    """Remove every ``x-sidecar-caller`` the client sent; add ours when ``value`` is given."""
    items = head.headers.items
    for item in items:
        if item[0] == CALLER_HEADER:
            items = head.headers.items = [i for i in items if i[0] != CALLER_HEADER]
            break
    if value is not None:
        items.append((CALLER_HEADER, CALLER_HEADER, value))


# ------------------------------------------------------------------------------------------ the listener


class _Switch(asyncio.Protocol):
    """Lives from the end of the handshake to the first call: hands the transport to what ALPN names."""

    __slots__ = ("delegate", "listener")

    def __init__(self, listener: InboundListener) -> None:
        self.listener = listener
        self.delegate: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        tunnel = alpn == ALPN_TCP_TUNNEL
        delegate = _TunnelHeaderReader(self.listener) if tunnel else self.listener.http.protocol()
        self.delegate = delegate
        transport.set_protocol(delegate)
        delegate.connection_made(transport)

    def verified(self, identity: PeerIdentity) -> None:
        """``accept_socket`` checked the caller: routes need not check again."""
        info = getattr(self.delegate, "info", None)
        if isinstance(info, ConnectionInfo):
            info.data.setdefault(_CALLER, identity)
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
            data_for_relay[_CALLER] = self.caller
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
