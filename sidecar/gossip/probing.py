"""Failure detection (memberlist's probe): every probe interval, scaled by our own health (Lifeguard's
awareness), the next member in shuffled round-robin order gets a ping; without an ack within
``probe_timeout``, ``indirect_checks`` members are asked to ping it for us (and to nack if it stays silent)
and a TCP ping is tried; without any ack by the end of the interval the member becomes suspect."""

from __future__ import annotations

from sidecar.gossip.corestate import (
    ALIVE,
    LIVE,
    SUSPECT,
    TIMER_NACK,
    TIMER_RELAY_END,
    TIMER_STREAM,
    IndirectRelay,
    PendingProbe,
    PendingStream,
)
from sidecar.gossip.membership import Membership
from sidecar.gossip.messages import IndirectPing, Ping, ProbeAck, ProbeNack, Suspect, to_wire
from sidecar.gossip.outputs import OpenStream, Output, StreamPurpose
from sidecar.gossip.state import Address


class Probing(Membership):
    """The probe cycle and the answers to pings, indirect pings, acks and nacks."""

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
        target = self._table.next_probe_target(lambda m: m.name == me or m.state not in LIVE)
        if target is None:
            return
        seq = self._next_seq()
        self._probe = p = PendingProbe(seq, target, now, t.probe_timeout, interval)
        self.counters.probes += 1
        parts = [to_wire(Ping(seq, target.name))]
        if target.state is SUSPECT:
            # tell a suspect it is suspected, so it can refute at once
            parts.append(to_wire(Suspect(target.incarnation, target.name, me)))
        self._send(p.address, parts, out)

    def _probe_indirect(self, p: PendingProbe, now: float, out: list[Output]) -> None:
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
            self._streams[token] = PendingStream(StreamPurpose.PING, p.address, seq=p.seq)
            self._add_timer(p.end_at, TIMER_STREAM, token)
            self.counters.streams_out += 1
            frame = self._envelope.seal(to_wire(Ping(p.seq, target)))
            out.append(OpenStream(token, p.address, frame, p.end_at, StreamPurpose.PING))

    def _probe_ended(self, p: PendingProbe, now: float, out: list[Output]) -> None:
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

    def _on_ping(self, src: Address, msg: Ping, raw: bytes, now: float, out: list[Output]) -> None:
        if msg.node and msg.node != self.name:
            return  # meant for a member that used to live at this address
        self._send(src, [to_wire(ProbeAck(msg.seq))], out)

    def _on_indirect_ping(self, src: Address, msg: IndirectPing, raw: bytes, now: float, out: list[Output]) -> None:
        seq = self._next_seq()
        self._relays[seq] = IndirectRelay(src, msg.seq, msg.nack)
        t = self.tuning
        if msg.nack:
            self._add_timer(now + t.probe_timeout, TIMER_NACK, seq)
        self._add_timer(now + t.probe_interval, TIMER_RELAY_END, seq)
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
