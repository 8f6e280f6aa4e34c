"""Outlier ejection: the second of the three things called "circuit breaking".

Theory of operation
-------------------
Each host (one instance of a destination service) counts its *consecutive failures*: gateway errors
(502, 503, 504) and local failures (connect failure, reset, protocol error, timeout), as Envoy's
``consecutive_gateway_failure``. Any other response resets the count.

* ``consecutive_failures`` in a row eject the host for ``base_ejection_time * times`` (``times`` counts its
  ejections, so a host that keeps failing stays out longer), capped by ``max_ejection_time`` (or by
  ``base_ejection_time`` if that is the larger, as Envoy does).
* When the time is up the host returns on *probation* (Linkerd's half-open state): traffic reaches it as
  before, and its first failure ejects it again at once, for longer; its first success makes it *active*.
* The multiplier decays: each full ``interval`` a host spends active takes one off ``times``.
* Never more than ``max_ejection_percent`` of the hosts are ejected at once, with Envoy's long-standing rule
  that one host may always be ejected when none is (so a 10% cap still protects a service of three):
  a host is ejected when ``max_ejection_percent > 0`` and (no host is ejected, or
  ``100 * (ejected + 1) ≤ max_ejection_percent * hosts``). A refused ejection is counted and the host keeps
  its count, so its next failure asks again.

Pure: ``now`` is passed in; states change lazily when asked (an ejection ends when its time is read).
Hosts are keys of any hashable type.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


class EndpointState(enum.StrEnum):
    ACTIVE = "active"
    EJECTED = "ejected"
    PROBATION = "probation"


class Move(enum.Enum):
    EJECT = "eject"        # the failure threshold was reached and the percent cap allows it
    EXPIRE = "expire"      # the ejection time is over
    RECOVER = "recover"    # a success on probation


# an input missing from the table raises and leaves the state unchanged
_TRANSITIONS: dict[tuple[EndpointState, Move], EndpointState] = {
    (EndpointState.ACTIVE, Move.EJECT): EndpointState.EJECTED,
    (EndpointState.PROBATION, Move.EJECT): EndpointState.EJECTED,
    (EndpointState.EJECTED, Move.EXPIRE): EndpointState.PROBATION,
    (EndpointState.PROBATION, Move.RECOVER): EndpointState.ACTIVE,
}


class InvalidTransition(Exception):
    """A move that the state table does not allow from the host's state (a bug in the caller)."""


def transition(state: EndpointState, move: Move) -> EndpointState:
    try:
        return _TRANSITIONS[state, move]
    except KeyError:
        raise InvalidTransition(f"no transition from {state.value} on {move.value}") from None


@dataclass(frozen=True, slots=True)
class EjectionRules:
    consecutive_failures: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0

    def ejection_time(self, times: int) -> float:
        """How long the ``times``-th ejection lasts."""
        return min(self.base_ejection_time * times, max(self.max_ejection_time, self.base_ejection_time))

    def may_eject(self, ejected: int, hosts: int) -> bool:
        """Envoy's cap: one host always (unless the percent is 0), more while within the percent."""
        if self.max_ejection_percent <= 0 or hosts <= 0:
            return False
        return ejected == 0 or 100.0 * (ejected + 1) <= self.max_ejection_percent * hosts


@dataclass(frozen=True, slots=True)
class Ejected:
    """A host was ejected until ``until`` (its ``times``-th ejection in a row)."""

    host: Hashable
    until: float
    times: int
    failures: int


@dataclass(frozen=True, slots=True)
class EjectionRefused:
    """A host reached the threshold, but ejecting it would pass ``max_ejection_percent``."""

    host: Hashable
    ejected: int
    hosts: int


@dataclass(slots=True)
class EndpointRecord:
    state: EndpointState = EndpointState.ACTIVE
    consecutive: int = 0           # failures in a row
    times: int = 0                 # the ejection multiplier
    until: float = 0.0             # end of the current ejection
    since: float = 0.0             # when the multiplier last decayed (or the host became active)
    ejections: int = 0             # ejections since the host was first seen, for /clusters


