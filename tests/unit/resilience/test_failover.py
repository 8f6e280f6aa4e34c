"""Where tries go when an instance stops accepting connections: the connect hold (:mod:`.readiness`) as a
table, and the picks of :meth:`Destination.choose` through :class:`Call` on a fake clock: a retry never goes
back to a host that just failed while another could take it (a degraded one included), new requests leave out
a host that refused a connection, and a failed try never makes a host look fast to the EWMA balancer."""

from __future__ import annotations

import pytest

from sidecar.proxy import AttemptTimeout, Target
from sidecar.proxy.failures import UpstreamReset
from sidecar.resilience import Resilience
from sidecar.resilience.readiness import HOLD_BASE, HOLD_MAX, Readiness, hold
from tests.unit.resilience.test_policy import D, Peers, call_of, endpoint, policy, record, refused, resilience, start

ONE, TWO, THREE = ("10.0.0.1", 15006), ("10.0.0.2", 15006), ("10.0.0.3", 15006)


@pytest.mark.parametrize(("failures", "expected"), [
    (0, 0.0), (1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0), (6, 5.0), (7, 5.0), (1000, 5.0),
])
def test_the_hold_doubles_from_the_base_up_to_the_longest(failures: int, expected: float) -> None:
    assert (HOLD_BASE, HOLD_MAX) == (0.25, 5.0)
    assert hold(failures) == pytest.approx(expected)


def test_readiness_holds_after_connect_failures_and_a_response_ends_it() -> None:
    ready = Readiness()
    assert ready.ready(0.0)
    assert ready.connect_failed(10.0) == pytest.approx(10.25)
    assert not ready.ready(10.2) and ready.ready(10.25)
    assert ready.connect_failed(10.3) == pytest.approx(10.8)           # the second in a row: 0.5 s
    ready.connected()
    assert ready.ready(10.3) and ready.failures == 0
    assert ready.connect_failed(11.0) == pytest.approx(11.25)          # the streak starts over


def fail(r: Resilience, target: Target, now: float) -> None:
    """``target``'s try could not connect at ``now``, and its request ends there (no retries)."""
    call = call_of(target)
    call.observe(record(target, 1, failure=refused(target), sent=False, started=now, ended=now))
    call.finish()


def succeed(target: Target, now: float, latency: float = 0.005) -> None:
    call = call_of(target)
    call.observe(record(target, 1, status=200, started=now, ended=now + latency))
    call.finish()


# ------------------------------------------------------------------------------------------ retries


@pytest.mark.parametrize("failure", ["refused", "reset"])
def test_a_retry_goes_to_a_degraded_host_rather_than_back_to_the_healthy_one_that_failed(failure: str) -> None:
    """The chaos run's kill: the only healthy, non-ejected instance died. Its ejection may be refused
    (max_ejection_percent), but its retries must not all go back to it."""
    r = resilience(policy(percent=0.0))    # no ejection at all: the pick alone must route around it
    peers = Peers(endpoint(1), endpoint(2, D))
    first = start(r, peers)
    assert first.address == ONE
    call = call_of(first)
    if failure == "refused":
        failed = record(first, 1, failure=refused(first), sent=False)
    else:
        failed = record(first, 1, failure=UpstreamReset(first.authority), sent=True)
    call.observe(failed)
    decision = call.next_attempt(failed)
    assert decision is not None and decision.target.address == TWO


def test_every_host_tried_the_retry_goes_back_to_one_of_them() -> None:
    r = resilience(policy(percent=0.0))
    peers = Peers(endpoint(1), endpoint(2, D))
    first = start(r, peers)
    call = call_of(first)
    call.observe(record(first, 1, status=503))
    decision = call.next_attempt(record(first, 1, status=503))
    assert decision is not None and decision.target.address == TWO
    second = decision.target
    call.observe(record(second, 2, status=503, started=100.04, ended=100.05))
    decision = call.next_attempt(record(second, 2, status=503, started=100.04, ended=100.05))
    assert decision is not None and decision.target.address == ONE      # healthy first again, as before


# ------------------------------------------------------------------------------------------ new requests


@pytest.mark.parametrize("balancer", ["round_robin", "least_request", "ewma"])
def test_new_requests_leave_out_a_host_that_refused_until_its_hold_is_over(balancer: str) -> None:
    r = resilience(policy(percent=0.0, balancer=balancer, attempts=0))
    peers = Peers(endpoint(1), endpoint(2), endpoint(3))
    now = 100.0
    while True:   # until the balancer sends one to host 2, which refuses
        target = start(r, peers, now=now)
        if target.address == TWO:
            fail(r, target, now)
            break
        succeed(target, now)
        now += 0.01
    refused_at = now
    picks = []
    while now < refused_at + HOLD_BASE - 0.01:
        target = start(r, peers, now=now)
        picks.append(target.address)
        succeed(target, now)
        now += 0.01
    assert len(picks) >= 20 and TWO not in picks
    probed = []
    for i in range(60):            # the hold is over: host 2 is picked again (and answers)
        target = start(r, peers, now=refused_at + HOLD_BASE + i * 0.01)
        probed.append(target.address)
        succeed(target, refused_at + HOLD_BASE + i * 0.01)
    assert TWO in probed


