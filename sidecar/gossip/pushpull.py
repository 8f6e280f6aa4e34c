"""Push-pull: the whole member table (and the user state) exchanged over TCP on join and every
``push_pull_interval``, scaled with the cluster size, and merged record by record through the membership
transitions; like Serf's reconnect, a push-pull also tries a dead member now and then, which heals
partitions."""

from __future__ import annotations

from sidecar.gossip.corestate import ALIVE, DEAD, LEFT, TIMER_STREAM, PendingStream
from sidecar.gossip.incarnation import incarnation_ceiling
from sidecar.gossip.membership import Membership
from sidecar.gossip.messages import Alive, Dead, PushNodeState, PushPull, Suspect, to_wire
from sidecar.gossip.outputs import OpenStream, Output, RemoteState, StreamPurpose
from sidecar.gossip.state import Address
from sidecar.gossip.suspicion import push_pull_scale


class PushPullSync(Membership):
    """Push-pull and reconnect: whole tables exchanged over TCP and merged."""

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
        self._streams[token] = PendingStream(StreamPurpose.PUSH_PULL, address, join=join)
        self._add_timer(deadline, TIMER_STREAM, token)
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
