"""OpenTelemetry spans, one per hop, built after the request ended from its :class:`RequestStats`.

The engine already put this hop's span id in the ``traceparent`` it sent on (``stats.span_id``) and kept the
caller's as ``stats.parent_span_id``; the span built here uses exactly those ids, so the exported trace matches
the headers every app saw:

    app A ──traceparent(A)──▶ outbound sidecar: CLIENT span S1, parent A ──traceparent(S1)──▶
        inbound sidecar: SERVER span S2, parent S1 ──traceparent(S2)──▶ app B

Attributes follow the OpenTelemetry HTTP semantic conventions (``http.request.method``, ``url.full`` /
``url.path``, ``server.address``, ``network.peer.address``, ``http.response.status_code``, ``error.type``...).
Spans go to a batch span processor (``otlp``: HTTP/protobuf to ``ENDPOINT/v1/traces``; ``console``: JSON on
stdout): the request path pays for building one ``ReadableSpan`` and a queue append, the export runs on the
processor's thread. With ``exporter: none`` no :class:`Tracer` exists, this module (and with it the OpenTelemetry
SDK) is never imported, and nothing is paid.

Sampling (:class:`~sidecar.telemetry.sampling.Sampler`) is parent-based with a trace-id ratio at the root: a
request that arrives with a ``traceparent`` follows its sampled flag (when the engine reports it,
``stats.trace_flags``), and a new trace is sampled when its trace id's low 64 bits fall under ``sample_ratio`` *
2^64 (OpenTelemetry's ``TraceIdRatioBased``). The decision depends only on the trace id, so every sidecar of a mesh
with the same ratio keeps or drops the same traces, even where the flag is not known.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import IO, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from sidecar.config.model import TracingConfig
from sidecar.proxy.target import RequestStats
from sidecar.telemetry.propagation import MessageTrace
from sidecar.telemetry.requests import METHODS
from sidecar.telemetry.sampling import Sampler

log = logging.getLogger("sidecar.telemetry")

_SCOPE = InstrumentationScope("sidecar", "0.1.0")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


def span_exporter(config: TracingConfig, out: IO[str] | None = None) -> SpanExporter | None:
    """The exporter the config names, or None for ``none``."""
    if config.exporter == "none":
        return None
    if config.exporter == "console":
        return ConsoleSpanExporter(out=out or sys.stdout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # only when used
    base = (config.endpoint or "http://127.0.0.1:4318").rstrip("/")
    return OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=10)


def _split_host(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1:]
        return host[1:end], int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


def _method_attributes(method: str, attributes: dict[str, Any]) -> str:
    if method in METHODS:
        attributes["http.request.method"] = method
        return method
    attributes["http.request.method"] = "_OTHER"
    attributes["http.request.method_original"] = method
    return "HTTP"


class Tracer:
    """Builds and hands spans to the processor. ``resource`` names this sidecar (``service.name`` is the local
    service, ``service.instance.id`` the node)."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter, resource: Mapping[str, str], *,
                 schedule_delay_ms: float = 500.0, max_queue_size: int = 8192) -> None:
        self.sampler = Sampler(config.sample_ratio)
        self.resource = Resource.create(dict(resource))
        self.processor = BatchSpanProcessor(exporter, max_queue_size=max_queue_size,
                                            schedule_delay_millis=schedule_delay_ms)
        self.spans = 0          # spans handed to the processor
        self.unsampled = 0      # requests left out by sampling

    @classmethod
    def from_config(cls, config: TracingConfig, resource: Mapping[str, str]) -> Tracer | None:
        exporter = span_exporter(config)
        return None if exporter is None else cls(config, exporter, resource)

    def request(self, direction: str, stats: RequestStats, service: str, wall_offset: float,
                peer: Any = None) -> None:
        """One hop's span: CLIENT for ``outbound`` (this sidecar called ``service``), SERVER for ``inbound``
        (a peer called our ``service``). ``peer`` is the caller's ``ConnectionInfo`` when known (inbound)."""
        trace_id = stats.trace_id
        span_id = stats.span_id
        if trace_id is None or span_id is None:
            return
        parent_id = stats.parent_span_id
        if not self.sampler.sampled(trace_id, parent_id, getattr(stats, "trace_flags", None)):
            self.unsampled += 1
            return
        attributes: dict[str, Any] = {"network.protocol.version": "1.1"}
        name = _method_attributes(stats.method, attributes)
        host, port = _split_host(stats.host)
        status = stats.status
        error = stats.error
        raw_target = stats.target.decode("latin-1")
        if direction == "outbound":
            kind = SpanKind.CLIENT
            attributes["server.address"] = host
            attributes["server.port"] = port or 80
            attributes["url.full"] = raw_target if not raw_target.startswith("/") else f"http://{stats.host}{raw_target}"
            attributes["peer.service"] = service
            if stats.upstream:
                peer_host, peer_port = _split_host(stats.upstream)
                attributes["network.peer.address"] = peer_host
                if peer_port is not None:
                    attributes["network.peer.port"] = peer_port
            endpoint = stats.tag
            instance = getattr(endpoint, "instance", None)
            if instance is not None:
                attributes["sidecar.upstream.instance"] = instance
                attributes["sidecar.upstream.node"] = getattr(endpoint, "node", "")
            if stats.attempts > 1:
                attributes["http.request.resend_count"] = stats.attempts - 1
            error_type = error or (str(status) if status >= 400 else None)   # client spans: 4xx are errors
        else:
            kind = SpanKind.SERVER
            path, _, query = raw_target.partition("?")
            attributes["url.scheme"] = "https"
            attributes["url.path"] = path
            if query:
                attributes["url.query"] = query
            attributes["server.address"] = host
            if port is not None:
                attributes["server.port"] = port
            if peer is not None:
                peername = getattr(peer, "peername", None)
                if isinstance(peername, tuple) and len(peername) >= 2:
                    attributes["client.address"] = attributes["network.peer.address"] = str(peername[0])
                    attributes["client.port"] = attributes["network.peer.port"] = int(peername[1])
                caller = getattr(peer, "data", {}).get("caller")
                spiffe_id = getattr(caller, "spiffe_id", None)
                if spiffe_id is not None:
                    attributes["sidecar.caller.spiffe_id"] = spiffe_id
                    attributes["sidecar.caller.service"] = getattr(caller, "service", "")
            error_type = error or (str(status) if status >= 500 else None)   # server spans: only 5xx
        if status:
            attributes["http.response.status_code"] = status
        if stats.request_id is not None:
            attributes["sidecar.request_id"] = stats.request_id
        if error_type is None and status == 0:
            error_type = "_OTHER"    # the client got no status and the engine named no cause
        if error_type is not None:
            attributes["error.type"] = error_type
        span = ReadableSpan(
            name=name,
            context=SpanContext(int(trace_id, 16), int(span_id, 16), False, _SAMPLED),
            parent=None if parent_id is None else SpanContext(int(trace_id, 16), int(parent_id, 16), True, _SAMPLED),
            resource=self.resource,
            attributes=attributes,
            kind=kind,
            status=_UNSET if error_type is None else Status(StatusCode.ERROR, error_type),
            start_time=int((stats.started + wall_offset) * 1e9),
            end_time=int((stats.ended + wall_offset) * 1e9),
            instrumentation_scope=_SCOPE,
        )
        self.spans += 1
        self.processor.on_end(span)

    def message(self, operation: str, destination: str, trace: MessageTrace, started: float, ended: float,
                wall_offset: float, *, message_id: str | None = None, error: str | None = None,
                attributes: Mapping[str, Any] | None = None) -> None:
        """A messaging span (PRODUCER for ``publish``/``send``, CONSUMER for ``process``/``receive``), following
        the OpenTelemetry messaging conventions; ``trace`` from :func:`sidecar.telemetry.propagation.message_trace`."""
        if not self.sampler.sampled(trace.trace_id, trace.parent_span_id, trace.flags):
            self.unsampled += 1
            return
        kind = SpanKind.PRODUCER if operation in ("publish", "send", "create") else SpanKind.CONSUMER
        attrs: dict[str, Any] = {"messaging.system": "sidecar", "messaging.operation.name": operation,
                                 "messaging.operation.type": operation if operation in ("send", "receive", "process",
                                                                                        "create") else "send",
                                 "messaging.destination.name": destination}
        if message_id is not None:
            attrs["messaging.message.id"] = message_id
        if error is not None:
            attrs["error.type"] = error
        if attributes:
            attrs.update(attributes)
        trace_id = int(trace.trace_id, 16)
        span = ReadableSpan(
            name=f"{operation} {destination}",
            context=SpanContext(trace_id, int(trace.span_id, 16), False, _SAMPLED),
            parent=None if trace.parent_span_id is None else SpanContext(trace_id, int(trace.parent_span_id, 16),
                                                                          True, _SAMPLED),
            resource=self.resource, attributes=attrs, kind=kind,
            status=_UNSET if error is None else Status(StatusCode.ERROR, error),
            start_time=int((started + wall_offset) * 1e9), end_time=int((ended + wall_offset) * 1e9),
            instrumentation_scope=_SCOPE,
        )
        self.spans += 1
        self.processor.on_end(span)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return bool(self.processor.force_flush(timeout_ms))

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout), then stop the processor's thread."""
        try:
            self.processor.shutdown()  # type: ignore[no-untyped-call]
        except Exception as e:  # an unreachable collector must not fail the sidecar's stop
            log.warning("trace exporter did not shut down cleanly: %s", e)


__all__ = ["MessageTrace", "Sampler", "Tracer", "span_exporter"]
