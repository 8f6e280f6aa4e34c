"""The overload guard's core: fed samples of resident memory and event-loop lag, it decides whether new work is
shed. No I/O and no clock: the driver (:mod:`sidecar.overload.monitor`) passes ``now`` in.

Theory of operation
-------------------
Each watched resource is a :class:`Reason` with a limit (0 turns it off). A sample puts it at a :class:`Level`:

* ``OVER``: at or over the limit;
* ``HIGH``: under the limit, but not yet under ``RELEASE`` (90%) of it, or not for ``hold`` seconds since the
  last sample that was over;
* ``CLEAR``: under 90% of the limit, and ``hold`` seconds have passed since the last sample over it.

A reason becomes active on ``OVER`` and inactive on ``CLEAR`` (``_TRANSITIONS``): the gap between the limit and
90% of it (hysteresis) and the hold keep the guard from flapping on a value that hovers at the limit or on a
lag that spikes once a second. While any reason is active, :attr:`OverloadGuard.shedding` is true and new
requests get :meth:`OverloadGuard.shed`'s 503; while memory is active, :attr:`OverloadGuard.refusing` is true
and new connections are refused as well (each costs buffers; a request on an open one costs little more).

Listeners read one attribute per request (``guard.shedding``) and per connection (``guard.refusing``); the
error they answer is rebuilt once per sample, not per request.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sidecar.errors import Overloaded

# a reason is released under this fraction of its limit: a value hovering at the limit does not flap
RELEASE = 0.9
# and no sooner than this after its last sample over the limit; also the Retry-After told to clients, so a
# client that waits as told finds the guard re-evaluated several times (it samples every 100 ms by default)
DEFAULT_HOLD = 1.0


class Reason(enum.Enum):
    MEMORY = "memory"
    LOOP_LAG = "loop_lag"


class Level(enum.Enum):
    OVER = "over"
    HIGH = "high"
    CLEAR = "clear"


# (active, level) -> active; an input missing from the table raises and leaves the state unchanged
_TRANSITIONS: dict[tuple[bool, Level], bool] = {
    (False, Level.OVER): True,
    (False, Level.HIGH): False,
    (False, Level.CLEAR): False,
    (True, Level.OVER): True,
    (True, Level.HIGH): True,
    (True, Level.CLEAR): False,
}


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement; None where the value could not be read (that reason keeps its state)."""

    resident_bytes: int | None
    loop_lag: float | None


@dataclass(frozen=True, slots=True)
class Transition:
    """A reason became active or inactive: what the driver logs (once, not per request)."""

    reason: Reason
    active: bool
    value: float
    limit: float
    message: str


def format_bytes(n: float) -> str:
    """``1.1 GiB``, ``512.0 MiB``: binary units with one decimal, as operators read limits."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    return f"{s * 1000:.0f}ms" if s < 10 else f"{s:.1f}s"


class _Watch:
    """One reason's state: the limit, whether it is active, the last value and the last value over the limit."""

    __slots__ = ("active", "key", "last", "last_over", "last_over_at", "limit", "reason", "since", "transitions")

    def __init__(self, reason: Reason, limit: float, key: str) -> None:
        self.reason = reason
        self.limit = limit
        self.key = key                # the config key named in messages
        self.active = False
        self.last: float | None = None
        self.last_over = 0.0
        self.last_over_at = -math.inf
        self.since: float | None = None   # when it last became active
        self.transitions = 0

    def level(self, value: float, now: float, hold: float) -> Level:
        if value >= self.limit:
            return Level.OVER
        if value < self.limit * RELEASE and now - self.last_over_at >= hold:
            return Level.CLEAR
        return Level.HIGH

    def observe(self, value: float, now: float, hold: float) -> Transition | None:
        level = self.level(value, now, hold)
        active = _TRANSITIONS[self.active, level]
        self.last = value
        if level is Level.OVER:
            self.last_over, self.last_over_at = value, now
        if active == self.active:
            return None
        self.active = active
        self.since = now if active else None
        self.transitions += 1
        return Transition(self.reason, active, value, self.limit, self.describe() if active else self.released())

    def _fmt(self, value: float) -> str:
        return format_bytes(value) if self.reason is Reason.MEMORY else format_seconds(value)

    def describe(self) -> str:
        what = "resident memory" if self.reason is Reason.MEMORY else "event-loop lag"
        text = f"{what} {self._fmt(self.last_over)} over {self.key} {self._fmt(self.limit)}"
        if self.last is not None and self.last < self.limit:
            text += f" (now {self._fmt(self.last)}; shedding until under {self._fmt(self.limit * RELEASE)})"
        return text

    def released(self) -> str:
        what = "resident memory" if self.reason is Reason.MEMORY else "event-loop lag"
        return f"{what} {self._fmt(self.last or 0.0)} back under {self._fmt(self.limit * RELEASE)} ({self.key})"

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "value": self.last, "limit": self.limit,
                "releaseBelow": self.limit * RELEASE, "lastOver": self.last_over if self.transitions else None,
                "transitions": self.transitions}


