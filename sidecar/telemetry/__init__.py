"""Observability: performance records (``/v1/metrics``), Prometheus exposition (``/metrics``), OpenTelemetry
spans per hop, the access log and event-loop lag.

One file per concern: ``records`` (the ring of ServicePerformanceMetric, filters, percentiles; pure),
``requests`` (per-request counters and histogram arrays), ``prometheus`` (collectors read at scrape time),
``tracing`` (sampling and queueing spans), ``spans`` (a span's fields from RequestStats or a message; pure),
``otlp`` (a batch of spans as OTLP protobuf; pure), ``export`` (OTLP/HTTP posting), ``sdkexport`` (the SDK's
exporters, for ``console``), ``sampling``, ``propagation`` (trace context for messages), ``access`` and
``accessline`` (the access log and its lines), ``batcher`` (the bounded queue and worker thread both use),
``looplag``, ``hub`` (:class:`Telemetry`, what the process wires), ``routes``.
"""

from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.prometheus import Sources, build_registry
from sidecar.telemetry.propagation import MessageTrace, message_trace
from sidecar.telemetry.records import Record, RecordStore
from sidecar.telemetry.routes import telemetry_routes

__all__ = ["MessageTrace", "Record", "RecordStore", "Sources", "Telemetry", "build_registry", "message_trace",
           "telemetry_routes"]
