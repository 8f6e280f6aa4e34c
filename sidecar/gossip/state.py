"""The member table: who we know, at which incarnation, in which state.

Theory of operation
-------------------
A member is ``alive``, ``suspect``, ``dead`` (declared by others after a suspicion timed out) or
``left`` (it said goodbye itself). What may move a member between states is the table
:data:`TRANSITIONS`; *whether* a message applies is decided first by incarnation numbers, which only
grow, and which only the member itself may raise above what others claimed (a refutation):

* ``alive(i)`` wins over anything held at an incarnation ``< i``;
* ``suspect(i)`` and ``dead(i)`` win over ``alive`` held at an incarnation ``<= i``.

Records are immutable and replaced on change, so simulations can share one snapshot between
thousands of cores (copy-on-write) and nobody ever sees a half-updated record.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

Address = tuple[str, int]


class MemberState(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class Input(enum.Enum):
    """What a message says about a member, once its incarnation made it applicable."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEAVE = "leave"


# (current state, input) -> new state; an input missing here is ignored and changes nothing.
# A suspect stays suspect on a further suspicion (it only confirms the timer); dead and left members
# only come back through an alive message of a higher incarnation. A member declared dead that then says
# goodbye itself (a leave of at least the dead incarnation: its shutdown was slow, starved or partitioned)
# is left, as Serf's forced leave: it is not called back as a failed member, and its peers see it leave.
TRANSITIONS: dict[tuple[MemberState, Input], MemberState] = {
    (MemberState.ALIVE, Input.ALIVE): MemberState.ALIVE,
    (MemberState.SUSPECT, Input.ALIVE): MemberState.ALIVE,
    (MemberState.DEAD, Input.ALIVE): MemberState.ALIVE,
    (MemberState.LEFT, Input.ALIVE): MemberState.ALIVE,
    (MemberState.ALIVE, Input.SUSPECT): MemberState.SUSPECT,
    (MemberState.SUSPECT, Input.SUSPECT): MemberState.SUSPECT,
    (MemberState.ALIVE, Input.DEAD): MemberState.DEAD,
    (MemberState.SUSPECT, Input.DEAD): MemberState.DEAD,
    (MemberState.ALIVE, Input.LEAVE): MemberState.LEFT,
    (MemberState.SUSPECT, Input.LEAVE): MemberState.LEFT,
    (MemberState.DEAD, Input.LEAVE): MemberState.LEFT,
}


def transition(state: MemberState, event: Input) -> MemberState | None:
    """The state after ``event``, or None when the event does not apply to a member in ``state``."""
    return TRANSITIONS.get((state, event))


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node knows it (internal, immutable; replaced on every change)."""

    name: str
    host: str
    port: int
    meta: bytes
    incarnation: int
    state: MemberState
    state_change: float  # core time of the last state change

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def view(self, cluster: str) -> MemberView:
        return MemberView(self.name, self.host, self.port, self.state, self.incarnation, cluster, self.meta)


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member as the rest of the sidecar sees it (admin ``/members``, catalog, DNS)."""

    name: str
    address: str
    port: int
    state: MemberState
    incarnation: int
    cluster: str
    meta: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "state": self.state.value,
            "incarnation": self.incarnation,
            "cluster": self.cluster,
        }


_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    """A whole membership to preload into many cores at once (simulations of large clusters)."""

    members: dict[str, Member]
    order: list[str]
    live: int
    dead_since: dict[str, float]

    @classmethod
    def of(cls, members: Iterable[tuple[str, Address, int, bytes]], now: float) -> MemberSnapshot:
        """Alive members, as ``(name, address, incarnation, meta)``."""
        table = {
            name: Member(name, addr[0], addr[1], meta, inc, MemberState.ALIVE, now)
            for name, addr, inc, meta in members
        }
        return cls(table, list(table), len(table), {})


