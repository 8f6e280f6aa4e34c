"""The access log: one line per proxied request on the ``sidecar.access`` logger (``telemetry.access_log``).

Off by default, as Envoy's: formatting and writing a line costs more than everything else the proxy does per
request. When on, the logger gets its own stderr handler (``format: json`` one object per line, ``text``
key=value), independent of the process's ``logging.format`` and not silenced by ``POST /logging?level=warning``.

Fields: ``direction`` (outbound | inbound), ``service`` (destination), ``method``, ``path`` (as received),
``host``, ``status`` (0: the client got none), ``outcome`` (``success`` | ``error``, as the performance records
count it) and ``error`` (why: connect-failure, reset, timeout, local...), ``upstream`` (the last attempt's
address), ``attempts``, ``durationMs`` (head in to response end), ``responseHeadMs`` (head in to response head
out), ``requestBytes``, ``responseBytes``, ``traceId``, ``spanId``, ``requestId``; inbound also ``peer`` (the
caller's SPIFFE ID) and ``client`` (its address) when the engine reports the connection.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from sidecar.log import JsonFormatter, TextFormatter
from sidecar.proxy.target import RequestStats

ACCESS_LOGGER = "sidecar.access"


def failed(stats: RequestStats) -> bool:
    """The performance records' ``error``: no answer from the app, or a 5xx (4xx are the app's answers)."""
    return stats.error is not None or stats.status == 0 or stats.status >= 500


def access_entry(direction: str, service: str, stats: RequestStats, peer: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "direction": direction, "service": service, "method": stats.method,
        "path": stats.target.decode("latin-1"), "host": stats.host, "status": stats.status,
        "outcome": "error" if failed(stats) else "success", "error": stats.error, "upstream": stats.upstream,
        "attempts": stats.attempts, "durationMs": round(stats.duration * 1000.0, 3),
        "responseHeadMs": None if stats.response_started is None
        else round((stats.response_started - stats.started) * 1000.0, 3),
        "requestBytes": stats.request_bytes, "responseBytes": stats.response_bytes,
        "traceId": stats.trace_id, "spanId": stats.span_id, "requestId": stats.request_id,
    }
    if peer is not None:
        caller = getattr(peer, "data", {}).get("caller")
        entry["peer"] = getattr(caller, "spiffe_id", None)
        peername = getattr(peer, "peername", None)
        if isinstance(peername, tuple) and len(peername) >= 2:
            entry["client"] = f"{peername[0]}:{peername[1]}"
    return entry


class AccessLog:
    """Writes entries to ``sidecar.access``; see the module's doc. ``stream`` defaults to stderr."""

    def __init__(self, fmt: str = "json", stream: Any = None) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        self.handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        self.logger.handlers[:] = [self.handler]
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.lines = 0

    def request(self, direction: str, service: str, stats: RequestStats, peer: Any = None) -> None:
        self.lines += 1
        self.logger.info("request", extra={"fields": access_entry(direction, service, stats, peer)})

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.flush()
