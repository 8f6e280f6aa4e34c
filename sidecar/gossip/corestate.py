"""The gossip core's state, declared once, and the small helpers every part of the core uses.

:class:`~sidecar.gossip.core.GossipCore` is one object built from parts, one mechanism each, stacked so that
each part only calls the parts below it:

    CoreState          the state (set by GossipCore.__init__), sequence numbers, timers   corestate.py
    Dissemination      the broadcast queue on gossip rounds and piggybacked on packets      dissemination.py
    Membership         alive/suspect/dead: the transitions, refutation, suspicion, reaping  membership.py
    Probing            the probe cycle: ping, indirect ping with nacks, the TCP fallback    probing.py
    PushPullSync       push-pull and reconnect: the whole table merged over TCP             pushpull.py
    GossipCore         the inputs (packets, streams, replies, ticks) and the public API     core.py

No part does I/O or reads a clock: ``now`` is passed into every method.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from sidecar.config.model import GossipTuning
from sidecar.gossip.admission import MemberAdmission
from sidecar.gossip.awareness import Awareness
from sidecar.gossip.broadcast import BroadcastQueue
from sidecar.gossip.envelope import Envelope
from sidecar.gossip.messages import Alive
from sidecar.gossip.outputs import GossipCounters, StreamPurpose
from sidecar.gossip.seen import SeenVersions
from sidecar.gossip.state import Address, Member, MemberState, MemberTable
from sidecar.gossip.suspicion import Suspicion

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
LIVE = (ALIVE, SUSPECT)
SEQ_MASK = 0xFFFFFFFF
# kinds of timer in CoreState._timers (when, order, kind, key)
TIMER_SUSPICION, TIMER_NACK, TIMER_RELAY_END, TIMER_STREAM = range(4)


class PendingProbe:
    """The probe in progress: whom, since when, and what came back."""

    __slots__ = ("address", "end_at", "expected_nacks", "incarnation", "indirect", "indirect_at", "nacks",
                 "name", "seq", "tcp_ok")

    def __init__(self, seq: int, member: Member, now: float, timeout: float, interval: float) -> None:
        self.seq = seq
        self.name = member.name
        self.incarnation = member.incarnation
        self.address = member.address
        self.indirect_at = now + timeout
        self.end_at = now + interval
        self.indirect = False
        self.expected_nacks = 0
        self.nacks = 0
        self.tcp_ok = False


class IndirectRelay:
    """An indirect ping we do for someone: their seq, where to answer, whether to nack."""

    __slots__ = ("nack", "requester", "seq")

    def __init__(self, requester: Address, seq: int, nack: bool) -> None:
        self.requester = requester
        self.seq = seq
        self.nack = nack


class PendingStream:
    """A TCP exchange we opened and wait on: a push-pull or the fallback ping."""

    __slots__ = ("address", "join", "purpose", "seq")

    def __init__(self, purpose: StreamPurpose, address: Address, join: bool = False, seq: int = 0) -> None:
        self.purpose = purpose
        self.address = address
        self.join = join
        self.seq = seq


class CoreState:
    """The state every part of the core reads and writes; :class:`~sidecar.gossip.core.GossipCore` sets it."""

    name: str
    address: Address
    tuning: GossipTuning
    cluster: str
    counters: GossipCounters
    tcp_fallback: bool
    reconnect: bool
    _rng: random.Random
    _envelope: Envelope
    _packet_size: int
    _local_state: Callable[[], bytes] | None
    _awareness: Awareness
    _table: MemberTable
    _queue: BroadcastQueue
    _suspicions: dict[str, Suspicion]
    _relays: dict[int, IndirectRelay]
    _streams: dict[int, PendingStream]
    _timers: list[tuple[float, int, int, Any]]
    _timer_seq: int
    _seq: int
    _token: int
    _probe: PendingProbe | None
    _incarnation: int
    _left: bool
    _leave_done: bool
    _user_version: int
    _user_seen: SeenVersions
    _wall_offset: float
    _admission: MemberAdmission
    _stuck: str | None
    _next_probe: float
    _next_gossip: float
    _next_push_pull: float
    _push_pull_armed: bool
    _next_reap: float
    _next_reconnect: float

    def _self(self) -> Member:
        me = self._table.get(self.name)
        assert me is not None, "a core always knows itself"
        return me

    def _alive_of_self(self) -> Alive:
        me = self._self()
        return Alive(me.incarnation, me.name, me.host, me.port, me.meta)

    def _num_nodes(self) -> int:
        return self._table.live_count

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & SEQ_MASK
        return self._seq

    def _next_token(self) -> int:
        self._token += 1
        return self._token

    def _add_timer(self, when: float, kind: int, key: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, key))
