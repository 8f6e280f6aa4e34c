"""Resource caps: admission, waiting, promotion, retries and their counters, as transitions of the gauges."""

from __future__ import annotations

import pytest

from sidecar.resilience.breaker import Admission, Breaker, Cap, ResourceCaps


def test_under_the_caps_requests_go() -> None:
    breaker = Breaker(ResourceCaps(max_connections=2, max_pending_requests=1, max_requests=10, max_retries=1))
    assert breaker.admit().admission is Admission.GO
    assert (breaker.connections, breaker.requests, breaker.pending) == (1, 1, 0)
    assert not breaker.is_open(Cap.MAX_CONNECTIONS)
    assert breaker.admit().admission is Admission.GO
    assert breaker.is_open(Cap.MAX_CONNECTIONS)                      # at the cap: open


def test_at_max_connections_requests_wait_then_are_refused_naming_the_cap() -> None:
    breaker = Breaker(ResourceCaps(max_connections=1, max_pending_requests=2, max_requests=10))
    steps = [breaker.admit() for _ in range(4)]
    assert [s.admission for s in steps] == [Admission.GO, Admission.WAIT, Admission.WAIT, Admission.REJECT]
    assert steps[1].cap is Cap.MAX_CONNECTIONS
    assert steps[3].cap is Cap.MAX_PENDING_REQUESTS
    assert breaker.rejected == {Cap.MAX_PENDING_REQUESTS: 1}
    assert breaker.snapshot()["pendingRequests"] == {"active": 2, "max": 2, "state": "open", "rejected": 1}


def test_a_freed_connection_goes_to_a_waiting_request() -> None:
    breaker = Breaker(ResourceCaps(max_connections=1, max_pending_requests=1))
    breaker.admit()
    assert breaker.admit().admission is Admission.WAIT
    assert not breaker.can_promote()
    breaker.connection_done()
    breaker.request_done()
    assert breaker.can_promote()
    assert breaker.promote().admission is Admission.GO
    assert (breaker.connections, breaker.pending, breaker.requests) == (1, 0, 1)
    with pytest.raises(RuntimeError):
        breaker.promote()                               # nobody waits


def test_new_requests_do_not_jump_the_queue() -> None:
    breaker = Breaker(ResourceCaps(max_connections=1, max_pending_requests=5))
    breaker.admit()
    breaker.admit()                                     # waits
    breaker.connection_done()
    breaker.request_done()                              # a slot is free, but someone waits for it
    assert breaker.admit().admission is Admission.WAIT


def test_max_requests_refuses_before_anything_else() -> None:
    breaker = Breaker(ResourceCaps(max_connections=10, max_requests=2))
    assert [breaker.admit().admission for _ in range(3)] == [Admission.GO, Admission.GO, Admission.REJECT]
    assert breaker.rejected == {Cap.MAX_REQUESTS: 1}


def test_a_promoted_request_can_still_meet_max_requests() -> None:
    breaker = Breaker(ResourceCaps(max_connections=1, max_pending_requests=1, max_requests=1))
    breaker.admit()
    breaker.pending = 1          # (set by hand: the driver never lets this happen, the core still checks)
    breaker.connection_done()
    decision = breaker.promote()
    assert (decision.admission, decision.cap) == (Admission.REJECT, Cap.MAX_REQUESTS)


def test_waiting_requests_that_give_up_free_their_place() -> None:
    breaker = Breaker(ResourceCaps(max_connections=1, max_pending_requests=1))
    breaker.admit()
    breaker.admit()
    breaker.give_up_waiting()
    assert breaker.pending == 0
    with pytest.raises(RuntimeError):
        breaker.give_up_waiting()


@pytest.mark.parametrize(("retries", "connections", "expected"), [
    (0, 0, None),
    (2, 0, Cap.MAX_RETRIES),
    (0, 3, Cap.MAX_CONNECTIONS),
])
def test_retries_take_a_retry_slot_and_a_connection(retries: int, connections: int, expected: Cap | None) -> None:
    breaker = Breaker(ResourceCaps(max_connections=3, max_retries=2))
    breaker.retries, breaker.connections = retries, connections
    assert breaker.retry() is expected
    if expected is None:
        assert (breaker.retries, breaker.connections) == (retries + 1, connections + 1)
    else:
        assert breaker.rejected[expected] == 1
        assert (breaker.retries, breaker.connections) == (retries, connections)


def test_zero_retries_allowed_means_none() -> None:
    breaker = Breaker(ResourceCaps(max_retries=0))
    assert breaker.retry() is Cap.MAX_RETRIES


def test_releasing_what_is_not_held_is_a_bug() -> None:
    breaker = Breaker(ResourceCaps())
    for release in (breaker.connection_done, breaker.request_done, breaker.retry_done):
        with pytest.raises(RuntimeError):
            release()


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        ResourceCaps(max_connections=0)
