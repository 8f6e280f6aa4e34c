"""One write per HTTP/2 connection per read batch.

The frames of one read on a connection drive many exchanges, and each asks its other connection to flush as it
goes: a read of 100 responses from an app's h2c connection ends 100 streams of the peer sidecar's connection, a
client's read of 10 requests starts 10 streams towards the peer. Written at each ask, that is one TLS record and
one system call per stream. While a connection handles a read (``begin`` ... ``end``), a flush is deferred to the
read's end instead, so each connection writes once for everything the read queued on it, in the order it was
queued (the connection's core holds the bytes). Outside a read (a timer, a task) a flush writes at once, and a
connection closing writes what it holds before it closes, batch or not.

One batch per thread: an event loop runs its callbacks on its own thread, one at a time, and a read's handling
never spans two callbacks.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Flushable(Protocol):
    def write_out(self) -> None:
        """Write what the connection holds, now."""


class WriteBatch:
    """The connections with a flush deferred to the end of the read being handled."""

    __slots__ = ("depth", "pending")

    def __init__(self) -> None:
        self.depth = 0
        self.pending: dict[Flushable, None] = {}   # insertion-ordered, each connection once

    def begin(self) -> None:
        self.depth += 1

    def end(self) -> None:
        self.depth -= 1
        while self.depth == 0 and self.pending:
            pending, self.pending = self.pending, {}
            for writer in pending:
                writer.write_out()

    def flush(self, writer: Flushable) -> None:
        """Write ``writer``'s bytes at the end of the read being handled, or now when none is."""
        if self.depth:
            self.pending[writer] = None
        else:
            writer.write_out()


_local = threading.local()


def write_batch() -> WriteBatch:
    """This thread's batch (one event loop's)."""
    batch: WriteBatch | None = getattr(_local, "batch", None)
    if batch is None:
        batch = _local.batch = WriteBatch()
    return batch
