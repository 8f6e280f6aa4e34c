"""Trace context for messages, as pure functions: messages carry a ``traceparent`` (and ``tracestate``) like
HTTP requests do. The header parsing (``traceparent``, B3) is :mod:`sidecar.proxy.tracecontext`'s.

Messages: a publisher's request may carry ``traceparent``; the message continues that trace with a new span
(the publish), and each delivery is a child of the publish. The context travels in the message's
``metadata`` under ``traceparent`` / ``tracestate`` (the CloudEvents distributed-tracing extension's names)
and in the delivery request's headers, so the receiving app continues it like any HTTP request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sidecar.proxy.tracecontext import SAMPLED, IdSource, TraceParent, b3_multi, b3_single, parse

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"


@dataclass(frozen=True, slots=True)
class MessageTrace:
    """One messaging operation's span: its ids, its parent (None for a new trace), the flags, tracestate."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    flags: int
    tracestate: str | None = None

    @property
    def traceparent(self) -> TraceParent:
        return TraceParent(self.trace_id, self.span_id, self.flags)

    def child(self, ids: IdSource) -> MessageTrace:
        """The next operation in the same trace (a delivery of this publish), with a new span id."""
        return MessageTrace(self.trace_id, ids.span_id(), self.span_id, self.flags, self.tracestate)

    def headers(self) -> dict[str, str]:
        """For the HTTP request that carries the message on (the delivery to the app)."""
        out = {TRACEPARENT: self.traceparent.to_header()}
        if self.tracestate:
            out[TRACESTATE] = self.tracestate
        return out

    def to_metadata(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        """``metadata`` with this span's ``traceparent`` (and ``tracestate``) set, for the stored message."""
        out = dict(metadata or {})
        out.update(self.headers())
        return out


def message_trace(carrier: Mapping[str, Any] | None, ids: IdSource, sampled: bool = True) -> MessageTrace:
    """Continue the trace found in ``carrier`` (a message's metadata, or request headers keyed in lower case:
    ``traceparent``, ``tracestate``, or B3), or start one; the returned span is this operation's."""
    carrier = carrier or {}
    raw = carrier.get(TRACEPARENT)
    parent = parse(raw) if isinstance(raw, str | bytes) else None
    if parent is None:
        b3 = carrier.get("b3")
        if isinstance(b3, str):
            parent = b3_single(b3)
        else:
            parent = b3_multi({k: v for k, v in carrier.items() if isinstance(v, str) and k.startswith("x-b3-")})
    state = carrier.get(TRACESTATE)
    tracestate = state if isinstance(state, str) and state and parent is not None else None
    if parent is None:
        return MessageTrace(ids.trace_id(), ids.span_id(), None, SAMPLED if sampled else 0)
    return MessageTrace(parent.trace_id, ids.span_id(), parent.span_id, parent.flags, tracestate)
