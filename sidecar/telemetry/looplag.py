"""Event-loop lag: how late a timer fires. A callback that blocks the loop (a slow parse, a sync write, a
GC pause) delays every connection of the process by as much; this shows it as ``sidecar_event_loop_lag_*``.

A :class:`~sidecar.latetimer.LateTimer` fires every ``interval`` seconds; the lag is how far past its due time
it ran.
"""

from __future__ import annotations

from bisect import bisect_left

from sidecar.latetimer import LateTimer

LAG_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoopLag:
    __slots__ = ("_timer", "buckets", "count", "last", "max", "sum")

    def __init__(self, interval: float = 0.25) -> None:
        self.last = 0.0
        self.max = 0.0
        self.sum = 0.0
        self.count = 0
        self.buckets = [0] * (len(LAG_BUCKETS) + 1)
        self._timer = LateTimer(interval, lambda lag, _now: self.observe(lag))

    @property
    def interval(self) -> float:
        return self._timer.interval

    def observe(self, lag: float) -> None:
        lag = max(lag, 0.0)
        self.last = lag
        self.max = max(self.max, lag)
        self.sum += lag
        self.count += 1
        self.buckets[bisect_left(LAG_BUCKETS, lag)] += 1

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        total = 0
        for bound, count in zip(LAG_BUCKETS, self.buckets, strict=False):
            total += count
            out.append((repr(bound), total))
        out.append(("+Inf", total + self.buckets[-1]))
        return out
