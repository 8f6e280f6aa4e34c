"""The chaos run (issue 10): five `sidecar run` processes in network namespaces under continuous request and
publish load, while sidecars are killed with kill -9 and restarted, a partition is opened and healed, and 10%
of the packets are dropped on every host.

Layout: n1 and n2 are where the load comes from (requests through their outbound listeners, publishes through
their app API); n3, n4 and n5 run ``backend`` (the requests' destination, and a competing-consumers subscriber
of ``orders``); n5 also runs ``ledger``, the only instance of a second subscriber of ``orders``, so its messages
must wait in the publishers' outboxes whenever n5 is away.

A cycle of faults, each followed by a convergence check (every sidecar's /members shows all five alive):
kill -9 of a subscriber's sidecar (until the others declare it dead) and restart; the same for a publisher's;
a partition (until each side declares the other dead) and heal; 10% packet loss on every host for a while.
Cycles repeat, with other victims and another split, for ``CHAOS_SECONDS`` (45 by default; `make chaos` 240).

What must hold:
* no published message is lost: every publish answered 202 reaches ``backend`` and ``ledger`` (at least once,
  in publish order per publisher); duplicates are counted; nothing is dead-lettered;
* no request hangs: each ends within the policy's deadline (5s) plus 3s of slack;
* the requests' error ratio in each kind of fault stays within the retries' reach (see ERROR_BOUND);
* membership converges after every fault (and the sources' catalogs hold the three backend instances again),
  and no sidecar dies on its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.harness import make_certs, wait_for
from tests.integration.chaos.load import (
    STEADY,
    Delivery,
    PhaseRow,
    Phases,
    PublishLoop,
    Recorder,
    RequestLoop,
    by_phase,
    deliveries,
)
from tests.integration.chaos.mesh import Mesh
from tests.integration.netns.netns import lab, why_not_available


def chaos_seconds() -> float:
    raw = os.environ.get("CHAOS_SECONDS", "45")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise pytest.UsageError(f"CHAOS_SECONDS must be a number of seconds in (0, 3600] (got {raw!r})")
    return value


REASON = why_not_available()
SECONDS = chaos_seconds()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow,
              pytest.mark.timeout(int(SECONDS) + 420)]

NODES = ("n1", "n2", "n3", "n4", "n5")
SOURCES = ("n1", "n2")
DEADLINE = 5.0
SLACK = 3.0
SETTINGS = {
    "policies": {"*": {"timeout": f"{DEADLINE}s", "retries": {"attempts": 2, "per_try_timeout": "1.5s"}}},
    # memberlist's LAN timings, with anti-entropy (and Serf's reconnect of dead members) every 10s, not 30s
    "gossip": {"profile": "lan", "push_pull_interval": "10s"},
    # the run shares 2 cores with other test runs: the whole machine was seen to stall for 0.9s (every sidecar
    # reported the same loop lag at the same moment), and the default 500ms shed requests for a second. Load
    # shedding has its own tests; here a lag of 2s still means a sidecar in trouble
    "overload": {"max_loop_lag": "2s"},
}
# Why errors should stay near zero: every fault leaves each live source at least one reachable backend, and a
# GET gets 3 tries (attempts 2), each on another host when there is one, each bounded by per_try_timeout (1.5s),
# all within the 5s deadline; a killed host refuses at once (its namespace answers RST), a partitioned one times
# out, and both are retried ("connect-failure", "reset" covers the try timeout). The budget (ratio 0.2, at least
# 10 retries/s) covers our at most 16 req/s per source: a third of them meet a dead host in a kill, and in a
# partition the closed loops slow down to the timeouts. What is left, out of the retries' reach: a try lost
# three times to the 10% loss (SYN retransmits take 1s); and when a partition heals, the other side's stale
# "dead" verdicts reach members that never lost sight of the member they name (SWIM accepts them at the same
# incarnation): it refutes within about 100ms, and for that moment a source may have no live backend at all
# (503 UNAVAILABLE, reason members-down; seen up to 4 in ~900 requests). 2% is far above both; runs so far saw
# 0 to 0.4%.
ERROR_BOUND = 0.02
REQUEST_RATE = 8.0      # per loop, two loops per source
PUBLISH_RATE = 10.0     # per source
LOSS_PERCENT = 10
LOSS_SECONDS = 10.0
# seconds for a kill or a partition to be declared: in a partition Lifeguard's awareness stretches the probe
# interval and suspicion timeouts of the members that lost their peers (seen: 45s for a 2 | 3 split)
DETECT = 90.0
CONVERGE = 60.0         # seconds for membership to heal after a fault
DRAIN = 120.0           # seconds for the outboxes to deliver everything after the load stops

SUBSCRIBER_VICTIMS = ("n5", "n4", "n3")
PUBLISHER_VICTIMS = ("n2", "n1")
SPLITS = ((["n1", "n2", "n3"], ["n4", "n5"]), (["n1", "n4"], ["n2", "n3", "n5"]), (["n2", "n5"], ["n1", "n3", "n4"]))


class Watch:
    """Samples every sidecar's RSS and notices a sidecar that died on its own, until stopped."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.max_rss: dict[str, int] = dict.fromkeys(NODES, 0)
        self.crashed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos-watch")

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            for name, node in self.mesh.nodes.items():
                self.max_rss[name] = max(self.max_rss[name], self.mesh.rss_bytes(name))
                if node.up and not self.mesh.running(name):
                    self.crashed.append(f"{name}: exited with {node.proc.poll() if node.proc else None}")
                    node.up = False


