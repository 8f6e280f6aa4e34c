"""Room for inbound TLS handshakes in progress, shared so that no one source can take it all. Pure: no I/O.

    slots = HandshakeSlots(max_pending=512, max_per_source=128)
    for victim in slots.admit(key, source_of(address)):   # the handshakes to close to make room
        close(victim)
    ...
    slots.done(key)                                       # finished, refused or closed

Theory of operation
-------------------
A handshake in progress holds a socket, a task and, once the ClientHello is in, TLS state; the inbound listener
keeps at most ``max_pending`` of them. A peer that opens connections and sends nothing (or a few bytes) would
fill them for the whole handshake timeout, and refusing new connections at the cap would then refuse every real
peer too. So a new connection is always admitted, and room is made by closing a pending one:

* a source over ``max_per_source`` pending handshakes loses its own oldest: one host cannot hold more than its
  share, whatever else is going on;
* at ``max_pending``, the oldest pending handshake of the source that holds the most is closed: a flood from a
  few hosts loses its own connections, while a real peer's handshake (a few round trips, done in milliseconds)
  is rarely pending long enough to be anyone's oldest.

A source is an IPv4 address or an IPv6 /64 (one host gets a whole /64, so counting single IPv6 addresses would
give it as many shares as it likes). With the listener's ClientHello timeout (a connection that sends nothing
for a few seconds is closed), a flooder must keep opening connections to hold slots at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def source_of(host: str) -> str:
    """The share a peer address counts against: the IPv4 address, or the IPv6 /64 (v4-mapped: the IPv4)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class HandshakeSlots(Generic[K]):
    """Pending handshakes by key (oldest first), per source; :meth:`admit` says which to close."""

    __slots__ = ("_by_source", "_source", "evicted", "max_pending", "max_per_source")

    def __init__(self, max_pending: int, max_per_source: int) -> None:
        if max_pending < 1 or not 1 <= max_per_source <= max_pending:
            raise ValueError(f"need 1 <= max_per_source <= max_pending (got {max_per_source}, {max_pending})")
        self.max_pending = max_pending
        self.max_per_source = max_per_source
        self._source: dict[K, str] = {}               # every pending key, oldest first
        self._by_source: dict[str, dict[K, None]] = {}  # per source, oldest first
        self.evicted = 0                              # handshakes closed to make room, since start

    def __len__(self) -> int:
        return len(self._source)

    def pending(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def admit(self, key: K, source: str) -> list[K]:
        """Take ``key`` in; returns the pending keys to close to make room for it (already forgotten here)."""
        victims: list[K] = []
        own = self._by_source.get(source)
        if own is not None and len(own) >= self.max_per_source:
            victims.append(next(iter(own)))
        elif len(self._source) >= self.max_pending:
            busiest = max(self._by_source.values(), key=len)
            victims.append(next(iter(busiest)))
        for victim in victims:
            self.done(victim)
        self.evicted += len(victims)
        self._source[key] = source
        self._by_source.setdefault(source, {})[key] = None
        return victims

    def done(self, key: K) -> None:
        """``key`` is no longer pending (finished, refused, closed); unknown keys are ignored."""
        source = self._source.pop(key, None)
        if source is None:
            return
        own = self._by_source[source]
        own.pop(key, None)
        if not own:
            del self._by_source[source]


__all__ = ["HandshakeSlots", "source_of"]
