"""The rotation core's decisions, on a fake clock, and the refusal log's rate limit."""

from __future__ import annotations

import logging

import pytest

from sidecar.tls import reasons
from sidecar.tls.handshake import RefusalLog
from sidecar.tls.reload import (
    ExpiryState,
    FileDigests,
    MaterialChange,
    Reload,
    ReloadCore,
    RotationPolicy,
    Warn,
    expiry_state,
    plan,
)

A = FileDigests("ca1", "cert1", "key1")
HOUR = 3600.0


@pytest.mark.parametrize(
    ("seen", "change"),
    [
        (A, MaterialChange.NONE),
        (FileDigests("ca1", "cert2", "key1"), MaterialChange.IDENTITY),
        (FileDigests("ca1", "cert1", "key2"), MaterialChange.IDENTITY),
        (FileDigests("ca2", "cert1", "key1"), MaterialChange.TRUST),
        (FileDigests("ca2", "cert2", "key2"), MaterialChange.IDENTITY | MaterialChange.TRUST),
    ],
)
def test_plan(seen: FileDigests, change: MaterialChange) -> None:
    assert plan(A, seen) == change


@pytest.mark.parametrize(
    ("now", "state"),
    [(0.0, ExpiryState.OK), (19.0 * HOUR, ExpiryState.OK), (19.5 * HOUR, ExpiryState.EXPIRING),
     (24 * HOUR, ExpiryState.EXPIRED), (30 * HOUR, ExpiryState.EXPIRED)],
)
def test_expiry_state_of_a_day_long_certificate(now: float, state: ExpiryState) -> None:
    assert expiry_state(0.0, 24 * HOUR, now, 0.2) is state


def core(settle: float = 10.0) -> ReloadCore:
    return ReloadCore(A, 0.0, 24 * HOUR, RotationPolicy(settle=settle, repeat_every=HOUR))


def test_no_change_no_command() -> None:
    assert core().on_poll(A, 10.0) == []


def test_changed_files_reload_once_loaded() -> None:
    c = core()
    new = FileDigests("ca1", "cert2", "key2")
    assert c.on_poll(new, 10.0) == [Reload(MaterialChange.IDENTITY, new)]
    c.on_loaded(new, 10.0, 10.0 + 24 * HOUR, 10.0)
    assert c.on_poll(new, 12.0) == []


def test_bad_pair_is_not_retried_and_warned_only_if_it_lasts() -> None:
    c = core(settle=10.0)
    half = FileDigests("ca1", "cert1", "key2")  # new key, old certificate
    assert c.on_poll(half, 100.0) == [Reload(MaterialChange.IDENTITY, half)]
    assert c.on_failed(half, "key does not match", 100.0) == []
    assert c.on_poll(half, 102.0) == []  # same content: no retry, no warning yet
    out = c.on_poll(half, 111.0)
    assert len(out) == 1 and isinstance(out[0], Warn) and "key does not match" in out[0].message
    assert c.on_poll(half, 200.0) == []  # warned once
    done = FileDigests("ca1", "cert2", "key2")
    assert c.on_poll(done, 201.0) == [Reload(MaterialChange.IDENTITY, done)]  # completed: retried at once


def test_missing_file_waits_and_warns_after_settling() -> None:
    c = core(settle=5.0)
    gone = FileDigests("ca1", None, "key1")
    assert c.on_poll(gone, 1.0) == []
    out = c.on_poll(gone, 7.0)
    assert len(out) == 1 and "missing" in out[0].message  # type: ignore[union-attr]


def test_expiry_warnings_start_at_the_last_fifth_and_repeat_hourly() -> None:
    c = core()
    assert c.on_poll(A, 19.0 * HOUR) == []
    first = c.on_poll(A, 19.5 * HOUR)
    assert len(first) == 1 and isinstance(first[0], Warn) and "expires at" in first[0].message
    assert "4.5 hours" in first[0].message
    assert c.on_poll(A, 19.9 * HOUR) == []
    assert len(c.on_poll(A, 20.6 * HOUR)) == 1
    expired = c.on_poll(A, 24.5 * HOUR)
    assert len(expired) == 1 and expired[0].level == logging.ERROR  # type: ignore[union-attr]
    assert "expired at" in expired[0].message  # type: ignore[union-attr]


def test_refusal_log_counts_all_and_rate_limits_lines(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(keep=3, quiet_for=10.0)
    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        for i in range(5):
            log.record(f"10.0.0.1:{5000 + i}", reasons.no_certificate(), now=100.0 + i)
        log.record("10.0.0.2:5000", reasons.plaintext_http(), now=101.0)
        log.record("10.0.0.1:6000", reasons.no_certificate(), now=111.0)
    assert log.total == 7
    assert len(log.recent) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0] == "refused inbound mTLS connection from 10.0.0.1:5000: peer presented no certificate"
    assert "plaintext HTTP" in lines[1]
    assert lines[2].endswith("(4 more like it in the last 11s)")
    assert log.snapshot()["by_reason"] == {"no-certificate": 6, "plaintext-http": 1}
