"""The ring of failed requests: bounded, newest first, tries in words."""

from __future__ import annotations

from sidecar.catalog.model import HealthStatus
from sidecar.mesh.router import Endpoint
from sidecar.ops.failures import FailedRequests, is_failure
from sidecar.proxy import AttemptRecord, RequestStats, Target
from sidecar.proxy.failures import ConnectFailure

E1 = Endpoint("echo", "echo-1", "b1", ("127.0.0.1", 7001), HealthStatus.HEALTHY)
E2 = Endpoint("echo", "echo-2", "b2", ("127.0.0.1", 7002), HealthStatus.HEALTHY)


def stats(request_id: str, status: int, attempts: int = 1, error: str | None = None) -> RequestStats:
    return RequestStats("GET", "echo", b"/x", status, error, 0, 0, 10.0, 10.01, 10.02, attempts, "127.0.0.1:7002",
                        None, request_id, None, None, None)


def attempt(number: int, endpoint: Endpoint, status: int | None, started: float, ended: float) -> AttemptRecord:
    failure = ConnectFailure(endpoint.authority, "connection refused") if status is None else None
    return AttemptRecord(number, Target(endpoint.address), "GET", failure, status, status is not None, True,
                         started, ended)


def test_tries_are_told_in_order_with_their_outcome() -> None:
    ring = FailedRequests()
    tries = [(attempt(1, E1, None, 10.0, 10.001), E1), (attempt(2, E2, 503, 10.03, 10.035), E2)]
    entry = ring.record("outbound", "echo", stats("r1", 503, 2), tries, 1_700_000_000.0)
    assert ring.get("r1") is entry
    lines = entry.says()
    assert lines[0] == "request r1: GET /x to echo via outbound: the client got 503 after 2 attempts in 20.0 ms"
    assert lines[1] == ("try 1 → echo-1 at 127.0.0.1:7001: failed: connect-failure (cannot connect to upstream "
                        "127.0.0.1:7001: connection refused) after 1.0 ms (began at +0.0 ms, nothing was sent)")
    assert lines[2] == "try 2 → echo-2 at 127.0.0.1:7002: answered 503 after 5.0 ms (began at +30.0 ms)"
    assert entry.to_json()["tries"][1]["startedMs"] == 30.0


def test_a_local_refusal_has_no_try() -> None:
    entry = FailedRequests().record("outbound", "echo", stats("r2", 429, 0, "local"), [], 0.0)
    assert entry.says()[1].startswith("no try reached a peer")


def test_the_ring_is_bounded_and_newest_first() -> None:
    ring = FailedRequests(capacity=3)
    for n in range(5):
        ring.record("outbound", "echo", stats(f"r{n}", 503), [], float(n))
    assert len(ring) == 3 and ring.get("r0") is None
    assert [f.request_id for f in ring.recent()] == ["r4", "r3", "r2"]
    assert [f.request_id for f in ring.recent(1)] == ["r4"]


def test_what_counts_as_a_failure() -> None:
    assert is_failure(stats("a", 0)) and is_failure(stats("b", 403)) and is_failure(stats("c", 200, error="reset"))
    assert not is_failure(stats("d", 200))
