"""A bounded queue drained in batches by one worker thread: how per-request telemetry leaves the request path.

    batcher = Batcher(sink, name="access-log", max_queue=65536, max_batch=1024, interval=0.2)
    batcher.put(item)         # the request path: an append, never a wait; False (and counted) when full
    batcher.flush(5.0)        # every item put before this call has been given to the sink
    batcher.close(5.0)        # the same, then the worker ends

The worker sleeps until an item is put, then gathers for ``interval`` seconds (or until ``max_batch`` items wait,
or a flush asks) and hands the sink lists of at most ``max_batch`` items, in the order they were put: one wake-up
per batch, none while nothing is put, and the request path signals only a batch's first item and a full batch.
What is put while the sink works is gathered the same way (as the OpenTelemetry SDK's batch span processor): full
batches go at once, a partial one only when its ``interval`` is over. Under a steady load every batch is full, where
handing over whatever came in during the last delivery would make the batches as small as a delivery is short
(about 50 spans a post at 9,000 a second: a post, a write, their GIL handovers for every few dozen items).
A slow or failing sink (a full disk, a collector that does not answer) only delays the worker: the queue stays
bounded, new items beyond ``max_queue`` are dropped and counted in ``dropped``, and a sink that raises loses that
batch (counted in ``failed``), never the process.
On a clean shutdown :meth:`close` drains everything queued before it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

T = TypeVar("T")
log = logging.getLogger("sidecar.telemetry")


class _Marker:
    """Put by :meth:`Batcher.flush`: set once every item queued before it reached the sink."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class Batcher(Generic[T]):
    """See the module's doc."""

    def __init__(self, sink: Callable[[list[T]], None], *, name: str, max_queue: int = 65536,
                 max_batch: int = 1024, interval: float = 0.2) -> None:
        self.sink = sink
        self.name = name
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.interval = interval
        self.dropped = 0          # items refused because the queue was full
        self.failed = 0           # items in batches the sink raised on
        self.delivered = 0        # items handed to a sink that returned
        # appended to at its end by the request path, taken from its front by the worker: a slice copy, then a
        # slice deletion, each one C call under the GIL, so an append between the two stays in the queue
        self._queue: list[T | _Marker] = []
        # a binary semaphore, unlocked when signalled: a lock's acquire and release are single C calls, where an
        # Event's wait and set run a Condition's Python code (any thread may release a plain Lock)
        self._signal = threading.Lock()
        self._signal.acquire()
        self._urgent = False      # a flush or close waits: no gathering for the interval
        self._closing = False
        self._worker = threading.Thread(target=self._run, name=f"sidecar-{name}", daemon=True)
        self._worker.start()

    def put(self, item: T) -> bool:
        queue = self._queue
        if len(queue) >= self.max_queue or self._closing:
            self.dropped += 1
            return False
        queue.append(item)
        size = len(queue)         # after the append: the worker may have taken the rest meanwhile
        if size == 1 or size == self.max_batch:
            self._wake()
        return True

    def pending(self) -> int:
        return len(self._queue)

    def flush(self, timeout: float) -> bool:
        """Blocks until what was put before reached the sink; False if ``timeout`` passed first."""
        if not self._worker.is_alive():
            return not self._queue
        marker = _Marker()
        self._queue.append(marker)
        self._urgent = True
        self._wake()
        return marker.done.wait(timeout)

    def close(self, timeout: float) -> bool:
        """Drains the queue into the sink and ends the worker; False if it was still busy after ``timeout``."""
        self._closing = True
        self._urgent = True
        self._wake()
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def _wake(self) -> None:
        # a try costs nothing when nothing is raised, where contextlib.suppress makes an object per call
        try:  # noqa: SIM105
            self._signal.release()
        except RuntimeError:
            pass                  # already signalled, not yet seen by the worker

    def _run(self) -> None:
        signal = self._signal
        queued = False            # items are left from the last drain: gather them without waiting for a put
        while True:
            if not queued:
                signal.acquire()  # an item was put (or a flush or close asks)
            whole = self._gather(signal)
            closing = self._closing
            queued = self._drain(whole or closing)
            if closing:
                while self._queue:
                    self._drain(True)   # what was put between the check and the drain
                return

    def _gather(self, signal: threading.Lock) -> bool:
        """Waits until ``max_batch`` items are queued (False) or the interval is over or a flush or close asks
        (True: then a partial batch goes too)."""
        deadline = time.monotonic() + self.interval
        while not self._urgent:
            if len(self._queue) >= self.max_batch:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            signal.acquire(True, remaining)   # a put of the batch's last item, a flush or close wakes it early
        self._urgent = False
        return True

    def _drain(self, whole: bool) -> bool:
        """Hands the sink full batches, and with ``whole`` also the rest of what was queued when it began; True
        when items are left queued (to gather for the next batch)."""
        queue = self._queue
        size = self.max_batch
        owed = len(queue) if whole else 0
        while len(queue) >= size or owed > 0:
            batch = queue[:size]
            del queue[:len(batch)]
            owed -= len(batch)
            cut = 0               # flush markers split the batch: what precedes one reaches the sink first
            for i in range(len(batch)):
                item = batch[i]
                if isinstance(item, _Marker):
                    self._deliver(cast("list[T]", batch[cut:i]))
                    item.done.set()
                    cut = i + 1
            self._deliver(cast("list[T]", batch[cut:] if cut else batch))
        return bool(queue)

    def _deliver(self, batch: list[T]) -> None:
        if not batch:
            return
        try:
            self.sink(batch)
        except Exception as e:  # the sink's failure costs this batch, never the worker
            if not self.failed:
                log.warning("%s: a batch of %d was lost (%s: %s); later losses are only counted", self.name,
                            len(batch), type(e).__name__, e)
            self.failed += len(batch)
        else:
            self.delivered += len(batch)