def test_chaos_mesh_under_load(tmp_path: Path) -> None:
    began = time.monotonic()
    certs = make_certs(tmp_path / "certs", ["frontend", "backend", "ledger"])
    subscription = {"topic": "orders", "path": "/events/orders"}
    with lab() as the_lab:
        mesh = Mesh(the_lab, tmp_path)
        stop = threading.Event()
        loops: list[RequestLoop | PublishLoop] = []
        watch = Watch(mesh)
        try:
            for name in SOURCES:
                mesh.add(name, certs["frontend"], [], [], SETTINGS)
            for name in ("n3", "n4"):
                mesh.add(name, certs["backend"], ["backend"], [subscription], SETTINGS)
            ledger = {"service": "ledger", "cert": certs["ledger"]["cert"], "key": certs["ledger"]["key"]}
            mesh.add("n5", {**certs["backend"], "identities": [ledger]}, ["backend", "ledger"],  # one SVID per service
                     [{**subscription, "service": "backend"},
                      {"topic": "orders", "path": "/ledger/orders", "service": "ledger"}], SETTINGS)
            mesh.set_joins()
            for name in NODES:
                mesh.start(name)
            faults = Faults(mesh)
            faults.converge("start", timeout=90)

            def knows_subscribers(source: str) -> bool:
                services = {r["service"] for r in mesh.api(source, "/v1/subscriptions") if r["topic"] == "orders"}
                return services >= {"backend", "ledger"}
            for source in SOURCES:
                wait_for(partial(knows_subscribers, source), 60, interval=0.25,
                         what=f"{source} knows both subscribers of orders")

            phases = faults.phases
            recorder = Recorder()
            for source in SOURCES:
                node = mesh.nodes[source]
                loops += [RequestLoop(node, "backend", REQUEST_RATE, stop, recorder, DEADLINE + SLACK)
                          for _ in range(2)]
                loops.append(PublishLoop(node, "orders", PUBLISH_RATE, stop, recorder, DEADLINE + SLACK))
            watch.thread.start()
            phases.enter(STEADY)
            load_began = time.monotonic()
            for loop in loops:
                loop.start()
            faults.hold(3.0, watch)

            cycle = 0
            while cycle == 0 or time.monotonic() - load_began < SECONDS:
                faults.kill_and_restart("kill-subscriber", SUBSCRIBER_VICTIMS[cycle % 3])
                faults.kill_and_restart("kill-publisher", PUBLISHER_VICTIMS[cycle % 2])
                faults.partition(*SPLITS[cycle % 3])
                faults.loss(LOSS_PERCENT, LOSS_SECONDS, watch)
                phases.enter(STEADY)
                faults.hold(2.0, watch)
                cycle += 1
            load_seconds = time.monotonic() - load_began
            stop.set()
            for loop in loops:
                loop.join(DEADLINE + SLACK + 5)
            assert not [loop.name for loop in loops if loop.is_alive()], "a load loop did not stop"

            # every message answered 202 reaches both subscriber services
            def all_delivered() -> bool:
                arrivals = mesh.inbox.snapshot()
                return all(deliveries(s, recorder.accepted, arrivals).lost == [] for s in ("backend", "ledger"))
            drain_began = time.monotonic()
            try:
                wait_for(all_delivered, DRAIN, interval=0.5, what="every accepted message delivered")
            except AssertionError:
                arrivals = mesh.inbox.snapshot()
                report = {s: deliveries(s, recorder.accepted, arrivals) for s in ("backend", "ledger")}
                outboxes = {s: mesh.admin(s, "/messaging") for s in SOURCES}
                raise AssertionError(f"messages lost: {report}; publishers' outboxes: {outboxes}") from None
            drain_seconds = time.monotonic() - drain_began
            arrivals = mesh.inbox.snapshot()
            delivered = {s: deliveries(s, recorder.accepted, arrivals) for s in ("backend", "ledger")}
            dead_letters = {name: mesh.admin(name, "/deadletters")["total"] for name in NODES}
            watch.stop.set()
            watch.thread.join(5)

            requests = by_phase(recorder.samples, phases)
            publishes = by_phase(recorder.samples, phases, "publish")
            print_summary(time.monotonic() - began, load_seconds, drain_seconds, cycle, faults, requests, publishes,
                          delivered, dead_letters, watch, mesh.dropped_total, recorder.details)

            assert not watch.crashed, watch.crashed
            for d in delivered.values():
                assert d.delivered == d.expected and d.expected > 0, d
                assert not d.out_of_order, d
            assert sum(dead_letters.values()) == 0, dead_letters
            hung = [s for s in recorder.samples if s.kind == "request" and s.outcome != "source-down"
                    and (s.outcome == "hang" or s.latency > DEADLINE + SLACK)]
            assert not hung, f"{len(hung)} requests passed their deadline + slack: {hung[:5]}"
            for phase, row in requests.items():
                if phase != STEADY:
                    assert row.error_ratio <= ERROR_BOUND, row
            assert requests[STEADY].errors == 0, requests[STEADY]
        finally:
            stop.set()
            watch.stop.set()
            for loop in loops:
                loop.join(DEADLINE + SLACK + 5)
            mesh.close()


