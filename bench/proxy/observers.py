"""What watches a production proxy, for the bench's production profile: a trace collector, a syslog receiver and a
Prometheus scraper, each a real endpoint or client running in threads of the bench process.

    OtlpReceiver()           POST /v1/traces (OTLP/HTTP protobuf), decodes each export and counts its spans
    SyslogReceiver()         UDP syslog (HAProxy's `log 127.0.0.1:PORT`), counts the lines
    Scraper(urls, 1.0)       GET every URL every second, as Prometheus' scrape loop would, counts the scrapes
"""

from __future__ import annotations

import http.server as http_server
import socket
import threading
import time
import urllib.request
from typing import Any


class OtlpReceiver:
    """A collector's OTLP/HTTP traces endpoint: answers 200 to every well-formed export and counts its spans."""

    def __init__(self) -> None:
        receiver = self
        self.span_count = 0
        self.exports = 0
        self.bad = 0
        self.lock = threading.Lock()

        class Handler(http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                protobuf = self.headers.get("Content-Type") == "application/x-protobuf"
                status = receiver.take(body) if self.path == "/v1/traces" and protobuf else 404
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, body: bytes) -> int:
        """The answer's status for one export; a subclass may keep more of it (see :meth:`received`)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:  # a malformed export: counted, answered 400
            with self.lock:
                self.bad += 1
            return 400
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.exports += 1
            self.span_count += spans
            self.received(body, request)
        return 200

    def received(self, body: bytes, request: Any) -> None:
        """Called with each accepted export (under the lock)."""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SyslogReceiver:
    """UDP syslog on loopback: one datagram per log line."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.lines = 0
        self.last = b""
        self.closed = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines += 1
            self.last = data

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Scraper:
    """GETs every URL once per ``interval`` (each scrape bounded by a timeout), until closed."""

    def __init__(self, urls: list[str], interval: float = 1.0) -> None:
        self.urls = urls
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self.bytes = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        self.bytes += len(response.read())
                        self.scrapes += 1
                except OSError:
                    self.failures += 1
            next_at += self.interval
            self.stopped.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self.stopped.set()
