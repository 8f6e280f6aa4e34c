"""The retry budget: retries may add at most ``ratio`` of live traffic, plus a small reserve per second.

As Finagle's RetryBudget and Linkerd's (tower's TpsBudget): every request *deposits*, every retry
*withdraws*, and both are remembered over a sliding window (``window`` seconds in ``slots`` slots). A retry is
allowed while::

    ratio * requests_in_window + reserve - retries_in_window ≥ 1

``reserve`` is ``min_per_second`` for each slot (a tenth of the window by default) begun since the budget was
made, counted in seconds (at most the whole window), so that a service with little traffic can still retry;
and over any span of T seconds from the first request, shorter than the window, retries <= ratio * requests +
min_per_second * ceil(T) (one-second slots): a total outage never multiplies load. A retry withdraws when it is
decided, before its back-off, so retries waiting to be sent count against the budget.

Pure: time is passed in (seconds, any monotonic origin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BudgetState:
    """What the budget holds at one moment, for /clusters and tests."""

    requests: int        # deposits in the window
    retries: int         # withdrawals in the window
    reserve: float       # min_per_second * the seconds of the window that have passed
    available: float     # retries that may still be made now (may be fractional, or negative after a change)


class RetryBudget:
    __slots__ = ("_created", "_deposits", "_slot_len", "_stamps", "_withdrawals", "min_per_second", "ratio", "slots",
                 "window")

    def __init__(self, ratio: float, min_per_second: float, now: float, window: float = 10.0,
                 slots: int = 10) -> None:
        if not 0.0 <= ratio <= 1000.0 or min_per_second < 0 or window <= 0 or slots < 1:
            raise ValueError("retry budget: ratio in [0, 1000], min_per_second >= 0, window > 0, slots >= 1")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self.slots = slots
        self._slot_len = window / slots
        self._created = now
        self._deposits = [0] * slots
        self._withdrawals = [0] * slots
        self._stamps = [self._index(now) - slots] * slots   # the slot index each cell last counted for

    def _index(self, now: float) -> int:
        return math.floor(now / self._slot_len)

    def _cell(self, now: float) -> int:
        index = math.floor(now / self._slot_len)   # _index(now), once per request: one call less
        cell = index % self.slots
        if self._stamps[cell] != index:   # the cell still holds a slot that left the window: reuse it
            self._stamps[cell] = index
            self._deposits[cell] = 0
            self._withdrawals[cell] = 0
        return cell

    def deposit(self, now: float) -> None:
        """One request was sent (not a retry)."""
        self._deposits[self._cell(now)] += 1

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget if it allows one; False (and nothing taken) when it is spent."""
        if self.state(now).available < 1.0:
            return False
        self._withdrawals[self._cell(now)] += 1
        return True

    def state(self, now: float) -> BudgetState:
        index = self._index(now)
        oldest = index - self.slots + 1
        requests = retries = 0
        for cell in range(self.slots):
            if oldest <= self._stamps[cell] <= index:
                requests += self._deposits[cell]
                retries += self._withdrawals[cell]
        begun = math.floor(max(0.0, now - self._created) / self._slot_len) + 1
        seconds = min(self.slots, begun) * self._slot_len
        reserve = self.min_per_second * seconds
        return BudgetState(requests, retries, reserve, self.ratio * requests + reserve - retries)
