"""The renewal schedule's decisions, time passed in: when a certificate is due, how retries back off, how
loudly failures are logged, and simulations of many renewals on a fake clock."""

from __future__ import annotations

import itertools
import logging

import pytest

from sidecar.tls.renewal import (
    Log,
    Renew,
    RenewalCore,
    RenewalPolicy,
    describe_span,
    lifetime_start,
    renewal_time,
    retry_delay,
)

DAY = 86400.0
SKEW = 300.0  # sidecar's CA backdates not_before by 5 minutes


@pytest.mark.parametrize(
    ("not_before", "seen_at", "obtained", "start"),
    [
        (-SKEW, 0.0, True, 0.0),        # obtained now, backdated 5 min: its lifetime starts now
        (-60.0, 0.0, True, 0.0),        # step-ca's 1 min
        (10.0, 0.0, True, 10.0),        # not valid yet (the CA's clock is ahead): from not_before
        (-SKEW, 0.0, False, -SKEW),     # found at start: backdating cannot be told from age
        (-DAY, 0.0, False, -DAY),
    ],
)
def test_lifetime_start(not_before: float, seen_at: float, obtained: bool, start: float) -> None:
    assert lifetime_start(not_before, seen_at, obtained=obtained) == start


@pytest.mark.parametrize(
    ("start", "not_after", "due"),
    [
        (0.0, 100.0, 70.0),             # 70% of the lifetime
        (0.0, DAY, 0.7 * DAY),
        (-SKEW, 30.0, -69.0),           # a 30 s certificate backdated 5 min, found at start: due at once
        (0.0, 30.0, 21.0),              # the same, obtained at 0
        (90.0, 100.0, 97.0),            # got late in its life: 70% of what was left
        (150.0, 100.0, 150.0),          # got after expiry: due at once
    ],
)
def test_renewal_time(start: float, not_after: float, due: float) -> None:
    assert renewal_time(start, not_after, 0.7) == pytest.approx(due)


@pytest.mark.parametrize(
    ("failures", "remaining", "delay"),
    [
        (1, DAY, 1.0), (2, DAY, 2.0), (3, DAY, 4.0), (9, DAY, 256.0), (10, DAY, 300.0), (50, DAY, 300.0),
        (4, 9.0, 4.5),          # never more than half of what is left...
        (1, 9.0, 1.0),
        (6, 1.0, 1.0),          # ...but at least retry_base
        (3, -5.0, 4.0),         # expired: plain back-off
        (20, -5.0, 300.0),
    ],
)
def test_retry_delay(failures: int, remaining: float, delay: float) -> None:
    assert retry_delay(failures, remaining, RenewalPolicy()) == pytest.approx(delay)


@pytest.mark.parametrize(("seconds", "text"), [(9.04, "9.0s"), (-3, "0.0s"), (900, "15m"), (60480, "16.8h"),
                                               (3 * DAY, "3.0 days")])
def test_describe_span(seconds: float, text: str) -> None:
    assert describe_span(seconds) == text


def thirty_second_core(now: float = 0.0) -> RenewalCore:
    core = RenewalCore(RenewalPolicy())
    core.on_certificate(now - SKEW, now + 30.0, now, obtained=True)
    return core


def test_due_once_and_one_attempt_at_a_time() -> None:
    core = thirty_second_core()
    assert core.on_tick(20.9) == []
    assert core.on_tick(21.0) == [Renew(1)]
    assert core.on_tick(21.5) == []  # in flight: no second attempt
    assert core.on_renewed(-SKEW + 21.5, 51.5, 21.5) == []
    assert core.due == pytest.approx(21.5 + 21.0)
    assert core.on_tick(40.0) == [] and core.on_tick(42.5) == [Renew(1)]


