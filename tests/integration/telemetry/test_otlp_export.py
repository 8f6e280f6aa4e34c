"""The OTLP/HTTP export to a real receiver: the protobuf it receives decoded field by field and compared with what
the OpenTelemetry SDK's exporter posts for the same spans; the sample ratio; a collector that refuses or hangs
never holds up the request path."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.clock import SYSTEM_CLOCK
from sidecar.config.model import Config, NodeConfig, ServiceConfig, TelemetryConfig, TracingConfig
from sidecar.proxy.tracecontext import IdSource
from sidecar.telemetry.export import OtlpHttpExporter
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.propagation import message_trace
from sidecar.telemetry.sampling import Sampler
from sidecar.telemetry.sdkexport import SdkExporter
from sidecar.telemetry.spans import SpanRecord, message_span, request_span
from sidecar.telemetry.tracing import Tracer
from tests.harness import wait_for
from tests.integration.telemetry.conftest import OtlpReceiver
from tests.unit.telemetry.stats import CALLER_SPAN, HOP_SPAN, TRACE, caller_conn, local_app, stats

RESOURCE = {"service.name": "checkout", "service.instance.id": "node-a", "service.namespace": "prod",
            "sidecar.node": "node-a"}
WALL = 1_700_000_000.0
SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER = 2, 3, 4
HAS_IS_REMOTE, IS_REMOTE = 0x100, 0x200


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def sample_spans() -> list[SpanRecord]:
    ids = IdSource(random.Random(3))
    publish = message_trace({"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}, ids)
    spans = [
        request_span("outbound", stats(attempts=2), "payment-service", WALL),
        request_span("inbound", stats(status=503, tag=local_app(), host="payment-service:8080", parent=None),
                     "payment-service", WALL, caller_conn()),
        request_span("outbound", stats(method="PURGE", status=0, error=None, upstream=None), "pay", WALL),
        message_span("publish", "orders", publish, 10.0, 10.002, WALL, message_id="m1",
                     attributes={"sidecar.flag": True, "sidecar.ratio": 0.5, "sidecar.count": -3}),
        message_span("process", "orders", publish.child(ids), 10.5, 10.6, WALL, error="timeout"),
    ]
    return [s for s in spans if s is not None]


def decode(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def test_the_export_is_what_the_sdk_exporter_sends(receiver: OtlpReceiver) -> None:
    spans = sample_spans()
    # before: the OpenTelemetry SDK's own OTLP/HTTP exporter posting the same spans as SDK ReadableSpans
    sdk = SdkExporter(InMemorySpanExporter(), RESOURCE)
    before_exporter = OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces", timeout=5)
    assert before_exporter.export([sdk.readable(s) for s in spans]) is SpanExportResult.SUCCESS
    # after: the batch encoded straight to protobuf
    OtlpHttpExporter(f"{receiver.url}/v1/traces", RESOURCE, timeout=5).export(spans)
    before, after = (decode(body) for body in receiver.bodies)
    assert len(after.resource_spans) == 1 and len(after.resource_spans[0].scope_spans) == 1
    assert after.resource_spans[0].scope_spans == before.resource_spans[0].scope_spans  # every span field
    scope = after.resource_spans[0].scope_spans[0].scope
    assert (scope.name, scope.version) == ("sidecar", "0.1.0")

    def resource(r: ExportTraceServiceRequest) -> dict[str, str]:
        return {a.key: a.value.string_value for a in r.resource_spans[0].resource.attributes}

    # the resource: the sidecar's attributes and the SDK description; only the SDK's name and version differ
    assert resource(after) == {**resource(before), "telemetry.sdk.name": "sidecar", "telemetry.sdk.version": "0.1.0"}
    assert resource(after)["service.name"] == "checkout" and resource(after)["telemetry.sdk.language"] == "python"

    # and field by field, as a collector reads them
    client, server, other, produce, consume = after.resource_spans[0].scope_spans[0].spans
    assert (client.trace_id.hex(), client.span_id.hex(), client.parent_span_id.hex()) == (TRACE, HOP_SPAN, CALLER_SPAN)
    assert client.kind == SPAN_KIND_CLIENT and client.name == "POST"
    assert client.flags == HAS_IS_REMOTE | IS_REMOTE
    assert client.start_time_unix_nano == int((100.0 + WALL) * 1e9)
    attrs = {a.key: a.value for a in client.attributes}
    assert attrs["url.full"].string_value == "http://payment-service/pay?x=1"
    assert attrs["http.request.resend_count"].int_value == 1
    assert attrs["network.peer.port"].int_value == 15007
    assert client.status.code == 0 and client.status.message == ""
    assert server.kind == SPAN_KIND_SERVER and server.parent_span_id == b"" and server.flags == HAS_IS_REMOTE
    assert (server.status.code, server.status.message) == (2, "503")
    assert {a.key: a.value.string_value for a in server.attributes}["sidecar.caller.spiffe_id"] == \
        "spiffe://mesh.local/service/checkout"
    assert other.name == "HTTP" and {a.key: a.value.string_value for a in other.attributes}["error.type"] == "_OTHER"
    assert produce.kind == SPAN_KIND_PRODUCER and produce.name == "publish orders"
    values = {a.key: a.value for a in produce.attributes}
    assert values["sidecar.flag"].bool_value is True and values["sidecar.ratio"].double_value == 0.5
    assert values["sidecar.count"].int_value == -3
    assert consume.parent_span_id == produce.span_id and consume.status.message == "timeout"


def test_the_tracer_exports_sampled_requests_in_batches(receiver: OtlpReceiver) -> None:
    ids = IdSource(random.Random(11))
    tracer = Tracer(TracingConfig("otlp", receiver.url, 0.25), OtlpHttpExporter(f"{receiver.url}/v1/traces",
                                                                                 RESOURCE), schedule_delay_ms=50)
    traces = [ids.trace_id() for _ in range(800)]
    for trace_id in traces:
        tracer.request("outbound", stats(trace_id=trace_id, parent=None), "payment-service", WALL)
    assert tracer.flush(10_000)
    expected = {t for t in traces if Sampler(0.25).by_trace_id(t)}
    assert 140 < len(expected) < 260                           # the ratio, over 800 random trace ids
    assert {s.trace_id for s in receiver.spans} == expected    # exactly the sampled ones, each once
    assert len(receiver.spans) == len(expected) == tracer.spans and tracer.unsampled == 800 - len(expected)
    assert receiver.requests < len(expected)                   # in batches, not one post per span
    tracer.shutdown()


@pytest.fixture
def hung_collector() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never reads or answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"   # closed again: connecting is refused


@pytest.mark.parametrize("collector", ["refused", "hung"])
def test_a_collector_that_refuses_or_hangs_never_blocks_requests(collector: str, hung_collector: str) -> None:
    url = hung_collector if collector == "hung" else refused_url()
    config = Config(node=NodeConfig(name="node-a"), services=[ServiceConfig(name="checkout", port=3000)],
                    telemetry=TelemetryConfig(tracing=TracingConfig("otlp", url, 1.0)))
    tracer = Tracer(config.telemetry.tracing, OtlpHttpExporter(f"{url}/v1/traces", RESOURCE, timeout=2.0),
                    schedule_delay_ms=10, max_queue_size=1000, max_batch=100)
    telemetry = Telemetry(config, SYSTEM_CLOCK, tracer=tracer, access_log=False)
    ids = IdSource(random.Random(5))
    telemetry.on_request("outbound", stats(trace_id=ids.trace_id(), parent=None))
    wait_for(lambda: tracer.batcher.pending() == 0, 10, what="the first batch taken by the exporter")
    slowest = 0.0
    began_all = time.perf_counter()
    for _ in range(5000):
        began = time.perf_counter()
        telemetry.on_request("outbound", stats(trace_id=ids.trace_id(), parent=None))
        slowest = max(slowest, time.perf_counter() - began)
    spent = time.perf_counter() - began_all
    # no request waited for the collector: one that did would take the exporter's 1 s back-off or its 2 s timeout
    # (the bound leaves room for a full collection of this test process's heap, after thousands of other tests)
    assert slowest < 0.5 and spent < 5.0
    assert tracer.batcher.pending() <= 1000         # bounded, the rest dropped and counted
    assert tracer.batcher.dropped >= 5000 - 1000 - 100 * 3
    began = time.perf_counter()
    tracer.shutdown(timeout=3.0)
    assert time.perf_counter() - began < 4.0       # stopping is bounded too
    assert tracer.batcher.failed >= 1


def test_repeated_attributes_encode_as_the_first_time_and_bools_stay_bools() -> None:
    """Encoded attribute fields are kept per key and value: an int 1 and True under one key stay apart, ids that
    never repeat are encoded each time, and a cached field decodes to the value it was made for."""
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    from sidecar.telemetry.otlp import attribute_field

    def decoded(field: bytes) -> KeyValue:
        kv = KeyValue()
        kv.ParseFromString(field[2:] if field[1] < 0x80 else field[3:])   # key byte, one- or two-byte length
        return kv

    for _ in range(2):
        assert decoded(attribute_field("x", 1)).value.int_value == 1
        assert decoded(attribute_field("x", True)).value.bool_value is True
        assert decoded(attribute_field("x", "1")).value.string_value == "1"
        assert decoded(attribute_field("server.port", 15006)).value.int_value == 15006
    for i in range(5000):
        assert decoded(attribute_field("sidecar.request_id", f"req-{i}")).value.string_value == f"req-{i}"
