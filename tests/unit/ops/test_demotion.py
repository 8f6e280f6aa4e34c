"""Self-demotion: the standing table on a fake clock, then the driver against a real registry and event bus."""

from __future__ import annotations

import pytest

from sidecar.catalog.model import HealthStatus
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import FakeClock
from sidecar.config.model import GOSSIP_PROFILES, ServiceConfig
from sidecar.events import EventBus
from sidecar.ops.demotion import (
    _TRANSITIONS,
    Demoted,
    DemotionCore,
    DemotionRules,
    Reading,
    Restored,
    SelfDemotion,
    Standing,
)

RULES = DemotionRules(high=4, low=0, hold=5.0, recover_hold=15.0)


def feed(core: DemotionCore, readings: list[tuple[float, int]]) -> list[tuple[float, object]]:
    out = []
    for now, score in readings:
        out.extend((now, e) for e in core.on_score(score, now))
    return out


def test_the_table_covers_every_standing_and_reading() -> None:
    assert set(_TRANSITIONS) == {(s, r) for s in Standing for r in Reading}


@pytest.mark.parametrize(("tuning", "high", "hold", "recover"), [("lan", 4, 5.0, 15.0), ("wan", 4, 25.0, 75.0),
                                                                ("local", 4, 5.0, 15.0)])
def test_rules_from_the_gossip_profiles(tuning: str, high: int, hold: float, recover: float) -> None:
    rules = DemotionRules.from_tuning(GOSSIP_PROFILES[tuning])
    assert (rules.high, rules.low, rules.hold, rules.recover_hold) == (high, 0, hold, recover)


def test_a_sustained_high_score_demotes_once_and_a_sustained_zero_restores() -> None:
    core = DemotionCore(RULES)
    events = feed(core, [(0, 0), (1, 4), (2, 6), (5, 7), (6, 5), (7, 3), (8, 2), (9, 0), (20, 0)])
    assert events == [(6, Demoted(5, 1))]             # 5 s at 4 or more since 1; a middling score stays demoted
    assert core.standing is Standing.RECOVERING and core.demoted
    assert feed(core, [(24, 0)]) == [(24, Restored(0, 18))]   # 15 s at 0 since 9
    assert core.standing is Standing.NORMAL and not core.demoted


def test_a_short_spike_does_not_demote() -> None:
    core = DemotionCore(RULES)
    assert feed(core, [(0, 5), (2, 5), (4, 3), (4.5, 5), (9, 5)]) == []   # the dip at 4 restarts the hold
    assert core.standing is Standing.STRUGGLING
    assert feed(core, [(9.5, 5)]) == [(9.5, Demoted(5, 4.5))]


def test_a_relapse_while_recovering_stays_demoted() -> None:
    core = DemotionCore(RULES)
    feed(core, [(0, 4), (5, 4)])
    assert core.standing is Standing.DEMOTED
    assert feed(core, [(6, 0), (10, 1), (11, 0), (20, 0)]) == []     # 1 at 10 restarts the recovery
    assert feed(core, [(26, 0)]) == [(26, Restored(0, 21))]


def test_the_driver_degrades_healthy_services_and_tells_the_bus() -> None:
    clock = FakeClock()
    bus = EventBus()
    registry = LocalRegistry("n1", bus)
    registry.register(ServiceConfig("echo", 8080), "config", clock.monotonic(), 0)
    registry.register(ServiceConfig("pay", 8081), "config", clock.monotonic(), 0)
    score = [0]
    driver = SelfDemotion(lambda: score[0], registry.demote, bus, clock, RULES, 1.0)
    changes = []
    registry.listeners.append(lambda: changes.append(registry.version))
    score[0] = 5
    for _ in range(6):
        driver.poll()
        clock.advance(1.0)
    assert {i.status for i in registry.instances()} == {HealthStatus.DEGRADED}
    assert len(changes) == 1   # one catalog change for both services
    types = [e.type for e in bus.recent()]
    assert types.count("self-demoted") == 1 and types.count("health-changed") == 2
    # a newly registered service is degraded too while demoted
    registry.register(ServiceConfig("late", 8082), "config", clock.monotonic(), 0)
    assert registry.get("late:n1:8082").metadata.status is HealthStatus.DEGRADED
    score[0] = 0
    for _ in range(17):
        driver.poll()
        clock.advance(1.0)
    assert {i.status for i in registry.instances()} == {HealthStatus.HEALTHY}
    assert [e.type for e in bus.recent()].count("self-restored") == 1
    assert driver.status() == {"standing": "normal", "high": 4, "low": 0}


def test_unhealthy_services_stay_unhealthy_through_demotion() -> None:
    clock = FakeClock()
    registry = LocalRegistry("n1", EventBus())
    registry.register(ServiceConfig("echo", 8080), "config", clock.monotonic(), 0)
    registry.drain(clock.monotonic(), 0)
    registry.demote("struggling", 1)
    assert registry.instances()[0].status is HealthStatus.UNHEALTHY
    registry.demote(None, 2)
    assert registry.instances()[0].status is HealthStatus.UNHEALTHY
