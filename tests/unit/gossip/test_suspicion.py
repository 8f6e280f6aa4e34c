"""Lifeguard's suspicion maths and the timing formulas, by tables (memberlist's own test values)."""

from __future__ import annotations

import pytest

from sidecar.config.model import GOSSIP_PROFILES
from sidecar.gossip.suspicion import (
    Suspicion,
    confirmations_wanted,
    detection_time_bound,
    expected_detection_time,
    push_pull_scale,
    remaining_suspicion_time,
    retransmit_limit,
    suspicion_timeout,
)


@pytest.mark.parametrize(("n", "expected"), [
    (0, 1.0), (1, 1.0), (5, 1.0), (10, 1.0), (50, 1.698970004), (100, 2.0), (500, 2.698970004), (1000, 3.0),
])
def test_suspicion_timeout_grows_with_log10_of_n_with_a_floor_of_one(n: int, expected: float) -> None:
    assert suspicion_timeout(3, n, 1.0) / 3 == pytest.approx(expected)


def test_suspicion_timeout_scales_with_interval_and_mult() -> None:
    assert suspicion_timeout(4, 100, 0.5) == pytest.approx(4.0)


@pytest.mark.parametrize(("n", "k", "elapsed", "expected"), [
    (0, 3, 0.0, 30.0),
    (1, 3, 2.0, 14.0),
    (2, 3, 3.0, 4.81),
    (3, 3, 4.0, -2.0),
    (4, 3, 5.0, -3.0),
    (5, 3, 10.0, -8.0),
])
def test_remaining_suspicion_time(n: int, k: int, elapsed: float, expected: float) -> None:
    assert remaining_suspicion_time(n, k, elapsed, 2.0, 30.0) == pytest.approx(expected)


def test_remaining_time_without_wanted_confirmations_is_the_maximum() -> None:
    assert remaining_suspicion_time(0, 0, 1.0, 2.0, 30.0) == pytest.approx(29.0)


@pytest.mark.parametrize(("mult", "n", "expected"), [(4, 100, 2), (4, 4, 2), (4, 3, 0), (3, 10, 1), (2, 10, 0)])
def test_confirmations_wanted(mult: int, n: int, expected: int) -> None:
    assert confirmations_wanted(mult, n) == expected


@pytest.mark.parametrize(("mult", "n", "expected"), [(3, 0, 0), (3, 1, 3), (3, 9, 3), (3, 99, 6), (4, 200, 12),
                                                      (4, 10_000, 20)])
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(("n", "expected"), [(0, 1), (32, 1), (33, 2), (64, 2), (65, 3), (128, 3), (129, 4),
                                             (200, 4), (10_000, 10)])
def test_push_pull_scale(n: int, expected: int) -> None:
    assert push_pull_scale(1.0, n) == expected


class TestSuspicionTimer:
    def test_starts_at_the_maximum(self) -> None:
        s = Suspicion("a", 3, 2.0, 30.0, now=100.0)
        assert s.deadline == 130.0

    def test_confirmations_shrink_the_deadline_and_duplicates_do_not(self) -> None:
        s = Suspicion("a", 3, 2.0, 30.0, now=0.0)
        assert s.confirm("b", now=2.0)
        assert s.deadline == pytest.approx(16.0)
        assert not s.confirm("b", now=2.5)
        assert s.deadline == pytest.approx(16.0)
        assert s.confirm("c", now=3.0)
        assert s.deadline == pytest.approx(7.81)
        assert s.confirm("d", now=4.0)
        assert s.deadline == pytest.approx(2.0)  # at the minimum, already overdue

    def test_the_accuser_does_not_confirm_its_own_suspicion(self) -> None:
        s = Suspicion("a", 3, 2.0, 30.0, now=0.0)
        assert not s.confirm("a", now=1.0)
        assert s.deadline == 30.0

    def test_no_more_confirmations_than_wanted(self) -> None:
        s = Suspicion("a", 1, 2.0, 30.0, now=0.0)
        assert s.confirm("b", now=1.0)
        assert not s.confirm("c", now=1.0)
        assert s.n == 1

    def test_zero_wanted_keeps_the_maximum(self) -> None:
        s = Suspicion("a", 0, 2.0, 30.0, now=0.0)
        assert not s.confirm("b", now=1.0)
        assert s.deadline == 30.0


@pytest.mark.parametrize("profile", ["lan", "wan", "local"])
def test_detection_bound_covers_the_expected_time_and_the_maximum_timeout(profile: str) -> None:
    t = GOSSIP_PROFILES[profile]
    for n in (3, 100, 10_000):
        timeout_max = t.suspicion_max_timeout_mult * suspicion_timeout(t.suspicion_mult, n, t.probe_interval)
        assert expected_detection_time(t, n) < detection_time_bound(t, n)
        assert detection_time_bound(t, n) >= timeout_max + t.probe_interval
