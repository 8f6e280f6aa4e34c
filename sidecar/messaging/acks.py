"""Acks of deliveries, gathered for the writer: every ack made while a commit runs goes into the next one as a single
operation, each stream's settled deliveries in a few statements (:meth:`Store.w_settle_many`), rather than an
operation, a savepoint and two statements a message.

An ack needs no fsync of its own: lost with power, it is a redelivery (at least once); lost with a failed commit, the
same. Added from the event loop, taken in the writer's thread: the lock guards the hand-over.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from sidecar.messaging.courier import consume
from sidecar.messaging.store import Store
from sidecar.messaging.writer import Writer


class Acks:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._lock = threading.Lock()
        self._owed: dict[int, list[int]] = {}   # stream → deliveries acked, not yet written
        self._queued = False                    # an operation is queued that will take them

    def add(self, stream: int, seqs: Iterable[int]) -> None:
        with self._lock:
            self._owed.setdefault(stream, []).extend(seqs)
            if self._queued:
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
            owed, self._owed, self._queued = self._owed, {}, False
        for stream, seqs in owed.items():
            store.in_flight.difference_update((stream, seq) for seq in seqs)
            store.w_settle_many(stream, seqs)