def test_failures_back_off_and_get_louder_toward_expiry() -> None:
    core = thirty_second_core()
    now = 21.0
    levels: list[int] = []
    attempts: list[tuple[float, int]] = []
    while now < 40.0:
        commands = core.on_tick(now)
        if commands:
            assert isinstance(commands[0], Renew)
            attempts.append((now, commands[0].attempt))
            logs = core.on_failed("CA unreachable", now)
            assert len(logs) == 1 and isinstance(logs[0], Log)
            assert logs[0].message.startswith("certificate renewal failed: CA unreachable.")
            levels.append(logs[0].level)
        now = round(now + 0.25, 2)
    times = [t for t, _ in attempts]
    assert [n for _, n in attempts] == list(range(1, len(attempts) + 1))
    # 21, then +1, +2, +4 capped by half of what is left (at 28: 1 s left... at least 1 s)
    assert times[:4] == [21.0, 22.0, 24.0, 27.0]
    assert all(t < 30.0 for t in times[:5]) and len([t for t in times if t < 30.0]) >= 5
    assert levels[0] == logging.WARNING            # 9 s left of a 9 s window: there is time
    assert logging.ERROR in levels[:5]               # less than half the window left
    assert core.failures == len(attempts)
    assert core.last_error == "CA unreachable"


def test_failure_after_expiry_says_what_to_do() -> None:
    core = thirty_second_core()
    [log] = core.on_failed("tls.issuer.command exited with status 3: no route to CA", 31.0)
    assert isinstance(log, Log) and log.level == logging.ERROR
    assert "Our certificate expired at" in log.message
    assert "peers refuse this sidecar until a renewal succeeds or new files are written" in log.message
    assert "no route to CA" in log.message and "try 2 in 1.0s" in log.message


def test_first_failure_of_a_long_certificate_is_a_warning_with_the_expiry() -> None:
    core = RenewalCore(RenewalPolicy())
    core.on_certificate(0.0, DAY, 0.0, obtained=False)
    [log] = core.on_failed("boom", 0.7 * DAY)
    assert isinstance(log, Log) and log.level == logging.WARNING
    assert "keeps serving until 1970-01-02T00:00:00Z (in 7.2h); try 2 in 1.0s" in log.message


def test_a_certificate_found_past_its_renewal_point_is_renewed_at_once() -> None:
    core = RenewalCore(RenewalPolicy())
    core.on_certificate(-SKEW, 30.0, 0.0, obtained=False)  # 30 s, backdated: 91% of 330 s are past
    assert core.on_tick(0.0) == [Renew(1)]
    core.on_renewed(-SKEW, 30.0, 0.0)  # the new one, backdated too, is due at 70% of its 30 s
    assert core.on_tick(20.9) == [] and core.on_tick(21.0) == [Renew(1)]


def test_success_resets_the_failure_count() -> None:
    core = thirty_second_core()
    core.on_tick(21.0)
    core.on_failed("x", 21.0)
    core.on_tick(22.0)
    core.on_renewed(22.0 - SKEW, 52.0, 22.0)
    assert core.failures == 0 and core.last_error is None
    assert core.status(22.0)["consecutive_failures"] == 0


@pytest.mark.parametrize("ttl", [30.0, 3600.0, DAY])
def test_simulation_renews_every_seventy_percent_and_never_expires(ttl: float) -> None:
    """Backdated certificates from a working issuer, for 20 lifetimes: no busy loop, no expiry."""
    core = RenewalCore(RenewalPolicy())
    core.on_certificate(-SKEW, ttl, 0.0, obtained=False)
    now, step = 0.0, ttl / 300.0
    renewals: list[float] = []
    not_after = ttl
    while now < 20 * ttl:
        assert now < not_after, "the certificate expired"
        for command in core.on_tick(now):
            assert isinstance(command, Renew)
            renewals.append(now)
            not_after = now + ttl
            core.on_renewed(now - SKEW, not_after, now)
        now += step
    gaps = [b - a for a, b in itertools.pairwise(renewals[1:])]
    assert min(gaps) >= 0.69 * ttl and max(gaps) <= 0.71 * ttl + step
    assert 27 <= len(renewals) <= 30


def test_simulation_of_an_issuer_that_fails_for_a_while() -> None:
    """Down for 8 s of a 30 s certificate's 9 s window: retried in time, renewed before expiry."""
    core = thirty_second_core()
    now, renewed_at = 0.0, None
    while now < 30.0 and renewed_at is None:
        for _ in core.on_tick(now):
            if now < 29.0:
                core.on_failed("down", now)
            else:
                renewed_at = now
        now = round(now + 0.05, 2)
    assert renewed_at is not None and renewed_at < 30.0