class OverloadGuard:
    """See the module's doc. ``max_memory_bytes`` / ``max_loop_lag`` of 0 leave that reason unwatched;
    ``enabled=False`` never sheds (samples are still kept for the admin view)."""

    def __init__(self, max_memory_bytes: int, max_loop_lag: float, *, enabled: bool = True,
                 hold: float = DEFAULT_HOLD) -> None:
        self.enabled = enabled
        self.hold = hold
        self.retry_after = max(1, math.ceil(hold))
        self._watches: list[_Watch] = []
        if max_memory_bytes > 0:
            self._watches.append(_Watch(Reason.MEMORY, float(max_memory_bytes), "overload.max_memory_bytes"))
        if max_loop_lag > 0:
            self._watches.append(_Watch(Reason.LOOP_LAG, float(max_loop_lag), "overload.max_loop_lag"))
        self.shedding = False   # read per request by the listeners
        self.refusing = False   # read per connection: memory is over, new connections are refused too
        self.error: Overloaded | None = None
        self.shed_counts: Counter[tuple[str, str]] = Counter()      # (listener, reason) -> requests shed
        self.refused_counts: Counter[tuple[str, str]] = Counter()   # (listener, reason) -> connections refused
        self.samples = 0
        self.last_sample: Sample | None = None

    @property
    def watched(self) -> list[Reason]:
        return [w.reason for w in self._watches]

    @property
    def active(self) -> list[Reason]:
        return [w.reason for w in self._watches if w.active]

    def observe(self, sample: Sample, now: float) -> list[Transition]:
        """Take one sample; returns the reasons that became active or inactive."""
        self.samples += 1
        self.last_sample = sample
        out: list[Transition] = []
        for watch in self._watches:
            value = sample.resident_bytes if watch.reason is Reason.MEMORY else sample.loop_lag
            if value is None:
                continue
            transition = watch.observe(float(value), now, self.hold)
            if transition is not None:
                out.append(transition)
        active = [w for w in self._watches if w.active]
        self.shedding = self.enabled and bool(active)
        self.refusing = self.shedding and any(w.reason is Reason.MEMORY for w in active)
        self.error = self._error(active) if self.shedding else None
        return out

    def _error(self, active: list[_Watch]) -> Overloaded:
        details: dict[str, Any] = {"reasons": [w.reason.value for w in active]}
        for watch in active:
            if watch.reason is Reason.MEMORY:
                details.update(residentBytes=int(watch.last or 0), maxMemoryBytes=int(watch.limit))
            else:
                details.update(loopLagSeconds=round(watch.last or 0.0, 4), maxLoopLagSeconds=watch.limit)
        message = "overloaded: " + "; ".join(w.describe() for w in active)
        return Overloaded(message, self.retry_after, details)

    def _primary(self) -> str:
        """The reason a shed is counted under: memory before lag (the graver, and the one that also refuses)."""
        for watch in self._watches:
            if watch.active:
                return watch.reason.value
        return "none"

    def shed(self, listener: str) -> Overloaded:
        """A listener sheds a request: count it and return the error to answer (call only while shedding)."""
        self.shed_counts[listener, self._primary()] += 1
        if self.error is None:   # not shedding: a caller's mistake, but still answer something true
            return Overloaded("overloaded", self.retry_after, {})
        return self.error

    def refuse(self, listener: str) -> Overloaded:
        """A listener refuses a new connection: count it and return the error to answer."""
        self.refused_counts[listener, self._primary()] += 1
        return self.error if self.error is not None else Overloaded("overloaded", self.retry_after, {})

    def status(self) -> dict[str, Any]:
        """For the admin port."""
        sample = self.last_sample
        return {
            "enabled": self.enabled, "shedding": self.shedding, "refusingConnections": self.refusing,
            "message": self.error.message if self.error is not None else None,
            "reasons": {w.reason.value: w.to_json() for w in self._watches},
            "holdSeconds": self.hold, "retryAfterSeconds": self.retry_after, "samples": self.samples,
            "lastSample": None if sample is None else {"residentBytes": sample.resident_bytes,
                                                       "loopLagSeconds": sample.loop_lag},
            "shed": [{"listener": k[0], "reason": k[1], "count": v} for k, v in sorted(self.shed_counts.items())],
            "refusedConnections": [{"listener": k[0], "reason": k[1], "count": v}
                                   for k, v in sorted(self.refused_counts.items())],
        }

    def active_by_reason(self) -> dict[str, bool]:
        """Every reason (watched or not) and whether it sheds now: the ``sidecar_overload_active`` gauge."""
        active = {w.reason for w in self._watches if w.active and self.enabled}
        return {r.value: r in active for r in Reason}

    def transitions_by_reason(self) -> dict[str, int]:
        return {w.reason.value: w.transitions for w in self._watches}
