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

The parts
---------
:class:`GossipCore` is one object assembled from one class per mechanism, each in its module and each
calling only the ones below it (see ``corestate``): the state and timers (``corestate``), dissemination
(``dissemination``), the membership transitions and suspicion (``membership``), the probe cycle
(``probing``) and push-pull (``pushpull``). This module holds the inputs, which dispatch to them, and the
public API; what the core returns is in ``outputs``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from sidecar.config.model import GossipTuning
from sidecar.gossip.admission import MemberAdmission
from sidecar.gossip.awareness import Awareness
from sidecar.gossip.broadcast import BroadcastQueue
from sidecar.gossip.corestate import ALIVE, SUSPECT, TIMER_NACK, TIMER_RELAY_END, TIMER_STREAM, TIMER_SUSPICION
from sidecar.gossip.envelope import Envelope, GossipRefusal, PacketRefused
from sidecar.gossip.errors import GossipDecodeError, GossipMessageTooLarge
from sidecar.gossip.incarnation import incarnation_ceiling
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
    PushPull,
    Suspect,
    UserMsg,
    from_wire,
    split_packet,
    to_wire,
)
from sidecar.gossip.outputs import GossipCounters, Output, StreamPurpose, SyncCompleted
from sidecar.gossip.probing import Probing
from sidecar.gossip.pushpull import PushPullSync
from sidecar.gossip.seen import USER_SEEN_FLOOR, SeenVersions
from sidecar.gossip.state import Address, Member, MemberSnapshot, MemberTable, MemberView, updated
from sidecar.gossip.suspicion import Suspicion

UDP_PACKET_SIZE = 1400  # bytes: under the 1500-byte Ethernet MTU with room for IP/UDP and tunnel headers


def _broadcast_key(msg: Message) -> Hashable | None:
    """The key a gossiped message is queued under (None: not a broadcast)."""
    if isinstance(msg, (Alive, Suspect, Dead)):
        return msg.node
    if isinstance(msg, UserMsg):
        return ("u", msg.origin, msg.key)
    return None


class GossipCore(Probing, PushPullSync):
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
            raise GossipMessageTooLarge("member metadata", len(meta), MAX_META)
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
        self._suspicions = {}
        self._relays = {}
        self._streams = {}
        self._timers = []
        self._timer_seq = 0
        self._seq = self._rng.randrange(1 << 31)
        self._token = 0
        self._probe = None
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
            raise GossipMessageTooLarge("member metadata", len(meta), MAX_META)
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
            raise GossipMessageTooLarge("user broadcast", len(raw), limit)
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

    def _on_timer(self, kind: int, key: Any, now: float, out: list[Output]) -> None:
        if kind == TIMER_SUSPICION:
            name: str = key[0]
            susp: Suspicion = key[1]
            if self._suspicions.get(name) is not susp or now < susp.deadline:
                return  # refuted, replaced, or an earlier deadline already fired
            del self._suspicions[name]
            m = self._table.get(name)
            if m is not None and m.state is SUSPECT and m.state_change == susp.start:
                self._on_dead(Dead(m.incarnation, name, self.name), None, now, out)
        elif kind == TIMER_NACK:
            relay = self._relays.get(key)
            if relay is not None and relay.nack:
                relay.nack = False
                self._send(relay.requester, [to_wire(ProbeNack(relay.seq))], out)
        elif kind == TIMER_RELAY_END:
            self._relays.pop(key, None)
        elif kind == TIMER_STREAM:
            stream = self._streams.pop(key, None)
            if stream is not None and stream.purpose is StreamPurpose.PUSH_PULL:
                self.counters.push_pull_failures += 1
                out.append(SyncCompleted(stream.address, stream.join, False))
