"""Event-loop lag: how late a timer fires. A callback that blocks the loop (a slow parse, a sync write, a
GC pause) delays every connection of the process by as much; this shows it as ``sidecar_event_loop_lag_*``.

A timer is armed every ``interval`` seconds with ``loop.call_at``; when it runs, the lag is how far past its due
time it ran. No task, no sleep: one timer callback per interval.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left

LAG_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoopLag:
    __slots__ = ("_handle", "_loop", "buckets", "count", "interval", "last", "max", "sum")

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.last = 0.0
        self.max = 0.0
        self.sum = 0.0
        self.count = 0
        self.buckets = [0] * (len(LAG_BUCKETS) + 1)
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def observe(self, lag: float) -> None:
        lag = max(lag, 0.0)
        self.last = lag
        self.max = max(self.max, lag)
        self.sum += lag
        self.count += 1
        self.buckets[bisect_left(LAG_BUCKETS, lag)] += 1

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(due, self._fired, due)

    def _fired(self, due: float) -> None:
        assert self._loop is not None
        self.observe(self._loop.time() - due)
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        total = 0
        for bound, count in zip(LAG_BUCKETS, self.buckets, strict=False):
            total += count
            out.append((repr(bound), total))
        out.append(("+Inf", total + self.buckets[-1]))
        return out
