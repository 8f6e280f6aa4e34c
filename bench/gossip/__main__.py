"""SWIM + Lifeguard at scale, on the simulated network (no sockets), with the LAN profile.

    python -m bench.gossip [--sizes 100,1000,10000] [--losses 0,0.1,0.2] [--budget 90] [--seed 1]

For every (N, loss): a converged cluster of N members (one shared snapshot, so 10,000 members build in
seconds), a user broadcast at t=2s, then K members killed half a second apart from t=4s, then the
simulation runs until every crash could be declared by the formula's bound, or until the wall-clock
budget of the run is spent (large lossy runs: the table says how many simulated seconds were covered).

Columns:
  detect median / p99   crash -> every survivor has declared it dead, over the K crashes
  theory                memberlist's expectation 2 * probe_interval + suspicion_mult * log10(N) *
                        probe_interval (confirmations drive Lifeguard's timer to its minimum), and the
                        bound 6 * probe_interval + max timeout
  false deaths          members declared dead by anyone although they never crashed
  99.9% reach           time until 99.9% of members delivered the user broadcast, and in gossip rounds
  pkts, bytes /member/s UDP sent per member per simulated second (everything: probes, gossip, relays)
  push-pull B/member/s  TCP anti-entropy estimated from the state size and the scaled interval
                        (not sent during the runs: memberlist's first push-pull waits a full interval)
  speed                 simulated member-seconds per wall second
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

from sidecar.config.model import GOSSIP_PROFILES, GossipTuning
from sidecar.gossip.messages import PushNodeState, PushPull, to_wire
from sidecar.gossip.outputs import Event, MemberDead, MemberSuspect, UserMessage
from sidecar.gossip.simnet import SIM_PORT, SimNetwork
from sidecar.gossip.state import MemberState
from sidecar.gossip.suspicion import detection_time_bound, expected_detection_time, push_pull_scale

LAN: GossipTuning = GOSSIP_PROFILES["lan"]
BROADCAST_AT = 2.0
KILL_AT = 4.0
KILL_SPACING = 0.5


@dataclass
class Result:
    n: int
    loss: float
    kills: int
    simulated: float
    stopped: str
    wall: float
    build: float
    detect: list[float]
    undetected: int
    false_deaths: int
    false_suspicions: int
    reach_999: float | None
    packets_per_member_s: float
    bytes_per_member_s: float


class Recorder:
    def __init__(self, killed: dict[str, float]) -> None:
        self.killed = killed
        self.dead: dict[str, dict[str, float]] = defaultdict(dict)
        self.false_deaths: set[str] = set()
        self.false_suspicions = 0
        self.user: dict[str, float] = {}

    def __call__(self, now: float, observer: str, event: Event) -> None:
        if isinstance(event, MemberDead):
            name = event.member.name
            if name in self.killed:
                self.dead[name].setdefault(observer, now)
            else:
                self.false_deaths.add(name)
        elif isinstance(event, MemberSuspect):
            if event.member.name not in self.killed:
                self.false_suspicions += 1
        elif isinstance(event, UserMessage):
            self.user.setdefault(observer, now)


def kills_for(n: int) -> int:
    return 10 if n <= 100 else 20 if n <= 1000 else 10


def run_one(n: int, loss: float, budget: float, seed: int) -> Result:
    t = LAN
    built = time.perf_counter()
    net = SimNetwork(t, seed=seed, loss=loss)
    names = [f"m{i:05d}" for i in range(n)]
    net.add_converged(names)
    # tens of millions of long-lived objects: keep the cyclic collector off them
    gc.collect()
    gc.freeze()
    build = time.perf_counter() - built
    k = kills_for(n)
    victims = names[1 :: max(1, n // k)][:k]
    killed: dict[str, float] = {}
    record = Recorder(killed)
    net.listeners.append(record)
    planned = KILL_AT + k * KILL_SPACING + detection_time_bound(t, n) + 1.0  # simulated seconds
    started = time.perf_counter()

    def out_of_time() -> bool:
        return time.perf_counter() - started > budget

    net.run_until(BROADCAST_AT)
    net.nodes[names[0]].core.broadcast_user("catalog/svc-1", b'{"status":"healthy"}' * 8)
    net.run_until(KILL_AT)
    for victim in victims:
        if out_of_time():
            break
        net.kill(victim)
        killed[victim] = net.now
        net.run_for(KILL_SPACING)
    stopped = "formula's bound reached"
    while net.now < planned:
        if out_of_time():
            stopped = "wall budget"
            break
        net.run_for(min(1.0, planned - net.now))
        if len(killed) == k and all(len(record.dead[v]) >= n - len(killed) for v in killed):
            stopped = "all crashes declared"
            break
    wall = time.perf_counter() - started

    survivors = {node.name for node in net.alive_nodes()}
    detect, undetected = [], 0
    for victim, at in killed.items():
        seen = record.dead[victim]
        if survivors <= set(seen):
            detect.append(max(seen[o] for o in survivors) - at)
        else:
            undetected += 1
    reach = sorted(when - BROADCAST_AT for when in record.user.values())
    need = math.ceil(0.999 * (n - 1))
    reach_999 = reach[need - 1] if len(reach) >= need else None
    packets = sum(node.core.counters.packets_out for node in net.nodes.values())
    sent_bytes = sum(node.core.counters.bytes_out for node in net.nodes.values())
    member_seconds = n * net.now
    result = Result(n, loss, len(killed), net.now, stopped, wall, build, detect, undetected,
                    len(record.false_deaths), record.false_suspicions, reach_999,
                    packets / member_seconds, sent_bytes / member_seconds)
    del net, record
    gc.unfreeze()
    gc.collect()
    return result


def push_pull_bytes_per_member_s(n: int, t: GossipTuning) -> float:
    """Both directions of one exchange per scaled interval, for a table of n members with 16 bytes of meta."""
    states = tuple(PushNodeState(f"m{i:05d}", "10.0.0.1", SIM_PORT, b"x" * 16, 1, MemberState.ALIVE)
                   for i in range(min(n, 1000)))
    per_entry = len(to_wire(PushPull(False, states))) / len(states)
    return 2 * per_entry * n / push_pull_scale(t.push_pull_interval, n)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def table(results: list[Result]) -> str:
    head = ("| N | loss | simulated | crashes | detect median | detect p99 | theory (expected / bound) | "
            "false deaths | false suspicions | 99.9% reach | pkts/member/s | bytes/member/s | "
            "push-pull B/member/s | speed (member·s/s) |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        t = LAN
        if r.detect:
            detect_median = f"{statistics.median(r.detect):.1f}s"
            detect_p99 = f"{pct(r.detect, 0.99):.1f}s"
        else:
            detect_median = detect_p99 = "n/a"
        if r.undetected:
            detect_p99 += f" ({r.undetected} of {r.kills} not yet)"
        reach = (f"{r.reach_999:.2f}s = {r.reach_999 / t.gossip_interval:.1f} rounds"
                 if r.reach_999 is not None else "n/a")
        simulated = f"{r.simulated:.0f}s ({r.stopped})"
        rows.append(
            f"| {r.n:,} | {r.loss:.0%} | {simulated} | {r.kills} | {detect_median} | {detect_p99} | "
            f"{expected_detection_time(t, r.n):.1f}s / {detection_time_bound(t, r.n):.1f}s | {r.false_deaths} | "
            f"{r.false_suspicions:,} | {reach} | {r.packets_per_member_s:.2f} | {r.bytes_per_member_s:,.0f} | "
            f"{push_pull_bytes_per_member_s(r.n, t):,.0f} | {r.n * r.simulated / r.wall:,.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gossip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--losses", default="0,0.1,0.2")
    parser.add_argument("--budget", type=float, default=90.0, help="wall seconds per run (default 90)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    losses = [float(s) for s in args.losses.split(",")]
    results = []
    for n in sizes:
        for loss in losses:
            r = run_one(n, loss, args.budget, args.seed)
            print(f"# N={n} loss={loss:.0%}: {r.simulated:.0f} simulated s in {r.wall:.1f} wall s "
                  f"(+{r.build:.1f}s to build)", file=sys.stderr, flush=True)
            results.append(r)
    print(f"SWIM + Lifeguard, LAN profile (probe {LAN.probe_interval}s, gossip {LAN.gossip_interval}s to "
          f"{LAN.gossip_nodes}, suspicion mult {LAN.suspicion_mult}, max mult {LAN.suspicion_max_timeout_mult}), "
          f"simulated network: 0.5-1ms latency, uniform loss, TCP with 1s RTO\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
