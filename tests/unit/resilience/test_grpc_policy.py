"""gRPC in the resilience layers, without sockets: retry_on's gRPC status names, the retry decision on a call's
status, and grpc-timeout as a deadline (read, shortened, rewritten per try, bridged for the app)."""

from __future__ import annotations

import pytest

from sidecar.errors import InvalidArgument
from sidecar.http2.grpc import Status, parse_timeout
from sidecar.proxy import AttemptRecord, ConnectFailure, Target
from sidecar.resilience import RetryOn
from sidecar.resilience.deadline import set_field, to_grpc_timeout
from sidecar.resilience.rules import read_request_headers
from tests.unit.resilience.test_policy import PAY, Peers, call_of, endpoint, head, policy, resilience, settle, start

GRPC = ("content-type", "application/grpc")


def grpc_record(target: Target, number: int, grpc_status: int | None, *, status: int = 200, sent: bool = True,
                started: float = 100.0, ended: float = 100.01) -> AttemptRecord:
    return AttemptRecord(number, target, "POST", None, status, sent, True, started, ended, None, grpc_status)


# ------------------------------------------------------------------------------------------ retry_on


@pytest.mark.parametrize(("tokens", "grpc", "statuses"), [
    (["unavailable"], {14}, set()),
    (["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"], {1, 4, 13, 8, 14}, set()),
    (["Unavailable", " internal "], {14, 13}, set()),          # as a request header may spell them
    (["503", "unavailable", "not-a-status"], {14}, {503}),
    (["5xx"], set(), set(range(500, 600))),                   # HTTP classes name no gRPC status
])
def test_retry_on_takes_grpc_status_names(tokens: list[str], grpc: set[int], statuses: set[int]) -> None:
    parsed = RetryOn.parse(tokens)
    assert parsed.grpc == grpc and parsed.statuses == statuses


def test_the_retry_on_header_may_name_grpc_statuses() -> None:
    r = resilience(policy(attempts=0))
    call = call_of(start(r, Peers(endpoint(1)), head("POST", GRPC, ("x-sidecar-retry-on", "unavailable,cancelled"))))
    assert call.max_retries == 1 and call.grpc_statuses == {Status.UNAVAILABLE, Status.CANCELLED}


# ------------------------------------------------------------------------------------------ the retry decision


def test_a_grpc_status_in_retry_on_is_retried_on_another_host_although_the_call_is_a_post() -> None:
    r = resilience(policy(retry_on=["unavailable"]))
    first = start(r, Peers(endpoint(1), endpoint(2)), head("POST", GRPC))
    decision = call_of(first).next_attempt(grpc_record(first, 1, Status.UNAVAILABLE))
    assert decision is not None and decision.target.address != first.address   # tried-host avoidance, as for 503
    assert r.clusters["pay"].retries == 1


@pytest.mark.parametrize(("grpc_status", "retried"), [
    (Status.UNAVAILABLE, True),
    (Status.RESOURCE_EXHAUSTED, False),    # not named in retry_on
    (Status.OK, False),
    (None, False),                         # an HTTP 200 with no status yet: nothing to decide on
])
def test_only_the_named_statuses_are_retried(grpc_status: int | None, retried: bool) -> None:
    r = resilience(policy(retry_on=["unavailable"]))
    first = start(r, Peers(endpoint(1), endpoint(2)), head("POST", GRPC))
    assert (call_of(first).next_attempt(grpc_record(first, 1, grpc_status)) is not None) is retried


def test_a_reset_of_a_grpc_post_after_sending_is_still_unsafe_to_repeat() -> None:
    r = resilience(policy(retry_on=["reset", "unavailable", "connect-failure"]))
    first = start(r, Peers(endpoint(1), endpoint(2)), head("POST", GRPC))
    failure = ConnectFailure(first.authority, "refused")
    sent_reset = AttemptRecord(1, first, "POST", None, 503, True, True, 100.0, 100.01)   # a 503 not in retry_on
    assert call_of(first).next_attempt(sent_reset) is None
    second = start(r, Peers(endpoint(1), endpoint(2)), head("POST", GRPC))
    unsent = AttemptRecord(1, second, "POST", failure, None, False, True, 100.0, 100.01)
    assert call_of(second).next_attempt(unsent) is not None


def test_grpc_retries_keep_to_attempts_budget_and_deadline() -> None:
    r = resilience(policy(retry_on=["unavailable"], attempts=1, timeout=1.0))
    first = start(r, Peers(endpoint(1), endpoint(2)), head("POST", GRPC))
    call = call_of(first)
    second = call.next_attempt(grpc_record(first, 1, Status.UNAVAILABLE))
    assert second is not None
    assert call.next_attempt(grpc_record(second.target, 2, Status.UNAVAILABLE)) is None   # attempts: 1
    assert r.clusters["pay"].retries_denied["attempts"] == 1
    late = start(r, Peers(endpoint(1), endpoint(2)), head("POST", GRPC), now=200.0)
    assert call_of(late).next_attempt(grpc_record(late, 1, Status.UNAVAILABLE, started=200.0, ended=200.99)) is None
    assert r.clusters["pay"].retries_denied["deadline"] == 1
    for c in (call, call_of(late)):
        c.finish()
    assert settle(r)["requests"] == 0


