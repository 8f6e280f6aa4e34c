"""The health state machine on a fake clock: thresholds, TTL expiry, deregistration, draining."""

from __future__ import annotations

import pytest

from sidecar.catalog.health import CheckResult, HealthTracker
from sidecar.catalog.model import HealthStatus
from sidecar.config.load import build_section
from sidecar.config.model import CheckConfig

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


def check(**raw: object) -> CheckConfig:
    return build_section(CheckConfig, {"http": "/health", **raw})


def statuses(tracker: HealthTracker, results: list[HealthStatus], start: float = 0.0) -> list[HealthStatus]:
    out = []
    for i, result in enumerate(results):
        tracker.record(CheckResult(result), start + i)
        out.append(tracker.status)
    return out


def test_no_check_means_healthy() -> None:
    tracker = HealthTracker(None, 0.0)
    assert tracker.status is H
    assert not tracker.should_deregister(1e9)


def test_a_checked_service_starts_unhealthy_until_its_first_pass() -> None:
    tracker = HealthTracker(check(), 0.0)
    assert tracker.status is U
    assert statuses(tracker, [H]) == [H]


@pytest.mark.parametrize(("successes", "failures", "results", "expected"), [
    (1, 1, [H, D, U, H], [H, D, U, H]),
    (1, 3, [H, U, U, U, H], [H, H, H, U, H]),
    (2, 1, [H, H, U, H, H], [U, H, U, U, H]),
    (2, 2, [H, H, U, H, U, U], [U, H, H, H, H, U]),
    (3, 1, [H, H, D, D, D], [U, U, U, U, D]),
    (1, 2, [H, U, D, U, U], [H, H, D, D, U]),
])
def test_thresholds(successes: int, failures: int, results: list[HealthStatus], expected: list[HealthStatus]) -> None:
    tracker = HealthTracker(check(success_before_healthy=successes, failures_before_unhealthy=failures), 0.0)
    assert statuses(tracker, results) == expected


def test_record_returns_the_change_only_when_the_status_flips() -> None:
    tracker = HealthTracker(check(failures_before_unhealthy=2), 0.0)
    change = tracker.record(CheckResult(H, "ok"), 1.0)
    assert change is not None and (change.before, change.after, change.output) == (U, H, "ok")
    assert tracker.record(CheckResult(H), 2.0) is None
    assert tracker.record(CheckResult(U, "boom"), 3.0) is None
    change = tracker.record(CheckResult(U, "boom again"), 4.0)
    assert change is not None and (change.before, change.after) == (H, U)


def test_ttl_expires_without_heartbeats() -> None:
    tracker = HealthTracker(build_section(CheckConfig, {"ttl": "10s"}), 0.0)
    assert tracker.status is U
    tracker.heartbeat(H, "", 1.0)
    assert tracker.status is H
    assert tracker.on_tick(10.9) is None
    change = tracker.on_tick(11.0)
    assert change is not None and change.after is U and "no heartbeat within ttl 10s" in change.output
    tracker.heartbeat(D, "busy", 12.0)
    assert tracker.status is D and tracker.output == "busy"


def test_ttl_with_threshold_counts_one_failure_per_missed_period() -> None:
    tracker = HealthTracker(build_section(CheckConfig, {"ttl": "5s", "failures_before_unhealthy": 2}), 0.0)
    tracker.heartbeat(H, "", 0.0)
    assert tracker.on_tick(5.0) is None and tracker.status is H  # first miss
    assert tracker.on_tick(7.0) is None  # same period: not counted again
    change = tracker.on_tick(10.0)  # second miss
    assert change is not None and change.after is U


def test_deregister_after_counts_from_becoming_unhealthy() -> None:
    tracker = HealthTracker(check(deregister_after="1m"), 0.0)
    tracker.record(CheckResult(H), 1.0)
    assert not tracker.should_deregister(1000.0)
    tracker.record(CheckResult(U), 100.0)
    assert not tracker.should_deregister(159.9)
    assert tracker.should_deregister(160.0)
    tracker.record(CheckResult(H), 161.0)
    assert not tracker.should_deregister(1000.0)


def test_forced_status_wins_over_results() -> None:
    tracker = HealthTracker(check(), 0.0)
    tracker.record(CheckResult(H), 1.0)
    change = tracker.force(U, "draining", 2.0)
    assert change is not None and change.after is U
    assert tracker.record(CheckResult(H), 3.0) is None and tracker.status is U
