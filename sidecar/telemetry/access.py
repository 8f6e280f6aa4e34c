"""The access log: one line per proxied request (``telemetry.access_log``), to a file or to stderr.

Off by default, as Envoy's. When on, the request path formats the line in compiled code
(:mod:`sidecar.telemetry.accessline`) and queues it; a :class:`~sidecar.telemetry.batcher.Batcher` thread writes
the queued lines in one write within a second of the first (or as soon as 1024 wait; Envoy's file flush interval
is a second too), straight to the file's descriptor. A slow or full disk never blocks a request:
the queue is bounded (65536 lines), lines beyond it are dropped and counted (``dropped``), lines a write failed on
are counted (``failed``); on a clean shutdown every queued line is written before the file is closed.
Rotation needs no signal: before each batch the file is reopened if ``path`` no longer names it (renamed or
removed by logrotate, with or without ``create``), as nginx does on USR1.
Lines are the ``sidecar.access`` logger's (``format: json`` one object per line, ``text`` key=value),
independent of the process's ``logging.format`` and not silenced by ``POST /logging?level=warning``.

Fields: ``direction`` (outbound | inbound), ``service`` (destination), ``method``, ``path`` (as received),
``host``, ``status`` (0: the client got none), ``outcome`` (``success`` | ``error``, as the performance records
count it) and ``error`` (why: connect-failure, reset, timeout, local...), ``upstream`` (the last attempt's
address), ``attempts``, ``durationMs`` (head in to response end), ``responseHeadMs`` (head in to response head
out), ``requestBytes``, ``responseBytes``, ``traceId``, ``spanId``, ``requestId``; inbound also ``peer`` (the
caller's SPIFFE ID) and ``client`` (its address) when the engine reports the connection.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from io import FileIO
from typing import IO, Any, Final

from sidecar.proxy.target import ConnectionInfo, RequestStats
from sidecar.telemetry.accessline import Timestamps, json_line, text_line
from sidecar.telemetry.batcher import Batcher

ACCESS_LOGGER: Final = "sidecar.access"
MAX_QUEUE: Final = 65536
MAX_BATCH: Final = 1024
INTERVAL: Final = 1.0       # Envoy's file_flush_interval_msec default


class AccessLog:
    """Formats and queues lines; see the module's doc. ``path`` appends to a file (created if missing),
    else ``stream`` (default stderr) receives them; ``wall`` is the wall clock (epoch seconds)."""

    def __init__(self, fmt: str = "json", stream: IO[str] | None = None, *, path: str | None = None,
                 wall: Callable[[], float] | None = None, max_queue: int = MAX_QUEUE,
                 interval: float = INTERVAL) -> None:
        import time
        self.json = fmt != "text"
        self.path = path
        # a file gets the batch's bytes in one write() of its own (no buffer to flush, no text layer); the
        # device and inode it was opened as tell whether logrotate moved it
        self._file: FileIO | None = None
        self._identity = (0, 0)
        if path is not None:
            self._open(path)
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        self.wall = wall or time.time
        self.timestamps = Timestamps()
        self.batcher: Batcher[str] = Batcher(self._write, name="access-log", max_queue=max_queue,
                                             max_batch=MAX_BATCH, interval=interval)
        self.lines = 0          # lines queued for writing

    def request(self, direction: str, service: str, stats: RequestStats, peer: ConnectionInfo | None = None,
                wall: float | None = None) -> None:
        """``wall``: when the request ended, epoch seconds (default: now)."""
        ts = self.timestamps.text(self.wall() if wall is None else wall)
        if self.json:
            line = json_line(ts, direction, service, stats, peer)
        else:
            line = text_line(ts, direction, service, stats, peer)
        if self.batcher.put(line):
            self.lines += 1

    def _open(self, path: str) -> None:
        file = FileIO(path, "a")
        try:
            held = os.fstat(file.fileno())
        except OSError:
            file.close()
            raise
        self._file = file
        self._identity = (held.st_dev, held.st_ino)

    def _write(self, lines: list[str]) -> None:
        if self._file is None:
            self.stream.write("".join(lines))
            self.stream.flush()
            return
        self._reopen_if_moved()
        data = "".join(lines).encode()
        written = self._file.write(data)
        if written < len(data):
            self._write_rest(memoryview(data)[written:])

    def _write_rest(self, rest: memoryview) -> None:
        """What a short write (a signal, a nearly full disk) left: written until done or the disk refuses."""
        assert self._file is not None
        while rest:
            written = self._file.write(rest)
            if not written:
                raise OSError(errno.EIO, f"{self.path}: the file took none of the last {len(rest)} bytes")
            rest = rest[written:]

    def _reopen_if_moved(self) -> None:
        """Reopens ``path`` when it no longer names the open file (logrotate renamed or removed it), so lines
        go to the configured path rather than to the rotated file forever; one ``stat`` per batch."""
        assert self._file is not None and self.path is not None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            pass
        else:
            if (now.st_dev, now.st_ino) == self._identity:
                return
        held = self._file
        try:
            self._open(self.path)
        except OSError:
            return  # the directory is not writable now: keep the lines in the old file, retry next batch
        held.close()

    def status(self) -> dict[str, Any]:
        return {"lines": self.lines, "dropped": self.batcher.dropped, "failed": self.batcher.failed,
                "pending": self.batcher.pending(), "path": self.path}

    def flush(self, timeout: float = 5.0) -> bool:
        return self.batcher.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Writes every queued line (bounded by ``timeout``), then closes the file."""
        self.batcher.close(timeout)
        if self._file is not None:
            self._file.close()
