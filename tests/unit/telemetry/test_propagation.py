"""B3 on ingress and trace context for messages."""

from __future__ import annotations

import random

import pytest

from sidecar.proxy.tracecontext import IdSource, TraceParent, b3_multi, b3_single, from_b3, incoming_context
from sidecar.telemetry.propagation import message_trace

T128 = "80f198ee56343ba864fe8b2a57d3eff7"
T64 = "a3ce929d0e0e4736"
SPAN = "e457b5a2e4d86bd1"


@pytest.mark.parametrize(("value", "expected"), [
    (f"{T128}-{SPAN}-1-05e3ac9a4f6e3b90", TraceParent(T128, SPAN, 1)),
    (f"{T128}-{SPAN}-0", TraceParent(T128, SPAN, 0)),
    (f"{T128}-{SPAN}-d", TraceParent(T128, SPAN, 1)),
    (f"{T128}-{SPAN}", TraceParent(T128, SPAN, 1)),              # deferred: we sample
    (f"{T64}-{SPAN}-1", TraceParent("0" * 16 + T64, SPAN, 1)),   # 64-bit ids are left-padded
    (f"{T128.upper()}-{SPAN}-1", TraceParent(T128, SPAN, 1)),
    ("0", None),                                                 # a lone sampling decision
    (f"{T128}-{SPAN}-x", None),
    (f"{'0' * 32}-{SPAN}-1", None),
    (f"{T128}-123-1", None),
    ("", None),
])
def test_b3_single(value: str, expected: TraceParent | None) -> None:
    assert b3_single(value) == expected


def test_b3_multi() -> None:
    assert b3_multi({"x-b3-traceid": T128, "x-b3-spanid": SPAN, "x-b3-sampled": "0"}) == TraceParent(T128, SPAN, 0)
    assert b3_multi({"x-b3-traceid": T64, "x-b3-spanid": SPAN, "x-b3-flags": "1",
                     "x-b3-sampled": "0"}) == TraceParent("0" * 16 + T64, SPAN, 1)
    assert b3_multi({"x-b3-traceid": T128}) is None


def test_traceparent_wins_then_single_b3_then_multi() -> None:
    w3c = f"00-{T128}-{SPAN}-01".encode()
    other = "1" * 32
    assert incoming_context([(b"x-b3-traceid", other.encode()), (b"x-b3-spanid", SPAN.encode()),
                             (b"traceparent", w3c)]) == TraceParent(T128, SPAN, 1)
    assert incoming_context([(b"traceparent", b"garbage"), (b"b3", f"{T128}-{SPAN}-0".encode())]) \
        == TraceParent(T128, SPAN, 0)
    assert from_b3([(b"x-b3-traceid", other.encode()), (b"x-b3-spanid", SPAN.encode()),
                    (b"b3", f"{T128}-{SPAN}".encode())]) == TraceParent(T128, SPAN, 1)
    assert incoming_context([(b"host", b"x")]) is None


def test_message_trace_continues_or_starts() -> None:
    ids = IdSource(random.Random(3))
    started = message_trace(None, ids)
    assert started.parent_span_id is None and started.flags == 1 and len(started.trace_id) == 32
    carried = message_trace({"traceparent": f"00-{T128}-{SPAN}-00", "tracestate": "k=v"}, ids)
    assert (carried.trace_id, carried.parent_span_id, carried.flags, carried.tracestate) == (T128, SPAN, 0, "k=v")
    assert carried.span_id != SPAN
    child = carried.child(ids)
    assert (child.trace_id, child.parent_span_id) == (T128, carried.span_id)
    assert child.headers() == {"traceparent": f"00-{T128}-{child.span_id}-00", "tracestate": "k=v"}
    assert child.to_metadata({"a": 1}) == {"a": 1, **child.headers()}
    b3 = message_trace({"b3": f"{T128}-{SPAN}-1"}, ids)
    assert (b3.trace_id, b3.parent_span_id) == (T128, SPAN)
    multi = message_trace({"x-b3-traceid": T128, "x-b3-spanid": SPAN}, ids)
    assert multi.trace_id == T128
    assert message_trace({"traceparent": "nonsense", "tracestate": "k=v"}, ids).tracestate is None