def test_the_only_healthy_host_refusing_new_requests_go_to_the_degraded_one_during_its_hold() -> None:
    r = resilience(policy(percent=0.0, attempts=0))
    peers = Peers(endpoint(1), endpoint(2, D))
    first = start(r, peers)
    assert first.address == ONE
    fail(r, first, 100.0)
    during = [start(r, peers, now=100.0 + i * 0.02) for i in range(12)]
    assert {t.address for t in during} == {TWO}
    for t in during:
        call_of(t).finish()
    after = start(r, peers, now=100.0 + HOLD_BASE)
    assert after.address == ONE                                        # probed again once the hold is over
    fail(r, after, 100.0 + HOLD_BASE)                                  # refused again: held twice as long
    assert start(r, peers, now=100.0 + HOLD_BASE + 2 * HOLD_BASE - 0.01).address == TWO


def test_every_host_held_the_request_still_gets_one() -> None:
    r = resilience(policy(percent=0.0, attempts=0))
    peers = Peers(endpoint(1), endpoint(2))
    for now in (100.0, 100.001):
        fail(r, start(r, peers, now=now), now)
    dest = r.clusters["pay"]
    assert all(not h.readiness.ready(100.01) for h in dest.hosts.values())
    assert start(r, peers, now=100.01).address in (ONE, TWO)


def test_a_response_ends_the_hold_at_once() -> None:
    r = resilience(policy(percent=0.0, attempts=0, balancer="round_robin"))
    peers = Peers(endpoint(1), endpoint(2))
    first = start(r, peers, now=100.0)
    call = call_of(first)
    # two attempts of earlier requests: one could not connect, then one already in flight got its answer
    call.observe(record(first, 1, failure=refused(first), sent=False, started=100.0, ended=100.0))
    host = next(h for h in r.clusters["pay"].hosts.values() if h.endpoint.address == first.address)
    assert not host.readiness.ready(100.01)
    second = start(r, peers, now=100.01)
    assert second.address != first.address
    call.finish()
    host.readiness.connected()
    assert host.readiness.ready(100.01)


def test_a_tunnel_that_could_not_connect_holds_its_host() -> None:
    r = resilience(policy(percent=0.0))
    peers = Peers(endpoint(1), endpoint(2))
    dest = r.cluster("pay", 100.0)
    host = dest.choose(peers.set, 100.0)
    dest.tunnel_ended(host, True, 100.0)
    assert not host.readiness.ready(100.1)
    assert {dest.choose(peers.set, 100.1 + i * 0.01) for i in range(10)} == {h for h in dest.hosts.values()
                                                                              if h is not host}
    dest.tunnel_ended(host, False, 100.2)
    assert host.readiness.ready(100.2)


# ------------------------------------------------------------------------------------------ the EWMA estimate


def test_a_try_that_timed_out_counts_as_slow_for_the_ewma_balancer() -> None:
    r = resilience(policy(balancer="ewma", attempts=0, consecutive=100))
    peers = Peers(endpoint(1))
    target = start(r, peers)
    succeed(target, 100.0, latency=0.010)
    host = next(iter(r.clusters["pay"].hosts.values()))
    target = start(r, peers, now=101.0)
    call = call_of(target)
    call.observe(record(target, 1, failure=AttemptTimeout(1.5, target.authority, "try"), started=101.0,
                        ended=102.5))
    call.finish()
    assert host.load.estimate == pytest.approx(1.5) and host.load.stamp == 102.5


def test_a_quick_reset_never_makes_a_host_look_faster() -> None:
    r = resilience(policy(balancer="ewma", attempts=0, consecutive=100))
    peers = Peers(endpoint(1))
    succeed(start(r, peers), 100.0, latency=0.050)
    host = next(iter(r.clusters["pay"].hosts.values()))
    target = start(r, peers, now=101.0)
    call = call_of(target)
    call.observe(record(target, 1, failure=UpstreamReset(target.authority), started=101.0, ended=101.001))
    call.finish()
    # kept where it was (not decayed over the second without samples, not pulled down by the 1 ms failure)
    assert host.load.estimate == pytest.approx(host.load.latency(101.001)) and host.load.stamp == 101.001
    assert host.load.estimate > 0.045


def test_clusters_shows_the_connect_hold() -> None:
    r = resilience(policy(percent=0.0, attempts=0))
    peers = Peers(endpoint(1), endpoint(2))
    target = start(r, peers)
    fail(r, target, 100.0)
    rows = {e["address"]: e for e in r.clusters_json(100.1, 0.0)["pay"]["endpoints"]}
    held = rows[f"{target.address[0]}:{target.address[1]}"]
    assert held["connectHold"] == {"failures": 1, "remainingMs": 150}
    assert r.clusters_json(101.0, 0.0)["pay"]["endpoints"][0]["connectHold"]["remainingMs"] == 0
