"""The overload guard's core: samples in, shedding state out, with hysteresis and a hold; tables of samples."""

from __future__ import annotations

import json

import pytest

from sidecar.errors import Code, Overloaded, rescue
from sidecar.overload.guard import OverloadGuard, Reason, Sample, format_bytes, format_seconds

GiB = 1 << 30
MiB = 1 << 20


def run(guard: OverloadGuard, steps: list[tuple[float, int | None, float | None]]) -> list[tuple[bool, bool]]:
    """Feed ``(now, resident bytes, lag)`` samples; returns (shedding, refusing) after each."""
    out = []
    for now, rss, lag in steps:
        guard.observe(Sample(rss, lag), now)
        out.append((guard.shedding, guard.refusing))
    return out


OFF, SHED, REFUSE = (False, False), (True, False), (True, True)


@pytest.mark.parametrize(("steps", "expected"), [
    # under the limit: nothing
    ([(0.0, 900 * MiB, 0.0)], [OFF]),
    # at the limit: memory sheds and refuses connections
    ([(0.0, GiB, 0.0)], [REFUSE]),
    # between 90% and the limit, from below: not yet
    ([(0.0, int(0.95 * GiB), 0.0)], [OFF]),
    # over, then in the band: still shedding (hysteresis)
    ([(0.0, 2 * GiB, 0.0), (5.0, int(0.95 * GiB), 0.0)], [REFUSE, REFUSE]),
    # over, then under 90% but within the hold: still shedding; after the hold: released
    ([(0.0, 2 * GiB, 0.0), (0.5, 800 * MiB, 0.0), (1.0, 800 * MiB, 0.0)], [REFUSE, REFUSE, OFF]),
    # an unreadable value keeps the state
    ([(0.0, 2 * GiB, 0.0), (5.0, None, 0.0)], [REFUSE, REFUSE]),
], ids=["under", "at-limit", "band-from-below", "band-from-above", "hold-then-release", "unknown-keeps"])
def test_memory(steps: list[tuple[float, int | None, float | None]], expected: list[tuple[bool, bool]]) -> None:
    assert run(OverloadGuard(GiB, 0.5), steps) == expected


@pytest.mark.parametrize(("steps", "expected"), [
    ([(0.0, 0, 0.1)], [OFF]),
    # lag sheds requests but does not refuse connections
    ([(0.0, 0, 0.5)], [SHED]),
    # one spike: shedding holds a second, then clears on a quiet sample
    ([(0.0, 0, 2.0), (0.1, 0, 0.0), (0.9, 0, 0.0), (1.0, 0, 0.0)], [SHED, SHED, SHED, OFF]),
    # a lag sitting at 95% of the limit after a spike keeps shedding until it falls under 90%
    ([(0.0, 0, 0.6), (2.0, 0, 0.47), (3.0, 0, 0.44)], [SHED, SHED, OFF]),
    # a new spike during the hold restarts it
    ([(0.0, 0, 0.6), (0.8, 0, 0.6), (1.5, 0, 0.0), (1.8, 0, 0.0)], [SHED, SHED, SHED, OFF]),
], ids=["quiet", "at-limit", "spike-hold", "band", "re-spike"])
def test_loop_lag(steps: list[tuple[float, int | None, float | None]], expected: list[tuple[bool, bool]]) -> None:
    assert run(OverloadGuard(0, 0.5), steps) == expected


