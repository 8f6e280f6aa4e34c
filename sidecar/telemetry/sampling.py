"""Which traces get spans: parent-based, with a trace-id ratio at the root.

A request that arrives with a ``traceparent`` follows its sampled flag (when known); a new trace is sampled when
its trace id's low 64 bits fall under ``ratio`` * 2^64 (OpenTelemetry's ``TraceIdRatioBased``). The decision
depends only on the trace id, so every sidecar of a mesh with the same ratio keeps or drops the same traces.

Pure and free of the OpenTelemetry SDK, so that a sidecar with ``exporter: none`` never imports it.
"""

from __future__ import annotations

from typing import Final

_LIMIT: Final = 1 << 64


def _digit(char: str) -> int:
    """A hex digit's value, either case (trace ids are checked hex before they get here)."""
    code = ord(char)
    return code - 48 if code < 58 else (code | 0x20) - 87


class Sampler:
    """Parent-based, trace-id ratio at the root; see the module's doc.

    Per request (on the event loop) the decision reads the trace id's last 16 hex digits against the bound's,
    most significant first, and stops at the first that differs (15 times in 16 at the first): no slice and no
    integer made, so an unsampled request allocates nothing."""

    __slots__ = ("_always", "_bound", "_digits", "_never", "ratio")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._bound = round(ratio * _LIMIT)
        self._always = self._bound >= _LIMIT
        self._never = self._bound <= 0
        self._digits = [_digit(c) for c in f"{min(max(self._bound, 0), _LIMIT - 1):016x}"]

    def by_trace_id(self, trace_id: str) -> bool:
        """The trace id's low 64 bits (its last 16 hex digits) below ``ratio`` * 2^64."""
        if self._always:
            return True
        if self._never:
            return False
        digits = self._digits
        for i in range(16):
            digit = _digit(trace_id[16 + i])
            bound = digits[i]
            if digit != bound:
                return digit < bound
        return False

    def sampled(self, trace_id: str, parent_span_id: str | None, flags: int | None) -> bool:
        if parent_span_id is not None and flags is not None:
            return bool(flags & 1)
        return self.by_trace_id(trace_id)
