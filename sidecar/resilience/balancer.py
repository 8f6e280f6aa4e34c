"""Load balancing among the usable hosts of one destination: round robin, least request and peak EWMA.

``least_request`` and ``ewma`` use the *power of two choices* (P2C): two distinct hosts drawn at random,
the cheaper one wins. It avoids herding every caller onto the one host that looks best, at the cost of
one comparison. ``ewma`` (the default, as Linkerd and Finagle do) ranks hosts by

    cost = latency estimate * (requests in flight + 1)

where the latency estimate is a *peak* EWMA of the time to the response head: a sample above the estimate
replaces it at once (a host that turns slow is avoided at once), a sample below pulls it down with weight
``1 - e^(-Δt/τ)`` (Δt since the previous sample, τ the decay time, 10 s as Linkerd). Between samples the
estimate decays towards zero (``e^(-idle/τ)``), so a host that was slow and is no longer picked is tried
again after a while instead of being shunned forever.

A host never heard from has no estimate: its first sample becomes it. Until then it costs 0 while nothing is in
flight to it, so it is tried at once, and nothing more while one request is (Finagle's rule): a prior like
Linkerd's 30 ms would starve a new host among faster ones, since P2C only compares costs and a host that
always loses never gets the sample that would show it is fast.

Pure: ``now`` is passed in and randomness comes from the ``random.Random`` given (seeded in tests).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

DECAY: Final = 10.0            # seconds: the EWMA time constant τ (Linkerd's default)


def peak_ewma(estimate: float, stamp: float, sample: float, now: float, tau: float = DECAY) -> float:
    """The estimate after ``sample`` at ``now`` (the previous sample was at ``stamp``)."""
    if sample >= estimate:
        return sample
    weight = math.exp(-max(0.0, now - stamp) / tau)
    return estimate * weight + sample * (1.0 - weight)


def decayed(estimate: float, stamp: float, now: float, tau: float = DECAY) -> float:
    """The estimate as read at ``now``, having seen no sample since ``stamp``."""
    idle = now - stamp
    return estimate if idle <= 0 else estimate * math.exp(-idle / tau)


@dataclass(slots=True)
class Load:
    """What the balancers know of one host."""

    in_flight: int = 0
    estimate: float = 0.0
    stamp: float = 0.0
    samples: int = 0

    def observe(self, latency: float, now: float, tau: float = DECAY) -> None:
        """A response head arrived ``latency`` seconds after its attempt began."""
        sample = max(0.0, latency)
        self.estimate = sample if self.samples == 0 else peak_ewma(self.estimate, self.stamp, sample, now, tau)
        self.stamp = now
        self.samples += 1

    def latency(self, now: float, tau: float = DECAY) -> float:
        return decayed(self.estimate, self.stamp, now, tau)

    def cost(self, now: float, tau: float = DECAY) -> float:
        if self.samples == 0:
            return 0.0 if self.in_flight == 0 else math.inf   # probed, one request at a time
        return self.latency(now, tau) * (self.in_flight + 1)


class Weighed(Protocol):
    @property
    def load(self) -> Load: ...


H = TypeVar("H", bound=Weighed)


class Balancer(Protocol):
    name: str

    def pick(self, hosts: Sequence[H], now: float) -> H:
        """One of ``hosts`` (not empty)."""
        ...


def two_choices(n: int, rng: random.Random) -> tuple[int, int]:
    """Two distinct indexes in ``range(n)`` (n >= 2), uniformly."""
    first = rng.randrange(n)
    second = rng.randrange(n - 1)
    if second >= first:
        second += 1
    return first, second


class RoundRobin:
    """Each host in turn. The counter survives changes of the host list (taken modulo its length)."""

    name = "round_robin"
    __slots__ = ("_turn",)

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, hosts: Sequence[H], now: float) -> H:
        turn = self._turn
        self._turn = turn + 1
        return hosts[turn % len(hosts)]


class LeastRequest:
    """P2C on requests in flight (Envoy's least_request with its default of two choices)."""

    name = "least_request"
    __slots__ = ("rng",)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, hosts: Sequence[H], now: float) -> H:
        if len(hosts) == 1:
            return hosts[0]
        i, j = two_choices(len(hosts), self.rng)
        a, b = hosts[i], hosts[j]
        return b if b.load.in_flight < a.load.in_flight else a


class PeakEwma:
    """P2C on peak-EWMA latency * (in flight + 1), as Linkerd."""

    name = "ewma"
    __slots__ = ("rng", "tau")

    def __init__(self, rng: random.Random, tau: float = DECAY) -> None:
        self.rng = rng
        self.tau = tau

    def pick(self, hosts: Sequence[H], now: float) -> H:
        if len(hosts) == 1:
            return hosts[0]
        i, j = two_choices(len(hosts), self.rng)
        a, b = hosts[i], hosts[j]
        cost_a, cost_b = a.load.cost(now, self.tau), b.load.cost(now, self.tau)
        if cost_b < cost_a or (cost_b == cost_a and b.load.in_flight < a.load.in_flight):
            return b
        return a


def make_balancer(kind: str, rng: random.Random) -> RoundRobin | LeastRequest | PeakEwma:
    """The balancer ``policies.*.load_balancer`` names."""
    if kind == "round_robin":
        return RoundRobin()
    if kind == "least_request":
        return LeastRequest(rng)
    if kind == "ewma":
        return PeakEwma(rng)
    raise ValueError(f"unknown load balancer {kind!r}: round_robin, least_request or ewma")
