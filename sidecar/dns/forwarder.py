"""Forwarding of names outside the mesh domain to ``dns.upstreams``.

Each upstream gets ``upstream_timeout`` for the whole exchange: UDP first, then TCP when the UDP answer
comes back truncated (RFC 7766 5). A timeout, a refused port or an unreadable answer moves on to the next
upstream; the one that answered last is tried first next time, so a dead first upstream costs one
timeout, not one per query. No upstreams: REFUSED. Every upstream failing: SERVFAIL.

The query goes out under a fresh random ID from a fresh UDP socket (a random source port), and only a
reply that matches the ID and the question is accepted (RFC 5452), so off-path spoofing has to guess
both. Upstream answers are relayed as received, with the client's ID patched back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import dns.message
import dns.rcode

from sidecar.config.values import HostPort
from sidecar.dns import wire
from sidecar.dns.answerer import refusal, truncated
from sidecar.dns.outcomes import MAX_TCP_SIZE

# bounds what a flood of outside names can cost: beyond it, SERVFAIL at once rather than a queue
DEFAULT_MAX_IN_FLIGHT = 256


class ForwardOutcome(enum.Enum):
    ANSWERED = "answered"
    NO_UPSTREAMS = "no_upstreams"
    ALL_FAILED = "all_failed"
    OVERLOADED = "overloaded"


@dataclass(frozen=True, slots=True)
class ForwardResult:
    wire: bytes
    outcome: ForwardOutcome
    upstream: HostPort | None = None


class UpstreamError(Exception):
    """An upstream gave no usable answer."""


class UpstreamRefused(UpstreamError):
    def __init__(self, upstream: HostPort) -> None:
        super().__init__(f"upstream {upstream} refused the connection")


class UpstreamBadAnswer(UpstreamError):
    def __init__(self, upstream: HostPort, why: str) -> None:
        super().__init__(f"upstream {upstream} sent an unusable answer: {why}")


class Forwarder:
    def __init__(
        self,
        upstreams: Sequence[HostPort],
        timeout: float,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        rng: random.Random | None = None,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._rng = rng or random.SystemRandom()
        self._preferred = 0
        self._in_flight = 0
        self.failures: dict[str, int] = {}  # by upstream, for metrics

    async def forward(self, query: dns.message.Message, limit: int) -> ForwardResult:
        """The response to send to the client for ``query``, at most ``limit`` bytes."""
        if not self.upstreams:
            return ForwardResult(refusal(query, dns.rcode.REFUSED, limit), ForwardOutcome.NO_UPSTREAMS)
        if self._in_flight >= self.max_in_flight:
            return ForwardResult(refusal(query, dns.rcode.SERVFAIL, limit), ForwardOutcome.OVERLOADED)
        self._in_flight += 1
        try:
            return await self._forward(query, limit)
        finally:
            self._in_flight -= 1

    async def _forward(self, query: dns.message.Message, limit: int) -> ForwardResult:
        client_id = query.id
        count = len(self.upstreams)
        start = self._preferred
        for step in range(count):
            index = (start + step) % count
            upstream = self.upstreams[index]
            query_id = self._rng.randrange(0, 65536)
            try:
                async with asyncio.timeout(self.timeout):
                    answer = await self._exchange(upstream, query, query_id)
            except (TimeoutError, OSError, UpstreamError):
                self.failures[str(upstream)] = self.failures.get(str(upstream), 0) + 1
                continue
            self._preferred = index
            reply = client_id.to_bytes(2, "big") + answer[2:]
            if len(reply) > limit:
                # a TCP answer for a UDP client: tell it to come back over TCP
                response = dns.message.from_wire(answer)
                reply = truncated(query, response.rcode(), response.flags)
            return ForwardResult(reply, ForwardOutcome.ANSWERED, upstream)
        return ForwardResult(refusal(query, dns.rcode.SERVFAIL, limit), ForwardOutcome.ALL_FAILED)

    async def _exchange(self, upstream: HostPort, query: dns.message.Message, query_id: int) -> bytes:
        payload = query_id.to_bytes(2, "big") + query.to_wire()[2:]
        answer = await _udp_exchange(upstream, query, query_id, payload)
        if wire.is_truncated(answer):
            # no TCP there: the truncated answer tells the client to try TCP itself
            with contextlib.suppress(OSError, UpstreamError):
                answer = await _tcp_exchange(upstream, query, query_id, payload)
        return answer


def _check(upstream: HostPort, query: dns.message.Message, query_id: int, data: bytes) -> bool:
    """True if ``data`` answers ``query`` sent as ``query_id``; False for strays we keep waiting past."""
    if len(data) < wire.HEADER_SIZE or int.from_bytes(data[:2], "big") != query_id or not data[2] & 0x80:
        return False
    try:
        response = dns.message.from_wire(data)
    except Exception as exc:  # dnspython raises many kinds; all mean the answer is unreadable
        raise UpstreamBadAnswer(upstream, type(exc).__name__) from exc
    response.id = query.id  # the ID was checked above; is_response compares the rest
    return query.is_response(response)


class _UpstreamDatagram(asyncio.DatagramProtocol):
    def __init__(self, upstream: HostPort, query: dns.message.Message, query_id: int) -> None:
        self.upstream = upstream
        self.query = query
        self.query_id = query_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.answer.done():
            return
        try:
            if _check(self.upstream, self.query, self.query_id, data):
                self.answer.set_result(data)
        except UpstreamError as exc:
            self.answer.set_exception(exc)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected socket: nobody listens there, fail over at once
        if not self.answer.done():
            self.answer.set_exception(UpstreamRefused(self.upstream))


async def _udp_exchange(
    upstream: HostPort, query: dns.message.Message, query_id: int, payload: bytes
) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UpstreamDatagram(upstream, query, query_id), remote_addr=(upstream.host, upstream.port)
    )
    try:
        transport.sendto(payload)
        return await protocol.answer
    finally:
        transport.close()


async def _tcp_exchange(
    upstream: HostPort, query: dns.message.Message, query_id: int, payload: bytes
) -> bytes:
    try:
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
    except ConnectionRefusedError as exc:
        raise UpstreamRefused(upstream) from exc
    try:
        writer.write(struct.pack("!H", len(payload)) + payload)
        await writer.drain()
        # an upstream may send stray messages first; the caller's timeout bounds the loop
        for _ in range(MAX_TCP_SIZE):
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            data = await reader.readexactly(size)
            if _check(upstream, query, query_id, data):
                return data
        raise UpstreamBadAnswer(upstream, "no matching answer")
    except asyncio.IncompleteReadError as exc:
        raise UpstreamBadAnswer(upstream, "connection closed mid-answer") from exc
    finally:
        writer.close()


__all__ = ["ForwardOutcome", "ForwardResult", "Forwarder", "UpstreamError"]
