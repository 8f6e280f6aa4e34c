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
from typing import Final, cast

from sidecar.mesh.inbound_routes import CALLER_KEY
from sidecar.proxy.target import ConnectionInfo, RequestStats


def failed(stats: RequestStats) -> bool:
    """The performance records' ``error``: no answer from the app, or a 5xx (4xx are the app's answers)."""
    return stats.error is not None or stats.status == 0 or stats.status >= 500


def _millis(seconds: float) -> tuple[str, str]:
    """Milliseconds to the microsecond as ``repr(round(ms, 3))`` prints them (``25.0``, ``1.234``), in two parts
    (the whole milliseconds, then the point and the fraction) that go into the line without being joined first.
    Rounded in native integer arithmetic: ``round`` to decimals goes through a decimal string, ``round()`` and
    ``divmod()`` are generic calls."""
    scaled = seconds * -1_000_000.0 if seconds < 0.0 else seconds * 1_000_000.0
    micros = int(scaled)
    rest = scaled - micros           # exact: the float's integer part is exact below 2**52
    if rest > 0.5 or (rest == 0.5 and micros & 1):
        micros += 1                  # half to even, as round() does
    whole = micros // 1000
    fraction = _FRACTIONS[micros - whole * 1000]
    if seconds < 0.0 and micros:
        return f"-{whole}", fraction
    return _number(whole), fraction


def _ms(seconds: float) -> str:
    whole, fraction = _millis(seconds)
    return whole + fraction


_FRACTIONS: Final = [f".{n:03d}".rstrip("0") if n else ".0" for n in range(1000)]
_NUMBERS: Final = [str(n) for n in range(1000)]


def _number(n: int) -> str:
    """``str(n)``, without making a string for the small ones (attempts, most durations, short bodies)."""
    return _NUMBERS[n] if 0 <= n < 1000 else str(n)


def _json_text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


# What a route's lines share, from after the timestamp to ``"attempts":`` (direction, service, method, path, host,
# status, outcome, error, upstream), is kept as its JSON text per distinct combination, up to a bound; the table
# starts over when full. Paths longer than _CACHED_PATH are escaped per line, so the table stays small.
_HEADS_LIMIT: Final = 1024
_CACHED_PATH: Final = 256
_heads: dict[tuple[str, str, str, bytes, str, int, str | None, str | None], str] = {}


def _json_head(direction: str, service: str, stats: RequestStats) -> str:
    target = stats.target
    if len(target) > _CACHED_PATH:
        return _head_text(direction, service, stats)
    key = (direction, service, stats.method, target, stats.host, stats.status, stats.error, stats.upstream)
    text = _heads.get(key)
    if text is None:
        if len(_heads) >= _HEADS_LIMIT:
            _heads.clear()
        text = _heads[key] = _head_text(direction, service, stats)
    return text


def _head_text(direction: str, service: str, stats: RequestStats) -> str:
    return (f'","level":"info","logger":"sidecar.access","msg":"request","direction":{_json_text(direction)},'
            f'"service":{_json_text(service)},"method":{_json_text(stats.method)},'
            f'"path":{_json_text(stats.target.decode("latin-1"))},"host":{_json_text(stats.host)},'
            f'"status":{stats.status},"outcome":"{"error" if failed(stats) else "success"}",'
            f'"error":{_json_text(stats.error)},"upstream":{_json_text(stats.upstream)},"attempts":')


# ConnectionInfo.data: the end of an inbound line (peer and client), made at the connection's first line that
# names its caller; the caller and the address stay those of the connection.
_TAIL_KEY: Final = "sidecar.access.json-tail"
_OUTBOUND_TAIL: Final = "}\n"


def _json_tail(peer: ConnectionInfo | None) -> str:
    if peer is None:
        return _OUTBOUND_TAIL
    data = peer.data
    tail = data.get(_TAIL_KEY)
    if tail is not None:
        return cast(str, tail)
    spiffe_id, client = _peer_fields(peer)
    if client is None:
        tail = f',"peer":{_json_text(spiffe_id)}}}\n'
    else:
        tail = f',"peer":{_json_text(spiffe_id)},"client":{_json_text(client)}}}\n'
    if spiffe_id is not None:
        data[_TAIL_KEY] = tail
    return tail


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


_MILLIS: Final = [f".{n:03d}Z" for n in range(1000)]
_SECONDS: Final = [f"{n:02d}" for n in range(60)]


