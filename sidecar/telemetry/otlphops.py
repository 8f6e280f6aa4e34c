"""A proxied hop's OTLP ``Span`` written straight from the request's record, on the trace exporter's thread.

The bytes are exactly those :func:`~sidecar.telemetry.otlp.span_bytes` writes for
:func:`~sidecar.telemetry.spans.request_span`'s span of the same hop (tests compare the two over a table of
requests), without building the :class:`~sidecar.telemetry.spans.SpanRecord`, its attribute list, or a lookup per
attribute: what repeats from request to request is kept encoded by what it comes from, a few fields at a time
(the method gives the span's name and two attributes; the ``Host`` the server address and port; the upstream
address the peer's address and port; the caller's address four fields and its SPIFFE ID two), each table bounded
and started over when full; the request id, which never repeats, is written in one join. Compiled with mypyc
(setup.py's NATIVE); it runs while the exporter's thread holds the GIL, so less of it is less time the event
loop waits for the GIL.
"""

from __future__ import annotations

from typing import Any, Final

from sidecar.proxy.target import RequestStats
from sidecar.telemetry.otlp import (
    EMPTY_STATUS,
    FLAGS_REMOTE_PARENT,
    FLAGS_ROOT,
    K_END,
    K_KIND,
    K_PARENT,
    K_SPAN_ID,
    K_START,
    K_TRACE_ID,
    MASK64,
    UINT64,
    attribute_field,
    error_status,
    key_part,
    name_field,
    string_field,
    varint_bytes,
)
from sidecar.telemetry.requests import METHODS
from sidecar.telemetry.spans import KIND_CLIENT, KIND_SERVER, split_host

# distinct Hosts, upstream addresses and callers one sidecar sees are few (the mesh's services, endpoints and
# connections); a table that reaches this many starts over, so that random Host headers cannot grow it
_LIMIT: Final = 1024

_KIND_CLIENT: Final = K_KIND + varint_bytes(KIND_CLIENT)
_KIND_SERVER: Final = K_KIND + varint_bytes(KIND_SERVER)
_SCHEME_HTTPS: Final = attribute_field("url.scheme", "https")
_REQUEST_ID: Final = key_part("sidecar.request_id")


def _method_fields(method: str) -> tuple[bytes, bytes]:
    """The span's name field, and its first attributes (protocol version, method), for ``method``."""
    version = attribute_field("network.protocol.version", "1.1")
    if method in METHODS:
        return name_field(method), version + attribute_field("http.request.method", method)
    return name_field("HTTP"), (version + attribute_field("http.request.method", "_OTHER")
                                + attribute_field("http.request.method_original", method))


_METHODS: dict[str, tuple[bytes, bytes]] = {method: _method_fields(method) for method in METHODS}


def _outbound_host(host: str) -> bytes:
    name, port = split_host(host)
    return attribute_field("server.address", name) + attribute_field("server.port", port or 80)


def _inbound_host(host: str) -> bytes:
    name, port = split_host(host)
    fields = attribute_field("server.address", name)
    return fields if port is None else fields + attribute_field("server.port", port)


def _client(address: str, port: int) -> bytes:
    return (attribute_field("client.address", address) + attribute_field("network.peer.address", address)
            + attribute_field("client.port", port) + attribute_field("network.peer.port", port))


def _caller(spiffe_id: str, service: str) -> bytes:
    return attribute_field("sidecar.caller.spiffe_id", spiffe_id) + attribute_field("sidecar.caller.service", service)


def _peer_address(upstream: str) -> bytes:
    name, port = split_host(upstream)
    fields = attribute_field("network.peer.address", name)
    return fields if port is None else fields + attribute_field("network.peer.port", port)


