"""Dissemination: alive, suspect, dead and user messages ride a transmit-limited queue, piggybacked on every
packet we send (pings, acks) and on gossip rounds to ``gossip_nodes`` random members every ``gossip_interval``
(see ``broadcast``); user broadcasts are delivered once per (origin, key, version) and passed on."""

from __future__ import annotations

import math

from sidecar.gossip.corestate import ALIVE, DEAD, SUSPECT, CoreState
from sidecar.gossip.messages import COMPOUND_HEADER, COMPOUND_PER_PART, UserMsg, compound_to_wire
from sidecar.gossip.outputs import Output, SendUdp, UserMessage
from sidecar.gossip.seen import USER_SEEN_FLOOR
from sidecar.gossip.state import Address, Member


class Dissemination(CoreState):
    """Gossip rounds, piggybacking on our packets, and the delivery of user broadcasts."""

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
