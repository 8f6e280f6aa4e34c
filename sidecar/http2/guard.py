"""The checks the HTTP/2 core makes on each frame header before ``h2`` parses the frame.

``h2`` parses frames correctly but leaves several floods to its user: it buffers up to 64 CONTINUATION frames
of any size, answers every PING and SETTINGS, accepts any number of resets, and treats one stream too many as
an error of the whole connection. The guard sees each complete frame's header first and returns a verdict:

- PASS: feed it to ``h2``;
- NEW: a HEADERS opening a stream; the core admits it or refuses it (REFUSED_STREAM) by its stream count;
- REFUSE / DROP: a frame of a stream ``h2`` never saw (refused, or opened after our GOAWAY); the core decodes
  its header block (the HPACK table is shared by the connection) and returns DATA's bytes to the window;
- GOAWAY: the peer's GOAWAY, which the core reads itself (``h2`` stops every stream on one).

A flood raises :class:`Violation`, which the core turns into a GOAWAY and the end of the connection. Budgets
count per window of time, and ``now`` is passed in.
"""

from __future__ import annotations

import enum

from sidecar.http2.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
)
from sidecar.http2.limits import Budget, H2Limits


class Verdict(enum.Enum):
    PASS = 0
    NEW = 1
    REFUSE = 2
    DROP = 3
    GOAWAY = 4


