"""Membership changes: alive, suspect and dead messages through the transition table (``state``), Lifeguard's
suspicion timers, refutation of accusations about ourselves, and the reaping of long-dead members.

A member that hears it is suspect or dead refutes: it raises its incarnation above the accuser's and gossips
that it is alive. An incarnation above the clock-derived ceiling is dropped (``incarnation``), so an
accusation can always be refuted; a member heard of only from others counts against its introducer until it
answers a probe of ours (``admission``)."""

from __future__ import annotations

from sidecar.gossip.corestate import ALIVE, DEAD, LEFT, LIVE, SUSPECT, TIMER_SUSPICION
from sidecar.gossip.dissemination import Dissemination
from sidecar.gossip.incarnation import INCARNATION_MAX, incarnation_ceiling
from sidecar.gossip.messages import Alive, Dead, Suspect, to_wire
from sidecar.gossip.outputs import (
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspect,
    MemberUpdated,
    Output,
)
from sidecar.gossip.state import Address, Input, Member, transition, updated
from sidecar.gossip.suspicion import Suspicion, confirmations_wanted, suspicion_timeout


def _knowers(src: Address | None, alive: Alive | None = None) -> tuple[Address, ...]:
    """Who holds a message already: its sender, and for an alive message the member it is about."""
    if alive is None:
        return () if src is None else (src,)
    subject = (alive.host, alive.port)
    return (subject,) if src is None or src == subject else (src, subject)


class Membership(Dissemination):
    """Alive, suspect and dead messages applied to the member table; refutation; suspicion timers; reaping."""

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
            if m.state in LIVE:
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
                self._add_timer(susp.deadline, TIMER_SUSPICION, (s.node, susp))
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
        self._add_timer(susp.deadline, TIMER_SUSPICION, (s.node, susp))
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
