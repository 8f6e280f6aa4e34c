"""The overload guard's driver: every ``check_interval`` one timer callback reads resident memory
(``/proc/self/statm``, a few microseconds) and the timer's own lateness (event-loop lag), feeds both to the
:class:`~sidecar.overload.guard.OverloadGuard`, and logs each transition once. No task, no sleep.

While memory is over its limit the driver also shrinks the heap (Envoy's ``shrink_heap`` overload action), at
once and then every ``SHRINK_EVERY`` seconds: a full garbage collection, then glibc's ``malloc_trim``. Without
it, memory freed after a spike (closed connections are freed by the cyclic collector, and the allocators keep
freed pages) stays resident, and the guard, which watches resident memory as the OOM killer does, would shed
long after the spike has passed.

    guard = OverloadGuard(config.max_memory_bytes, float(config.max_loop_lag), enabled=config.enabled)
    monitor = OverloadMonitor(guard, float(config.check_interval))
    monitor.start()     # in the running loop
    ...
    monitor.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
from collections.abc import Callable
from time import perf_counter

from sidecar.latetimer import LateTimer
from sidecar.log import fields
from sidecar.overload.guard import OverloadGuard, Reason, Sample, Transition

log = logging.getLogger("sidecar.overload")

# a full collection takes tens to hundreds of milliseconds on a large heap: at most one per this many seconds
SHRINK_EVERY = 5.0


def malloc_trimmer() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: give free heap pages back to the kernel; None elsewhere (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def shrink_heap(trim: Callable[[], object] | None) -> None:
    """Free what only the cyclic collector can free, then return free heap pages to the kernel."""
    gc.collect()
    if trim is not None:
        trim()


class ResidentMemory:
    """Reads this process's resident set size from ``/proc/self/statm`` (opened once; one ``pread`` per read).
    Where there is no such file, :meth:`read` returns None and the memory check is off."""

    __slots__ = ("_fd", "_page")

    def __init__(self, path: str = "/proc/self/statm") -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:
            self._fd = None

    @property
    def available(self) -> bool:
        return self._fd is not None

    def read(self) -> int | None:
        if self._fd is None:
            return None
        try:
            # "size resident shared text lib data dt", in pages
            return int(os.pread(self._fd, 128, 0).split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class OverloadMonitor:
    """Samples every ``interval`` seconds on the running loop; see the module's doc. ``memory`` returns the
    resident bytes (None: unknown); ``on_transition`` is told of each transition after it is logged."""

    def __init__(self, guard: OverloadGuard, interval: float,
                 memory: Callable[[], int | None] | None = None) -> None:
        self.guard = guard
        self.interval = interval
        self._statm: ResidentMemory | None = None   # opened by start() when ``memory`` is not given
        self._memory = memory if memory is not None else self._read_statm
        self._loop: asyncio.AbstractEventLoop | None = None
        # re-armed after each sample: the guard's own deliberate pause (a shrink) is not fed back as load (it
        # still shows in telemetry's sidecar_event_loop_lag_seconds, which has its own timer)
        self._timer = LateTimer(interval, self._fired)
        self._trim = malloc_trimmer()
        self._last_shrink = float("-inf")
        self.shrinks = 0
        self.on_transition: Callable[[Transition], None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._memory == self._read_statm:
            self._statm = ResidentMemory()
            if not self._statm.available and Reason.MEMORY in self.guard.watched:
                log.warning("overload: /proc/self/statm is not readable here; the memory check is off")
        self.sample_now()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        if self._statm is not None:
            self._statm.close()
            self._statm = None

    def _read_statm(self) -> int | None:
        return self._statm.read() if self._statm is not None else None

    def sample_now(self, lag: float | None = 0.0) -> None:
        """One sample outside the timer (at start, and for tests)."""
        assert self._loop is not None
        self._feed(Sample(self._memory(), lag), self._loop.time())

    def _fired(self, lag: float, now: float) -> None:
        self._feed(Sample(self._memory(), lag), now)
        if self.guard.refusing and now - self._last_shrink >= SHRINK_EVERY:
            self._shrink()
            self._last_shrink = now

    def _shrink(self) -> None:
        before, started = self._memory(), perf_counter()
        shrink_heap(self._trim)
        self.shrinks += 1
        after = self._memory()
        log.debug("shrank the heap in %.0fms: resident %s -> %s bytes", (perf_counter() - started) * 1000,
                  before, after)

    def _feed(self, sample: Sample, now: float) -> None:
        for transition in self.guard.observe(sample, now):
            if not self.guard.enabled:
                continue
            if transition.active:
                log.warning("overloaded: shedding new requests with 503: %s", transition.message,
                            extra=fields(reason=transition.reason.value))
            else:
                still = [r.value for r in self.guard.active]
                log.info("overload cleared: %s%s", transition.message,
                            "; still shedding for " + ", ".join(still) if still else "; no longer shedding",
                            extra=fields(reason=transition.reason.value))
            if self.on_transition is not None:
                self.on_transition(transition)
