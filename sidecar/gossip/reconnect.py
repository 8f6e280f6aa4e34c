"""Reconnecting to failed members (Serf's ``reconnect_interval`` / ``reconnect_timeout``).

SWIM forgets a dead member after ``dead_reap_time``. If the two sides of a partition have declared each other
dead and forgotten each other, neither probes nor gossips to the other again: the cluster stays split after the
network heals. So members that *failed* (dead, not left) are remembered here with their address for
``timeout``; every ``interval`` one of them, picked at random, is offered a push-pull join. The first exchange
that gets through merges the two sides' state, and gossip does the rest.

When this member is alone (no other alive member) it also retries the configured join addresses: a member whose
peers were all forgotten, or all replaced by new addresses behind the same DNS name, finds its way back.

Pure: events and time go in, addresses to try come out; ``GossipNode`` runs the exchanges.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sidecar.gossip.outputs import Event, MemberAlive, MemberDead, MemberJoined, MemberLeft, MemberUpdated
from sidecar.gossip.state import Address


@dataclass(slots=True)
class _Failed:
    address: Address
    since: float


class Reconnects:
    def __init__(self, interval: float, timeout: float, rng: random.Random | None = None) -> None:
        self.interval = interval
        self.timeout = timeout
        self._rng = rng if rng is not None else random.Random()
        self._failed: dict[str, _Failed] = {}
        self._next = 0.0
        self.attempts = 0

    def on_event(self, event: Event, now: float) -> None:
        if isinstance(event, MemberDead):
            member = event.member
            self._failed[member.name] = _Failed((member.address, member.port), now)
        elif isinstance(event, MemberJoined | MemberAlive | MemberUpdated | MemberLeft):
            # back (or gone on purpose: a member that left is not called back)
            self._failed.pop(event.member.name, None)

    @property
    def failed(self) -> list[str]:
        return sorted(self._failed)

    def due(self, now: float) -> Address | None:
        """The address to try now, or None: at most one every ``interval``."""
        if now < self._next:
            return None
        self._next = now + self.interval
        for name in [n for n, f in self._failed.items() if now - f.since > self.timeout]:
            del self._failed[name]
        if not self._failed:
            return None
        self.attempts += 1
        return self._failed[self._rng.choice(sorted(self._failed))].address
