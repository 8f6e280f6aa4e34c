"""Heap pages that TLS handshakes freed, given back to the kernel after a burst of them.

A TLS handshake allocates and frees far more than the connection keeps: OpenSSL's record buffers and key
exchange, the event loop's 256 KiB reads, the handshake task. glibc returns free memory to the kernel only from the
top of its heap; the pages freed between connections that stay open remain resident (measured: ~7 KiB a connection
after 5,000 idle mTLS connections, released by ``malloc_trim``). So after every ``every`` verified handshakes the
heap is trimmed once, ``delay`` seconds later: a few milliseconds per ``every`` handshakes of ~2 ms CPU each.

    trim = HandshakeTrim(malloc_trimmer())
    inbound.on_verified = lambda identity: trim.handshake_done()   # on the running loop
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter

log = logging.getLogger("sidecar.overload")

# handshakes between trims: 256 idle connections' leftovers are ~2 MiB, worth a trim's few milliseconds
TRIM_EVERY = 256
# the trim waits for the burst to pass: handshakes still arriving would only fill the pages again
TRIM_DELAY = 2.0


class HandshakeTrim:
    """Counts verified handshakes and trims the heap ``delay`` seconds after the ``every``-th (see the module's
    doc); does nothing where there is no ``trim`` (not glibc)."""

    __slots__ = ("_count", "_delay", "_every", "_timer", "_trim", "trims")

    def __init__(self, trim: Callable[[], object] | None, every: int = TRIM_EVERY, delay: float = TRIM_DELAY) -> None:
        self._trim = trim
        self._every = every
        self._delay = delay
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0

    def handshake_done(self) -> None:
        if self._trim is None:
            return
        self._count += 1
        if self._count < self._every:
            return
        self._count = 0
        if self._timer is None:   # one trim pending at a time: under steady churn, one per ``delay`` at most
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._run)

    def _run(self) -> None:
        self._timer = None
        if self._trim is None:
            return
        started = perf_counter()
        self._trim()
        self.trims += 1
        log.debug("heap trimmed after TLS handshakes in %.1f ms", (perf_counter() - started) * 1e3)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
