"""Acks of deliveries, gathered for the writer: the acks made within ACK_DELAY of the first one go into one
operation, each stream's settled deliveries in a few statements (:meth:`Store.w_settle_many`), rather than an
operation, a savepoint and two statements a message, or a commit (a trip to the writer's thread) every few acks.

An ack needs no fsync of its own: lost with power, it is a redelivery (at least once); lost with a failed commit or
a ``kill -9`` within its delay, the same. So acks wait: up to ACK_DELAY, or until ACK_BATCH are owed, or until the
writer has other work queued (then they ride in that commit for free). Added from the event loop, taken in the
writer's thread: the lock guards the hand-over.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from sidecar.messaging.courier import consume
from sidecar.messaging.store import Store
from sidecar.messaging.writer import Writer

# seconds the first ack owed waits for others before they are written: at a thousand acks a second, one commit
# settles about ten of them; a kill -9 redelivers at most this much more than it would anyway
ACK_DELAY = 0.01
ACK_BATCH = 1024   # acks owed that are written at once, whatever the delay


class Acks:
    def __init__(self, writer: Writer, delay: float = ACK_DELAY) -> None:
        self.writer = writer
        self.delay = delay
        self._lock = threading.Lock()
        self._owed: dict[int, list[int]] = {}   # stream → deliveries acked, not yet written
        self._count = 0                         # in ``_owed``
        self._queued = False                    # an operation is queued that will take them
        self._timer: asyncio.TimerHandle | None = None   # the delay's end (event loop only)

    def add(self, stream: int, seqs: Iterable[int]) -> None:
        with self._lock:
            owed = self._owed.get(stream)
            if owed is None:
                owed = self._owed[stream] = []
            before = len(owed)
            owed.extend(seqs)
            self._count += len(owed) - before
            if self._queued:
                return
            if self._count < ACK_BATCH and not self.writer.queued:
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)
                return
        self.flush()

    def flush(self) -> None:
        """Queue what is owed for the next commit now (the delay's end, enough owed, or messaging stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            if self._queued or not self._owed:
                return
            self._queued = True
        try:
            self.writer.submit(self._write, durable=False).add_done_callback(consume)
        except Exception:
            with self._lock:
                self._queued = False
            raise

    def _write(self, store: Store) -> None:
        """The writer thread's part: what was acked since the last, settled (and no longer in flight: retention
        never sees a delivery that is neither in flight nor settled)."""
        with self._lock:
            owed, self._owed, self._count, self._queued = self._owed, {}, 0, False
        for stream, seqs in owed.items():
            store.in_flight.difference_update((stream, seq) for seq in seqs)
            store.w_settle_many(stream, seqs)
