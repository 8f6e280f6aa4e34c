"""OTLP protobuf for a batch of spans, written straight to the wire format: an ``ExportTraceServiceRequest``
(opentelemetry/proto/collector/trace/v1/trace_service.proto) of one resource, one scope and the batch's spans.

Pure and compiled with mypyc (setup.py's NATIVE): no SDK objects, no protobuf message objects per span, one
buffer per batch. What it writes is what the SDK's OTLP exporter writes for the same spans (ids, name, kind,
times, attributes in order, status, parent id, ``flags`` with the is-remote bits); tests decode it with
opentelemetry-proto's messages.

Wire format (https://protobuf.dev/programming-guides/encoding/): a field is a varint key ``number << 3 | type``
(0 varint, 1 fixed64, 2 length-delimited, 5 fixed32) and its value; a nested message is length-delimited.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from sidecar.telemetry.spans import SpanRecord

# Span.flags (SpanFlags): bit 8 says bit 9 is known, bit 9 that the parent is remote. Every parent a sidecar
# names came in a traceparent from another process, so it is remote.
FLAG_HAS_IS_REMOTE: Final = 0x100
FLAG_IS_REMOTE: Final = 0x200
STATUS_ERROR: Final = 2

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
MASK64: Final = (1 << 64) - 1


def _key(number: int, wire_type: int) -> bytes:
    return varint_bytes(number << 3 | wire_type)


_SMALL: Final = [bytes([n]) for n in range(128)]


def varint_bytes(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    value &= MASK64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# keys used per span, computed once
K_TRACE_ID: Final = _key(1, _LEN)
K_SPAN_ID: Final = _key(2, _LEN)
K_PARENT: Final = _key(4, _LEN)
_K_NAME: Final = _key(5, _LEN)
K_KIND: Final = _key(6, _VARINT)
K_START: Final = _key(7, _FIXED64)
K_END: Final = _key(8, _FIXED64)
_K_ATTRIBUTE: Final = _key(9, _LEN)
_K_STATUS: Final = _key(15, _LEN)
_K_FLAGS: Final = _key(16, _FIXED32)
_K_STATUS_MESSAGE: Final = _key(2, _LEN)
_K_STATUS_CODE: Final = _key(3, _VARINT)
_K_KV_KEY: Final = _key(1, _LEN)
_K_KV_VALUE: Final = _key(2, _LEN)
_K_STRING: Final = _key(1, _LEN)
_K_BOOL: Final = _key(2, _VARINT)
_K_INT: Final = _key(3, _VARINT)
_K_DOUBLE: Final = _key(4, _FIXED64)
_K_FIELD1: Final = _key(1, _LEN)  # ExportTraceServiceRequest.resource_spans, ResourceSpans.resource,
_K_FIELD2: Final = _key(2, _LEN)  # Resource.attributes, ScopeSpans.scope; ResourceSpans.scope_spans, ScopeSpans.spans

_DOUBLE: Final = struct.Struct("<d")
UINT64: Final = struct.Struct("<Q")
_UINT32: Final = struct.Struct("<I")


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")


def _len_field(key: bytes, payload: bytes) -> bytes:
    return key + varint_bytes(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """An ``AnyValue``: bool, str, int or float, as the SDK's encoder maps them (bool before int)."""
    if isinstance(value, bool):
        return _K_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _len_field(_K_STRING, _text(value))
    if isinstance(value, int):
        return _K_INT + varint_bytes(value)
    if isinstance(value, float):
        return _K_DOUBLE + _DOUBLE.pack(value)
    return _len_field(_K_STRING, _text(str(value)))


def key_value(key: str, value: Any) -> bytes:
    return _len_field(_K_KV_KEY, _text(key)) + _len_field(_K_KV_VALUE, any_value(value))


# Most attributes repeat from span to span (method, peer, port, status, service...): their encoded field is kept,
# up to a bound, and the cache starts over when full. Keyed by attribute, then value: no tuple made per lookup.
# Values that never repeat (request ids) pass through without filling it; bools are not kept (True == 1).
_CACHE_LIMIT: Final = 4096
_UNIQUE: Final = frozenset({"sidecar.request_id", "messaging.message.id"})
_cached: dict[str, dict[str | int, bytes]] = {}
_cached_count = 0