def test_a_value_hovering_at_the_limit_does_not_flap() -> None:
    guard = OverloadGuard(GiB, 0.5)
    transitions = []
    for i in range(200):  # +-1% around the limit, a sample every 100 ms for 20 s
        rss = int(GiB * (1.01 if i % 2 else 0.99))
        transitions += guard.observe(Sample(rss, 0.0), i * 0.1)
    assert len(transitions) == 1 and transitions[0].active
    for i in range(200, 215):  # then well under: released once, after the hold
        transitions += guard.observe(Sample(GiB // 2, 0.0), i * 0.1)
    assert [t.active for t in transitions] == [True, False]
    assert guard.transitions_by_reason() == {"memory": 2, "loop_lag": 0}


def test_transitions_name_the_reason_value_and_limit() -> None:
    guard = OverloadGuard(GiB, 0.5)
    [entered] = guard.observe(Sample(int(1.1 * GiB), 0.0), 0.0)
    assert entered.reason is Reason.MEMORY and entered.active
    assert entered.message == "resident memory 1.1 GiB over overload.max_memory_bytes 1.0 GiB"
    [lag] = guard.observe(Sample(int(1.1 * GiB), 0.75), 0.1)
    assert lag.message == "event-loop lag 750ms over overload.max_loop_lag 500ms"
    assert guard.active == [Reason.MEMORY, Reason.LOOP_LAG]
    assert guard.observe(Sample(int(1.1 * GiB), 0.75), 0.2) == []   # no news, no transition
    [left] = guard.observe(Sample(GiB // 2, 0.75), 2.0)
    assert not left.active and left.reason is Reason.MEMORY
    assert left.message == "resident memory 512.0 MiB back under 921.6 MiB (overload.max_memory_bytes)"
    assert guard.shedding and not guard.refusing                      # lag alone: requests only


def test_the_error_is_spec_shaped_with_retry_after_and_counted_per_listener() -> None:
    guard = OverloadGuard(GiB, 0.5)
    guard.observe(Sample(int(1.1 * GiB), 0.75), 0.0)
    error = guard.shed("outbound")
    assert isinstance(error, Overloaded) and error.code is Code.UNAVAILABLE
    assert error.message == ("overloaded: resident memory 1.1 GiB over overload.max_memory_bytes 1.0 GiB; "
                             "event-loop lag 750ms over overload.max_loop_lag 500ms")
    rescued = rescue(error)
    assert rescued.status == 503 and rescued.headers["retry-after"] == "1"
    assert rescued.headers["x-sidecar-error"] == "UNAVAILABLE"
    body = json.loads(rescued.body)["error"]
    assert body["grpcCode"] == 14 and body["details"]["reasons"] == ["memory", "loop_lag"]
    assert body["details"]["residentBytes"] == int(1.1 * GiB) and body["details"]["maxMemoryBytes"] == GiB
    guard.shed("outbound")
    guard.refuse("api")
    # both reasons active: counted once, under memory (the graver)
    assert guard.shed_counts == {("outbound", "memory"): 2}
    assert guard.refused_counts == {("api", "memory"): 1}
    assert guard.active_by_reason() == {"memory": True, "loop_lag": True}


def test_while_in_the_band_the_message_says_why_it_still_sheds() -> None:
    guard = OverloadGuard(GiB, 0.5)
    guard.observe(Sample(int(1.1 * GiB), 0.0), 0.0)
    guard.observe(Sample(int(0.95 * GiB), 0.0), 5.0)
    assert guard.error is not None
    assert guard.error.message == ("overloaded: resident memory 1.1 GiB over overload.max_memory_bytes 1.0 GiB "
                                   "(now 972.8 MiB; shedding until under 921.6 MiB)")
    assert guard.error.details["residentBytes"] == int(0.95 * GiB)


@pytest.mark.parametrize(("max_memory", "max_lag", "enabled", "sample", "shedding"), [
    (0, 0.5, True, Sample(100 * GiB, 0.0), False),       # memory check off
    (GiB, 0, True, Sample(0, 100.0), False),             # lag check off
    (GiB, 0.5, False, Sample(2 * GiB, 2.0), False),      # the guard off: never sheds
    (GiB, 0.5, True, Sample(None, None), False),          # nothing known: nothing done
])
def test_checks_turned_off(max_memory: int, max_lag: float, enabled: bool, sample: Sample, shedding: bool) -> None:
    guard = OverloadGuard(max_memory, max_lag, enabled=enabled)
    guard.observe(sample, 0.0)
    assert guard.shedding is shedding and not guard.refusing
    assert guard.error is None
    assert not any(guard.active_by_reason().values())


def test_status_for_the_admin_port() -> None:
    guard = OverloadGuard(GiB, 0.5)
    guard.observe(Sample(2 * GiB, 0.01), 0.0)
    guard.shed("api")
    status = guard.status()
    assert status["shedding"] and status["refusingConnections"]
    assert status["reasons"]["memory"]["active"] and not status["reasons"]["loop_lag"]["active"]
    assert status["reasons"]["memory"]["releaseBelow"] == pytest.approx(0.9 * GiB)
    assert status["shed"] == [{"listener": "api", "reason": "memory", "count": 1}]
    assert status["lastSample"] == {"residentBytes": 2 * GiB, "loopLagSeconds": 0.01}
    assert status["message"].startswith("overloaded: resident memory 2.0 GiB")
    json.dumps(status)


@pytest.mark.parametrize(("value", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536 * 1024, "1.5 MiB"), (int(1.1 * GiB), "1.1 GiB"),
])
def test_format_bytes(value: int, text: str) -> None:
    assert format_bytes(value) == text


@pytest.mark.parametrize(("value", "text"), [(0.0, "0ms"), (0.5, "500ms"), (1.25, "1250ms"), (12.0, "12.0s")])
def test_format_seconds(value: float, text: str) -> None:
    assert format_seconds(value) == text