class Timestamps:
    """``2026-12-05T10:47:52.123Z`` for a wall time: the date, hour and minute formatted once a minute (epoch
    seconds have no leap seconds: a minute is 60 of them), the whole text once a millisecond (lines of a busy
    millisecond share it)."""

    __slots__ = ("_milli", "_minute", "_prefix", "_second", "_text")

    def __init__(self) -> None:
        self._minute = -1
        self._prefix = ""
        self._second = -1
        self._milli = -1
        self._text = ""

    def text(self, wall: float) -> str:
        second = int(wall)
        milli = min(999, int((wall - second) * 1000.0))
        if second == self._second and milli == self._milli:
            return self._text
        minute = second - second % 60
        if minute != self._minute:
            self._minute = minute
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute))
        self._second = second
        self._milli = milli
        self._text = text = f"{self._prefix}{_SECONDS[second - minute]}{_MILLIS[milli]}"
        return text


def _peer_fields(peer: ConnectionInfo) -> tuple[str | None, str | None]:
    """(the caller's SPIFFE ID, the client's ``host:port``) of an inbound connection."""
    caller = peer.data.get(CALLER_KEY)
    spiffe_id = getattr(caller, "spiffe_id", None)
    peername = peer.peername
    client = None
    if isinstance(peername, tuple) and len(peername) >= 2:
        client = f"{peername[0]}:{peername[1]}"
    return None if spiffe_id is None else str(spiffe_id), client


def _id_parts(value: str | None) -> tuple[str, str]:
    """A trace or span id as its JSON text in two parts, the quote and the id (``null`` and no quote for None):
    they are hex digits (the engine takes them from :mod:`sidecar.proxy.tracecontext`, which validates what comes
    from the wire), which need no escaping."""
    return ("", "null") if value is None else ('"', value)


def _text_parts(value: str | None) -> tuple[str, str]:
    """:func:`_json_text` in the two parts of :func:`_id_parts`, for a value that never repeats (a request id): one
    that needs no escaping (printable ASCII without quote or backslash, as the ids the engine makes) goes in as it
    is, without the copy escaping makes."""
    if value is None:
        return "", "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return '"', value
    return "", encode_basestring_ascii(value)


def json_line(ts: str, direction: str, service: str, stats: RequestStats, peer: ConnectionInfo | None = None) -> str:
    """The line: the route's cached head (:func:`_json_head`), the fields that change from request to request, the
    connection's cached tail (:func:`_json_tail`); one string built at its size."""
    duration, duration_fraction = _millis(stats.duration)
    response_head = stats.response_started
    if response_head is None:
        head_ms, head_fraction = "null", ""
    else:
        head_ms, head_fraction = _millis(response_head - stats.started)
    trace_quote, trace_id = _id_parts(stats.trace_id)
    span_quote, span_id = _id_parts(stats.span_id)
    request_quote, request_id = _text_parts(stats.request_id)
    return (f'{{"ts":"{ts}{_json_head(direction, service, stats)}{_number(stats.attempts)},'
            f'"durationMs":{duration}{duration_fraction},"responseHeadMs":{head_ms}{head_fraction},'
            f'"requestBytes":{_number(stats.request_bytes)},"responseBytes":{_number(stats.response_bytes)},'
            f'"traceId":{trace_quote}{trace_id}{trace_quote},"spanId":{span_quote}{span_id}{span_quote},'
            f'"requestId":{request_quote}{request_id}{request_quote}{_json_tail(peer)}')


def text_line(ts: str, direction: str, service: str, stats: RequestStats, peer: ConnectionInfo | None = None) -> str:
    head = stats.response_started
    fields: list[tuple[str, object]] = [
        ("direction", direction), ("service", service), ("method", stats.method),
        ("path", stats.target.decode("latin-1")), ("host", stats.host), ("status", stats.status),
        ("outcome", "error" if failed(stats) else "success"), ("error", stats.error), ("upstream", stats.upstream),
        ("attempts", stats.attempts), ("durationMs", round(stats.duration * 1000.0, 3)),
        ("responseHeadMs", None if head is None else round((head - stats.started) * 1000.0, 3)),
        ("requestBytes", stats.request_bytes), ("responseBytes", stats.response_bytes),
        ("traceId", stats.trace_id), ("spanId", stats.span_id), ("requestId", stats.request_id)]
    if peer is not None:
        spiffe_id, client = _peer_fields(peer)
        fields.append(("peer", spiffe_id))
        if client is not None:
            fields.append(("client", client))
    parts = [ts, "info   ", "sidecar.access", "request"]
    for key, value in fields:
        parts.append(f"{key}={_text_value(value)}")
    return " ".join(parts) + "\n"