class Violation(Exception):
    """The peer broke a rule of the connection; ``counter`` names the protection that caught it."""

    def __init__(self, error_code: int, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason
        self.counter = counter


class FrameGuard:
    def __init__(self, limits: H2Limits, client_side: bool) -> None:
        self.limits = limits
        self.client_side = client_side
        # streams on which the peer may still send DATA or HEADERS
        self.peer_open: set[int] = set()
        # streams h2 never saw (refused); insertion-ordered, the oldest forgotten past a bound
        self.refused: dict[int, None] = {}
        self.highest_peer = 0  # highest stream id the peer opened
        self.highest_local = 0  # highest stream id we opened
        self.goaway_last: int | None = None  # set once we sent GOAWAY: later peer streams are refused
        self.block_stream = 0  # stream of a header block still waiting for END_HEADERS
        self.block_frames = 0
        self.block_bytes = 0
        self.block_verdict = Verdict.PASS
        self._controls = Budget(limits.max_control_frames, limits.budget_window)
        # every RST_STREAM the peer sends, on a stream open, over or never seen: h2 ignores those of closed
        # streams, so nothing else would bound them
        self._resets = Budget(limits.max_peer_resets, limits.budget_window)
        self._closed_frames = Budget(limits.max_closed_stream_frames, limits.budget_window)

    def inspect(self, ftype: int, flags: int, stream_id: int, length: int, now: float) -> Verdict:
        if self.block_stream:
            return self._continuation(ftype, flags, stream_id, length)
        if ftype == DATA:
            return self._data(flags, stream_id, length, now)
        if ftype == HEADERS:
            return self._headers(flags, stream_id, length, now)
        if ftype in (SETTINGS, PING):  # acknowledgements too: we asked for one each, rarely
            if self._controls.hit(now):
                raise Violation(ENHANCE_YOUR_CALM, f"more than {self.limits.max_control_frames} SETTINGS/PING/"
                                f"PRIORITY frames in {self.limits.budget_window:g}s", "control_flood")
            return Verdict.PASS
        if ftype == PRIORITY:
            if self._controls.hit(now):
                raise Violation(ENHANCE_YOUR_CALM, f"more than {self.limits.max_control_frames} SETTINGS/PING/"
                                f"PRIORITY frames in {self.limits.budget_window:g}s", "control_flood")
            return Verdict.DROP if stream_id in self.refused else Verdict.PASS
        if ftype == RST_STREAM:
            if self._resets.hit(now):
                raise Violation(ENHANCE_YOUR_CALM, f"more than {self.limits.max_peer_resets} RST_STREAM frames in "
                                f"{self.limits.budget_window:g}s", "rapid_reset")
            # a reset of a stream the peer already ended is a cancel (our answer may still be running)
            self.peer_open.discard(stream_id)
            return Verdict.DROP if stream_id in self.refused else Verdict.PASS
        if ftype == WINDOW_UPDATE:
            return Verdict.DROP if stream_id in self.refused else Verdict.PASS
        if ftype == GOAWAY:
            return Verdict.GOAWAY
        return Verdict.PASS

    def admit(self, stream_id: int, flags: int) -> None:
        if not flags & END_STREAM:
            self.peer_open.add(stream_id)

    def refuse(self, stream_id: int) -> None:
        self.refused[stream_id] = None
        if len(self.refused) > 2 * self.limits.max_concurrent_streams:
            del self.refused[next(iter(self.refused))]

    def opened_locally(self, stream_id: int) -> None:
        self.highest_local = max(self.highest_local, stream_id)
        self.peer_open.add(stream_id)

    def forget(self, stream_id: int) -> None:
        """The stream was reset (either side): the peer's later frames on it are frames on a closed stream."""
        self.peer_open.discard(stream_id)

    def _headers(self, flags: int, stream_id: int, length: int, now: float) -> Verdict:
        if length > self.limits.max_header_block_bytes:
            raise Violation(ENHANCE_YOUR_CALM, f"header block over {self.limits.max_header_block_bytes} bytes",
                            "continuation_flood")
        verdict = self._headers_verdict(flags, stream_id, now)
        if not flags & END_HEADERS:
            self.block_stream, self.block_frames, self.block_bytes = stream_id, 0, length
            self.block_verdict = Verdict.DROP if verdict is Verdict.REFUSE else verdict
        if flags & END_STREAM and verdict is Verdict.PASS:
            self.peer_open.discard(stream_id)
        return verdict

    def _headers_verdict(self, flags: int, stream_id: int, now: float) -> Verdict:
        if stream_id in self.refused:
            return Verdict.DROP
        if stream_id in self.peer_open or stream_id == 0:
            return Verdict.PASS  # trailers, or an error h2 reports
        if not self.client_side and stream_id % 2 == 1 and stream_id > self.highest_peer:
            self.highest_peer = stream_id
            if self.goaway_last is not None and stream_id > self.goaway_last:
                self.refuse(stream_id)
                return Verdict.REFUSE
            return Verdict.NEW
        self._closed_stream_frame(stream_id, now)
        return Verdict.PASS

    def _data(self, flags: int, stream_id: int, length: int, now: float) -> Verdict:
        if stream_id in self.refused:
            return Verdict.DROP
        if stream_id not in self.peer_open:
            self._closed_stream_frame(stream_id, now)
        elif flags & END_STREAM:
            self.peer_open.discard(stream_id)
        elif length == 0 and self._controls.hit(now):
            raise Violation(ENHANCE_YOUR_CALM, f"more than {self.limits.max_control_frames} empty DATA frames "
                            f"in {self.limits.budget_window:g}s", "control_flood")
        return Verdict.PASS

    def _closed_stream_frame(self, stream_id: int, now: float) -> None:
        known = stream_id <= (self.highest_local if self.client_side == (stream_id % 2 == 1) else self.highest_peer)
        if stream_id and known and self._closed_frames.hit(now):
            raise Violation(ENHANCE_YOUR_CALM, f"more than {self.limits.max_closed_stream_frames} frames on closed "
                            f"streams in {self.limits.budget_window:g}s", "closed_stream_frames")

    def _continuation(self, ftype: int, flags: int, stream_id: int, length: int) -> Verdict:
        if ftype != CONTINUATION or stream_id != self.block_stream:
            raise Violation(PROTOCOL_ERROR, "header block interrupted by another frame", "protocol_error")
        self.block_frames += 1
        self.block_bytes += length
        if self.block_frames > self.limits.max_continuation_frames:
            raise Violation(ENHANCE_YOUR_CALM, f"header block in more than {self.limits.max_continuation_frames} "
                            "CONTINUATION frames", "continuation_flood")
        if self.block_bytes > self.limits.max_header_block_bytes:
            raise Violation(ENHANCE_YOUR_CALM, f"header block over {self.limits.max_header_block_bytes} bytes",
                            "continuation_flood")
        verdict = self.block_verdict
        if flags & END_HEADERS:
            self.block_stream = 0
        return Verdict.DROP if verdict is Verdict.DROP else Verdict.PASS
