"""Spans, one per hop and per message operation, exported in batches off the request path.

Per request the request path pays a sampling decision (no allocation when the request is not sampled) and, when
it is, one queue append: the finished request's :class:`RequestStats` (the record the engine already made) goes to
a :class:`~sidecar.telemetry.batcher.Batcher`, whose worker thread turns the batch into spans for the exporter:

- ``otlp``: :class:`~sidecar.telemetry.export.OtlpHttpExporter`; each hop's span is written straight from its
  record to OTLP protobuf (:func:`~sidecar.telemetry.otlphops.hop_span_bytes`, no span object in between) and the
  batch posted to ``ENDPOINT/v1/traces``; no OpenTelemetry SDK is loaded;
- ``console``: :class:`~sidecar.telemetry.sdkexport.SdkExporter` around the SDK's ``ConsoleSpanExporter`` (JSON on
  stdout); the SDK is imported only then.

With ``exporter: none`` no :class:`Tracer` exists and this module is never imported. A collector that is slow or
down delays only the worker: the queue is bounded (``max_queue_size``), spans beyond it are dropped and counted.

Sampling (:class:`~sidecar.telemetry.sampling.Sampler`) is parent-based with a trace-id ratio at the root: a
request that arrives with a ``traceparent`` follows its sampled flag (when the engine reports it,
``stats.trace_flags``), and a new trace is sampled when its trace id's low 64 bits fall under ``sample_ratio`` *
2^64 (OpenTelemetry's ``TraceIdRatioBased``). The decision depends only on the trace id, so every sidecar of a mesh
with the same ratio keeps or drops the same traces, even where the flag is not known.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol

from sidecar.config.model import TracingConfig
from sidecar.proxy.target import RequestStats
from sidecar.telemetry.batcher import Batcher
from sidecar.telemetry.otlp import span_bytes
from sidecar.telemetry.otlphops import hop_span_bytes
from sidecar.telemetry.propagation import MessageTrace
from sidecar.telemetry.sampling import Sampler
from sidecar.telemetry.spans import SpanRecord, message_span, request_span

log = logging.getLogger("sidecar.telemetry")

# a sampled request as the request path queues it: direction, stats, service, wall offset, peer
Hop = tuple[str, RequestStats, str, float, Any]


class SpanExporter(Protocol):
    def export(self, spans: list[SpanRecord]) -> None: ...
    def shutdown(self) -> None: ...


def span_exporter(config: TracingConfig, resource: Mapping[str, str],
                  out: IO[str] | None = None) -> SpanExporter | None:
    """The exporter the config names, or None for ``none``."""
    if config.exporter == "none":
        return None
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # only when used

        from sidecar.telemetry.sdkexport import SdkExporter
        return SdkExporter(ConsoleSpanExporter(out=out or sys.stdout), resource)
    from sidecar.telemetry.export import OtlpHttpExporter
    base = (config.endpoint or "http://127.0.0.1:4318").rstrip("/")
    return OtlpHttpExporter(f"{base}/v1/traces", resource, timeout=10.0)


class Tracer:
    """Samples, queues and exports spans; see the module's doc. ``resource`` names this sidecar
    (``service.name`` is the local service, ``service.instance.id`` the node)."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter, *, schedule_delay_ms: float = 500.0,
                 max_queue_size: int = 8192, max_batch: int = 512) -> None:
        self.sampler = Sampler(config.sample_ratio)
        self.exporter = exporter
        self.batcher: Batcher[Hop | SpanRecord] = Batcher(self._export, name="trace-export",
                                                          max_queue=max_queue_size, max_batch=max_batch,
                                                          interval=schedule_delay_ms / 1000.0)
        self.spans = 0          # spans queued for export
        self.unsampled = 0      # requests left out by sampling
        # an exporter that takes spans as OTLP ``Span`` messages gets each hop's written from its record
        self._export_wire: Callable[[list[bytes]], None] | None = getattr(exporter, "export_wire", None)

    @classmethod
    def from_config(cls, config: TracingConfig, resource: Mapping[str, str]) -> Tracer | None:
        exporter = span_exporter(config, resource)
        return None if exporter is None else cls(config, exporter)

    def request(self, direction: str, stats: RequestStats, service: str, wall_offset: float,
                peer: Any = None) -> None:
        """One hop's span (see :func:`~sidecar.telemetry.spans.request_span`), if sampled."""
        trace_id = stats.trace_id
        if trace_id is None or stats.span_id is None:
            return
        if not self.sampler.sampled(trace_id, stats.parent_span_id, stats.trace_flags):
            self.unsampled += 1
            return
        if self.batcher.put((direction, stats, service, wall_offset, peer)):
            self.spans += 1

    def message(self, operation: str, destination: str, trace: MessageTrace, started: float, ended: float,
                wall_offset: float, *, message_id: str | None = None, error: str | None = None,
                attributes: Mapping[str, Any] | None = None) -> None:
        """A messaging span (see :func:`~sidecar.telemetry.spans.message_span`), if sampled."""
        if not self.sampler.sampled(trace.trace_id, trace.parent_span_id, trace.flags):
            self.unsampled += 1
            return
        span = message_span(operation, destination, trace, started, ended, wall_offset, message_id, error,
                            attributes)
        if self.batcher.put(span):
            self.spans += 1

    def _export(self, items: list[Hop | SpanRecord]) -> None:
        export_wire = self._export_wire
        if export_wire is not None:
            # the whole batch in one hold of the GIL (compiled code never lets it go on its own): handing it to the
            # event loop every 32 spans cost both threads a context switch each time and left the p99 at c=1 and
            # c=50 where it was (docs/performance.md, the telemetry batches under load)
            encoded = []
            for item in items:
                data = span_bytes(item) if isinstance(item, SpanRecord) else hop_span_bytes(*item)
                if data is not None:
                    encoded.append(data)
            if encoded:
                export_wire(encoded)
            return
        spans = []
        for item in items:
            span = item if isinstance(item, SpanRecord) else request_span(*item)
            if span is not None:
                spans.append(span)
        if spans:
            self.exporter.export(spans)

    def status(self) -> dict[str, Any]:
        return {"spans": self.spans, "unsampled": self.unsampled, "ratio": self.sampler.ratio,
                "dropped": self.batcher.dropped, "exportFailed": self.batcher.failed,
                "pending": self.batcher.pending()}

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.batcher.flush(timeout_ms / 1000.0)

    def shutdown(self, timeout: float = 15.0) -> None:
        """Export what is queued (bounded by ``timeout``), then stop the worker and the exporter."""
        if not self.batcher.close(timeout):
            log.warning("trace exporter did not finish within %.0fs; %d spans left unsent", timeout,
                        self.batcher.pending())
        try:
            self.exporter.shutdown()
        except Exception as e:  # an unreachable collector must not fail the sidecar's stop
            log.warning("trace exporter did not shut down cleanly: %s", e)


__all__ = ["MessageTrace", "Sampler", "Tracer", "span_exporter"]
