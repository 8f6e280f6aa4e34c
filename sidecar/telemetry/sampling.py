"""Which traces get spans: parent-based, with a trace-id ratio at the root.

A request that arrives with a ``traceparent`` follows its sampled flag (when known); a new trace is sampled when
its trace id's low 64 bits fall under ``ratio`` * 2^64 (OpenTelemetry's ``TraceIdRatioBased``). The decision
depends only on the trace id, so every sidecar of a mesh with the same ratio keeps or drops the same traces.

Pure and free of the OpenTelemetry SDK, so that a sidecar with ``exporter: none`` never imports it.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


class Sampler:
    """Parent-based, trace-id ratio at the root; see the module's doc."""

    __slots__ = ("_bound", "ratio")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._bound = round(ratio * (1 << 64))

    def by_trace_id(self, trace_id: str) -> bool:
        return (int(trace_id[16:], 16) & _MASK64) < self._bound

    def sampled(self, trace_id: str, parent_span_id: str | None, flags: int | None) -> bool:
        if parent_span_id is not None and flags is not None:
            return bool(flags & 1)
        return self.by_trace_id(trace_id)
