"""One access-log line from a finished request's :class:`RequestStats`, JSON or text, without building a dict.

Compiled with mypyc (setup.py's NATIVE): this runs once per request when the access log is on. The lines are
exactly what ``sidecar.log``'s formatters print for a ``sidecar.access`` record with the entry's fields (``ts``,
``level``, ``logger``, ``msg`` first; strings escaped as ``json.dumps`` does, non-ASCII as ``\\uXXXX``), so a
collector parsing the process's other JSON lines parses these too. Fields: see :mod:`sidecar.telemetry.access`.
"""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from sidecar.proxy.target import RequestStats


def failed(stats: RequestStats) -> bool:
    """The performance records' ``error``: no answer from the app, or a 5xx (4xx are the app's answers)."""
    return stats.error is not None or stats.status == 0 or stats.status >= 500


def _ms(seconds: float) -> str:
    """Milliseconds to the microsecond, as ``repr(round(ms, 3))`` prints them (``25.0``, ``1.234``), without
    float rounding to decimals (slow: it goes through a decimal string)."""
    scaled = seconds * -1_000_000.0 if seconds < 0.0 else seconds * 1_000_000.0
    micros = int(scaled)             # native arithmetic, where round() and divmod() are generic calls
    rest = scaled - micros           # exact: the float's integer part is exact below 2**52
    if rest > 0.5 or (rest == 0.5 and micros & 1):
        micros += 1                  # half to even, as round() does
    sign = "-" if seconds < 0.0 and micros else ""
    whole = micros // 1000
    fraction = micros - whole * 1000
    if fraction == 0:
        return f"{sign}{whole}.0"
    return f"{sign}{whole}.{_FRACTIONS[fraction]}"


_FRACTIONS: Final = [f"{n:03d}".rstrip("0") for n in range(1000)]


def _json_text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


# Most fields repeat from line to line (direction, service, method, path, host, upstream, peer): their JSON text
# is kept, up to a bound, and the cache starts over when full (ids, which never repeat, do not come here).
_QUOTED_LIMIT: Final = 1024
_quoted: dict[str, str] = {}


def _json_repeated(value: str | None) -> str:
    """:func:`_json_text` of a value that is likely to come again."""
    if value is None:
        return "null"
    text = _quoted.get(value)
    if text is None:
        if len(_quoted) >= _QUOTED_LIMIT:
            _quoted.clear()
        text = _quoted[value] = encode_basestring_ascii(value)
    return text


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


_MILLIS: Final = [f".{n:03d}Z" for n in range(1000)]


class Timestamps:
    """``2026-12-05T10:47:52.123Z`` for a wall time, the date and time formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def text(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[min(999, int((wall - second) * 1000.0))]


def _peer_fields(peer: Any) -> tuple[bool, str | None, str | None]:
    """(inbound with a connection, the caller's SPIFFE ID, the client's ``host:port``)."""
    if peer is None:
        return False, None, None
    caller = getattr(peer, "data", {}).get("caller")
    spiffe_id = getattr(caller, "spiffe_id", None)
    peername = getattr(peer, "peername", None)
    client = None
    if isinstance(peername, tuple) and len(peername) >= 2:
        client = f"{peername[0]}:{peername[1]}"
    return True, None if spiffe_id is None else str(spiffe_id), client


def json_line(ts: str, direction: str, service: str, stats: RequestStats, peer: Any = None) -> str:
    head = stats.response_started
    line = (f'{{"ts":"{ts}","level":"info","logger":"sidecar.access","msg":"request",'
            f'"direction":{_json_repeated(direction)},"service":{_json_repeated(service)},'
            f'"method":{_json_repeated(stats.method)},"path":{_json_repeated(stats.target.decode("latin-1"))},'
            f'"host":{_json_repeated(stats.host)},"status":{stats.status},'
            f'"outcome":"{"error" if failed(stats) else "success"}","error":{_json_repeated(stats.error)},'
            f'"upstream":{_json_repeated(stats.upstream)},"attempts":{stats.attempts},'
            f'"durationMs":{_ms(stats.duration)},'
            f'"responseHeadMs":{"null" if head is None else _ms(head - stats.started)},'
            f'"requestBytes":{stats.request_bytes},"responseBytes":{stats.response_bytes},'
            f'"traceId":{_json_text(stats.trace_id)},"spanId":{_json_text(stats.span_id)},'
            f'"requestId":{_json_text(stats.request_id)}')
    inbound, spiffe_id, client = _peer_fields(peer)
    if inbound:
        if client is None:
            return f'{line},"peer":{_json_repeated(spiffe_id)}}}\n'
        return f'{line},"peer":{_json_repeated(spiffe_id)},"client":{_json_repeated(client)}}}\n'
    return line + "}\n"


def text_line(ts: str, direction: str, service: str, stats: RequestStats, peer: Any = None) -> str:
    head = stats.response_started
    fields: list[tuple[str, object]] = [
        ("direction", direction), ("service", service), ("method", stats.method),
        ("path", stats.target.decode("latin-1")), ("host", stats.host), ("status", stats.status),
        ("outcome", "error" if failed(stats) else "success"), ("error", stats.error), ("upstream", stats.upstream),
        ("attempts", stats.attempts), ("durationMs", round(stats.duration * 1000.0, 3)),
        ("responseHeadMs", None if head is None else round((head - stats.started) * 1000.0, 3)),
        ("requestBytes", stats.request_bytes), ("responseBytes", stats.response_bytes),
        ("traceId", stats.trace_id), ("spanId", stats.span_id), ("requestId", stats.request_id)]
    inbound, spiffe_id, client = _peer_fields(peer)
    if inbound:
        fields.append(("peer", spiffe_id))
        if client is not None:
            fields.append(("client", client))
    parts = [ts, "info   ", "sidecar.access", "request"]
    for key, value in fields:
        parts.append(f"{key}={_text_value(value)}")
    return " ".join(parts) + "\n"
