"""The asyncio side of mTLS: run a handshake on an accepted or dialed connection, verify the peer, and log
every refusal with its reason and the peer's address.

The inbound listener accepts raw sockets and runs the handshake itself, through :func:`serve` (streams)
or :func:`accept_socket` (any protocol), rather than passing ``ssl=`` to ``create_server``: asyncio and
uvloop drop the exception of a failed server-side handshake silently, so the reason could not be logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.tls.context import peer_server_name, refusal_of, verify_peer
from sidecar.tls.errors import PeerRefused
from sidecar.tls.identity import PeerIdentity
from sidecar.tls.reasons import Refusal, RefusalReason

log = logging.getLogger("sidecar.tls")
P = TypeVar("P", bound=asyncio.BaseProtocol)

# a handshake is a few round trips; a peer that needs longer is stuck or hostile (Envoy's
# transport_socket_connect_timeout defaults to 10s as well)
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# a client speaks first in TLS: its ClientHello leaves as soon as the TCP connection is up, one round trip at most
# on a WAN; a connection silent this long is not a TLS client and would only hold a handshake slot
DEFAULT_HELLO_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class RefusalRecord:
    at: float  # epoch seconds
    peer: str
    kind: Refusal
    message: str


class RefusalLog:
    """Counts refusals by kind, keeps the latest ones, and logs each with the peer's address.

    A peer that retries a bad handshake in a loop would flood the log, so one line per (host, kind) is
    written per ``quiet_for`` seconds; the next line says how many were not logged in between.
    """

    def __init__(self, keep: int = 100, quiet_for: float = 10.0, logger: logging.Logger = log) -> None:
        self.counts: collections.Counter[Refusal] = collections.Counter()
        self.recent: collections.deque[RefusalRecord] = collections.deque(maxlen=keep)
        self._quiet_for = quiet_for
        self._logged_at: dict[tuple[str, Refusal], float] = {}
        self._suppressed: collections.Counter[tuple[str, Refusal]] = collections.Counter()
        self._logger = logger
        # called with every refusal, logged or not (a metrics counter, a test)
        self.on_record: Callable[[RefusalRecord], None] | None = None

    def record(self, peer: str, reason: RefusalReason, now: float, *, direction: str = "inbound") -> RefusalRecord:
        entry = RefusalRecord(now, peer, reason.kind, reason.message)
        self.counts[reason.kind] += 1
        self.recent.append(entry)
        if self.on_record is not None:
            self.on_record(entry)
        key = (_host_of(peer), reason.kind)
        last = self._logged_at.get(key)
        if last is not None and now - last < self._quiet_for:
            self._suppressed[key] += 1
            return entry
        more = self._suppressed.pop(key, 0)
        suffix = f" ({more} more like it in the last {now - last:.0f}s)" if more and last is not None else ""
        self._logged_at[key] = now
        if len(self._logged_at) > 4096:  # bounded: forget the oldest hosts
            oldest = min(self._logged_at, key=self._logged_at.__getitem__)
            self._logged_at.pop(oldest)
        self._logger.warning("refused %s mTLS connection %s %s: %s%s", direction,
                             "from" if direction == "inbound" else "to", peer, reason.message, suffix)
        return entry

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> dict[str, Any]:
        """For the admin port: counts by kind and the latest refusals."""
        return {
            "total": self.total,
            "by_reason": {kind.value: count for kind, count in sorted(self.counts.items(), key=lambda kv: kv[0].value)},
            "recent": [{"at": r.at, "peer": r.peer, "reason": r.kind.value, "message": r.message} for r in self.recent],
        }


def peer_text(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else "unknown peer"


def _host_of(peer: str) -> str:
    return peer.rsplit(":", 1)[0] if ":" in peer else peer


# ------------------------------------------------------------------------------------------ inbound


async def accept_socket(
    sock: socket.socket,
    protocol_factory: Callable[[], P],
    context: ssl.SSLContext,
    trust_domain: str,
    *,
    refusals: RefusalLog | None = None,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    hello_timeout: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[asyncio.Transport, P, PeerIdentity]:
    """TLS on an accepted socket; returns the TLS transport, the protocol and the client's identity.

    The protocol's ``connection_made`` runs when the handshake completes, just *before* the identity is
    checked: it must not forward anything until this function returns (a refused peer's transport is
    aborted, and ``connection_lost`` follows). On refusal the reason is logged and counted, and
    :class:`PeerRefused` raised. ``hello_timeout``: the client's first bytes must arrive this soon, or the
    socket is closed (refusal ``no-client-hello``). Cancelled, the socket is closed.
    """
    loop = asyncio.get_running_loop()
    peer = peer_text(_peername(sock))
    if hello_timeout is not None:
        try:
            spoke = await first_bytes(sock, hello_timeout)
        except BaseException:
            sock.close()
            raise
        if not spoke:
            sock.close()
            reason = RefusalReason(Refusal.NO_CLIENT_HELLO, f"no TLS ClientHello within {hello_timeout:g}s")
            if refusals is not None:
                refusals.record(peer, reason, clock.wall())
            raise PeerRefused(reason)
    protocol = protocol_factory()
    try:
        # uvloop returns its SSL protocol here, not ours: keep our own reference
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=context, ssl_handshake_timeout=timeout
        )
    except (ssl.SSLError, OSError, EOFError, TimeoutError) as exc:
        sock.close()
        raise _refused(exc, peer, trust_domain, refusals, clock) from None
    try:
        identity = verify_peer(transport.get_extra_info("ssl_object"), trust_domain, now=clock.wall())
    except PeerRefused as exc:
        transport.abort()
        raise _refused(exc, peer, trust_domain, refusals, clock) from None
    return transport, protocol, identity


async def first_bytes(sock: socket.socket, timeout: float) -> bool:
    """Wait until ``sock`` has something to read (bytes or the end of the stream), at most ``timeout`` seconds;
    nothing is read from it, so TLS gets every byte. False at the deadline."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(readable, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