class MemberTable:
    """Members by name, the live count, and the shuffled round-robin probe order (memberlist's)."""

    __slots__ = ("_dead_since", "_live", "_members", "_order", "_order_shared", "_probe_base", "_probe_index",
                 "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._members: dict[str, Member] = {}
        self._order: list[str] = []
        self._order_shared = False
        self._probe_index = 0
        self._probe_base = 0  # the shared order is walked from a random start, wrapping once
        self._live = 0
        self._dead_since: dict[str, float] = {}

    def preload(self, snapshot: MemberSnapshot) -> None:
        """Take over a snapshot: the dict is copied, the probe order shared until we change it."""
        self._members = dict(snapshot.members)
        self._order = snapshot.order
        self._order_shared = True
        # a random start, wrapping around once, spreads the probers of one shared order like independent
        # shuffles would: in every round each member is probed once by each other member
        self._probe_index = 0
        self._probe_base = self._rng.randrange(len(self._order)) if self._order else 0
        self._live = snapshot.live
        self._dead_since = dict(snapshot.dead_since)

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    @property
    def live_count(self) -> int:
        """Members alive or suspect, ourselves included: memberlist's estimate of the cluster size."""
        return self._live

    @property
    def dead_since(self) -> dict[str, float]:
        """Dead or left members and when they became so (read-only for callers)."""
        return self._dead_since

    def put(self, member: Member) -> Member | None:
        """Insert or replace a record; returns the previous one."""
        old = self._members.get(member.name)
        self._members[member.name] = member
        was_live = old is not None and old.state in _LIVE
        is_live = member.state in _LIVE
        self._live += int(is_live) - int(was_live)
        if is_live:
            self._dead_since.pop(member.name, None)
        elif old is None or old.state in _LIVE:
            self._dead_since[member.name] = member.state_change
        if old is None:
            # a random slot keeps the failure-detection bound low for newcomers (memberlist does the same)
            self._own_order()
            n = len(self._order)
            offset = self._rng.randrange(n + 1)
            self._order.append(member.name)
            self._order[offset], self._order[n] = self._order[n], self._order[offset]
        return old

    def remove(self, name: str) -> Member | None:
        """Forget a member (reaping); its slot in the probe order is dropped at the next wrap."""
        old = self._members.pop(name, None)
        if old is not None:
            if old.state in _LIVE:
                self._live -= 1
            self._dead_since.pop(name, None)
        return old

    def next_probe_target(self, skip: Callable[[Member], bool]) -> Member | None:
        """The next member to probe in shuffled round-robin order; reshuffles on wrap-around."""
        checked = 0
        total = len(self._order)
        while checked <= total:
            if self._probe_index >= len(self._order):
                self._reshuffle()
                checked += 1
                total = len(self._order)
                if not self._order:
                    return None
            name = self._order[(self._probe_index + self._probe_base) % len(self._order)]
            self._probe_index += 1
            checked += 1
            member = self._members.get(name)
            if member is not None and not skip(member):
                return member
        return None

    def random_members(self, k: int, accept: Callable[[Member], bool]) -> list[Member]:
        """Up to ``k`` distinct random members ``accept`` takes (memberlist's kRandomNodes).

        Fewer than ``k`` only when fewer are acceptable: random draws with replacement can miss an acceptable
        member however many they are (in a cluster of two, 3n = 6 draws all land on ourselves once in 64),
        so a scan in table order picks up whatever the draws missed.
        """
        order = self._order
        n = len(order)
        chosen: list[Member] = []
        if k <= 0 or n == 0:
            return chosen
        rand = self._rng.random
        # 3n draws: a handful when most members are acceptable, the common case in large clusters
        for _ in range(3 * n):
            member = self._members.get(order[int(rand() * n)])
            if member is None or any(c is member for c in chosen) or not accept(member):
                continue
            chosen.append(member)
            if len(chosen) >= k:
                return chosen
        for name in order:
            member = self._members.get(name)
            if member is None or any(c is member for c in chosen) or not accept(member):
                continue
            chosen.append(member)
            if len(chosen) >= k:
                break
        return chosen

    def names(self) -> Sequence[str]:
        return list(self._members)

    def _own_order(self) -> None:
        if self._order_shared:
            base = self._probe_base
            self._order = self._order[base:] + self._order[:base]
            self._probe_base = 0
            self._order_shared = False

    def _reshuffle(self) -> None:
        self._order = [name for name in self._members]
        self._order_shared = False
        self._rng.shuffle(self._order)
        self._probe_index = 0
        self._probe_base = 0


def updated(member: Member, **changes: Any) -> Member:
    """A copy of ``member`` with ``changes`` (records are never changed in place)."""
    return replace(member, **changes)
