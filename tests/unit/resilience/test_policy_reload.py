"""A reloaded policy taken in place: new rules from the next request on, what was learnt kept."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from sidecar.errors import ResourceExhausted
from sidecar.proxy import Target
from sidecar.resilience.balancer import LeastRequest, RoundRobin
from tests.unit.resilience.test_policy import (
    PAY,
    Peers,
    call_of,
    endpoint,
    head,
    policy,
    record,
    resilience,
    start,
)

BAD_KEY = ("pay-2", ("10.0.0.2", 15006))


def test_a_new_policy_applies_from_the_next_request_and_keeps_ejections_and_state() -> None:
    r = resilience(policy(consecutive=1, attempts=0, percent=50.0, balancer="round_robin"))
    peers = Peers(endpoint(1), endpoint(2))
    for i in range(2):   # one request to each; the one to pay-2 fails and ejects it
        target = start(r, peers, now=100.0 + i)
        call = call_of(target)
        call.observe(record(target, 1, status=503 if target.address[0] == "10.0.0.2" else 200))
        call.finish()
    dest = r.clusters["pay"]
    assert dest.outlier.is_ejected(BAD_KEY, 102.0)
    in_flight = start(r, peers, now=102.0)      # started under the old rules: no retries
    assert call_of(in_flight).max_retries == 0

    r.reconfigure(policy(consecutive=7, attempts=3, percent=50.0, balancer="least_request", max_requests=1,
                         timeout=4.0))
    assert r.clusters["pay"] is dest                         # the same destination, updated in place
    assert dest.outlier.is_ejected(BAD_KEY, 102.0)               # its ejection survives the reload
    assert dest.outlier.rules.consecutive_failures == 7
    assert isinstance(dest.balancer, LeastRequest) and dest.timeout == 4.0
    assert call_of(in_flight).max_retries == 0                   # in flight: the rules it started with
    with pytest.raises(ResourceExhausted, match="max_requests"):   # the new cap counts the request in flight
        start(r, peers, now=102.5)
    call_of(in_flight).finish()
    fresh = start(r, peers, now=103.0)
    assert call_of(fresh).max_retries == 3 and fresh.timeout == 4.0
    call_of(fresh).finish()


def test_an_unchanged_policy_keeps_every_object() -> None:
    config = policy(balancer="round_robin")
    r = resilience(config)
    target = start(r, Peers(endpoint(1)))
    call_of(target).finish()
    dest = r.clusters["pay"]
    balancer, rules = dest.balancer, dest.rules
    r.reconfigure(replace(config, authorization=config.authorization))
    assert dest.balancer is balancer and dest.rules is rules and isinstance(balancer, RoundRobin)


def test_a_raised_connection_cap_admits_waiting_requests_at_once() -> None:
    async def scenario() -> None:
        r = resilience(policy(attempts=0, max_connections=1))
        peers = Peers(endpoint(1))
        first = r.outbound(head(), PAY, peers, asyncio.get_running_loop().time())
        assert isinstance(first, Target)
        waiting = r.outbound(head(), PAY, peers, asyncio.get_running_loop().time())
        task = asyncio.ensure_future(waiting)   # queued behind max_connections 1
        await asyncio.sleep(0)
        assert not task.done()
        r.reconfigure(policy(attempts=0, max_connections=2))
        target = await asyncio.wait_for(task, 1.0)
        assert target.address == ("10.0.0.1", 15006)
        call_of(target).finish()
        call_of(first).finish()

    asyncio.run(scenario())
