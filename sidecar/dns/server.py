"""The asyncio driver of the DNS responder: UDP and TCP on one port, around the pure answerer.

A query goes through, in order: the per-client rate limit (when configured), the response cache (raw
bytes in, raw bytes out: no dnspython on a hit), and on a miss the :class:`Zone` of the current
snapshot, whose answer is stored in the cache with its rotations. Names outside the domain go to the
:class:`Forwarder` in a task, so a slow upstream never holds up other queries; over UDP they first pass
the per-client forwarding limit (on by default, see ``DnsForwardRateLimit``), beyond which the reply is
an empty one with TC=1: the mesh's own names never pay for it, and a forged source gains no amplification.

Robustness: every handler catches everything; a bug answers SERVFAIL to that one query and is counted
(``internal_errors``), never stopping the listener. TCP connections are capped, closed after an idle
timeout, may pipeline several queries (RFC 7766 6.2.1) and stop being read while their replies are not
being read by the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import dns.flags
import dns.rcode

from sidecar.catalog.model import CatalogSnapshot
from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.model import DnsConfig
from sidecar.dns import wire
from sidecar.dns.cache import DEFAULT_MAX_ENTRIES, ResponseCache
from sidecar.dns.counters import DnsCounters
from sidecar.dns.outcomes import AnswerSettings, DnsReply, Drop, Forward, Transport
from sidecar.dns.ratelimit import RateLimiter

if TYPE_CHECKING:
    # the answerer and the forwarder carry dnspython's messages, names and rdata (~3 MiB resident): imported
    # with the first query, so a sidecar nobody asks a name does not hold them
    from sidecar.dns.answerer import Zone
    from sidecar.dns.forwarder import Forwarder

log = logging.getLogger(__name__)

# RFC 7766 6.2.3 suggests idle timeouts of seconds, not minutes: connections are cheap to reopen
DEFAULT_TCP_IDLE_TIMEOUT: Final = 10.0
# one sidecar serves one app and a few tools; more connections than this is a leak or an attack
DEFAULT_MAX_TCP_CONNECTIONS: Final = 256
# forwarded queries one TCP connection may have outstanding before we stop reading it
MAX_PIPELINED_PER_CONNECTION: Final = 32
# absorbs bursts of queries while the loop is busy; the kernel caps it at net.core.rmem_max
UDP_RECEIVE_BUFFER: Final = 4 * 1024 * 1024
# binding UDP and TCP on the same free port can race with other programs; try a few ports
_BIND_ATTEMPTS: Final = 20


class DnsListenFailed(Exception):
    """The DNS listener could not bind its address."""

    def __init__(self, address: str, transport: str, cause: OSError) -> None:
        super().__init__(f"cannot listen for DNS on {address} ({transport}): {cause.strerror or cause}")
        self.address = address
        self.transport = transport


class DnsServer:
    """``snapshot`` must be cheap (it is called once per query): return the current snapshot object."""

    def __init__(
        self,
        config: DnsConfig,
        snapshot: Callable[[], CatalogSnapshot],
        clock: Clock = SYSTEM_CLOCK,
        *,
        tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT,
        max_tcp_connections: int = DEFAULT_MAX_TCP_CONNECTIONS,
        cache_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.config = config
        self.settings = AnswerSettings.from_config(config)
        self.counters = DnsCounters()
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self._snapshot = snapshot
        self._clock = clock
        self._cache = ResponseCache(cache_entries)
        self._current: CatalogSnapshot | None = None
        self._zone: Zone | None = None
        self._limiter = (
            RateLimiter(config.rate_limit.qps, config.rate_limit.burst) if config.rate_limit.qps > 0 else None
        )
        forwarding = config.forward_rate_limit
        # without upstreams nothing is forwarded: the REFUSED answer is no larger than the query
        self._forward_limiter = (
            RateLimiter(forwarding.qps, forwarding.burst) if forwarding.qps > 0 and config.upstreams else None
        )
        self._forwarder: Forwarder | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[_TcpConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] | None = None

    @property
    def forwarder(self) -> Forwarder:
        """Names outside the domain go to ``dns.upstreams`` through this (made with the first such name)."""
        if self._forwarder is None:
            from sidecar.dns.forwarder import Forwarder

            self._forwarder = Forwarder(self.config.upstreams, float(self.config.upstream_timeout))
        return self._forwarder

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> tuple[str, int]:
        """Bind UDP and TCP on the same address and port; returns it (the real port when 0 was asked)."""
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        family, host = await _resolve(loop, listen.host, listen.port)
        attempts = _BIND_ATTEMPTS if listen.port == 0 else 1
        for attempt in range(attempts):
            udp_sock = _udp_socket(family, host, listen.port, str(listen))
            port = udp_sock.getsockname()[1]
            try:
                tcp_sock = _tcp_socket(family, host, port, str(listen))
            except DnsListenFailed:
                udp_sock.close()
                if attempt + 1 == attempts:
                    raise
                continue
            break
        try:
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp_sock)
            self._tcp = await loop.create_server(lambda: _TcpConnection(self), sock=tcp_sock)
        except BaseException:
            await self.stop()
            udp_sock.close()
            tcp_sock.close()
            raise
        self.address = (host, port)
        log.info("dns listening on %s (udp+tcp), domain %s", _text(host, port), self.settings.domain)
        return self.address

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop listening, close connections, cancel forwards; waits at most ``timeout`` seconds."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        server, self._tcp = self._tcp, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            connection.close()
        for task in list(self._tasks):
            task.cancel()
        pending: list[Any] = list(self._tasks)
        if server is not None:
            pending.append(server.wait_closed())
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout)

    # ------------------------------------------------------------------------------ one query

    def handle(self, data: bytes, client: str, tcp: bool) -> bytes | Forward | None:
        """The reply to one query: bytes to send, a Forward to run, or None to send nothing."""
        limiter = self._limiter
        if limiter is not None and not limiter.allow(client, self._clock.monotonic()):
            self.counters.rate_limited += 1
            return wire.header_reply(data, dns.rcode.REFUSED)
        snapshot = self._snapshot()
        if snapshot is not self._current:
            self._use(snapshot)
        answer = self._cache.lookup(data, tcp)
        if answer is not None:
            counters = self.counters
            counters.cache_hits += 1
            counters.count_rcode(answer.rcode)
            return data[:2] + answer.take()
        return self._miss(data, client, tcp)

    def _use(self, snapshot: CatalogSnapshot) -> None:
        self._current = snapshot
        if self._zone is None or self._zone.version != snapshot.version:
            from sidecar.dns.answerer import Zone  # dnspython loaded with the first query

            self._zone = Zone(snapshot, self.settings)
            self._cache.check_version(snapshot.version)

    def _miss(self, data: bytes, client: str, tcp: bool) -> bytes | Forward | None:
        self.counters.cache_misses += 1
        zone = self._zone
        assert zone is not None  # handle() set it
        transport = Transport.TCP if tcp else Transport.UDP
        outcome = zone.answer(data, transport)
        if isinstance(outcome, Drop):
            self.counters.dropped += 1
            if len(data) < wire.HEADER_SIZE:
                self.counters.malformed += 1
            return None
        if isinstance(outcome, Forward):
            limiter = self._forward_limiter
            # TCP is exempt: its handshake proves the source address, so it cannot be aimed at someone else
            if limiter is not None and not tcp and not limiter.allow(client, self._clock.monotonic()):
                from sidecar.dns.answerer import truncated  # loaded already: the zone parsed the query

                self.counters.forward_limited += 1
                self.counters.count_rcode(dns.rcode.NOERROR)
                return truncated(outcome.query, dns.rcode.NOERROR, dns.flags.RA)
            return outcome
        if outcome.rcode == dns.rcode.FORMERR:
            self.counters.malformed += 1
        if outcome.cacheable:
            variants = [outcome.wire]
            for rotation in range(1, outcome.variants):
                rotated = zone.answer(data, transport, rotation)
                if isinstance(rotated, DnsReply):
                    variants.append(rotated.wire)
            self._cache.put(data, tcp, variants, outcome.rcode)
        self.counters.count_rcode(outcome.rcode)
        return outcome.wire

    def internal_error(self, data: bytes, exc: BaseException) -> bytes | None:
        """Count a bug and log it (sparingly); the reply is SERVFAIL when the header allows one."""
        self.counters.internal_errors += 1
        count = self.counters.internal_errors
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, 8th...: a bug shows without flooding the log
            log.error("dns: internal error #%d answering %r", count, data[:64], exc_info=exc)
        return wire.header_reply(data, dns.rcode.SERVFAIL)

    def spawn_forward(self, forward: Forward, send: Callable[[bytes], None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._forward(forward, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _forward(self, forward: Forward, send: Callable[[bytes], None]) -> None:
        from sidecar.dns.forwarder import ForwardOutcome  # loaded already: the zone parsed the query

        try:
            result = await self.forwarder.forward(forward.query, forward.limit)
        except Exception as exc:
            reply = self.internal_error(forward.query.to_wire(), exc)
            if reply is not None:
                send(reply)
            return
        if result.outcome is ForwardOutcome.ANSWERED:
            self.counters.forwarded += 1
        elif result.outcome is not ForwardOutcome.NO_UPSTREAMS:
            self.counters.forward_failed += 1
        self.counters.count_rcode(wire.rcode_of(result.wire))
        send(result.wire)

    def _register(self, connection: _TcpConnection) -> bool:
        if len(self._connections) >= self.max_tcp_connections:
            self.counters.tcp_rejected += 1
            return False
        self._connections.add(connection)
        self.counters.tcp_connections += 1
        return True

    def _unregister(self, connection: _TcpConnection) -> None:
        self._connections.discard(connection)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interfaces without subclassing them
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            out = self.server.handle(data, addr[0], False)
            if out is None:
                return
            if type(out) is bytes:
                transport.sendto(out, addr)
                return
            assert isinstance(out, Forward)
            self.server.spawn_forward(out, lambda reply: self._send(reply, addr))
        except Exception as exc:
            reply = self.server.internal_error(data, exc)
            if reply is not None:
                self._send(reply, addr)

    def _send(self, reply: bytes, addr: tuple[Any, ...]) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors about clients that went away; nothing to do for other clients

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _TcpConnection(asyncio.Protocol):
    """One client connection: 2-byte length-prefixed queries (RFC 1035 4.2.2), answered in any order."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self._buffer = bytearray()
        self._pending = 0
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.server._register(self):
            cast(asyncio.Transport, transport).abort()
            return
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._timer = loop.call_later(self.server.tcp_idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._last_activity = asyncio.get_running_loop().time()
        self._buffer += data
        self._drain()

    def _drain(self) -> None:
        """Answer the complete messages in the buffer, until reading is paused."""
        buffer = self._buffer
        # bounded: reading pauses at MAX_PIPELINED_PER_CONNECTION forwards, so the buffer holds at most
        # what one read brought in while unpaused
        while len(buffer) >= 2 and self.transport is not None and not self._reading_paused:
            size = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + size:
                break
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            self._answer(message)

    def _answer(self, message: bytes) -> None:
        try:
            out = self.server.handle(message, self.client, True)
            if out is None:
                return
            if type(out) is bytes:
                self._send(out)
                return
            assert isinstance(out, Forward)
            self._pending += 1
            if self._pending >= MAX_PIPELINED_PER_CONNECTION:
                self._pause_reading()
            self.server.spawn_forward(out, self._forwarded)
        except Exception as exc:
            reply = self.server.internal_error(message, exc)
            if reply is not None:
                self._send(reply)

    def _forwarded(self, reply: bytes) -> None:
        self._pending -= 1
        self._send(reply)
        self._maybe_resume_reading()

    def _send(self, reply: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(len(reply).to_bytes(2, "big") + reply)

    def _check_idle(self) -> None:
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        idle_for = loop.time() - self._last_activity
        if idle_for >= self.server.tcp_idle_timeout and self._pending == 0:
            self.close()
            return
        wait = max(0.05, self.server.tcp_idle_timeout - idle_for)
        self._timer = loop.call_later(wait, self._check_idle)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self._writing_paused
            and self._pending < MAX_PIPELINED_PER_CONNECTION
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._reading_paused = False
            self.transport.resume_reading()
            self._drain()

    def pause_writing(self) -> None:
        # the client does not read its answers: stop reading its queries until it does
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._maybe_resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer.clear()
        self.server._unregister(self)


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> tuple[int, str]:
    """One address to bind both sockets to (a name like ``localhost`` may give several)."""
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise DnsListenFailed(_text(host, port), "udp", exc) from exc
    family, _, _, _, sockaddr = infos[0]
    return int(family), str(sockaddr[0])


def _udp_socket(family: int, host: str, port: int, shown: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise DnsListenFailed(shown, "udp", exc) from exc
    return sock


def _tcp_socket(family: int, host: str, port: int, shown: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restart bind while old connections sit in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise DnsListenFailed(shown, "tcp", exc) from exc
    return sock


def _text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["DnsListenFailed", "DnsServer"]
