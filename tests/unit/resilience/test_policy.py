"""The composed layers without sockets: a Resilience, fake peers, and the AttemptRecords the engine would report,
on a fake clock with jitter 0 and a seeded RNG."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from sidecar.catalog.model import HealthStatus
from sidecar.config.model import (
    BackoffConfig,
    BudgetConfig,
    CircuitBreakerConfig,
    Config,
    OutlierDetectionConfig,
    PolicyConfig,
    RetryConfig,
)
from sidecar.config.values import Duration
from sidecar.errors import DeadlineExceeded, NotFound, ResourceExhausted
from sidecar.mesh.naming import ServiceName
from sidecar.mesh.router import Endpoint, EndpointSet
from sidecar.proxy import AttemptRecord, AttemptTimeout, ConnectFailure, RequestHead, Target
from sidecar.proxy.failures import UpstreamFailure
from sidecar.proxy.http1 import Headers
from sidecar.resilience import Call, Resilience, RetryOn
from sidecar.resilience.rules import read_request_headers

PAY = ServiceName("pay")
H, D = HealthStatus.HEALTHY, HealthStatus.DEGRADED


def endpoint(i: int, status: HealthStatus = H) -> Endpoint:
    return Endpoint("pay", f"pay-{i}", f"n{i}", (f"10.0.0.{i}", 15006), status)


class Peers:
    def __init__(self, *endpoints: Endpoint) -> None:
        self.set = EndpointSet(PAY, tuple(e for e in endpoints if e.status is H),
                               tuple(e for e in endpoints if e.status is D), total=len(endpoints))

    def endpoints(self, name: ServiceName) -> EndpointSet:
        return self.set

    def target(self, ep: Endpoint) -> Target:
        return Target(ep.address, pool_key=ep.address, tag=ep, timeout=99.0)


def policy(attempts: int = 2, retry_on: list[str] | None = None, ratio: float = 1.0, min_per_second: float = 100.0,
           max_retries: int = 3, max_requests: int = 1024, max_connections: int = 1024, max_pending: int = 1024,
           consecutive: int = 5, percent: float = 100.0, balancer: Any = "round_robin", timeout: float = 15.0,
           per_try: float | None = 5.0, non_idempotent: bool = False) -> Config:
    retries = RetryConfig(attempts=attempts, per_try_timeout=None if per_try is None else Duration(per_try),
                          retry_on=retry_on or ["connect-failure", "reset", "503"],
                          backoff=BackoffConfig(Duration(0.025), Duration(0.25)),
                          budget=BudgetConfig(ratio, min_per_second), retry_non_idempotent=non_idempotent)
    return Config(policies={"*": PolicyConfig(
        timeout=Duration(timeout), retries=retries,
        circuit_breaker=CircuitBreakerConfig(max_connections, max_pending, max_requests, max_retries),
        outlier_detection=OutlierDetectionConfig(consecutive, Duration(10), Duration(30), Duration(300), percent),
        load_balancer=balancer)})


def head(method: str = "GET", *headers: tuple[str, str]) -> RequestHead:
    items = [(k.lower().encode(), k.encode(), v.encode()) for k, v in headers]
    return RequestHead(method, b"/", "1.1", Headers(items), "pay")


def resilience(config: Config) -> Resilience:
    return Resilience(config, rng=random.Random(42), jitter=0.0)


def start(r: Resilience, peers: Peers, h: RequestHead | None = None, now: float = 100.0) -> Target:
    target = r.outbound(h or head(), PAY, peers, now)
    assert isinstance(target, Target)
    return target


def record(target: Target, number: int, *, status: int | None = None, failure: UpstreamFailure | None = None,
           sent: bool = True, replayable: bool = True, started: float = 100.0, ended: float = 100.01,
           method: str = "GET") -> AttemptRecord:
    return AttemptRecord(number, target, method, failure, status, sent, replayable, started, ended)


def refused(target: Target) -> ConnectFailure:
    return ConnectFailure(target.authority, "connection refused")


def call_of(target: Target) -> Call:
    assert isinstance(target.tag, Call)
    return target.tag


def settle(r: Resilience) -> dict[str, Any]:
    """Every gauge after all calls finished: nothing may be left held."""
    dest = r.clusters["pay"]
    b = dest.breaker
    return {"connections": b.connections, "pending": b.pending, "requests": b.requests, "retries": b.retries,
            "in_flight": sum(h.load.in_flight for h in dest.hosts.values())}


ZERO = {"connections": 0, "pending": 0, "requests": 0, "retries": 0, "in_flight": 0}


# ------------------------------------------------------------------------------------------ the first attempt


def test_the_first_target_carries_the_call_and_the_deadline() -> None:
    r = resilience(policy(timeout=2.0, per_try=0.5))
    h = head("GET", ("x-sidecar-max-retries", "1"), ("X-Envoy-Retry-On", "5xx"), ("accept", "*/*"),
             ("x-sidecar-deadline-ms", "1500"))
    target = start(r, Peers(endpoint(1)), h)
    call = call_of(target)
    assert target.retry is call and target.observer == call.observe
    assert target.timeout == 1.5 and target.try_timeout == 0.5      # the app's deadline shortens the policy's
    assert target.pool_key == ("10.0.0.1", 15006)
    assert [i[0] for i in h.headers.items] == [b"accept", b"x-sidecar-deadline-ms"]
    assert h.headers.get("x-sidecar-deadline-ms") == "500"          # what one try may take
    assert call.max_retries == 1 and 500 in call.statuses


def test_no_retries_means_no_retry_policy_and_no_try_timeout() -> None:
    r = resilience(policy(attempts=0))
    target = start(r, Peers(endpoint(1)))
    assert target.retry is None and target.try_timeout is None and target.timeout == 15.0
    assert head().headers.get("x-sidecar-deadline-ms") is None
    h = head()
    start(r, Peers(endpoint(1)), h)
    assert h.headers.get("x-sidecar-deadline-ms") == "15000"


def test_by_default_a_try_may_use_the_whole_timeout() -> None:
    """The default policy (SPEC: ``per_try_timeout: null``): a 6 s answer inside the 15 s timeout is waited for,
    not cut at 5 s and asked for again; the next hop is told it has the whole 15 s."""
    r = Resilience(Config(), rng=random.Random(1), jitter=0.0)
    h = head()
    target = start(r, Peers(endpoint(1)), h)
    assert target.timeout == 15.0 and target.try_timeout is None and target.retry is call_of(target)
    assert h.headers.get("x-sidecar-deadline-ms") == "15000"


@pytest.mark.parametrize(("per_try", "attempts", "timeout", "try_timeout", "sent"), [
    (None, 2, 15.0, None, "15000"),   # unset: the whole timeout
    (1.0, 2, 15.0, 1.0, "1000"),      # set and shorter: each try bounded
    (1.0, 0, 15.0, None, "15000"),    # no retries: the one try has the whole timeout (Envoy's meaning)
    (20.0, 2, 15.0, None, "15000"),   # longer than the timeout: the timeout bounds
    (15.0, 2, 15.0, None, "15000"),
])
def test_what_bounds_one_try(per_try: float | None, attempts: int, timeout: float, try_timeout: float | None,
                             sent: str) -> None:
    r = resilience(policy(attempts=attempts, timeout=timeout, per_try=per_try))
    h = head()
    target = start(r, Peers(endpoint(1)), h)
    assert target.timeout == timeout and target.try_timeout == try_timeout
    assert h.headers.get("x-sidecar-deadline-ms") == sent


@pytest.mark.parametrize(("per_try", "first", "second"), [(None, 2000, 1475), (0.3, 300, 300)])
def test_a_retry_tells_the_next_hop_what_is_left_when_it_starts(per_try: float | None, first: int,
                                                                second: int) -> None:
    """Without a per-try timeout the first try is told the whole deadline; a retry after 0.5 s and a 25 ms
    back-off must not be promised the same again. The retry's field replaces the first one's."""
    r = resilience(policy(timeout=2.0, per_try=per_try))
    h = head("GET", ("accept", "*/*"))
    target = start(r, Peers(endpoint(1), endpoint(2)), h, now=100.0)
    assert h.headers.get_all("x-sidecar-deadline-ms") == [str(first)]
    decision = call_of(target).next_attempt(record(target, 1, status=503, started=100.0, ended=100.5))
    assert decision is not None and decision.delay == pytest.approx(0.025)
    (value,) = h.headers.get_all("x-sidecar-deadline-ms")
    assert second - 1 <= int(value) <= second   # whole milliseconds, rounded down
    assert [item[0] for item in h.headers.items] == [b"accept", b"x-sidecar-deadline-ms"]


def test_a_deadline_already_past_fails_at_once() -> None:
    r = resilience(policy())
    with pytest.raises(DeadlineExceeded):
        r.outbound(head("GET", ("x-sidecar-deadline-ms", "0")), PAY, Peers(endpoint(1)), 100.0)


def test_retry_on_header_without_count_means_one_retry() -> None:
    r = resilience(policy(attempts=0))
    call = call_of(start(r, Peers(endpoint(1)), head("GET", ("x-sidecar-retry-on", "gateway-error"))))
    assert call.max_retries == 1 and call.statuses == {502, 503, 504}


def test_reading_headers_when_there_are_none_leaves_the_list_alone() -> None:
    h = head("GET", ("accept", "*/*"))
    items = h.headers.items
    asked = read_request_headers(h)
    assert h.headers.items is items and asked.deadline is None


@pytest.mark.parametrize(("tokens", "statuses", "failures"), [
    (["connect-failure"], set(), {"connect-failure"}),
    (["reset"], set(), {"reset", "protocol-error", "timeout"}),
    (["gateway-error"], {502, 503, 504}, {"connect-failure", "reset", "protocol-error", "timeout"}),
    (["retriable-4xx", "418", "refused-stream", "bogus"], {409, 418}, set()),
])
def test_retry_on_tokens(tokens: list[str], statuses: set[int], failures: set[str]) -> None:
    parsed = RetryOn.parse(tokens)
    assert parsed.statuses == statuses and {k.value for k in parsed.failures} == failures


def test_5xx_means_every_5xx() -> None:
    assert RetryOn.parse(["5xx"]).statuses == set(range(500, 600))


# ------------------------------------------------------------------------------------------ retries


def test_a_503_is_retried_on_another_host_after_the_back_off() -> None:
    r = resilience(policy())
    peers = Peers(endpoint(1), endpoint(2), endpoint(3))
    first = start(r, peers)
    call = call_of(first)
    decision = call.next_attempt(record(first, 1, status=503))
    assert decision is not None and decision.delay == pytest.approx(0.025)   # jitter 0: the ceiling
    call.observe(record(first, 1, status=503))   # the engine reports the discarded response after asking
    assert decision.target.address != first.address and decision.target.tag is call
    second = decision.target
    decision = call.next_attempt(record(second, 2, status=503, started=100.04, ended=100.05))
    assert decision is not None and decision.delay == pytest.approx(0.05)
    assert decision.target.address not in (first.address, second.address)   # a third host: not tried yet
    call.observe(record(second, 2, status=503))
    third = decision.target
    assert call.next_attempt(record(third, 3, status=503)) is None           # attempts: 1 + 2
    call.observe(record(third, 3, status=503))
    call.finish()
    dest = r.clusters["pay"]
    assert dest.retries == 2 and dest.retries_denied == {"attempts": 1}
    assert settle(r) == ZERO


def test_the_same_host_again_when_it_is_the_only_one() -> None:
    r = resilience(policy())
    first = start(r, Peers(endpoint(1)))
    call = call_of(first)
    call.observe(record(first, 1, failure=refused(first), sent=False))
    decision = call.next_attempt(record(first, 1, failure=refused(first), sent=False))
    assert decision is not None and decision.target.address == first.address


@pytest.mark.parametrize(("method", "sent", "non_idempotent", "retried"), [
    ("GET", True, False, True),
    ("PUT", True, False, True),
    ("POST", True, False, False),     # the upstream may have acted on it
    ("POST", False, False, True),     # nothing sent: always safe
    ("POST", True, True, True),       # the policy says so
])
def test_only_requests_safe_to_repeat(method: str, sent: bool, non_idempotent: bool, retried: bool) -> None:
    r = resilience(policy(non_idempotent=non_idempotent))
    first = start(r, Peers(endpoint(1), endpoint(2)), head(method))
    failure = refused(first) if not sent else None
    rec = record(first, 1, status=None if failure else 503, failure=failure, sent=sent, method=method)
    assert (call_of(first).next_attempt(rec) is not None) is retried


def test_not_retried_when_not_in_retry_on_and_not_counted() -> None:
    r = resilience(policy(retry_on=["connect-failure"]))
    first = start(r, Peers(endpoint(1), endpoint(2)))
    timeout = AttemptTimeout(1.0, first.authority, "try")
    assert call_of(first).next_attempt(record(first, 1, failure=timeout)) is None
    assert r.clusters["pay"].retries_denied == {}


def test_a_body_too_large_to_replay_is_not_retried() -> None:
    r = resilience(policy())
    first = start(r, Peers(endpoint(1), endpoint(2)))
    assert call_of(first).next_attempt(record(first, 1, status=503, replayable=False)) is None
    assert r.clusters["pay"].retries_denied == {"body-too-large": 1}


def test_a_retry_that_would_start_after_the_deadline_is_not_made() -> None:
    r = resilience(policy(timeout=1.0, per_try=0.5))
    first = start(r, Peers(endpoint(1), endpoint(2)), now=100.0)
    assert call_of(first).next_attempt(record(first, 1, status=503, ended=100.99)) is None
    assert r.clusters["pay"].retries_denied == {"deadline": 1}


def test_the_budget_refuses_retries_in_an_outage() -> None:
    r = resilience(policy(ratio=0.2, min_per_second=0.0, attempts=5))
    peers = Peers(endpoint(1), endpoint(2))
    made = 0
    for i in range(50):
        target = start(r, peers, now=100.0 + i * 0.001)
        call = call_of(target)
        number = 1
        while True:
            rec = record(target, number, status=503)
            decision = call.next_attempt(rec)
            call.observe(rec)
            if decision is None:
                break
            made += 1
            target, number = decision.target, number + 1
        call.finish()
    assert made == 10                                      # 0.2 * 50
    assert r.clusters["pay"].retries_denied["budget"] >= 40
    assert settle(r) == ZERO


def test_max_retries_caps_retries_outstanding() -> None:
    r = resilience(policy(max_retries=1))
    peers = Peers(endpoint(1), endpoint(2))
    a, b = start(r, peers), start(r, peers)
    first = call_of(a).next_attempt(record(a, 1, failure=refused(a), sent=False))
    assert first is not None
    assert call_of(b).next_attempt(record(b, 1, failure=refused(b), sent=False)) is None
    assert r.clusters["pay"].retries_denied == {"max_retries": 1}
    call_of(a).observe(record(first.target, 2, status=200))            # the retry ended: its slot is free
    c = start(r, peers)
    assert call_of(c).next_attempt(record(c, 1, failure=refused(c), sent=False)) is not None


def test_asked_twice_about_one_attempt_the_first_decision_is_released() -> None:
    """A try timeout can fire during the back-off of a retry decided for the same attempt."""
    r = resilience(policy())
    peers = Peers(endpoint(1), endpoint(2))
    first = start(r, peers)
    call = call_of(first)
    rec = record(first, 1, failure=refused(first), sent=False)
    call.observe(rec)
    assert call.next_attempt(rec) is not None
    timeout = record(first, 1, failure=AttemptTimeout(5.0, first.authority, "try"))
    call.observe(timeout)                                   # already accounted: ignored
    decision = call.next_attempt(timeout)
    assert decision is not None
    dest = r.clusters["pay"]
    assert dest.breaker.retries == 1 and dest.breaker.connections == 1
    assert sum(h.load.in_flight for h in dest.hosts.values()) == 1
    call.observe(record(decision.target, 2, status=200))
    call.finish()
    assert settle(r) == ZERO


def test_finish_releases_attempts_the_engine_never_reported() -> None:
    r = resilience(policy())
    peers = Peers(endpoint(1), endpoint(2))
    first = start(r, peers)
    call = call_of(first)
    call.next_attempt(record(first, 1, status=503))        # a retry waiting in its back-off...
    call.finish()                                          # ...when the client goes away
    call.finish()                                          # idempotent
    assert settle(r) == ZERO


# ------------------------------------------------------------------------------------------ caps


def test_max_requests_refuses_with_429_naming_the_cap() -> None:
    r = resilience(policy(max_requests=1))
    peers = Peers(endpoint(1))
    first = start(r, peers)
    with pytest.raises(ResourceExhausted) as refused_:
        r.outbound(head(), PAY, peers, 100.0)
    assert refused_.value.details == {"service": "pay", "cap": "max_requests", "limit": 1}
    assert "max_requests" in refused_.value.message
    call_of(first).observe(record(first, 1, status=200))
    call_of(first).finish()
    start(r, peers)                                        # room again


def test_at_max_connections_requests_wait_their_turn_and_the_queue_is_capped() -> None:
    async def scenario() -> None:
        r = resilience(policy(max_connections=1, max_pending=1))
        peers = Peers(endpoint(1))
        loop = asyncio.get_running_loop()
        now = loop.time()
        first = r.outbound(head(), PAY, peers, now)
        assert isinstance(first, Target)
        waiting = r.outbound(head(), PAY, peers, now)
        assert not isinstance(waiting, Target)
        with pytest.raises(ResourceExhausted) as full:
            r.outbound(head(), PAY, peers, now)
        assert full.value.details["cap"] == "max_pending_requests"
        task = asyncio.ensure_future(waiting)
        await asyncio.sleep(0)
        assert not task.done()
        call_of(first).observe(record(first, 1, status=200))   # the response streams: still in use
        await asyncio.sleep(0)
        assert not task.done()
        call_of(first).finish()
        second = await asyncio.wait_for(task, 1.0)
        assert isinstance(second, Target)
        call_of(second).finish()
        assert settle(r) == ZERO
        assert r.clusters["pay"].breaker.rejected["max_pending_requests"] == 1  # type: ignore[index]

    asyncio.run(scenario())


def test_a_waiting_request_times_out_at_its_deadline_or_leaves_when_cancelled() -> None:
    async def scenario() -> None:
        r = resilience(policy(max_connections=1, max_pending=5, timeout=0.05))
        peers = Peers(endpoint(1))
        loop = asyncio.get_running_loop()
        first = r.outbound(head(), PAY, peers, loop.time())
        late = r.outbound(head(), PAY, peers, loop.time())
        gone = asyncio.ensure_future(r.outbound(head(), PAY, peers, loop.time()))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(late, 2.0)  # type: ignore[arg-type]
        assert r.clusters["pay"].breaker.pending == 0
        assert isinstance(first, Target)
        call_of(first).finish()
        assert settle(r) == ZERO

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ hosts


def test_consecutive_failures_eject_a_host_and_the_others_take_the_traffic() -> None:
    r = resilience(policy(consecutive=3, attempts=0))
    peers = Peers(endpoint(1), endpoint(2), endpoint(3))
    bad = ("10.0.0.2", 15006)
    picks = []
    for i in range(30):
        target = start(r, peers, now=100.0 + i)
        picks.append(target.address)
        call = call_of(target)
        status = 503 if target.address == bad else 200
        call.observe(record(target, 1, status=status, started=100.0 + i, ended=100.0 + i + 0.01))
        call.finish()
    assert picks[:6].count(bad) == 2 and picks.count(bad) == 3      # round robin until the third failure
    dest = r.clusters["pay"]
    assert dest.outlier.ejections == 1
    view = r.clusters_json(130.0, 1000.0)["pay"]
    ejected = [e for e in view["endpoints"] if e["ejected"]]
    assert len(ejected) == 1 and ejected[0]["address"] == "10.0.0.2:15006"
    # picked at i = 1, 4, 7: ejected at 107.01 for 30 s; the wall clock is the loop's + 1000 s
    assert ejected[0]["ejection"]["times"] == 1
    assert ejected[0]["ejection"]["until"] == int((107.01 + 30 + 1000) * 1000)


def test_all_ejected_means_panic_routing() -> None:
    r = resilience(policy(consecutive=1, attempts=0, percent=100.0))
    peers = Peers(endpoint(1))
    target = start(r, peers)
    call_of(target).observe(record(target, 1, failure=refused(target), sent=False))
    call_of(target).finish()
    assert r.clusters["pay"].outlier.is_ejected(("pay-1", ("10.0.0.1", 15006)), 100.5)
    again = start(r, peers, now=100.5)
    assert again.address == ("10.0.0.1", 15006)
    assert r.clusters["pay"].panics == 1


def test_healthy_before_degraded() -> None:
    r = resilience(policy(consecutive=1, attempts=0))
    peers = Peers(endpoint(1, D), endpoint(2))
    assert {start(r, peers, now=100.0 + i).address for i in range(5)} == {("10.0.0.2", 15006)}


def test_latency_and_in_flight_feed_the_ewma_balancer() -> None:
    r = resilience(policy(balancer="ewma", attempts=0))
    peers = Peers(endpoint(1), endpoint(2))
    slow = ("10.0.0.2", 15006)
    now = 100.0
    counts = {("10.0.0.1", 15006): 0, slow: 0}
    for _ in range(300):
        target = start(r, peers, now=now)
        counts[target.address] += 1
        latency = 0.155 if target.address == slow else 0.005
        call_of(target).observe(record(target, 1, status=200, started=now, ended=now + latency))
        call_of(target).finish()
        now += 0.02
    assert counts[slow] < 0.2 * 300
    view = r.clusters_json(now, 0.0)["pay"]
    by_address = {e["address"]: e for e in view["endpoints"]}
    assert by_address["10.0.0.2:15006"]["latencyEwmaMs"] > by_address["10.0.0.1:15006"]["latencyEwmaMs"]


# ------------------------------------------------------------------------------------------ inbound and views


def test_inbound_honours_the_callers_deadline_within_the_local_policy() -> None:
    r = resilience(policy(timeout=5.0))
    app = Target(("127.0.0.1", 3000), tag="app")
    h = head("GET", ("x-sidecar-deadline-ms", "1200"))
    target = r.inbound(h, app, "pay")
    assert target.timeout == 1.2 and h.headers.get("x-sidecar-deadline-ms") == "1200"
    h = head("GET", ("x-sidecar-deadline-ms", "60000"))
    assert r.inbound(h, app, "pay").timeout == 5.0 and h.headers.get("x-sidecar-deadline-ms") == "5000"
    plain = r.inbound(head(), app, "pay")
    assert plain.timeout == 5.0 and r.inbound(head(), app, "pay") is plain        # cached
    with pytest.raises(DeadlineExceeded):
        r.inbound(head("GET", ("x-sidecar-deadline-ms", "0")), app, "pay")


def test_inbound_leaves_one_deadline_field_last_and_reuses_the_derived_target() -> None:
    r = resilience(policy(timeout=5.0))
    app, other = Target(("127.0.0.1", 3000), tag="app"), Target(("127.0.0.1", 3001), tag="other")
    deadline = b"x-sidecar-deadline-ms"
    h = head("GET", ("x-sidecar-deadline-ms", "3000"), ("a", "1"), ("X-Sidecar-Deadline-Ms", "2000"))
    first = r.inbound(h, app, "pay")
    assert first.timeout == 2.0 and first.tag == "app"
    assert [(n, v) for n, _, v in h.headers.items] == [(b"a", b"1"), (deadline, b"2000")]   # the smaller, last
    h = head("GET", ("x-sidecar-deadline-ms", "2000"), ("b", "2"))
    assert r.inbound(h, app, "pay") is first                                  # same target, same timeout
    assert [(n, v) for n, _, v in h.headers.items] == [(b"b", b"2"), (deadline, b"2000")]   # moved to the end
    h = head("GET", ("b", "2"), ("x-sidecar-deadline-ms", "02000"))
    assert r.inbound(h, app, "pay") is first
    assert h.headers.items[-1] == (deadline, deadline, b"2000")               # rewritten in the canonical form
    h = head("GET", ("b", "2"), ("x-sidecar-deadline-ms", "2000"))
    items = h.headers.items
    r.inbound(h, app, "pay")
    assert h.headers.items is items and len(items) == 2                      # already right: left as it was
    assert r.inbound(head("GET", ("x-sidecar-deadline-ms", "2000")), other, "pay").tag == "other"


def test_clusters_json_and_samples() -> None:
    r = resilience(policy(max_requests=1))
    target = start(r, Peers(endpoint(1)))
    view = r.clusters_json(100.0, 0.0)
    pay = view["pay"]
    assert pay["loadBalancer"] == "round_robin"
    assert pay["breaker"]["requests"] == {"active": 1, "max": 1, "state": "open", "rejected": 0}
    assert pay["endpoints"][0] | {"latencyEwmaMs": 0} == {
        "address": "10.0.0.1:15006", "instance": "pay-1", "node": "n1", "health": "healthy", "ejected": False,
        "ejection": {"state": "active", "times": 0, "ejections": 0, "consecutiveFailures": 0, "until": None,
                     "remainingMs": 0},
        "connectHold": {"failures": 0, "remainingMs": 0},
        "inFlight": 1, "latencyEwmaMs": 0, "requests": 1, "failures": 0}
    assert pay["retryBudget"]["requests"] == 1
    samples = {(name, tuple(sorted(labels.items()))): value for name, labels, value in r.samples(100.0)}
    assert samples["sidecar_upstream_requests_total", (("service", "pay"),)] == 1.0
    assert samples["sidecar_upstream_active", (("resource", "requests"), ("service", "pay"))] == 1.0
    call_of(target).finish()


def test_a_quick_failure_never_makes_a_host_look_faster() -> None:
    r = resilience(policy(balancer="ewma", attempts=0, consecutive=100))
    peers = Peers(endpoint(1))
    target = start(r, peers)
    call_of(target).observe(record(target, 1, status=200, started=100.0, ended=100.050))
    call_of(target).finish()
    host = next(iter(r.clusters["pay"].hosts.values()))
    assert host.load.estimate == pytest.approx(0.050)
    target = start(r, peers, now=101.0)
    call_of(target).observe(record(target, 1, status=503, started=101.0, ended=101.001))
    call_of(target).finish()
    assert host.load.estimate == pytest.approx(host.load.latency(101.001)) and host.load.estimate > 0.045
    assert host.load.stamp == 101.001 and host.failures == 1


def test_names_without_endpoints_make_no_state() -> None:
    r = resilience(policy())
    empty = Peers()
    with pytest.raises(NotFound):
        r.outbound(head(), ServiceName("nope"), empty, 100.0)
    with pytest.raises(NotFound):
        r.tunnel(ServiceName("nope"), empty, 100.0)
    assert r.clusters == {}
