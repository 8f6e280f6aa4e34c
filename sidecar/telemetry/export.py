"""OTLP/HTTP export of span batches: ``POST ENDPOINT/v1/traces`` with an ``application/x-protobuf`` body built by
:mod:`sidecar.telemetry.otlp`, on the trace batcher's thread (never on the event loop).

As the OpenTelemetry SDK's OTLP/HTTP exporter does, it reads from the environment the collector's headers
(``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` or ``OTEL_EXPORTER_OTLP_HEADERS``, ``key=value,...`` URL-encoded), gzip
compression (``OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION=gzip``), a CA file for ``https`` endpoints
(``OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE``) and extra resource attributes (``OTEL_RESOURCE_ATTRIBUTES``; the
sidecar's own take precedence); it retries a batch on 429, 502, 503, 504 or a failed connection with exponential
back-off (1 s, 2 s, 4 s...) while the export's ``timeout`` lasts, then drops it.
"""

from __future__ import annotations

import gzip
import http.client
import os
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from sidecar import __version__
from sidecar.telemetry.otlp import export_request, resource_bytes, scope_bytes, span_bytes
from sidecar.telemetry.spans import SpanRecord

SCOPE_NAME = "sidecar"
SCOPE_VERSION = "0.1.0"
RETRYABLE = frozenset({429, 502, 503, 504})
USER_AGENT = f"sidecar/{__version__}"


def _env(name: str) -> str | None:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")


def parse_pairs(text: str | None) -> list[tuple[str, str]]:
    """``k1=v1,k2=v2`` (W3C Baggage-like, URL-encoded) into pairs; entries without ``=`` are skipped."""
    pairs = []
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs.append((urllib.parse.unquote(key.strip()), urllib.parse.unquote(value.strip())))
    return pairs


def resource_attributes(resource: Mapping[str, str]) -> list[tuple[str, Any]]:
    """What describes this process in every export: the telemetry SDK, ``OTEL_RESOURCE_ATTRIBUTES``, then the
    sidecar's own (service name, instance, namespace, node), later ones winning."""
    merged: dict[str, Any] = {"telemetry.sdk.language": "python", "telemetry.sdk.name": "sidecar",
                              "telemetry.sdk.version": __version__}
    merged.update(parse_pairs(os.environ.get("OTEL_RESOURCE_ATTRIBUTES")))
    merged.update(resource)
    return list(merged.items())


class OtlpHttpExporter:
    """See the module's doc. Called only from one thread (the batcher's worker)."""

    def __init__(self, endpoint: str, resource: Mapping[str, str], timeout: float = 10.0) -> None:
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self.url = endpoint
        self.https = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.https else 80)
        self.path = url.path or "/"
        self.timeout = timeout
        self.gzip = (_env("COMPRESSION") or "").lower() == "gzip"
        self.headers = {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT,
                        **dict(parse_pairs(_env("HEADERS")))}
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.ssl: ssl.SSLContext | None = ssl.create_default_context(cafile=_env("CERTIFICATE")) if self.https else None
        self.resource = resource_bytes(resource_attributes(resource))
        self.scope = scope_bytes(SCOPE_NAME, SCOPE_VERSION)
        self.exports = 0          # batches the collector accepted
        self.last_error: str | None = None
        self._conn: http.client.HTTPConnection | None = None

    def export(self, spans: list[SpanRecord]) -> None:
        """Posts one batch; raises ``ExportFailed`` when the collector did not take it within ``timeout``."""
        self.export_wire([span_bytes(span) for span in spans])

    def export_wire(self, spans: list[bytes]) -> None:
        """:meth:`export` for spans already encoded, each a ``Span`` message (the tracer writes a hop's straight
        from its record: :func:`~sidecar.telemetry.otlphops.hop_span_bytes`)."""
        body = export_request(self.resource, self.scope, spans)
        if self.gzip:
            body = gzip.compress(body)
        deadline = time.monotonic() + self.timeout
        delay = 1.0
        while True:
            try:
                status = self._post(body, max(0.1, deadline - time.monotonic()))
            except (OSError, http.client.HTTPException) as e:
                self._reset()
                problem = f"{type(e).__name__}: {e}"
            else:
                if 200 <= status < 300:
                    self.exports += 1
                    self.last_error = None
                    return
                problem = f"HTTP {status}"
                if status not in RETRYABLE:
                    break
            if time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
            delay *= 2
        self.last_error = problem
        raise ExportFailed(f"{self.url}: {problem}")

    def _post(self, body: bytes, timeout: float) -> int:
        conn = self._conn
        if conn is None:
            if self.ssl is not None:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.request("POST", self.path, body=body, headers=self.headers)
        response = conn.getresponse()
        response.read()
        if response.will_close:
            self._reset()
        return response.status

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def shutdown(self) -> None:
        self._reset()


class ExportFailed(Exception):
    """The collector did not accept a batch: refused, unreachable, or an error status after the retries."""