def test_unavailable_counts_against_the_host_as_a_503_does() -> None:
    r = resilience(policy(retry_on=["connect-failure"], consecutive=2, percent=100.0))
    for _ in range(2):
        target = start(r, Peers(endpoint(1), endpoint(2)), head("POST", GRPC))
        call = call_of(target)
        call.observe(grpc_record(target, 1, Status.UNAVAILABLE))
        call.finish()
    hosts = r.clusters["pay"].hosts
    assert sum(h.failures for h in hosts.values()) == 2


# ------------------------------------------------------------------------------------------ grpc-timeout


def test_grpc_timeout_shortens_the_deadline_and_is_rewritten_with_the_time_left() -> None:
    r = resilience(policy(timeout=15.0, per_try=None, retry_on=["unavailable"]))
    h = head("POST", GRPC, ("grpc-timeout", "2S"), ("accept", "*/*"))
    target = start(r, Peers(endpoint(1), endpoint(2)), h, now=100.0)
    assert target.timeout == 2.0
    assert h.headers.get("x-sidecar-deadline-ms") == "2000" and h.headers.get("grpc-timeout") == "2000m"
    # a retry after 0.5 s and a 25 ms back-off: both fields say what is left then, once each
    decision = call_of(target).next_attempt(grpc_record(target, 1, Status.UNAVAILABLE, started=100.0, ended=100.5))
    assert decision is not None
    (ms,) = h.headers.get_all("x-sidecar-deadline-ms")
    assert 1474 <= int(ms) <= 1475 and h.headers.get_all("grpc-timeout") == [f"{ms}m"]   # whole ms, rounded down


def test_the_policy_timeout_wins_when_smaller_and_the_grpc_timeout_says_so() -> None:
    r = resilience(policy(timeout=0.3, per_try=None))
    h = head("POST", GRPC, ("grpc-timeout", "5S"))
    target = start(r, Peers(endpoint(1)), h)
    assert target.timeout == 0.3 and h.headers.get("grpc-timeout") == f"{h.headers.get('x-sidecar-deadline-ms')}m"
    assert 299 <= int(h.headers.get("x-sidecar-deadline-ms") or 0) <= 300


def test_a_request_without_grpc_timeout_gets_none_from_the_callers_sidecar() -> None:
    r = resilience(policy(timeout=3.0))
    h = head("POST", GRPC)
    start(r, Peers(endpoint(1)), h)
    assert h.headers.get("grpc-timeout") is None and h.headers.get("x-sidecar-deadline-ms") == "3000"


def test_a_malformed_grpc_timeout_is_refused_naming_the_header() -> None:
    r = resilience(policy())
    with pytest.raises(InvalidArgument, match="grpc-timeout"):
        r.outbound(head("POST", GRPC, ("grpc-timeout", "soon")), PAY, Peers(endpoint(1)), 100.0)


def test_grpc_timeout_is_read_and_kept_the_retry_headers_stripped() -> None:
    h = head("POST", GRPC, ("grpc-timeout", "250m"), ("x-sidecar-deadline-ms", "400"),
             ("x-sidecar-retry-on", "internal"))
    asked = read_request_headers(h)
    assert asked.deadline == 0.25 and asked.grpc_timeout and asked.retry_on == "internal"
    assert [i[0] for i in h.headers.items] == [b"content-type", b"grpc-timeout"]


def test_inbound_bridges_the_deadline_into_grpc_timeout_for_a_grpc_app() -> None:
    r = resilience(policy(timeout=5.0))
    app = Target(("127.0.0.1", 3000), tag="app")
    h = head("POST", GRPC, ("x-sidecar-deadline-ms", "1200"))
    assert r.inbound(h, app, "pay").timeout == 1.2
    assert h.headers.get("grpc-timeout") == "1200m" and h.headers.get("x-sidecar-deadline-ms") == "1200"
    # a grpc-timeout that came along is rewritten with what this hop honours (the smaller one)
    h = head("POST", GRPC, ("grpc-timeout", "9S"), ("x-sidecar-deadline-ms", "800"))
    assert r.inbound(h, app, "pay").timeout == 0.8 and h.headers.get_all("grpc-timeout") == ["800m"]
    h = head("POST", GRPC, ("grpc-timeout", "100m"), ("x-sidecar-deadline-ms", "800"))
    assert r.inbound(h, app, "pay").timeout == 0.1 and h.headers.get_all("x-sidecar-deadline-ms") == ["100"]
    # not a gRPC call: no grpc-timeout is made up
    h = head("POST", ("content-type", "application/json"), ("x-sidecar-deadline-ms", "1200"))
    r.inbound(h, app, "pay")
    assert h.headers.get("grpc-timeout") is None


@pytest.mark.parametrize(("seconds", "value"), [
    (2.0, b"2000m"), (1.4759, b"1475m"), (0.0004, b"0m"), (0.0, b"0m"), (-1.0, b"0m"), (86_400.0 * 2, b"86400000m"),
])
def test_to_grpc_timeout_never_promises_more_than_the_millisecond_header(seconds: float, value: bytes) -> None:
    assert to_grpc_timeout(seconds) == value
    assert parse_timeout(value) <= max(seconds, 0.0)


def test_set_field_leaves_one_field_last() -> None:
    name = b"grpc-timeout"
    items = [(b"a", b"a", b"1"), (name, name, b"1S")]
    assert set_field(items, name, b"5m") is items and items[-1] == (name, name, b"5m")
    items = [(name, name, b"1S"), (b"a", b"a", b"1"), (name, b"Grpc-Timeout", b"2S")]
    assert set_field(items, name, b"5m") == [(b"a", b"a", b"1"), (name, name, b"5m")]
    assert set_field([], name, b"5m") == [(name, name, b"5m")]
