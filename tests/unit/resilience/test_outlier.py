"""Outlier ejection on a fake clock: thresholds, ejection times, the percent cap, probation, the decaying
multiplier, and the transition table."""

from __future__ import annotations

import pytest

from sidecar.resilience.outlier import (
    Ejected,
    EjectionRefused,
    EjectionRules,
    EndpointState,
    InvalidTransition,
    Move,
    OutlierDetector,
    transition,
)

RULES = EjectionRules(consecutive_failures=3, interval=10.0, base_ejection_time=30.0, max_ejection_time=100.0,
                      max_ejection_percent=50.0)


def detector(hosts: int = 4, rules: EjectionRules = RULES) -> OutlierDetector:
    d = OutlierDetector(rules)
    for i in range(hosts):
        d.add(f"h{i}", 0.0)
    return d


def fail(d: OutlierDetector, host: str, now: float, times: int) -> Ejected | EjectionRefused | None:
    event = None
    for _ in range(times):
        event = d.failure(host, now)
    return event


@pytest.mark.parametrize(("state", "move", "after"), [
    (EndpointState.ACTIVE, Move.EJECT, EndpointState.EJECTED),
    (EndpointState.PROBATION, Move.EJECT, EndpointState.EJECTED),
    (EndpointState.EJECTED, Move.EXPIRE, EndpointState.PROBATION),
    (EndpointState.PROBATION, Move.RECOVER, EndpointState.ACTIVE),
])
def test_transition_table(state: EndpointState, move: Move, after: EndpointState) -> None:
    assert transition(state, move) is after


@pytest.mark.parametrize(("state", "move"), [
    (EndpointState.ACTIVE, Move.EXPIRE), (EndpointState.EJECTED, Move.EJECT),
    (EndpointState.ACTIVE, Move.RECOVER), (EndpointState.EJECTED, Move.RECOVER)])
def test_moves_missing_from_the_table_raise(state: EndpointState, move: Move) -> None:
    with pytest.raises(InvalidTransition):
        transition(state, move)


@pytest.mark.parametrize(("times", "seconds"), [(1, 30.0), (2, 60.0), (3, 90.0), (4, 100.0), (9, 100.0)])
def test_ejection_time_is_base_times_multiplier_capped(times: int, seconds: float) -> None:
    assert RULES.ejection_time(times) == seconds


def test_a_max_below_the_base_means_the_base() -> None:
    assert EjectionRules(base_ejection_time=30.0, max_ejection_time=10.0).ejection_time(3) == 30.0


@pytest.mark.parametrize(("percent", "ejected", "hosts", "allowed"), [
    (10.0, 0, 3, True),      # Envoy: one host may always go when none is out
    (10.0, 1, 3, False),
    (50.0, 1, 4, True),      # 2 of 4 = 50%
    (50.0, 2, 4, False),
    (100.0, 2, 3, True),
    (0.0, 0, 3, False),      # 0 switches ejection off
    (34.0, 1, 3, False),
    (67.0, 1, 3, True),
])
def test_percent_cap(percent: float, ejected: int, hosts: int, allowed: bool) -> None:
    assert EjectionRules(max_ejection_percent=percent).may_eject(ejected, hosts) is allowed


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    d = detector()
    assert fail(d, "h0", 1.0, 2) is None
    d.success("h0", 1.0)
    assert fail(d, "h0", 2.0, 2) is None
    event = d.failure("h0", 2.0)
    assert event == Ejected("h0", 32.0, 1, 3)
    assert d.is_ejected("h0", 31.9)
    assert not d.is_ejected("h0", 32.0)
    assert d.record("h0", 32.0).state is EndpointState.PROBATION


def test_results_of_attempts_begun_before_the_ejection_are_ignored() -> None:
    d = detector()
    fail(d, "h0", 0.0, 3)
    assert d.failure("h0", 1.0) is None
    d.success("h0", 1.0)
    assert d.record("h0", 1.0).state is EndpointState.EJECTED


def test_on_probation_one_failure_ejects_again_for_longer() -> None:
    d = detector()
    fail(d, "h0", 0.0, 3)                                 # out until 30
    event = d.failure("h0", 31.0)                         # back on probation, fails once
    assert event == Ejected("h0", 31.0 + 60.0, 2, 1)
    assert d.is_ejected("h0", 90.0)
    event = d.failure("h0", 91.0)
    assert isinstance(event, Ejected) and event.times == 3 and event.until == 91.0 + 90.0


def test_a_success_on_probation_makes_the_host_active_and_the_multiplier_decays() -> None:
    d = detector()
    fail(d, "h0", 0.0, 3)
    fail(d, "h0", 31.0, 1)                                # times = 2, out until 91
    d.success("h0", 92.0)
    rec = d.record("h0", 92.0)
    assert (rec.state, rec.times) == (EndpointState.ACTIVE, 2)
    assert d.record("h0", 101.9).times == 2
    assert d.record("h0", 102.0).times == 1               # one interval active
    assert d.record("h0", 125.0).times == 0
    event = fail(d, "h0", 130.0, 3)
    assert isinstance(event, Ejected) and event.times == 1 and event.until == 160.0


def test_the_percent_cap_refuses_and_the_host_asks_again_on_its_next_failure() -> None:
    d = detector(hosts=4)                                 # 50%: two of four
    fail(d, "h0", 0.0, 3)
    fail(d, "h1", 0.0, 3)
    refused = fail(d, "h2", 0.0, 3)
    assert refused == EjectionRefused("h2", 2, 4)
    assert d.refusals == 1 and d.ejected_count(0.0) == 2
    assert not d.is_ejected("h2", 0.0)
    assert d.record("h2", 0.0).consecutive == 3
    # h0 and h1 return at 30: the next failure of h2 ejects it
    assert isinstance(d.failure("h2", 30.0), Ejected)


def test_one_host_may_be_ejected_under_a_small_percent() -> None:
    d = detector(hosts=3, rules=EjectionRules(consecutive_failures=1, max_ejection_percent=10.0))
    assert isinstance(d.failure("h0", 0.0), Ejected)
    assert isinstance(d.failure("h1", 0.0), EjectionRefused)


def test_sync_forgets_hosts_that_left() -> None:
    d = detector(hosts=3)
    fail(d, "h0", 0.0, 3)
    d.sync(["h1", "h2", "h3"], 1.0)
    assert len(d) == 3 and "h0" not in d and "h3" in d
    assert d.ejected_count(1.0) == 0