def _peername(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return None


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, PeerIdentity], Awaitable[None]]


async def accepted(listener: socket.socket, name: str, clock: Clock) -> AsyncIterator[socket.socket]:
    """Raw sockets accepted on ``listener``, with TCP_NODELAY, for TLS to take over; an accept error (EMFILE
    and friends) is logged and waited out briefly rather than spun on."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock, _ = await loop.sock_accept(listener)
        except OSError as exc:
            log.warning("accept failed on %s: %s", name, exc)
            await clock.sleep(0.1)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield sock


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket for an accept loop that hands raw sockets to TLS."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class MtlsServer:
    """Like ``asyncio.start_server``, over mTLS: ``handler(reader, writer, peer_identity)`` runs only for
    verified peers; refusals are logged and counted.

    Sockets are accepted raw and handed to ``connect_accepted_socket(ssl=...)``, so no byte is read before
    TLS owns the connection and the handshake's exception reaches us (``create_server(ssl=...)`` swallows
    it; a plain stream server followed by ``start_tls`` can lose the ClientHello under uvloop, which starts
    reading right after ``connection_made``).
    """

    def __init__(self, handler: Handler, context: Callable[[], ssl.SSLContext], trust_domain: str, *,
                 refusals: RefusalLog | None, timeout: float, clock: Clock, backlog: int = 1024) -> None:
        self._handler, self._context, self._trust_domain = handler, context, trust_domain
        self._refusals, self._timeout, self._clock, self._backlog = refusals, timeout, clock, backlog
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> MtlsServer:
        sock = listening_socket(host, port, self._backlog)
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(sock))
        return self

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        async for sock in accepted(listener, "the mTLS listener", self._clock):
            task = loop.create_task(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        try:
            transport, protocol, identity = await accept_socket(
                sock, lambda: asyncio.StreamReaderProtocol(reader), self._context(), self._trust_domain,
                refusals=self._refusals, timeout=self._timeout, clock=self._clock,
            )
        except PeerRefused:
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            await self._handler(reader, writer, identity)
        finally:
            writer.close()

    def close(self) -> None:
        """Stop accepting; connections already made go on until their handlers end."""
        if self._accepting is not None:
            self._accepting.cancel()
        if self._sock is not None:
            self._sock.close()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait for the handlers with a deadline, then cancel what is left."""
        if self._accepting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()


async def serve(
    handler: Handler,
    host: str,
    port: int,
    context: ssl.SSLContext | Callable[[], ssl.SSLContext],
    trust_domain: str,
    *,
    refusals: RefusalLog | None = None,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    clock: Clock = SYSTEM_CLOCK,
) -> MtlsServer:
    """Start an :class:`MtlsServer`. ``context`` may be a function returning the current context
    (``lambda: store.server_context``), so a rotation applies from the next connection."""
    current: Callable[[], ssl.SSLContext] = (
        (lambda: context) if isinstance(context, ssl.SSLContext) else context
    )
    server = MtlsServer(handler, current, trust_domain, refusals=refusals, timeout=timeout, clock=clock)
    return await server.start(host, port)


def _refused(exc: BaseException, peer: str, trust_domain: str, refusals: RefusalLog | None, clock: Clock,
             *, role: str = "client") -> PeerRefused:
    reason = refusal_of(exc, role=role, trust_domain=trust_domain)
    if refusals is not None:
        refusals.record(peer, reason, clock.wall(), direction="inbound" if role == "client" else "outbound")
    else:
        log.warning("refused mTLS connection with %s: %s", peer, reason.message)
    return PeerRefused(reason)


# ------------------------------------------------------------------------------------------ outbound


async def connect_stream(
    host: str,
    port: int,
    context: ssl.SSLContext,
    trust_domain: str,
    expected_service: str | None = None,
    *,
    refusals: RefusalLog | None = None,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, PeerIdentity]:
    """Dial a peer sidecar over mTLS and check it is ``expected_service`` of our trust domain.

    ``server_hostname`` is :func:`peer_server_name`, so the client context's session cache resumes the
    session on the next connection to the same address. Connection failures (refused, unreachable) are
    raised as they are; a TLS or identity refusal is logged and raised as :class:`PeerRefused`.
    """
    peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=peer_server_name(host, port), ssl_handshake_timeout=timeout
        )
    except ssl.SSLError as exc:
        raise _refused(exc, peer, trust_domain, refusals, clock, role="server") from None
    try:
        identity = verify_peer(writer.get_extra_info("ssl_object"), trust_domain, expected_service, now=clock.wall())
    except PeerRefused as exc:
        writer.transport.abort()
        raise _refused(exc, peer, trust_domain, refusals, clock, role="server") from None
    return reader, writer, identity
