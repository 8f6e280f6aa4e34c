"""The only module that reads the time or sleeps.

Pure cores (gossip, breaker, retry budget, health thresholds) take ``now`` as an argument; drivers
get it from a :class:`Clock`, so tests can substitute :class:`FakeClock` and run without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for deadlines and intervals."""

    def wall(self) -> float:
        """Seconds since the epoch; for timestamps people and peers read."""

    async def sleep(self, seconds: float) -> None:
        """Wait this long."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to; ``sleep`` advances it at once."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1.7e9) -> None:
        self.now = start
        self._wall_offset = wall_offset

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


SYSTEM_CLOCK: Final = SystemClock()


def epoch_ms(clock: Clock = SYSTEM_CLOCK) -> int:
    """Wall time in epoch milliseconds, the unit of ``lastHeartbeat`` and ``timestamp``."""
    return int(clock.wall() * 1000)
