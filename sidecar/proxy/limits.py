"""Limits and timeouts of the proxy engine, with the reason for each default; and the lazy timers.

All times are seconds on the event loop's clock (``loop.time()``, monotonic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from sidecar.proxy.http1 import DEFAULT_HEAD_LIMITS, HeadLimits


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """Per listener."""

    head: HeadLimits = field(default_factory=lambda: DEFAULT_HEAD_LIMITS)
    # a client must send a whole request head this soon after connecting or starting the request: slow
    # clients (slowloris) cannot hold connections; 10s is generous for any real client on a LAN
    header_timeout: float = 10.0
    # a kept-alive client connection with no request in flight is closed after this; longer than the
    # pools of common clients (Go 90s is the outlier, most use 15-60s) would waste descriptors
    idle_timeout: float = 60.0
    # a request whose response has started is cut when neither side moves a byte for this long; this, not
    # the route's deadline, bounds streams (SSE, long downloads), like Envoy's stream_idle_timeout
    stream_idle_timeout: float = 300.0
    # over this many open client connections, new ones get 503 and are closed
    max_connections: int = 1024
    # transport write buffer: above high water the other side stops being read, below low water it resumes;
    # 256 KiB keeps a 10 Gbit/s loopback busy while bounding memory per stream
    high_water: int = 256 * 1024
    low_water: int = 64 * 1024
    # request bodies up to this size are kept so a retry can send them again; a larger one streams without a
    # copy, so its request cannot be retried once bytes of it were sent
    replay_buffer: int = 64 * 1024
    # pipelined requests read ahead of the one in flight, in bytes, before the client stops being read
    max_pipelined_bytes: int = 64 * 1024
    # a response that ends before its request: the rest of the request body is read and discarded, up to this
    # many bytes and for this long, so the connection can serve the next request (nginx's lingering close: 64 KiB
    # is its buffer, and a peer sidecar sends what is left of a body within a second on any LAN); a rest known to
    # be longer (Content-Length) gets `Connection: close` on the response head, an unknown one that runs over
    # either bound has the connection closed
    linger_bytes: int = 64 * 1024
    linger_timeout: float = 1.0
    # an HTTP/2 client's streams open at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS); 100 is RFC
    # 9113's floor recommendation and what Envoy, nginx and Go advertise
    max_concurrent_streams: int = 100


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Per upstream pool (one pool per ``Target.pool_key``)."""

    # idle keep-alive connections kept per pool; more are closed when released
    max_idle: int = 64
    # idle connections are closed after this; below the 15s+ keep-alive of common servers (nginx 75s,
    # aiohttp 75s) so we usually close first, and a pooled connection that the server closed anyway is
    # re-dialled once, for requests that can be replayed
    idle_timeout: float = 10.0
    # connections (busy + idle + dialing) per pool; requests beyond wait for one to be released
    max_connections: int = 1024
    # connections being dialed at once per pool; requests beyond wait for one of them or for a released
    # connection. A burst of hundreds of requests then opens connections a few dozen at a time: hundreds of
    # TLS handshakes at once stall both event loops and trip the peer's cap on pending handshakes from one
    # source (128), whose refusals look like a failing peer to outlier detection
    max_dialing: int = 32
    # requests waiting for a connection per pool; beyond, they fail with 429 RESOURCE_EXHAUSTED
    max_pending: int = 1024
    # TCP connect plus TLS handshake
    connect_timeout: float = 5.0


DEFAULT_PROXY_LIMITS: Final = ProxyLimits()
# Pieces written together to a TLS transport are joined first, up to this many bytes: uvloop encrypts each piece of
# writelines() as its own TLS record, so a response head and its body would cost two records to seal and two for
# the peer to open. Beyond this size records are full anyway and joining would only copy.
TLS_COALESCE_MAX: Final = 64 * 1024
DEFAULT_POOL_LIMITS: Final = PoolLimits()