class _Table:
    """Encoded fields by the string they are made from, bounded (see the module's doc)."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: dict[Any, bytes] = {}

    def keep(self, key: Any, fields: bytes) -> bytes:
        table = self.fields
        if len(table) >= _LIMIT:
            table.clear()
        table[key] = fields
        return fields


_outbound_hosts = _Table()
_inbound_hosts = _Table()
_peers = _Table()
_clients = _Table()    # by the caller's (address, port)
_callers = _Table()    # by the caller's SPIFFE ID


def hop_span_bytes(direction: str, stats: RequestStats, service: str, wall_offset: float,
                   peer: Any = None) -> bytes | None:
    """A ``Span`` message (without its field key and length) for one hop, as
    ``span_bytes(request_span(direction, stats, service, wall_offset, peer))``; None when the request carried no
    trace ids."""
    trace_id = stats.trace_id
    span_id = stats.span_id
    if trace_id is None or span_id is None:
        return None
    parent = stats.parent_span_id
    parts = [K_TRACE_ID, b"\x10", bytes.fromhex(trace_id), K_SPAN_ID, b"\x08", bytes.fromhex(span_id)]
    if parent is not None:
        parts += (K_PARENT, b"\x08", bytes.fromhex(parent))
    method = stats.method
    known = _METHODS.get(method)
    name, head = known if known is not None else _method_fields(method)
    outbound = direction == "outbound"
    parts += (name, _KIND_CLIENT if outbound else _KIND_SERVER,
              K_START, UINT64.pack(int((stats.started + wall_offset) * 1e9) & MASK64),
              K_END, UINT64.pack(int((stats.ended + wall_offset) * 1e9) & MASK64), head)
    status = stats.status
    error = stats.error
    host = stats.host
    raw_target = stats.target.decode("latin-1")
    error_type: str | None
    if outbound:
        fields = _outbound_hosts.fields.get(host)
        parts.append(fields if fields is not None else _outbound_hosts.keep(host, _outbound_host(host)))
        parts.append(attribute_field("url.full", raw_target if not raw_target.startswith("/")
                                     else f"http://{host}{raw_target}"))
        parts.append(attribute_field("peer.service", service))
        upstream = stats.upstream
        if upstream:
            fields = _peers.fields.get(upstream)
            parts.append(fields if fields is not None else _peers.keep(upstream, _peer_address(upstream)))
        instance = getattr(stats.tag, "instance", None)
        if instance is not None:
            parts.append(attribute_field("sidecar.upstream.instance", instance))
            parts.append(attribute_field("sidecar.upstream.node", getattr(stats.tag, "node", "")))
        if stats.attempts > 1:
            parts.append(attribute_field("http.request.resend_count", stats.attempts - 1))
        error_type = error or (str(status) if status >= 400 else None)   # client spans: 4xx are errors
    else:
        path, _, query = raw_target.partition("?")
        parts.append(_SCHEME_HTTPS)
        parts.append(attribute_field("url.path", path))
        if query:
            parts.append(attribute_field("url.query", query))
        fields = _inbound_hosts.fields.get(host)
        parts.append(fields if fields is not None else _inbound_hosts.keep(host, _inbound_host(host)))
        if peer is not None:
            peername = getattr(peer, "peername", None)
            if isinstance(peername, tuple) and len(peername) >= 2:
                fields = _clients.fields.get(peername)
                if fields is None:
                    fields = _clients.keep(peername, _client(str(peername[0]), int(peername[1])))
                parts.append(fields)
            caller = getattr(peer, "data", {}).get("caller")
            spiffe_id = getattr(caller, "spiffe_id", None)
            if spiffe_id is not None:
                fields = _callers.fields.get(spiffe_id)
                if fields is None:
                    fields = _callers.keep(spiffe_id, _caller(spiffe_id, getattr(caller, "service", "")))
                parts.append(fields)
        error_type = error or (str(status) if status >= 500 else None)   # server spans: only 5xx
    if status:
        parts.append(attribute_field("http.response.status_code", status))
    request_id = stats.request_id
    if request_id is not None:
        parts.append(string_field(_REQUEST_ID, request_id))
    if error_type is None and status == 0:
        error_type = "_OTHER"    # the client got no status and the engine named no cause
    if error_type is not None:
        parts.append(attribute_field("error.type", error_type))
        parts.append(error_status(error_type))
    else:
        parts.append(EMPTY_STATUS)
    parts.append(FLAGS_REMOTE_PARENT if parent is not None else FLAGS_ROOT)
    return b"".join(parts)
