"""Helpers for messaging tests with real `sidecar run` processes: a recording subscriber app (threads),
publishing loops, SSE reading with urllib."""

from __future__ import annotations

import http.server as http_server
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.harness import JsonHandler, SidecarProcess, http, wait_for


class RecordingApp:
    """An HTTP app that records every ServiceMessage POSTed to it; ``answer(message) -> (status, body)``."""

    def __init__(self, name: str, answer: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]] | None = None
                 ) -> None:
        self.name = name
        self.answer = answer or (lambda message: (200, {}))
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        app = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                self.send_json(200, {"ok": True})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = json.loads(raw)
                with app.lock:
                    app.received.append(message)
                status, body = app.answer(message)
                self.send_json(status, body)

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)


def knows_subscription(process: SidecarProcess, topic: str, node: str) -> bool:
    rows = http("GET", process.api + "/v1/subscriptions", timeout=2).json()
    return any(r["topic"] == topic and r["node"] == node for r in rows)


def publish(process: SidecarProcess, topic: str, payload: Any, kind: str = "event", timeout: float = 5.0) -> Any:
    return http("POST", f"{process.api}/v1/publish/{topic}", {"type": kind, "payload": payload}, timeout=timeout)


def restart(process: SidecarProcess, timeout: float = 30.0) -> None:
    """Start a stopped or killed process again with the same config and data_dir (new ports)."""
    process.listeners.clear()
    process.start(timeout=timeout)


def read_sse(url: str, count: int, last_id: int | None = None, timeout: float = 15.0) -> list[tuple[int, Any]]:
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    request = urllib.request.Request(url, headers=headers)
    events: list[tuple[int, Any]] = []
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(request, timeout=timeout) as response:
        event_id = None
        while len(events) < count and time.monotonic() < deadline:
            line = response.readline().decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                assert event_id is not None
                events.append((event_id, json.loads(line[6:])))
    return events


__all__ = ["RecordingApp", "knows_subscription", "publish", "read_sse", "restart", "wait_for"]