def write_pieces(transport: asyncio.Transport, pieces: list[bytes], tls: bool) -> None:
    """Write ``pieces`` in order; to a TLS transport, several of up to TLS_COALESCE_MAX bytes in all go as one."""
    if tls and len(pieces) > 1:
        size = 0
        for piece in pieces:   # a compiled loop: sum(map(len, ...)) looks both builtins up on every call
            size += len(piece)
        if size <= TLS_COALESCE_MAX:
            transport.write(b"".join(pieces))
            return
    transport.writelines(pieces)


def _nothing() -> None:
    """The callback of a closed timer."""


class LazyTimer:
    """One timer per connection whose deadline moves often and fires rarely.

    Moving the deadline later only writes an attribute; the armed handle, when it fires early, re-arms
    itself for the current deadline. So a busy keep-alive connection creates about one timer handle per
    timeout period, not one per request.

    The callback is most often a method of the timer's owner, which holds the timer: :meth:`close`, when the
    owner is done, lets go of it, so that the two do not hold each other until the cyclic garbage collector runs.
    """

    __slots__ = ("_callback", "_handle", "_loop", "_when", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0
        self.deadline: float | None = None

    def set(self, deadline: float | None) -> None:
        self.deadline = deadline
        if deadline is None:
            return
        if self._handle is None or deadline < self._when:
            if self._handle is not None:
                self._handle.cancel()
            self._when = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        self.deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """Cancelled for good: the callback is let go (a deadline set later fires nothing)."""
        self.cancel()
        self._callback = _nothing

    def _fire(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._when = deadline
            self._handle = self._loop.call_at(deadline, self._fire)
            return
        self.deadline = None
        self._callback()


class TimerGroup:
    """The deadlines of many short-lived parties (the streams of one HTTP/2 connection) on one timer handle.

    Each party's :class:`SharedTimer` behaves as a LazyTimer of its own, but setting it adds it to the group
    and moves the group's timer only when its deadline is the earliest: a stream costs no timer handle made and
    cancelled (about 5 µs with uvloop), which matters at one stream, where every call is a new stream. The
    group's timer fires at the earliest deadline it was given, expires the members that are due, and re-arms
    for the earliest one left; a member whose deadline moved later, or was cancelled, costs at most one early
    wake-up, as with LazyTimer.
    """

    __slots__ = ("_timer", "loop", "members")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.members: set[SharedTimer] = set()
        self._timer = LazyTimer(loop, self._fire)

    def timer(self, callback: Callable[[], None]) -> SharedTimer:
        return SharedTimer(self, callback)

    def want(self, deadline: float) -> None:
        """A member's deadline: the group's timer fires no later than it."""
        current = self._timer.deadline
        if current is None or deadline < current:
            self._timer.set(deadline)

    def _fire(self) -> None:
        now = self.loop.time()
        members = self.members
        due = [m for m in members if m.deadline is not None and m.deadline <= now]
        for member in due:
            members.discard(member)
        for member in due:
            member.expire()   # may set its own deadline again, or another member's
        earliest: float | None = None
        for member in members:
            deadline = member.deadline
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        if earliest is not None:
            self.want(earliest)

    def close(self) -> None:
        """No member fires any more (the connection is gone)."""
        self.members.clear()
        self._timer.close()


class SharedTimer(LazyTimer):
    """A LazyTimer whose deadline its :class:`TimerGroup` keeps, on the group's one handle."""

    __slots__ = ("_group",)

    def __init__(self, group: TimerGroup, callback: Callable[[], None]) -> None:
        super().__init__(group.loop, callback)
        self._group = group

    def set(self, deadline: float | None) -> None:
        self.deadline = deadline
        if deadline is None:
            self._group.members.discard(self)
            return
        self._group.members.add(self)
        self._group.want(deadline)

    def cancel(self) -> None:
        self.deadline = None
        self._group.members.discard(self)

    def expire(self) -> None:
        """The group found the deadline passed: the callback runs (once; a new deadline must be set again)."""
        self.deadline = None
        self._callback()
