"""Balancers: peak-EWMA maths as tables, P2C choices with a seeded RNG, round robin."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from sidecar.resilience.balancer import (
    LeastRequest,
    Load,
    PeakEwma,
    RoundRobin,
    decayed,
    make_balancer,
    peak_ewma,
    two_choices,
)


@dataclass
class H:
    name: str
    load: Load = field(default_factory=Load)


@pytest.mark.parametrize(("estimate", "stamp", "sample", "now", "expected"), [
    (0.010, 0.0, 0.200, 1.0, 0.200),                                          # a peak replaces at once
    (0.100, 0.0, 0.100, 5.0, 0.100),
    (0.100, 0.0, 0.010, 10.0, 0.100 * math.exp(-1) + 0.010 * (1 - math.exp(-1))),
    (0.100, 0.0, 0.010, 0.0, 0.100),                                          # no time passed: no weight
    (0.100, 0.0, 0.010, 1000.0, 0.010),                                       # long ago: the sample
])
def test_peak_ewma(estimate: float, stamp: float, sample: float, now: float, expected: float) -> None:
    assert peak_ewma(estimate, stamp, sample, now, tau=10.0) == pytest.approx(expected)


@pytest.mark.parametrize(("idle", "expected"), [(0.0, 0.1), (-1.0, 0.1), (10.0, 0.1 * math.exp(-1)),
                                                (20.0, 0.1 * math.exp(-2))])
def test_the_estimate_decays_while_idle(idle: float, expected: float) -> None:
    assert decayed(0.1, 50.0, 50.0 + idle, tau=10.0) == pytest.approx(expected)


def test_a_host_never_heard_from_is_probed_one_request_at_a_time() -> None:
    load = Load(stamp=0.0)
    assert load.latency(0.0) == 0.0 and load.cost(0.0) == 0.0
    load.in_flight = 1
    assert load.cost(0.0) == math.inf
    load.observe(0.002, 1.0)                           # the first sample is the estimate
    assert (load.estimate, load.stamp, load.samples) == (0.002, 1.0, 1)
    assert load.cost(1.0) == pytest.approx(0.004)      # in flight counts from now on
    load.observe(0.001, 1.0)                           # later ones are averaged in
    assert load.estimate == pytest.approx(0.002)


def test_a_new_host_among_fast_ones_gets_traffic() -> None:
    old = [H(str(i), Load(estimate=0.002, stamp=0.0, samples=5)) for i in range(2)]
    new = H("new", Load(stamp=0.0))
    balancer = PeakEwma(random.Random(8))
    picks = Counter(balancer.pick([*old, new], 0.0).name for _ in range(30))
    assert picks["new"] > 0


def test_two_choices_are_distinct_and_uniform() -> None:
    rng = random.Random(11)
    pairs = Counter(frozenset(two_choices(3, rng)) for _ in range(3000))
    assert all(len(p) == 2 for p in pairs)
    assert len(pairs) == 3 and min(pairs.values()) > 900


def test_round_robin_cycles_and_survives_list_changes() -> None:
    hosts = [H("a"), H("b"), H("c")]
    rr = RoundRobin()
    assert [rr.pick(hosts, 0.0).name for _ in range(4)] == ["a", "b", "c", "a"]
    assert rr.pick(hosts[:2], 0.0).name == "a"          # turn 4 of 2


def test_least_request_prefers_fewer_in_flight() -> None:
    hosts = [H("a"), H("b")]
    hosts[0].load.in_flight = 5
    lr = LeastRequest(random.Random(1))
    assert {lr.pick(hosts, 0.0).name for _ in range(50)} == {"b"}


def test_least_request_with_many_hosts_avoids_the_busiest() -> None:
    hosts = [H(str(i)) for i in range(5)]
    hosts[0].load.in_flight = 10
    lr = LeastRequest(random.Random(2))
    picks = Counter(lr.pick(hosts, 0.0).name for _ in range(1000))
    assert picks["0"] == 0                             # it loses every comparison it is drawn into


def test_ewma_sends_almost_nothing_to_a_host_150ms_slower() -> None:
    """Simulated: a 5 ms and a 155 ms host, requests one after another every 10 ms."""
    fast, slow = H("fast", Load(stamp=0.0)), H("slow", Load(stamp=0.0))
    balancer = PeakEwma(random.Random(5))
    picks: Counter[str] = Counter()
    now = 0.0
    for _ in range(2000):
        host = balancer.pick([fast, slow], now)
        picks[host.name] += 1
        latency = 0.005 if host is fast else 0.155
        host.load.observe(latency, now + latency)
        now += 0.01
    assert picks["slow"] / 2000 < 0.05


def test_ewma_weighs_in_flight() -> None:
    a, b = H("a", Load(estimate=0.010, stamp=0.0, samples=1)), H("b", Load(estimate=0.030, stamp=0.0, samples=1))
    balancer = PeakEwma(random.Random(3))
    assert balancer.pick([a, b], 0.0) is a
    a.load.in_flight = 3                               # 0.040 against 0.030
    assert balancer.pick([a, b], 0.0) is b


def test_ewma_ties_go_to_fewer_in_flight() -> None:
    a, b = H("a", Load(estimate=0.0, stamp=0.0, in_flight=2)), H("b", Load(estimate=0.0, stamp=0.0))
    balancer = PeakEwma(random.Random(4))
    assert {balancer.pick([a, b], 0.0).name for _ in range(20)} == {"b"}


def test_a_single_host_is_picked_without_drawing() -> None:
    rng = random.Random(9)
    state = rng.getstate()
    only = [H("x")]
    assert PeakEwma(rng).pick(only, 0.0) is only[0]
    assert LeastRequest(rng).pick(only, 0.0) is only[0]
    assert rng.getstate() == state


def test_make_balancer_by_name() -> None:
    rng = random.Random(0)
    assert [make_balancer(k, rng).name for k in ("round_robin", "least_request", "ewma")] == [
        "round_robin", "least_request", "ewma"]
    with pytest.raises(ValueError):
        make_balancer("random", rng)
