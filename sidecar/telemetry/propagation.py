"""Trace context in and out, as pure functions: B3 headers read on ingress, and messages that carry a
``traceparent`` (and ``tracestate``) like HTTP requests do.

B3 (https://github.com/openzipkin/b3-propagation): the single ``b3`` header
``{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`` or a lone sampling state (``0``, ``1``, ``d``), and the
multi-header form ``X-B3-TraceId``, ``X-B3-SpanId``, ``X-B3-Sampled``, ``X-B3-Flags``. A 64-bit trace id is
left-padded with zeros to 128 bits, as the spec says. It is read only when no valid ``traceparent`` came:
W3C wins. The proxy then continues the trace in ``traceparent`` (B3 headers pass on untouched).

Messages: a publisher's request may carry ``traceparent``; the message continues that trace with a new span
(the publish), and each delivery is a child of the publish. The context travels in the message's
``metadata`` under ``traceparent`` / ``tracestate`` (the CloudEvents distributed-tracing extension's names)
and in the delivery request's headers, so the receiving app continues it like any HTTP request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.proxy.tracecontext import SAMPLED, IdSource, TraceParent, parse

_HEX = frozenset("0123456789abcdef")
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def _hex(value: str, lengths: tuple[int, ...]) -> str | None:
    value = value.strip().lower()
    if len(value) not in lengths or not _HEX.issuperset(value) or not value.strip("0"):
        return None
    return value


def _sampled(state: str | None) -> int | None:
    if state is None:
        return None
    state = state.strip().lower()
    return {"1": SAMPLED, "true": SAMPLED, "d": SAMPLED, "0": 0, "false": 0}.get(state)


def b3_single(value: str) -> TraceParent | None:
    """The ``b3`` header as a :class:`TraceParent` (the B3 span id becomes the parent-id), or None when it does
    not parse or carries only a sampling decision."""
    parts = value.strip().split("-")
    if len(parts) < 2:
        return None
    trace_id = _hex(parts[0], (16, 32))
    span_id = _hex(parts[1], (16,))
    if trace_id is None or span_id is None:
        return None
    flags = _sampled(parts[2]) if len(parts) >= 3 else None
    if len(parts) >= 3 and flags is None:
        return None
    return TraceParent(trace_id.rjust(32, "0"), span_id, SAMPLED if flags is None else flags)


def b3_multi(headers: Mapping[str, str]) -> TraceParent | None:
    """``X-B3-TraceId``/``X-B3-SpanId``/``X-B3-Sampled``/``X-B3-Flags`` (``headers`` keyed in lower case)."""
    trace_id = _hex(headers.get("x-b3-traceid", ""), (16, 32))
    span_id = _hex(headers.get("x-b3-spanid", ""), (16,))
    if trace_id is None or span_id is None:
        return None
    if headers.get("x-b3-flags", "").strip() == "1":
        flags: int | None = SAMPLED   # debug implies sampled
    else:
        flags = _sampled(headers.get("x-b3-sampled"))
    return TraceParent(trace_id.rjust(32, "0"), span_id, SAMPLED if flags is None else flags)


def from_b3(headers: Iterable[tuple[bytes, bytes]]) -> TraceParent | None:
    """The trace context of B3 headers among ``(lowercase name, value)`` pairs, or None. The single header
    wins over the multi-header form, as the B3 spec recommends."""
    multi: dict[str, str] = {}
    for name, value in headers:
        if name == b"b3":
            return b3_single(value.decode("latin-1"))
        if name.startswith(b"x-b3-"):
            multi[name.decode("latin-1")] = value.decode("latin-1")
    return b3_multi(multi) if multi else None


def incoming_context(headers: Iterable[tuple[bytes, bytes]]) -> TraceParent | None:
    """What a hop continues: a valid ``traceparent``, else B3, else None (a new trace)."""
    pairs = list(headers)
    for name, value in pairs:
        if name == b"traceparent":
            parsed = parse(value)
            if parsed is not None:
                return parsed
    return from_b3(pairs)


# ------------------------------------------------------------------------------------------ messages


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
