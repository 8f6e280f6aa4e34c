"""A timer that fires every ``interval`` seconds on the running loop and says how late it ran: the event loop's
lag. One ``call_at`` per interval, no task, no sleep; re-armed after the callback, so time the callback itself
spends is not counted as the next interval's lag."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LateTimer:
    __slots__ = ("_handle", "_loop", "callback", "interval")

    def __init__(self, interval: float, callback: Callable[[float, float], None]) -> None:
        """``callback(lag, now)``: seconds past the due time (never negative), and the loop's time."""
        self.interval = interval
        self.callback = callback
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        assert self._loop is not None
        due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(due, self._fired, due)

    def _fired(self, due: float) -> None:
        assert self._loop is not None
        now = self._loop.time()
        try:
            self.callback(max(0.0, now - due), now)
        finally:
            if self._handle is not None:   # not stopped by the callback
                self._arm()