def routable_backends(mesh: Mesh, source: str) -> int:
    """Healthy or degraded: a node that Lifeguard found struggling (the minority side of a partition) reports
    its services degraded for a while after it recovers (sidecar.ops.demotion); they are still used."""
    return sum(1 for i in mesh.api(source, "/v1/catalog/backend") if i["status"] in ("healthy", "degraded"))


class Faults:
    """Injects faults in the mesh, one at a time, each until the membership has converged again."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.phases = Phases()
        self.survived: list[str] = []
        self.events: list[str] = []   # "monotonic-time what", for reading error answers against

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic():.3f} {what}")

    def converge(self, after: str, timeout: float = CONVERGE) -> None:
        mesh = self.mesh
        everyone = dict.fromkeys(NODES, "alive")
        wait_for(lambda: all(mesh.ready(n) for n in NODES), timeout, interval=0.25,
                 what=f"every sidecar ready after {after}; logs: {self._logs()}")
        wait_for(lambda: mesh.sees(list(NODES), everyone), timeout, interval=0.25,
                 what=f"all five alive in every /members after {after}")
        wait_for(lambda: all(routable_backends(mesh, s) == 3 for s in SOURCES), timeout, interval=0.25,
                 what=f"three routable backend instances in the sources' catalogs after {after}")

    def hold(self, seconds: float, watch: Watch) -> None:
        """Keep the current state for ``seconds``, failing early when a sidecar dies on its own."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            assert not watch.crashed, watch.crashed
            watch.stop.wait(min(0.5, max(0.0, until - time.monotonic())))

    def kill_and_restart(self, kind: str, victim: str) -> None:
        mesh = self.mesh
        others = [n for n in NODES if n != victim]
        self.phases.enter(kind)
        self.note(f"kill -9 {victim}")
        mesh.kill(victim)
        wait_for(lambda: self._dead_everywhere(others, [victim]), DETECT,
                 interval=0.25, what=f"{victim} declared dead by the others")
        self.note(f"{victim} dead everywhere; restarting it")
        mesh.start(victim)
        self.converge(f"restarting {victim}")
        self.note("converged")
        self.survived.append(f"{kind} {victim}")

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        mesh = self.mesh
        self.phases.enter("partition")
        self.note(f"partition {side_a} | {side_b}")
        mesh.partition(side_a, side_b)
        wait_for(lambda: self._dead_everywhere(side_a, side_b) and self._dead_everywhere(side_b, side_a), DETECT,
                 interval=0.25, what=f"each side of {side_a} | {side_b} declares the other dead")
        self.note("each side declared the other dead; healing")
        mesh.heal()
        self.converge(f"healing {side_a} | {side_b}")
        self.note("converged")
        self.survived.append(f"partition {'+'.join(side_a)} | {'+'.join(side_b)}")

    def loss(self, percent: int, seconds: float, watch: Watch) -> None:
        mesh = self.mesh
        self.phases.enter("loss")
        self.note(f"{percent}% loss")
        before = mesh.dropped_total
        mesh.loss(percent)
        self.hold(seconds, watch)
        mesh.dropped_total = before + mesh.dropped()
        assert mesh.dropped_total > before, "the loss rules dropped nothing"
        mesh.no_loss()
        self.note("loss removed")
        self.converge(f"{percent}% loss")
        self.note("converged")
        self.survived.append(f"{percent}% loss {seconds:.0f}s")

    def _dead_everywhere(self, observers: list[str], names: list[str]) -> bool:
        for observer in observers:
            states = self.mesh.members(observer)
            if any(states.get(name) not in ("dead", None) for name in names):
                return False
        return True

    def _logs(self) -> dict[str, str]:
        return {n: self.mesh.log_tail(n, 5) for n in NODES if not self.mesh.running(n)}


