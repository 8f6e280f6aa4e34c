"""Many gossip cores on a simulated network: seeded, no sockets, no clock (memberlist's mock transport).

Time is the simulation's own: an event heap of packet arrivals, TCP exchanges and core ticks, each core
woken exactly at its :meth:`GossipCore.next_deadline`. UDP packets are lost with probability ``loss`` and
delayed by ``latency`` plus uniform ``jitter``; TCP exchanges see the same loss on each of their segments
and pay a retransmission timeout (``tcp_rto``, doubling) per lost segment, so a TCP fallback probe under
loss is slow rather than magic. Partitions drop everything between groups; a killed member drops
everything addressed to it, and a TCP connection to it is refused at once.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.model import GossipTuning
from sidecar.gossip.core import GossipCore
from sidecar.gossip.outputs import Event, OpenStream, Output, SendUdp
from sidecar.gossip.state import Address, MemberSnapshot

SIM_PORT = 7946

EventListener = Callable[[float, str, Event], None]

_TICK, _PACKET, _STREAM, _REPLY = range(4)


@dataclass(slots=True)
class SimNode:
    name: str
    address: Address
    core: GossipCore
    generation: int = 0
    alive: bool = True
    scheduled: float = math.inf
    group: int = 0


@dataclass(slots=True)
class SimStats:
    packets_sent: int = 0
    packets_lost: int = 0
    packets_blocked: int = 0  # by a partition or a dead receiver
    streams: int = 0
    streams_failed: int = 0
    events_processed: int = 0


@dataclass
class SimNetwork:
    tuning: GossipTuning
    seed: int = 0
    loss: float = 0.0
    latency: float = 0.0005
    jitter: float = 0.0005
    tcp_rto: float = 1.0
    cluster: str = "sim"
    now: float = 0.0
    listeners: list[EventListener] = field(default_factory=list)
    core_options: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.nodes: dict[str, SimNode] = {}
        self.by_address: dict[Address, SimNode] = {}
        self.stats = SimStats()
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0

    # ---------------------------------------------------------------------------------------- building

    def _core(self, name: str, now: float, meta: bytes, local_state: Callable[[], bytes] | None) -> GossipCore:
        return GossipCore(name, (name, SIM_PORT), self.tuning, now=now, cluster=self.cluster, meta=meta,
                          local_state=local_state, rng=random.Random(self.rng.getrandbits(64)),
                          **self.core_options)  # type: ignore[arg-type]

    def add_node(self, name: str, *, join: Iterable[str] = (), meta: bytes = b"",
                 local_state: Callable[[], bytes] | None = None) -> SimNode:
        """Start a member now; it joins through the named members (push-pull over simulated TCP)."""
        old = self.nodes.get(name)
        core = self._core(name, self.now, meta, local_state)
        node = SimNode(name, (name, SIM_PORT), core, generation=(old.generation + 1) if old else 0,
                       group=old.group if old else 0)
        self.nodes[name] = node
        self.by_address[node.address] = node
        outputs = core.join([(peer, SIM_PORT) for peer in join], self.now)
        self._carry_out(node, outputs)
        self._schedule(node)
        return node

    def add_converged(self, names: Iterable[str], meta: bytes = b"") -> None:
        """Start members that already know each other (one shared snapshot): big clusters in seconds."""
        names = list(names)
        snapshot = MemberSnapshot.of(((n, (n, SIM_PORT), 1, meta) for n in names), self.now)
        for name in names:
            core = self._core(name, self.now, meta, None)
            core.preload(snapshot)
            node = SimNode(name, (name, SIM_PORT), core)
            self.nodes[name] = node
            self.by_address[node.address] = node
            self._schedule(node)

    def kill(self, name: str) -> None:
        """Crash a member: it stops at once, without a word to anyone."""
        node = self.nodes[name]
        node.alive = False
        node.generation += 1
        node.scheduled = math.inf

    def restart(self, name: str, join: Iterable[str]) -> SimNode:
        """A crashed member's process starts again under the same name and address, incarnation 1."""
        return self.add_node(name, join=join)

    def leave(self, name: str) -> None:
        node = self.nodes[name]
        self._carry_out(node, node.core.leave(self.now))
        self._schedule(node)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: members in different groups (group 0: everyone not named) cannot talk."""
        for node in self.nodes.values():
            node.group = 0
        for index, group in enumerate(groups, start=1):
            for name in group:
                self.nodes[name].group = index

    def heal(self) -> None:
        for node in self.nodes.values():
            node.group = 0

    def alive_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    # ----------------------------------------------------------------------------------------- running

    def run_until(self, until: float) -> None:
        heap = self._heap
        stats = self.stats
        while heap and heap[0][0] <= until:
            when, _, kind, payload = heapq.heappop(heap)
            self.now = when
            stats.events_processed += 1
            if kind == _TICK:
                node: SimNode = payload[0]
                if node.generation != payload[1] or not node.alive or node.scheduled != when:
                    continue
                node.scheduled = math.inf
                self._carry_out(node, node.core.on_tick(when))
                self._schedule(node)
            elif kind == _PACKET:
                receiver = self.by_address.get(payload[0])
                if receiver is None or not receiver.alive:
                    continue
                self._carry_out(receiver, receiver.core.on_packet(payload[1], payload[2], when))
                self._schedule(receiver)
            elif kind == _STREAM:
                self._serve_stream(*payload)
            else:
                client: SimNode = payload[0]
                if client.generation != payload[1] or not client.alive:
                    continue
                self._carry_out(client, client.core.on_stream_reply(payload[2], payload[3], when))
                self._schedule(client)
        self.now = max(self.now, until)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    # ---------------------------------------------------------------------------------------- plumbing

    def _push(self, when: float, kind: int, payload: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, payload))

    def _schedule(self, node: SimNode) -> None:
        if not node.alive:
            return
        when = node.core.next_deadline()
        if when < node.scheduled:
            when = max(when, self.now)
            node.scheduled = when
            self._push(when, _TICK, (node, node.generation))

    def _carry_out(self, node: SimNode, outputs: list[Output]) -> None:
        rng = self.rng
        for out in outputs:
            if type(out) is SendUdp:
                self.stats.packets_sent += 1
                dst = self.by_address.get(out.address)
                if dst is None or not dst.alive or dst.group != node.group:
                    self.stats.packets_blocked += 1
                    continue
                if self.loss and rng.random() < self.loss:
                    self.stats.packets_lost += 1
                    continue
                delay = self.latency + self.jitter * rng.random()
                self._push(self.now + delay, _PACKET, (out.address, node.address, out.data))
            elif type(out) is OpenStream:
                self._open_stream(node, out)
            else:
                for listener in self.listeners:
                    listener(self.now, node.name, out)  # type: ignore[arg-type]

    def _segment_delay(self, segments: int) -> float:
        """One-way time of ``segments`` TCP segments, each retransmitted after a doubling RTO when lost."""
        delay = 0.0
        for _ in range(segments):
            delay += self.latency + self.jitter * self.rng.random()
            rto = self.tcp_rto
            while self.loss and self.rng.random() < self.loss:
                delay += rto
                rto *= 2
                if rto > 60:
                    return math.inf
        return delay

    def _open_stream(self, node: SimNode, cmd: OpenStream) -> None:
        self.stats.streams += 1
        dst = self.by_address.get(cmd.address)
        if dst is None or not dst.alive:
            # nothing listens there any more: refused after a round trip
            self.stats.streams_failed += 1
            self._push(self.now + 2 * self.latency, _REPLY, (node, node.generation, cmd.token, None))
            return
        if dst.group != node.group:
            self.stats.streams_failed += 1
            self._push(cmd.deadline, _REPLY, (node, node.generation, cmd.token, None))
            return
        # SYN, SYN-ACK, then the request: three segments before the server reads it
        arrival = self.now + self._segment_delay(3)
        if arrival > cmd.deadline:
            self.stats.streams_failed += 1
            self._push(cmd.deadline, _REPLY, (node, node.generation, cmd.token, None))
            return
        self._push(arrival, _STREAM, (dst, dst.generation, node, node.generation, cmd))

    def _serve_stream(self, dst: SimNode, dst_generation: int, src: SimNode, src_generation: int,
                      cmd: OpenStream) -> None:
        if dst.generation != dst_generation or not dst.alive:
            self._push(self.now + self.latency, _REPLY, (src, src_generation, cmd.token, None))
            return
        reply, outputs = dst.core.on_stream(src.address, cmd.data, self.now)
        self._carry_out(dst, outputs)
        self._schedule(dst)
        arrival = self.now + self._segment_delay(1)
        if reply is None or arrival > cmd.deadline:
            self._push(min(arrival, cmd.deadline), _REPLY, (src, src_generation, cmd.token, None))
        else:
            self._push(arrival, _REPLY, (src, src_generation, cmd.token, reply))