class OutlierDetector:
    __slots__ = ("_hosts", "ejections", "refusals", "rules")

    def __init__(self, rules: EjectionRules) -> None:
        self.rules = rules
        self._hosts: dict[Hashable, EndpointRecord] = {}
        self.ejections = 0
        self.refusals = 0

    # ------------------------------------------------------------------------------------ membership

    def add(self, host: Hashable, now: float) -> None:
        if host not in self._hosts:
            self._hosts[host] = EndpointRecord(since=now)

    def remove(self, host: Hashable) -> None:
        self._hosts.pop(host, None)

    def sync(self, hosts: Iterable[Hashable], now: float) -> None:
        """Exactly these hosts from now on; the others' records are forgotten."""
        wanted = set(hosts)
        for gone in [h for h in self._hosts if h not in wanted]:
            del self._hosts[gone]
        for host in wanted:
            self.add(host, now)

    def __len__(self) -> int:
        return len(self._hosts)

    def __contains__(self, host: object) -> bool:
        return host in self._hosts

    # ------------------------------------------------------------------------------------ queries

    def record(self, host: Hashable, now: float) -> EndpointRecord:
        """The host's record as of ``now`` (ejections that ran out end, the multiplier decays)."""
        rec = self._hosts.get(host)
        if rec is None:
            rec = self._hosts[host] = EndpointRecord(since=now)
        self._advance(rec, now)
        return rec

    def is_ejected(self, host: Hashable, now: float) -> bool:
        rec = self._hosts.get(host)
        if rec is None or rec.state is not EndpointState.EJECTED:
            return False
        self._advance(rec, now)
        return rec.state is EndpointState.EJECTED

    def ejected_count(self, now: float) -> int:
        return sum(1 for rec in self._hosts.values() if self._advance(rec, now) is EndpointState.EJECTED)

    # ------------------------------------------------------------------------------------ results

    def success(self, host: Hashable, now: float) -> None:
        rec = self._hosts.get(host)
        if rec is not None and rec.state is EndpointState.ACTIVE and rec.times == 0:
            rec.consecutive = 0   # the common case: record() would change nothing (no decay, no expiry)
            return
        rec = self.record(host, now)
        if rec.state is EndpointState.EJECTED:
            return  # an attempt that began before the ejection: it says nothing about now
        rec.consecutive = 0
        if rec.state is EndpointState.PROBATION:
            rec.state = transition(rec.state, Move.RECOVER)
            rec.since = now

    def failure(self, host: Hashable, now: float) -> Ejected | EjectionRefused | None:
        rec = self.record(host, now)
        if rec.state is EndpointState.EJECTED:
            return None
        rec.consecutive += 1
        threshold = 1 if rec.state is EndpointState.PROBATION else self.rules.consecutive_failures
        if rec.consecutive < threshold:
            return None
        ejected = self.ejected_count(now)
        if not self.rules.may_eject(ejected, len(self._hosts)):
            self.refusals += 1
            return EjectionRefused(host, ejected, len(self._hosts))
        rec.state = transition(rec.state, Move.EJECT)
        rec.times += 1
        rec.ejections += 1
        rec.until = now + self.rules.ejection_time(rec.times)
        failures, rec.consecutive = rec.consecutive, 0
        self.ejections += 1
        return Ejected(host, rec.until, rec.times, failures)

    # ------------------------------------------------------------------------------------ time

    def _advance(self, rec: EndpointRecord, now: float) -> EndpointState:
        if rec.state is EndpointState.EJECTED and now >= rec.until:
            rec.state = transition(rec.state, Move.EXPIRE)
            rec.consecutive = 0
        elif rec.state is EndpointState.ACTIVE and rec.times > 0:
            steps = math.floor((now - rec.since) / self.rules.interval)
            if steps > 0:
                rec.times = max(0, rec.times - steps)
                rec.since += steps * self.rules.interval
        return rec.state