def print_summary(total: float, load: float, drain: float, cycles: int, faults: Faults,
                  requests: dict[str, PhaseRow], publishes: dict[str, PhaseRow], delivered: dict[str, Delivery],
                  dead_letters: dict[str, int], watch: Watch, dropped: int, details: list[str]) -> None:
    out: Callable[[str], None] = print
    out("")
    out(f"chaos run: {total:.0f}s in all, {load:.0f}s under load in {cycles} cycle(s), drained in {drain:.1f}s")
    out(f"faults survived ({len(faults.survived)}): " + "; ".join(faults.survived))
    out(f"packets dropped by the loss rules: {dropped}")
    out(f"{'phase':<16}{'requests':>9}{'errors':>8}{'hangs':>7}{'src-down':>9}{'err %':>7}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'max ms':>8}  publishes ok/all, p99 ms")
    for phase in sorted(requests, key=lambda p: (p != STEADY, p)):
        r = requests[phase]
        p = publishes.get(phase)
        pub = f"{p.requests - p.errors - p.hangs - p.source_down}/{p.requests}, {p.p99 * 1000:.0f}" if p else "-"
        out(f"{phase:<16}{r.requests:>9}{r.errors:>8}{r.hangs:>7}{r.source_down:>9}{100 * r.error_ratio:>7.2f}"
            f"{r.p50 * 1000:>8.0f}{r.p99 * 1000:>8.0f}{r.worst * 1000:>8.0f}  {pub}")
        if r.kinds:
            out(f"{'':<16}errors: {r.kinds}")
    for d in delivered.values():
        out(f"messages to {d.service}: {d.expected} accepted, {d.delivered} delivered, {len(d.lost)} lost, "
            f"{d.duplicates} duplicates, {d.unconfirmed} delivered without a 202, order kept: {not d.out_of_order}")
    out(f"dead letters: {sum(dead_letters.values())}")
    out("max RSS: " + ", ".join(f"{n} {b / 2**20:.0f} MiB" for n, b in watch.max_rss.items()))
    for line in faults.events:
        out(f"event: {line}")
    for line in details:
        out(f"error answer: {line}")
