"""The SWIM core with Lifeguard: bytes and time in, commands and events out, no I/O, no clock.

Theory of operation
-------------------
The driver (``node.GossipNode``, or the simulator ``simnet.SimNetwork``) feeds the core four things,
each with the current time ``now``: UDP packets (:meth:`GossipCore.on_packet`), inbound TCP frames
(:meth:`GossipCore.on_stream`), the replies to TCP exchanges the core asked for
(:meth:`GossipCore.on_stream_reply`) and ticks (:meth:`GossipCore.on_tick`, due at
:meth:`GossipCore.next_deadline`). Each call returns a list of outputs: commands the driver carries out
(:class:`SendUdp`, :class:`OpenStream`) and events it hands to the layers above (member changes, user
messages, remote user state).

Failure detection (memberlist's probe): every probe interval, scaled by our own health (Lifeguard's
awareness), the next member in shuffled round-robin order gets a ping; without an ack within
``probe_timeout``, ``indirect_checks`` members are asked to ping it for us (and to nack if it stays silent)
and a TCP ping is tried; without any ack by the end of the interval the member becomes suspect.

Dissemination: alive, suspect, dead and user messages go to a transmit-limited queue and ride on every
packet we send (pings, acks) and on gossip rounds to ``gossip_nodes`` random members every
``gossip_interval``. Each message remembers who has it already (whoever we heard it from, the member an
alive message is about, the origin of a user message, whom we sent it to) and is never sent to them, so
its few transmissions all go to members that may not have it (see ``broadcast``). Push-pull over TCP
exchanges the whole table (and the user state) on join and every ``push_pull_interval``, scaled with the
cluster size; like Serf's reconnect, a push-pull also tries a dead member now and then, which heals
partitions.

Suspicion: a suspect gets Lifeguard's timer (``suspicion.Suspicion``), which shrinks with confirmations
from other members; at its end the member is declared dead. A member that hears it is suspect or dead
refutes: it raises its incarnation above the accuser's and gossips that it is alive.

Bounds on what a sender can make us hold (nothing on the wire proves who sent a message): an incarnation
above the clock-derived ceiling is dropped (``incarnation``), so an accusation can always be refuted; a
member heard of only from others counts against its introducer until it answers a probe of ours
(``admission``); the record of delivered user broadcasts is bounded in size and age (``seen``).
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.model import GossipTuning
from sidecar.gossip.admission import MemberAdmission
from sidecar.gossip.awareness import Awareness
from sidecar.gossip.broadcast import BroadcastQueue
from sidecar.gossip.envelope import Envelope, GossipRefusal, PacketRefused
from sidecar.gossip.errors import GossipDecodeError, MessageTooLarge
from sidecar.gossip.incarnation import INCARNATION_MAX, incarnation_ceiling
from sidecar.gossip.keyring import Keyring
from sidecar.gossip.messages import (
    COMPOUND_HEADER,
    COMPOUND_PER_PART,
    MAX_META,
    Alive,
    Dead,
    IndirectPing,
    Message,
    Ping,
    ProbeAck,
    ProbeNack,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
    compound_to_wire,
    from_wire,
    split_packet,
    to_wire,
)
from sidecar.gossip.seen import USER_SEEN_FLOOR, SeenVersions
from sidecar.gossip.state import (
    Address,
    Input,
    Member,
    MemberSnapshot,
    MemberState,
    MemberTable,
    MemberView,
    transition,
    updated,
)
from sidecar.gossip.suspicion import (
    Suspicion,
    confirmations_wanted,
    push_pull_scale,
    suspicion_timeout,
)

UDP_PACKET_SIZE = 1400  # bytes: under the 1500-byte Ethernet MTU with room for IP/UDP and tunnel headers

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT

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


# --------------------------------------------------------------------------------------- internals


class _Probe:
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


class _Relay:
    """An indirect ping we do for someone: their seq, where to answer, whether to nack."""

    __slots__ = ("nack", "requester", "seq")

    def __init__(self, requester: Address, seq: int, nack: bool) -> None:
        self.requester = requester
        self.seq = seq
        self.nack = nack


class _Stream:
    __slots__ = ("address", "join", "purpose", "seq")

    def __init__(self, purpose: StreamPurpose, address: Address, join: bool = False, seq: int = 0) -> None:
        self.purpose = purpose
        self.address = address
        self.join = join
        self.seq = seq


_T_SUSPICION, _T_NACK, _T_RELAY_END, _T_STREAM = range(4)
_LIVE = (ALIVE, SUSPECT)
_SEQ_MASK = 0xFFFFFFFF


def _broadcast_key(msg: Message) -> Hashable | None:
    """The key a gossiped message is queued under (None: not a broadcast)."""
    if isinstance(msg, (Alive, Suspect, Dead)):
        return msg.node
    if isinstance(msg, UserMsg):
        return ("u", msg.origin, msg.key)
    return None


def _knowers(src: Address | None, alive: Alive | None = None) -> tuple[Address, ...]:
    """Who holds a message already: its sender, and for an alive message the member it is about."""
    if alive is None:
        return () if src is None else (src,)
    subject = (alive.host, alive.port)
    return (subject,) if src is None or src == subject else (src, subject)


class GossipCore:
    """One member's SWIM + Lifeguard state machine.

    ``local_state`` is called for every push-pull we send; the partner's comes back as a
    :class:`RemoteState` event. ``user_version_start`` seeds the versions of our user broadcasts: a driver
    passes wall-clock microseconds, so a restarted process's broadcasts win over its previous life's.
    ``wall_offset`` is wall-clock seconds minus core time (the driver's ``wall() - monotonic()``); it
    places the incarnation ceiling (0 in simulations: the ceiling is then the headroom alone).
    """

    def __init__(
        self,
        name: str,
        address: Address,
        tuning: GossipTuning,
        *,
        now: float,
        cluster: str = "default",
        keyring: Keyring | None = None,
        meta: bytes = b"",
        local_state: Callable[[], bytes] | None = None,
        rng: random.Random | None = None,
        incarnation: int = 1,
        user_version_start: int = 0,
        tcp_fallback: bool = True,
        reconnect: bool = True,
        packet_size: int = UDP_PACKET_SIZE,
        wall_offset: float = 0.0,
    ) -> None:
        if len(meta) > MAX_META:
            raise MessageTooLarge("member metadata", len(meta), MAX_META)
        self.name = name
        self.address = address
        self.tuning = tuning
        self.cluster = cluster
        self.counters = GossipCounters()
        self.tcp_fallback = tcp_fallback
        self.reconnect = reconnect
        self._rng = rng if rng is not None else random.Random()
        self._envelope = Envelope(cluster, keyring)
        self._packet_size = packet_size
        self._local_state = local_state
        self._awareness = Awareness(tuning.awareness_max_multiplier)
        self._table = MemberTable(self._rng)
        self._queue = BroadcastQueue(tuning.retransmit_mult, self._num_nodes)
        self._suspicions: dict[str, Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._streams: dict[int, _Stream] = {}
        self._timers: list[tuple[float, int, int, Any]] = []
        self._timer_seq = 0
        self._seq = self._rng.randrange(1 << 31)
        self._token = 0
        self._probe: _Probe | None = None
        self._incarnation = incarnation
        self._left = False
        self._leave_done = False
        self._user_version = user_version_start
        self._user_seen = SeenVersions()
        self._wall_offset = wall_offset
        self._admission = MemberAdmission()
        self._stuck: str | None = None
        self._handlers: dict[type, Callable[[Address, Message, bytes, float, list[Output]], None]] = {
            Ping: self._on_ping,  # type: ignore[dict-item]
            IndirectPing: self._on_indirect_ping,  # type: ignore[dict-item]
            ProbeAck: self._on_ack,  # type: ignore[dict-item]
            ProbeNack: self._on_nack,  # type: ignore[dict-item]
            Suspect: self._on_suspect_packet,  # type: ignore[dict-item]
            Alive: self._on_alive_packet,  # type: ignore[dict-item]
            Dead: self._on_dead_packet,  # type: ignore[dict-item]
            UserMsg: self._on_user,  # type: ignore[dict-item]
        }
        self._table.put(Member(name, address[0], address[1], meta, incarnation, ALIVE, now))
        self._queue.queue(name, to_wire(self._alive_of_self()))
        # staggered starts, so members started together do not probe and gossip in lockstep
        t = tuning
        self._next_probe = now + self._rng.random() * t.probe_interval
        self._next_gossip = now + self._rng.random() * t.gossip_interval
        self._next_push_pull = (now + self._rng.random() * t.push_pull_interval if t.push_pull_interval > 0
                                else math.inf)
        self._push_pull_armed = False
        self._next_reap = now + t.probe_interval
        self._next_reconnect = (now + self._rng.random() * t.push_pull_interval
                                if reconnect and t.push_pull_interval > 0 else math.inf)

    # ------------------------------------------------------------------------------------ public API

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def stuck(self) -> str | None:
        """Why we can no longer refute an accusation (our incarnation is at its maximum), or None."""
        return self._stuck

    @property
    def unconfirmed_members(self) -> int:
        """Members heard of only from others, not yet confirmed by answering a probe of ours."""
        return len(self._admission)

    @property
    def user_seen_entries(self) -> int:
        """Records of delivered user broadcasts held (see ``seen``)."""
        return len(self._user_seen)

    @property
    def user_seen_evicted(self) -> int:
        """Records forgotten so far, for age or for room."""
        return self._user_seen.evicted

    def incarnation_ceiling(self, now: float) -> int:
        """The highest incarnation we accept from anyone at ``now`` (see ``incarnation``)."""
        return incarnation_ceiling(now + self._wall_offset)

    @property
    def health_score(self) -> int:
        """Lifeguard's awareness score: 0 is healthy; probing slows by ``score + 1``."""
        return self._awareness.score

    @property
    def left(self) -> bool:
        return self._left

    @property
    def leave_done(self) -> bool:
        """The leave message has been sent its full number of times (or nobody is left to tell)."""
        # once we have left we are no longer live ourselves: live_count counts only the others
        return self._leave_done or (self._left and self._table.live_count == 0)

    @property
    def keyring(self) -> Keyring | None:
        return self._envelope.keyring

    @property
    def known_members(self) -> int:
        """Members in the table in any state, ourselves included."""
        return len(self._table)

    @property
    def num_members(self) -> int:
        """Members alive or suspect, ourselves included."""
        return self._table.live_count

    def members(self) -> list[MemberView]:
        return sorted((m.view(self.cluster) for m in self._table), key=lambda v: v.name)

    def member(self, name: str) -> MemberView | None:
        m = self._table.get(name)
        return m.view(self.cluster) if m is not None else None

    def preload(self, snapshot: MemberSnapshot) -> None:
        """Install an already-converged membership, shared copy-on-write (simulations of big clusters).

        The snapshot must hold this member under its name, address and incarnation.
        """
        me = snapshot.members.get(self.name)
        if me is None or me.address != self.address or me.incarnation != self._incarnation:
            raise ValueError(f"the snapshot does not hold {self.name} as this core knows itself")
        self._table.preload(snapshot)
        self._queue.reset()

    def join(self, addresses: Iterable[Address], now: float) -> list[Output]:
        """Push-pull with each address; :class:`SyncCompleted` events (``join=True``) tell how it went."""
        out: list[Output] = []
        for address in addresses:
            if address != self.address:
                self._open_push_pull(address, True, now, out)
        return out

    def leave(self, now: float) -> list[Output]:
        """Say goodbye: a dead message about ourselves, sent its full number of times (see ``leave_done``)."""
        out: list[Output] = []
        if self._left:
            return out
        self._left = True
        self._probe = None
        me = self._self()
        self._on_dead(Dead(me.incarnation, self.name, self.name), None, now, out)
        self._gossip(now, out)
        return out

    def set_meta(self, meta: bytes) -> None:
        """Replace our metadata; spread with an alive message of a higher incarnation."""
        if len(meta) > MAX_META:
            raise MessageTooLarge("member metadata", len(meta), MAX_META)
        if not self._raise_incarnation(self._incarnation + 1):
            self._table.put(updated(self._self(), meta=meta))  # kept here; peers cannot be told
            return
        self._table.put(updated(self._self(), meta=meta, incarnation=self._incarnation))
        self._queue.queue(self.name, to_wire(self._alive_of_self()))

    @property
    def max_user_data(self) -> int:
        """The largest ``data`` a user broadcast may carry with an empty key (it must fit one packet)."""
        fixed = len(to_wire(UserMsg(self.name, "", 0, b"")))
        return self._packet_size - self._envelope.overhead - COMPOUND_HEADER - 2 * COMPOUND_PER_PART - fixed

    def broadcast_user(self, key: str, data: bytes) -> None:
        """Gossip ``data`` to every member as a :class:`UserMessage`; a newer one with the same key replaces it.

        Members deliver each (origin, key) once per version and pass it on, so it spreads like an alive
        message: to everyone in O(log n) gossip rounds. Larger state belongs in ``local_state``.
        """
        raw = to_wire(UserMsg(self.name, key, self._user_version + 1, data))
        limit = self._packet_size - self._envelope.overhead - COMPOUND_HEADER - 2 * COMPOUND_PER_PART
        if len(raw) > limit:
            raise MessageTooLarge("user broadcast", len(raw), limit)
        self._user_version += 1
        self._queue.queue(("u", self.name, key), raw)

    def next_deadline(self) -> float:
        """When ``on_tick`` has something to do next (core time)."""
        p = self._probe
        if self._left:
            when = math.inf
        elif p is None:
            when = self._next_probe
        else:
            when = p.end_at if p.indirect else p.indirect_at
        if self._next_push_pull < when:
            when = self._next_push_pull
        if self._table.dead_since and self._next_reconnect < when:
            when = self._next_reconnect
        if len(self._queue) and self._next_gossip < when:
            when = self._next_gossip
        if self._table.dead_since and self._next_reap < when:
            when = self._next_reap
        if self._timers and self._timers[0][0] < when:
            when = self._timers[0][0]
        return when

    # ---------------------------------------------------------------------------------------- inputs

    def on_tick(self, now: float) -> list[Output]:
        out: list[Output] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(timers)
            self._on_timer(kind, key, now, out)
        if not self._left:
            self._probe_tick(now, out)
        if now >= self._next_gossip:
            if len(self._queue):
                self._gossip(now, out)
            self._realign_gossip(now)
        if now >= self._next_push_pull:
            self._push_pull_tick(now, out)
        if now >= self._next_reconnect:
            self._reconnect_tick(now, out)
        if now >= self._next_reap:
            self._next_reap = now + self.tuning.probe_interval
            if self._table.dead_since:
                self._reap(now, out)
            self._user_seen.expire(now, max(USER_SEEN_FLOOR, 4 * len(self._table)))
        return out

    def on_packet(self, src: Address, data: bytes, now: float) -> list[Output]:
        """A UDP packet from ``src``."""
        counters = self.counters
        counters.packets_in += 1
        counters.bytes_in += len(data)
        out: list[Output] = []
        try:
            parts = split_packet(self._envelope.open(data))
        except PacketRefused as exc:
            counters.refused[exc.reason] += 1
            return out
        except GossipDecodeError:
            counters.refused[GossipRefusal.MALFORMED] += 1
            return out
        handlers = self._handlers
        for raw in parts:
            try:
                msg = from_wire(raw)
            except GossipDecodeError:
                counters.refused[GossipRefusal.MALFORMED] += 1
                continue
            handler = handlers.get(type(msg))
            if handler is None:  # push-pull only travels over TCP
                counters.refused[GossipRefusal.MALFORMED] += 1
                continue
            handler(src, msg, raw, now, out)
            key = _broadcast_key(msg)
            if key is not None:
                # news we spread too, old or new to us: the sender need not hear it from us
                self._queue.heard_from(key, raw, src)
        if self._next_gossip < now:
            self._realign_gossip(now)
        return out

    def on_stream(self, src: Address, data: bytes, now: float) -> tuple[bytes | None, list[Output]]:
        """An inbound TCP frame; returns the reply frame (None: close without one) and the outputs."""
        self.counters.streams_in += 1
        out: list[Output] = []
        try:
            msg = from_wire(self._envelope.open(data))
        except PacketRefused as exc:
            self.counters.refused[exc.reason] += 1
            return None, out
        except GossipDecodeError:
            self.counters.refused[GossipRefusal.MALFORMED] += 1
            return None, out
        if isinstance(msg, Ping):
            if msg.node and msg.node != self.name:
                return None, out
            return self._envelope.seal(to_wire(ProbeAck(msg.seq))), out
        if isinstance(msg, PushPull):
            # merge first: a restarted member refutes its old death in the very reply; new members
            # count against the peer's host (its source port is a fresh one for every connection)
            self._merge(msg, now, out, introducer=(src[0], 0))
            reply = self._push_pull_frame(join=False)
            if self._next_gossip < now:
                self._realign_gossip(now)
            return reply, out
        self.counters.refused[GossipRefusal.MALFORMED] += 1
        return None, out

    def on_stream_reply(self, token: int, data: bytes | None, now: float) -> list[Output]:
        """The reply to an :class:`OpenStream` (None when the exchange failed)."""
        out: list[Output] = []
        stream = self._streams.pop(token, None)
        if stream is None:
            return out  # too late: the deadline passed
        msg: Message | None = None
        if data is not None:
            try:
                msg = from_wire(self._envelope.open(data))
            except PacketRefused as exc:
                self.counters.refused[exc.reason] += 1
            except GossipDecodeError:
                self.counters.refused[GossipRefusal.MALFORMED] += 1
        if stream.purpose is StreamPurpose.PING:
            p = self._probe
            if isinstance(msg, ProbeAck) and p is not None and msg.seq == p.seq:
                p.tcp_ok = True
                self._admission.confirm(p.name)
            return out
        if isinstance(msg, PushPull):
            self._merge(msg, now, out, stream.address, introducer=None if stream.join else stream.address)
            out.append(SyncCompleted(stream.address, stream.join, True))
            if self._next_gossip < now:
                self._realign_gossip(now)
        else:
            self.counters.push_pull_failures += 1
            out.append(SyncCompleted(stream.address, stream.join, False))
        return out

    # ---------------------------------------------------------------------------------------- probing

    def _probe_tick(self, now: float, out: list[Output]) -> None:
        p = self._probe
        if p is not None:
            if not p.indirect and now >= p.indirect_at:
                self._probe_indirect(p, now, out)
            if now >= p.end_at:
                self._probe = None
                self._probe_ended(p, now, out)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now, out)

    def _start_probe(self, now: float, out: list[Output]) -> None:
        t = self.tuning
        interval = self._awareness.scale_timeout(t.probe_interval)
        self._next_probe = now + interval
        me = self.name
        target = self._table.next_probe_target(lambda m: m.name == me or m.state not in _LIVE)
        if target is None:
            return
        seq = self._next_seq()
        self._probe = p = _Probe(seq, target, now, t.probe_timeout, interval)
        self.counters.probes += 1
        parts = [to_wire(Ping(seq, target.name))]
        if target.state is SUSPECT:
            # tell a suspect it is suspected, so it can refute at once
            parts.append(to_wire(Suspect(target.incarnation, target.name, me)))
        self._send(p.address, parts, out)

    def _probe_indirect(self, p: _Probe, now: float, out: list[Output]) -> None:
        p.indirect = True
        me, target = self.name, p.name
        peers = self._table.random_members(
            self.tuning.indirect_checks, lambda m: m.state is ALIVE and m.name != me and m.name != target)
        if peers:
            raw = to_wire(IndirectPing(p.seq, target, p.address[0], p.address[1], True))
            for peer in peers:
                self._send(peer.address, [raw], out)
            p.expected_nacks = len(peers)
            self.counters.indirect_probes += 1
        if self.tcp_fallback:
            token = self._next_token()
            self._streams[token] = _Stream(StreamPurpose.PING, p.address, seq=p.seq)
            self._add_timer(p.end_at, _T_STREAM, token)
            self.counters.streams_out += 1
            frame = self._envelope.seal(to_wire(Ping(p.seq, target)))
            out.append(OpenStream(token, p.address, frame, p.end_at, StreamPurpose.PING))

    def _probe_ended(self, p: _Probe, now: float, out: list[Output]) -> None:
        if p.tcp_ok:
            # UDP is failing to this member but TCP works: not a reason to suspect it
            self.counters.tcp_fallback_saves += 1
            return
        # Lifeguard: members asked to help should nack; each missing nack hints the fault is ours
        delta = p.expected_nacks - p.nacks if p.expected_nacks else 1
        if delta > 0:
            self._awareness.apply_delta(delta)
        self.counters.probe_failures += 1
        self._on_suspect(Suspect(p.incarnation, p.name, self.name), None, now, out)

    # --------------------------------------------------------------------------------------- handlers

    def _on_ping(self, src: Address, msg: Ping, raw: bytes, now: float, out: list[Output]) -> None:
        if msg.node and msg.node != self.name:
            return  # meant for a member that used to live at this address
        self._send(src, [to_wire(ProbeAck(msg.seq))], out)

    def _on_indirect_ping(self, src: Address, msg: IndirectPing, raw: bytes, now: float, out: list[Output]) -> None:
        seq = self._next_seq()
        self._relays[seq] = _Relay(src, msg.seq, msg.nack)
        t = self.tuning
        if msg.nack:
            self._add_timer(now + t.probe_timeout, _T_NACK, seq)
        self._add_timer(now + t.probe_interval, _T_RELAY_END, seq)
        self._send((msg.host, msg.port), [to_wire(Ping(seq, msg.node))], out)

    def _on_ack(self, src: Address, msg: ProbeAck, raw: bytes, now: float, out: list[Output]) -> None:
        p = self._probe
        if p is not None and msg.seq == p.seq:
            if not p.indirect:
                self._awareness.apply_delta(-1)
            self._probe = None
            self._admission.confirm(p.name)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send(relay.requester, [to_wire(ProbeAck(relay.seq))], out)

    def _on_nack(self, src: Address, msg: ProbeNack, raw: bytes, now: float, out: list[Output]) -> None:
        p = self._probe
        if p is not None and msg.seq == p.seq:
            p.nacks += 1

    def _on_suspect_packet(self, src: Address, msg: Suspect, raw: bytes, now: float, out: list[Output]) -> None:
        if self._above_ceiling(msg.incarnation, now):
            return
        if msg.node == self.name and msg.incarnation < self._incarnation:
            self._answer_stale_accusation(src, out)
        self._on_suspect(msg, raw, now, out, src)

    def _on_alive_packet(self, src: Address, msg: Alive, raw: bytes, now: float, out: list[Output]) -> None:
        if self._above_ceiling(msg.incarnation, now):
            return
        self._on_alive(msg, raw, now, out, src, introducer=src)

    def _on_dead_packet(self, src: Address, msg: Dead, raw: bytes, now: float, out: list[Output]) -> None:
        if self._above_ceiling(msg.incarnation, now):
            return
        if msg.node == self.name and msg.incarnation < self._incarnation and not self._left:
            self._answer_stale_accusation(src, out)
        self._on_dead(msg, raw, now, out, src)

    def _answer_stale_accusation(self, src: Address, out: list[Output]) -> None:
        # we refuted this already, but the sender missed it (it would not pass on a stale rumour
        # otherwise): tell it directly rather than wait for the next push-pull
        self._send(src, [to_wire(self._alive_of_self())], out)

    def _on_user(self, src: Address, msg: UserMsg, raw: bytes, now: float, out: list[Output]) -> None:
        if msg.origin == self.name:
            if msg.version <= self._user_version:
                return  # our own, back from a round trip
        else:
            seen = self._user_seen
            if not seen.is_new(msg.origin, msg.key, msg.version):
                return
            seen.record(msg.origin, msg.key, msg.version, now, max(USER_SEEN_FLOOR, 4 * len(self._table)))
            out.append(UserMessage(msg.origin, msg.key, msg.data))
        origin = self._table.get(msg.origin)
        known_by = (src,) if origin is None or origin.address == src else (src, origin.address)
        self._queue.queue(("u", msg.origin, msg.key), raw, known_by=known_by)

    # ------------------------------------------------------------------------------ membership changes

    def _on_alive(self, a: Alive, raw: bytes | None, now: float, out: list[Output],
                  src: Address | None = None, introducer: Address | None = None, joiner: bool = False) -> None:
        """``src``: whom we heard it from (None: our own conclusion, or a push-pull we answered).
        ``introducer``: the source a new member counts against until it is confirmed (None: trusted, the
        push-pull of a join we made). ``joiner``: a member joining through us over TCP, introducing itself
        (the total cap does not apply to it, so a flood cannot keep real members from joining)."""
        is_local = a.node == self.name
        if is_local and self._left:
            return  # an alive of ours still in flight must not undo the leave
        m = self._table.get(a.node)
        if m is None:
            if introducer is not None:
                if not self._admission.admits(introducer, len(self._table), joiner):
                    self.counters.refused_member += 1
                    return
                self._admission.add(a.node, introducer)
            new = Member(a.node, a.host, a.port, a.meta, a.incarnation, ALIVE, now)
            self._table.put(new)
            self._queue.queue(a.node, raw if raw is not None else to_wire(a), known_by=_knowers(src, a))
            out.append(MemberJoined(new.view(self.cluster)))
            return
        reclaim = False
        if m.host != a.host or m.port != a.port:
            if m.state in _LIVE:
                # two processes claim one name: keep the one we know until it dies
                self.counters.address_conflicts += 1
                return
            reclaim = True  # a dead or departed member came back at a new address
        if is_local:
            if a.incarnation < m.incarnation or (a.incarnation == m.incarnation and a.meta == m.meta):
                return
            # someone holds a version of us we never sent (a previous life of ours): outbid it
            self._refute(a.incarnation, out)
            return
        if a.incarnation <= m.incarnation and not reclaim:
            return
        self._suspicions.pop(a.node, None)
        self._queue.queue(a.node, raw if raw is not None else to_wire(a), known_by=_knowers(src, a))
        state = transition(m.state, Input.ALIVE) or ALIVE
        new = Member(a.node, a.host, a.port, a.meta, a.incarnation, state,
                     m.state_change if m.state is ALIVE else now)
        self._table.put(new)
        if m.state in (DEAD, LEFT):
            out.append(MemberJoined(new.view(self.cluster)))
        elif m.state is SUSPECT:
            out.append(MemberAlive(new.view(self.cluster)))
        elif m.meta != a.meta or reclaim:
            out.append(MemberUpdated(new.view(self.cluster)))

    def _on_suspect(self, s: Suspect, raw: bytes | None, now: float, out: list[Output],
                    src: Address | None = None) -> None:
        m = self._table.get(s.node)
        if m is None or s.incarnation < m.incarnation:
            return
        susp = self._suspicions.get(s.node)
        if susp is not None:
            # one more member could not reach it: shorten the timer, and pass the confirmation on
            if susp.confirm(s.sender, now):
                self._queue.queue(s.node, raw if raw is not None else to_wire(s), known_by=_knowers(src))
                self._add_timer(susp.deadline, _T_SUSPICION, (s.node, susp))
            return
        new_state = transition(m.state, Input.SUSPECT)
        if new_state is None:
            return
        if s.node == self.name:
            self._refute(s.incarnation, out)
            return
        self._queue.queue(s.node, raw if raw is not None else to_wire(s), known_by=_knowers(src))
        new = updated(m, incarnation=s.incarnation, state=new_state, state_change=now)
        self._table.put(new)
        t = self.tuning
        n = self._table.live_count
        k = confirmations_wanted(t.suspicion_mult, n)
        minimum = suspicion_timeout(t.suspicion_mult, n, t.probe_interval)
        susp = Suspicion(s.sender, k, minimum, t.suspicion_max_timeout_mult * minimum, now)
        self._suspicions[s.node] = susp
        self._add_timer(susp.deadline, _T_SUSPICION, (s.node, susp))
        self.counters.suspicions += 1
        out.append(MemberSuspect(new.view(self.cluster)))

    def _on_dead(self, d: Dead, raw: bytes | None, now: float, out: list[Output],
                 src: Address | None = None) -> None:
        m = self._table.get(d.node)
        if m is None or d.incarnation < m.incarnation:
            return
        self._suspicions.pop(d.node, None)
        new_state = transition(m.state, Input.LEAVE if d.is_leave else Input.DEAD)
        if new_state is None:
            return  # already dead or gone
        wire = raw if raw is not None else to_wire(d)
        if d.node == self.name:
            if not self._left:
                self._refute(d.incarnation, out)
                return
            # nobody can repair a lost leave once we are gone (no refutation, no push-pull): it goes out its
            # full number of times even to members that had it already, as memberlist's does
            self._queue.queue(d.node, wire, self._on_leave_sent, every_send_counts=True)
        else:
            self._queue.queue(d.node, wire, known_by=_knowers(src))
        new = updated(m, incarnation=d.incarnation, state=new_state, state_change=now)
        self._table.put(new)
        if d.node == self.name:
            return
        if new_state is LEFT:
            out.append(MemberLeft(new.view(self.cluster)))
        else:
            self.counters.deaths += 1
            out.append(MemberDead(new.view(self.cluster)))

    def _refute(self, accused: int, out: list[Output]) -> None:
        # incarnation only grows; a refutation bumps ours above the accuser's
        if not self._raise_incarnation(max(self._incarnation, accused) + 1):
            return
        self._table.put(updated(self._self(), incarnation=self._incarnation))
        self._queue.queue(self.name, to_wire(self._alive_of_self()))
        # being suspected hints that we are the slow one (Lifeguard)
        self._awareness.apply_delta(1)
        self.counters.refutations += 1

    def _raise_incarnation(self, inc: int) -> bool:
        """Take incarnation ``inc``; False (and ``stuck`` set) when it would not fit the wire."""
        if inc > INCARNATION_MAX:
            self._stuck = (f"cannot refute: incarnation {inc} would pass the maximum {INCARNATION_MAX}"
                           " (a clock far in the future?)")
            return False
        self._incarnation = inc
        return True

    def _above_ceiling(self, incarnation: int, now: float) -> bool:
        if incarnation > incarnation_ceiling(now + self._wall_offset):
            self.counters.refused_incarnation += 1
            return True
        return False

    def _on_leave_sent(self) -> None:
        self._leave_done = True

    # ---------------------------------------------------------------------------------- dissemination

    def _gossip(self, now: float, out: list[Output]) -> None:
        me = self.name
        dead_window = self.tuning.gossip_to_the_dead_time

        def target(m: Member) -> bool:
            if m.name == me:
                return False
            if m.state is ALIVE or m.state is SUSPECT:
                return True
            # the dead hear about it a while longer, so a member declared dead by mistake can refute
            return m.state is DEAD and now - m.state_change <= dead_window

        queue = self._queue
        if self._table.live_count - 1 <= queue.widest_known_by:
            # so few members that some news may be known by everyone we could tell: forget it
            queue.drop_known_by_all([m.address for m in self._table if target(m)])
        budget = self._packet_size - self._envelope.overhead - COMPOUND_HEADER
        for m in self._table.random_members(self.tuning.gossip_nodes, target):
            if not len(queue):
                return
            msgs = queue.get(COMPOUND_PER_PART, budget, to=m.address)
            if msgs:
                self._emit(m.address, compound_to_wire(msgs), out)

    def _realign_gossip(self, now: float) -> None:
        gi = self.tuning.gossip_interval
        behind = now - self._next_gossip
        if behind >= 0:
            self._next_gossip += (math.floor(behind / gi) + 1) * gi

    def _send(self, address: Address, parts: list[bytes], out: list[Output]) -> None:
        """Send messages to one member, with as many broadcasts piggybacked as fit (memberlist's sendMsg)."""
        room = (self._packet_size - self._envelope.overhead - COMPOUND_HEADER
                - sum(len(p) + COMPOUND_PER_PART for p in parts))
        if len(self._queue) and room > COMPOUND_PER_PART:
            extra = self._queue.get(COMPOUND_PER_PART, room, to=address)
            if extra:
                parts = parts + extra[: 255 - len(parts)]
        self._emit(address, compound_to_wire(parts), out)

    def _emit(self, address: Address, payload: bytes, out: list[Output]) -> None:
        data = self._envelope.seal(payload)
        self.counters.packets_out += 1
        self.counters.bytes_out += len(data)
        out.append(SendUdp(address, data))

    # -------------------------------------------------------------------------------------- push-pull

    def _push_pull_tick(self, now: float, out: list[Output]) -> None:
        t = self.tuning
        self._next_push_pull = now + push_pull_scale(t.push_pull_interval, self._table.live_count)
        if not self._push_pull_armed:
            # memberlist's order: a random stagger within one interval, then a full (scaled) interval
            self._push_pull_armed = True
            return
        if self._left:
            return
        me = self.name
        peers = self._table.random_members(1, lambda m: m.state is ALIVE and m.name != me)
        if peers:
            self._open_push_pull(peers[0].address, False, now, out)

    def _reconnect_tick(self, now: float, out: list[Output]) -> None:
        self._next_reconnect = now + self.tuning.push_pull_interval
        if self._left:
            return
        dead = [name for name in self._table.dead_since if self._is_dead(name)]
        # Serf's reconnect: every (unscaled) push-pull interval, push-pull with a dead member with
        # probability dead/alive; cheap for one crash in a big cluster, and it heals partitions
        if dead and self._rng.random() < len(dead) / max(1, self._table.live_count - 1):
            m = self._table.get(dead[int(self._rng.random() * len(dead))])
            if m is not None:
                self._open_push_pull(m.address, False, now, out)

    def _is_dead(self, name: str) -> bool:
        m = self._table.get(name)
        return m is not None and m.state is DEAD

    def _open_push_pull(self, address: Address, join: bool, now: float, out: list[Output]) -> None:
        token = self._next_token()
        deadline = now + self.tuning.tcp_timeout
        self._streams[token] = _Stream(StreamPurpose.PUSH_PULL, address, join=join)
        self._add_timer(deadline, _T_STREAM, token)
        self.counters.push_pulls += 1
        self.counters.streams_out += 1
        out.append(OpenStream(token, address, self._push_pull_frame(join), deadline, StreamPurpose.PUSH_PULL))

    def _push_pull_frame(self, join: bool) -> bytes:
        states = tuple(PushNodeState(m.name, m.host, m.port, m.meta, m.incarnation, m.state) for m in self._table)
        user = self._local_state() if self._local_state is not None else b""
        return self._envelope.seal(to_wire(PushPull(join, states, user)))

    def _merge(self, pp: PushPull, now: float, out: list[Output], src: Address | None = None,
               introducer: Address | None = None) -> None:
        """``src``: the partner's gossip address when we know it (a push-pull we started);
        ``introducer``: what new members count against (None: a join's seed, trusted)."""
        table = self._table
        ceiling = incarnation_ceiling(now + self._wall_offset)
        # a join through us: the first new member at the partner's own host is the joiner itself
        joiner_host = introducer[0] if pp.join and introducer is not None else None
        for r in pp.states:
            if r.incarnation > ceiling:
                self.counters.refused_incarnation += 1
                continue
            if r.state is ALIVE:
                m = table.get(r.name)
                if (m is not None and m.state is ALIVE and m.incarnation >= r.incarnation
                        and r.name != self.name and m.host == r.host and m.port == r.port):
                    continue  # nothing new (the common case)
                joiner = r.host == joiner_host and m is None
                if joiner:
                    joiner_host = None
                self._on_alive(Alive(r.incarnation, r.name, r.host, r.port, r.meta), None, now, out, src,
                               introducer, joiner)
            elif r.state is LEFT:
                self._on_dead(Dead(r.incarnation, r.name, r.name), None, now, out, src)
            else:
                # a remote verdict of death is only a suspicion here: we run our own timer
                # (no src: our suspicion is news to the partner, a confirmation if it suspects too)
                self._on_suspect(Suspect(r.incarnation, r.name, self.name), None, now, out)
        out.append(RemoteState(pp.user_state, pp.join))

    # ----------------------------------------------------------------------------------------- timers

    def _add_timer(self, when: float, kind: int, key: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, key))

    def _on_timer(self, kind: int, key: Any, now: float, out: list[Output]) -> None:
        if kind == _T_SUSPICION:
            name: str = key[0]
            susp: Suspicion = key[1]
            if self._suspicions.get(name) is not susp or now < susp.deadline:
                return  # refuted, replaced, or an earlier deadline already fired
            del self._suspicions[name]
            m = self._table.get(name)
            if m is not None and m.state is SUSPECT and m.state_change == susp.start:
                self._on_dead(Dead(m.incarnation, name, self.name), None, now, out)
        elif kind == _T_NACK:
            relay = self._relays.get(key)
            if relay is not None and relay.nack:
                relay.nack = False
                self._send(relay.requester, [to_wire(ProbeNack(relay.seq))], out)
        elif kind == _T_RELAY_END:
            self._relays.pop(key, None)
        elif kind == _T_STREAM:
            stream = self._streams.pop(key, None)
            if stream is not None and stream.purpose is StreamPurpose.PUSH_PULL:
                self.counters.push_pull_failures += 1
                out.append(SyncCompleted(stream.address, stream.join, False))

    def _reap(self, now: float, out: list[Output]) -> None:
        limit = self.tuning.dead_reap_time
        for name, since in list(self._table.dead_since.items()):
            if now - since >= limit and name != self.name:
                m = self._table.remove(name)
                self._user_seen.forget_origin(name)
                self._admission.forget(name)
                self._suspicions.pop(name, None)
                if m is not None:
                    out.append(MemberReaped(m.view(self.cluster)))

    # ---------------------------------------------------------------------------------------- helpers

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
        self._seq = (self._seq + 1) & _SEQ_MASK
        return self._seq

    def _next_token(self) -> int:
        self._token += 1
        return self._token


def member_events(outputs: Sequence[Output]) -> list[MemberEvent]:
    """The membership events among ``outputs`` (a convenience for drivers and tests)."""
    kinds = (MemberJoined, MemberUpdated, MemberSuspect, MemberAlive, MemberDead, MemberLeft, MemberReaped)
    return [o for o in outputs if isinstance(o, kinds)]
