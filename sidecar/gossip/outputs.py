"""What the gossip core returns: the commands its driver carries out (:class:`SendUdp`, :class:`OpenStream`),
the events it hands to the layers above (member changes, user messages, remote user state, finished
push-pulls), and the counters it keeps for metrics. Plain frozen values, no behaviour.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from sidecar.gossip.envelope import GossipRefusal
from sidecar.gossip.state import Address, MemberView

# ------------------------------------------------------------------------------------------ commands


class StreamPurpose(enum.Enum):
    PUSH_PULL = "push-pull"
    PING = "ping"  # the TCP fallback probe


@dataclass(frozen=True, slots=True)
class SendUdp:
    address: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Connect over TCP, send ``data`` as one frame, read one reply frame, and hand it to
    ``on_stream_reply(token, reply_or_None, now)``; give up at ``deadline`` (core time)."""

    token: int
    address: Address
    data: bytes
    deadline: float
    purpose: StreamPurpose


# -------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class MemberJoined:
    member: MemberView


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """Metadata or address changed (the member gossiped a new alive message)."""

    member: MemberView


@dataclass(frozen=True, slots=True)
class MemberSuspect:
    member: MemberView


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A suspect member refuted the suspicion."""

    member: MemberView


@dataclass(frozen=True, slots=True)
class MemberDead:
    member: MemberView


@dataclass(frozen=True, slots=True)
class MemberLeft:
    member: MemberView


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """A dead or left member was forgotten after ``dead_reap_time``."""

    member: MemberView


@dataclass(frozen=True, slots=True)
class UserMessage:
    """A user broadcast from ``origin``, delivered once per (origin, key, version)."""

    origin: str
    key: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RemoteState:
    """The user state a push-pull partner sent (its ``local_state()``), to merge into ours."""

    data: bytes
    join: bool


@dataclass(frozen=True, slots=True)
class SyncCompleted:
    """A push-pull we started finished; ``ok`` is False when it failed or timed out."""

    address: Address
    join: bool
    ok: bool


Command = SendUdp | OpenStream
MemberEvent = MemberJoined | MemberUpdated | MemberSuspect | MemberAlive | MemberDead | MemberLeft | MemberReaped
Event = MemberEvent | UserMessage | RemoteState | SyncCompleted
Output = Command | Event


@dataclass(slots=True)
class GossipCounters:
    """Monotonic counters for metrics (``sidecar_gossip_*``)."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    streams_in: int = 0
    streams_out: int = 0
    probes: int = 0
    indirect_probes: int = 0
    probe_failures: int = 0
    tcp_fallback_saves: int = 0
    suspicions: int = 0
    refutations: int = 0
    deaths: int = 0
    push_pulls: int = 0
    push_pull_failures: int = 0
    address_conflicts: int = 0
    refused_incarnation: int = 0  # suspect/alive/dead messages above the incarnation ceiling
    refused_member: int = 0  # new members over the unconfirmed caps of their introducer or in total
    refused: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in GossipRefusal})

    def snapshot(self) -> dict[str, int]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "refused"}
        out.update({f"refused_{reason}": count for reason, count in self.refused.items()})
        return out


def member_events(outputs: Sequence[Output]) -> list[MemberEvent]:
    """The membership events among ``outputs`` (a convenience for drivers and tests)."""
    kinds = (MemberJoined, MemberUpdated, MemberSuspect, MemberAlive, MemberDead, MemberLeft, MemberReaped)
    return [o for o in outputs if isinstance(o, kinds)]