def attribute_field(key: str, value: Any) -> bytes:
    """``Span.attributes`` (or ``Resource.attributes``) field holding one KeyValue."""
    global _cached_count
    if isinstance(value, bool) or not isinstance(value, (str, int)) or key in _UNIQUE:
        return _len_field(_K_ATTRIBUTE, key_value(key, value))
    by_value = _cached.get(key)
    if by_value is None:
        by_value = _cached[key] = {}
    field = by_value.get(value)
    if field is None:
        if _cached_count >= _CACHE_LIMIT:
            _cached.clear()
            _cached_count = 0
            by_value = _cached[key] = {}
        field = by_value[value] = _len_field(_K_ATTRIBUTE, key_value(key, value))
        _cached_count += 1
    return field


def name_field(name: str) -> bytes:
    """``Span.name``."""
    return _len_field(_K_NAME, _text(name))


def error_status(description: str) -> bytes:
    """``Span.status``: ERROR with its description."""
    return _len_field(_K_STATUS, _len_field(_K_STATUS_MESSAGE, _text(description)) + _STATUS_CODE_ERROR)


def string_field(key_part: bytes, value: str) -> bytes:
    """``attribute_field(key, value)`` for a string that never repeats (a request id), made in one join;
    ``key_part`` is :func:`key_part` of the key."""
    text = _text(value)
    any_size = len(text)
    any_value_bytes = (_K_STRING, varint_bytes(any_size), text)
    any_size += 1 + len(any_value_bytes[1])
    any_size_bytes = varint_bytes(any_size)
    kv_size = len(key_part) + len(any_size_bytes) + any_size
    return b"".join((_K_ATTRIBUTE, varint_bytes(kv_size), key_part, any_size_bytes, *any_value_bytes))


def key_part(key: str) -> bytes:
    """The start of a KeyValue up to its value's length: the key field and the value's field key."""
    return _len_field(_K_KV_KEY, _text(key)) + _K_KV_VALUE


def span_bytes(span: SpanRecord) -> bytes:
    """A ``Span`` message, without its field key and length (:func:`export_request` adds them)."""
    parent = span.parent_span_id
    parts = [K_TRACE_ID, b"\x10", bytes.fromhex(span.trace_id), K_SPAN_ID, b"\x08", bytes.fromhex(span.span_id)]
    if parent is not None:
        parts += (K_PARENT, b"\x08", bytes.fromhex(parent))
    parts += (name_field(span.name), K_KIND, varint_bytes(span.kind),
              K_START, UINT64.pack(span.start_ns & MASK64), K_END, UINT64.pack(span.end_ns & MASK64))
    attributes = span.attributes
    for i in range(0, len(attributes), 2):
        parts.append(attribute_field(attributes[i], attributes[i + 1]))
    error = span.error
    parts.append(EMPTY_STATUS if error is None else error_status(error))
    parts.append(FLAGS_REMOTE_PARENT if parent is not None else FLAGS_ROOT)
    return b"".join(parts)


EMPTY_STATUS: Final = _K_STATUS + b"\x00"     # UNSET: present and empty, as the SDK's encoder sends it
_STATUS_CODE_ERROR: Final = _K_STATUS_CODE + varint_bytes(STATUS_ERROR)
FLAGS_ROOT: Final = _K_FLAGS + _UINT32.pack(FLAG_HAS_IS_REMOTE)
FLAGS_REMOTE_PARENT: Final = _K_FLAGS + _UINT32.pack(FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE)


def resource_bytes(attributes: list[tuple[str, Any]]) -> bytes:
    return b"".join(_len_field(_K_FIELD1, key_value(name, value)) for name, value in attributes)


def scope_bytes(name: str, version: str) -> bytes:
    return _len_field(_K_FIELD1, _text(name)) + _len_field(_K_FIELD2, _text(version))


def export_request(resource: bytes, scope: bytes, spans: list[bytes]) -> bytes:
    """The body of one ``POST /v1/traces``: ``resource`` from :func:`resource_bytes`, ``scope`` from
    :func:`scope_bytes` (both built once per exporter), ``spans`` each a ``Span`` message (:func:`span_bytes`,
    or :func:`~sidecar.telemetry.otlphops.hop_span_bytes`)."""
    parts = [_len_field(_K_FIELD1, scope)]
    for span in spans:
        parts += (_K_FIELD2, varint_bytes(len(span)), span)
    resource_spans = _len_field(_K_FIELD1, resource) + _len_field(_K_FIELD2, b"".join(parts))
    return _len_field(_K_FIELD1, resource_spans)
