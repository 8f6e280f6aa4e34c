"""What a span says, built from what the request path already keeps: a :class:`SpanRecord` per hop or message.

Pure and free of the OpenTelemetry SDK: the OTLP encoder (``telemetry.otlp``) writes these straight to protobuf,
and the console exporter turns them into the SDK's ``ReadableSpan`` (``telemetry.sdkexport``). Compiled with mypyc
(setup.py's NATIVE): the exporter's thread builds one per sampled request.

The engine already put this hop's span id in the ``traceparent`` it sent on (``stats.span_id``) and kept the
caller's as ``stats.parent_span_id``; the span uses exactly those ids, so the exported trace matches the headers
every app saw:

    app A ──traceparent(A)──▶ outbound sidecar: CLIENT span S1, parent A ──traceparent(S1)──▶
        inbound sidecar: SERVER span S2, parent S1 ──traceparent(S2)──▶ app B

Attributes follow the OpenTelemetry HTTP semantic conventions (``http.request.method``, ``url.full`` /
``url.path``, ``server.address``, ``network.peer.address``, ``http.response.status_code``, ``error.type``...) and
the messaging conventions for messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sidecar.proxy.target import RequestStats
from sidecar.telemetry.propagation import MessageTrace
from sidecar.telemetry.requests import METHODS

# OTLP's Span.SpanKind numbers (opentelemetry/proto/trace/v1/trace.proto)
KIND_SERVER: Final = 2
KIND_CLIENT: Final = 3
KIND_PRODUCER: Final = 4
KIND_CONSUMER: Final = 5

# attributes as one flat list, key, value, key, value... (a value is a str, bool, int or float): one container
# per span instead of one tuple per attribute, so that exporting thousands of spans a second adds little work for
# the garbage collector (which scans every container the process holds)
Attributes = list[Any]


class SpanRecord:
    """One finished span. Ids are lower-case hex as in ``traceparent``; times are epoch nanoseconds; ``error`` is
    the status description when the status is ERROR (None: UNSET). ``attributes`` is flat (key, value, ...) and
    keeps their order."""

    __slots__ = ("attributes", "end_ns", "error", "kind", "name", "parent_span_id", "span_id", "start_ns",
                 "trace_id")

    def __init__(self, trace_id: str, span_id: str, parent_span_id: str | None, name: str, kind: int,
                 start_ns: int, end_ns: int, attributes: Attributes, error: str | None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = attributes
        self.error = error

    def attribute_map(self) -> dict[str, Any]:
        attributes = self.attributes
        return {attributes[i]: attributes[i + 1] for i in range(0, len(attributes), 2)}


def _add(attributes: Attributes, key: str, value: Any) -> None:
    attributes.append(key)
    attributes.append(value)


def split_host(host: str) -> tuple[str, int | None]:
    """``name[:port]`` or ``[v6][:port]`` into the name and the port if one is given."""
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1:]
        return host[1:end], int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


def _nanos(loop_time: float, wall_offset: float) -> int:
    return int((loop_time + wall_offset) * 1e9)


def request_span(direction: str, stats: RequestStats, service: str, wall_offset: float,
                 peer: Any = None) -> SpanRecord | None:
    """One hop's span: CLIENT for ``outbound`` (this sidecar called ``service``), SERVER for ``inbound`` (a peer
    called our ``service``); ``peer`` is the caller's ``ConnectionInfo`` when known (inbound). None when the
    request carried no trace ids."""
    trace_id = stats.trace_id
    span_id = stats.span_id
    if trace_id is None or span_id is None:
        return None
    attributes: Attributes = ["network.protocol.version", "1.1"]
    method = stats.method
    if method in METHODS:
        _add(attributes, "http.request.method", method)
        name = method
    else:
        _add(attributes, "http.request.method", "_OTHER")
        _add(attributes, "http.request.method_original", method)
        name = "HTTP"
    host, port = split_host(stats.host)
    status = stats.status
    error = stats.error
    raw_target = stats.target.decode("latin-1")
    error_type: str | None
    if direction == "outbound":
        kind = KIND_CLIENT
        _add(attributes, "server.address", host)
        _add(attributes, "server.port", port or 80)
        _add(attributes, "url.full", raw_target if not raw_target.startswith("/") else f"http://{stats.host}{raw_target}")
        _add(attributes, "peer.service", service)
        if stats.upstream:
            peer_host, peer_port = split_host(stats.upstream)
            _add(attributes, "network.peer.address", peer_host)
            if peer_port is not None:
                _add(attributes, "network.peer.port", peer_port)
        instance = getattr(stats.tag, "instance", None)
        if instance is not None:
            _add(attributes, "sidecar.upstream.instance", instance)
            _add(attributes, "sidecar.upstream.node", getattr(stats.tag, "node", ""))
        if stats.attempts > 1:
            _add(attributes, "http.request.resend_count", stats.attempts - 1)
        error_type = error or (str(status) if status >= 400 else None)   # client spans: 4xx are errors
    else:
        kind = KIND_SERVER
        path, _, query = raw_target.partition("?")
        _add(attributes, "url.scheme", "https")
        _add(attributes, "url.path", path)
        if query:
            _add(attributes, "url.query", query)
        _add(attributes, "server.address", host)
        if port is not None:
            _add(attributes, "server.port", port)
        if peer is not None:
            peername = getattr(peer, "peername", None)
            if isinstance(peername, tuple) and len(peername) >= 2:
                address = str(peername[0])
                client_port = int(peername[1])
                _add(attributes, "client.address", address)
                _add(attributes, "network.peer.address", address)
                _add(attributes, "client.port", client_port)
                _add(attributes, "network.peer.port", client_port)
            caller = getattr(peer, "data", {}).get("caller")
            spiffe_id = getattr(caller, "spiffe_id", None)
            if spiffe_id is not None:
                _add(attributes, "sidecar.caller.spiffe_id", spiffe_id)
                _add(attributes, "sidecar.caller.service", getattr(caller, "service", ""))
        error_type = error or (str(status) if status >= 500 else None)   # server spans: only 5xx
    if status:
        _add(attributes, "http.response.status_code", status)
    if stats.request_id is not None:
        _add(attributes, "sidecar.request_id", stats.request_id)
    if error_type is None and status == 0:
        error_type = "_OTHER"    # the client got no status and the engine named no cause
    if error_type is not None:
        _add(attributes, "error.type", error_type)
    return SpanRecord(trace_id, span_id, stats.parent_span_id, name, kind, _nanos(stats.started, wall_offset),
                      _nanos(stats.ended, wall_offset), attributes, error_type)


def message_span(operation: str, destination: str, trace: MessageTrace, started: float, ended: float,
                 wall_offset: float, message_id: str | None = None, error: str | None = None,
                 attributes: Mapping[str, Any] | None = None) -> SpanRecord:
    """A messaging span (PRODUCER for ``publish``/``send``/``create``, CONSUMER for ``process``/``receive``),
    following the OpenTelemetry messaging conventions; ``trace`` from
    :func:`sidecar.telemetry.propagation.message_trace`."""
    kind = KIND_PRODUCER if operation in ("publish", "send", "create") else KIND_CONSUMER
    operation_type = operation if operation in ("send", "receive", "process", "create") else "send"
    merged: dict[str, Any] = {"messaging.system": "sidecar", "messaging.operation.name": operation,
                              "messaging.operation.type": operation_type, "messaging.destination.name": destination}
    if message_id is not None:
        merged["messaging.message.id"] = message_id
    if error is not None:
        merged["error.type"] = error
    if attributes:
        merged.update(attributes)
    attrs: Attributes = []
    for key, value in merged.items():
        _add(attrs, key, value)
    return SpanRecord(trace.trace_id, trace.span_id, trace.parent_span_id, f"{operation} {destination}", kind,
                      _nanos(started, wall_offset), _nanos(ended, wall_offset), attrs, error)
