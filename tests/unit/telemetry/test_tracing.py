"""Spans built from RequestStats: ids from the headers, HTTP semantic-convention attributes, sampling."""

from __future__ import annotations

import io
import json
import random

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.config.model import TracingConfig
from sidecar.proxy.tracecontext import IdSource
from sidecar.telemetry.propagation import message_trace
from sidecar.telemetry.sdkexport import SdkExporter
from sidecar.telemetry.tracing import Sampler, Tracer, span_exporter
from tests.unit.telemetry.stats import CALLER_SPAN, HOP_SPAN, TRACE, caller_conn, local_app, stats

WALL = 1_700_000_000.0


def tracer(ratio: float = 1.0) -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracer(TracingConfig("console", None, ratio), SdkExporter(exporter, {"service.name": "checkout"}),
                  schedule_delay_ms=10), exporter


def finished(t: Tracer, exporter: InMemorySpanExporter) -> list:  # type: ignore[type-arg]
    assert t.flush()
    return list(exporter.get_finished_spans())


def test_client_span_uses_the_hop_ids_and_http_conventions() -> None:
    t, exporter = tracer()
    t.request("outbound", stats(attempts=2), "payment-service", WALL)
    [span] = finished(t, exporter)
    assert span.kind is SpanKind.CLIENT
    assert span.name == "POST"
    assert f"{span.context.trace_id:032x}" == TRACE
    assert f"{span.context.span_id:016x}" == HOP_SPAN
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CALLER_SPAN and span.parent.is_remote
    assert span.start_time == int((100.0 + WALL) * 1e9)
    assert span.end_time - span.start_time == pytest.approx(25_000_000, abs=1000)
    attrs = dict(span.attributes)
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "payment-service"
    assert attrs["server.port"] == 80
    assert attrs["url.full"] == "http://payment-service/pay?x=1"
    assert attrs["network.peer.address"] == "127.0.0.1"
    assert attrs["network.peer.port"] == 15007
    assert attrs["http.request.resend_count"] == 1
    assert attrs["sidecar.upstream.instance"] == "payment-service-1"
    assert attrs["sidecar.request_id"] == "req-1"
    assert "error.type" not in attrs
    assert span.status.status_code is StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "checkout"


def test_server_span_has_path_query_and_the_callers_identity() -> None:
    t, exporter = tracer()
    t.request("inbound", stats(method="GET", host="payment-service:8080", status=503, tag=local_app(),
                               upstream="127.0.0.1:3000"), "payment-service", WALL, caller_conn())
    [span] = finished(t, exporter)
    assert span.kind is SpanKind.SERVER
    attrs = dict(span.attributes)
    assert (attrs["url.path"], attrs["url.query"], attrs["url.scheme"]) == ("/pay", "x=1", "https")
    assert (attrs["server.address"], attrs["server.port"]) == ("payment-service", 8080)
    assert attrs["client.address"] == attrs["network.peer.address"] == "127.0.0.9"
    assert attrs["sidecar.caller.spiffe_id"] == "spiffe://mesh.local/service/checkout"
    assert attrs["error.type"] == "503"
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize(("direction", "status", "error", "expected"), [
    ("outbound", 404, None, "404"),             # client spans: 4xx are errors
    ("inbound", 404, None, None),               # server spans: only 5xx
    ("outbound", 503, "connect-failure", "connect-failure"),
    ("outbound", 0, None, "_OTHER"),
    ("inbound", 200, None, None),
])
def test_error_type(direction: str, status: int, error: str | None, expected: str | None) -> None:
    t, exporter = tracer()
    t.request(direction, stats(status=status, error=error), "payment-service", WALL)
    [span] = finished(t, exporter)
    assert span.attributes.get("error.type") == expected


def test_unknown_method_is_other() -> None:
    t, exporter = tracer()
    t.request("outbound", stats(method="PURGE"), "payment-service", WALL)
    [span] = finished(t, exporter)
    assert span.name == "HTTP"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"


def test_sampler_ratio_is_a_function_of_the_trace_id() -> None:
    ids = IdSource(random.Random(7))
    traces = [ids.trace_id() for _ in range(4000)]
    half = Sampler(0.5)
    kept = [t for t in traces if half.by_trace_id(t)]
    assert 1800 < len(kept) < 2200
    assert all(Sampler(1.0).by_trace_id(t) for t in traces)
    assert not any(Sampler(0.0).by_trace_id(t) for t in traces)
    assert [half.by_trace_id(t) for t in traces] == [Sampler(0.5).by_trace_id(t) for t in traces]  # every hop agrees


def test_parent_flag_wins_when_known() -> None:
    s = Sampler(0.0)
    assert s.sampled(TRACE, CALLER_SPAN, 1)
    assert not Sampler(1.0).sampled(TRACE, CALLER_SPAN, 0)
    assert not s.sampled(TRACE, CALLER_SPAN, None)     # unknown flag: the ratio decides
    assert not s.sampled(TRACE, None, 1)               # a root: the ratio decides


def test_unsampled_requests_are_counted_not_exported() -> None:
    t, exporter = tracer(ratio=0.0)
    t.request("outbound", stats(), "payment-service", WALL)
    t.request("outbound", stats(trace_flags=1), "payment-service", WALL)
    spans = finished(t, exporter)
    assert len(spans) == 1 and t.unsampled == 1 and t.spans == 1


def test_message_spans_continue_the_publishers_trace() -> None:
    t, exporter = tracer()
    ids = IdSource(random.Random(1))
    publish = message_trace({"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}, ids)
    deliver = publish.child(ids)
    t.message("publish", "orders", publish, 10.0, 10.002, WALL, message_id="m1")
    t.message("process", "orders", deliver, 10.5, 10.6, WALL, error="timeout")
    spans = {s.name: s for s in finished(t, exporter)}
    p, d = spans["publish orders"], spans["process orders"]
    assert p.kind is SpanKind.PRODUCER and d.kind is SpanKind.CONSUMER
    assert p.context.trace_id == d.context.trace_id == int(TRACE, 16)
    assert p.parent is not None and f"{p.parent.span_id:016x}" == CALLER_SPAN
    assert d.parent is not None and d.parent.span_id == p.context.span_id
    assert p.attributes["messaging.destination.name"] == "orders"
    assert p.attributes["messaging.message.id"] == "m1"
    assert d.status.status_code is StatusCode.ERROR


def test_console_exporter_writes_json_spans() -> None:
    out = io.StringIO()
    exporter = span_exporter(TracingConfig("console"), {"service.name": "x"}, out=out)
    assert exporter is not None
    t = Tracer(TracingConfig("console"), exporter, schedule_delay_ms=10)
    t.request("outbound", stats(), "payment-service", WALL)
    t.shutdown()
    span = json.loads(out.getvalue())
    assert span["context"]["trace_id"] == "0x" + TRACE
    assert span["kind"] == "SpanKind.CLIENT"


def test_no_exporter_for_none() -> None:
    assert span_exporter(TracingConfig("none"), {}) is None
    assert Tracer.from_config(TracingConfig("none"), {}) is None
