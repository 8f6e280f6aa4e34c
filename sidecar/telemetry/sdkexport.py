"""Span batches through an OpenTelemetry SDK exporter (``exporter: console``, and any SDK ``SpanExporter`` a test
hands in): each :class:`~sidecar.telemetry.spans.SpanRecord` becomes the SDK's ``ReadableSpan``.

Imported only when such an exporter is configured: the SDK is what a sidecar with ``exporter: none`` or
``otlp`` never loads.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from sidecar.telemetry.export import SCOPE_NAME, SCOPE_VERSION
from sidecar.telemetry.spans import SpanRecord

_SCOPE = InstrumentationScope(SCOPE_NAME, SCOPE_VERSION)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_KINDS = {1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT, 4: SpanKind.PRODUCER, 5: SpanKind.CONSUMER}


class SdkExporter:
    """Hands batches to an SDK ``SpanExporter`` (console JSON, in-memory...)."""

    def __init__(self, exporter: SpanExporter, resource: Mapping[str, str]) -> None:
        self.exporter = exporter
        self.resource = Resource.create(dict(resource))

    def readable(self, span: SpanRecord) -> ReadableSpan:
        trace_id = int(span.trace_id, 16)
        parent = span.parent_span_id
        return ReadableSpan(
            name=span.name,
            context=SpanContext(trace_id, int(span.span_id, 16), False, _SAMPLED),
            parent=None if parent is None else SpanContext(trace_id, int(parent, 16), True, _SAMPLED),
            resource=self.resource, attributes=span.attribute_map(), kind=_KINDS[span.kind],
            status=_UNSET if span.error is None else Status(StatusCode.ERROR, span.error),
            start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=_SCOPE,
        )

    def export(self, spans: list[SpanRecord]) -> None:
        self.exporter.export([self.readable(span) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()
