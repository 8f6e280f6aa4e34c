"""Observability: performance records (``/v1/metrics``), Prometheus exposition (``/metrics``), OpenTelemetry
spans per hop, the access log and event-loop lag.

One file per concern: ``records`` (the ring of ServicePerformanceMetric, filters, percentiles; pure),
``requests`` (per-request counters and histogram arrays), ``prometheus`` (collectors read at scrape time),
``tracing`` (spans from RequestStats, sampler, exporters), ``propagation`` (trace context for messages),
``access`` (the access log), ``looplag``, ``hub`` (:class:`Telemetry`, what the process wires), ``routes``.
"""

from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.prometheus import Sources, build_registry
from sidecar.telemetry.propagation import MessageTrace, message_trace
from sidecar.telemetry.records import Record, RecordStore
from sidecar.telemetry.routes import telemetry_routes

__all__ = ["MessageTrace", "Record", "RecordStore", "Sources", "Telemetry", "build_registry", "message_trace",
           "telemetry_routes"]
