"""Helpers for messaging tests with real `sidecar run` processes: a recording subscriber app (threads),
publishing loops, SSE reading with urllib."""

from __future__ import annotations

import http.client as http_client
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
        self.batches = 0   # bulk deliveries (JSON arrays) received
        self.lock = threading.Lock()
        app = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                self.send_json(200, {"ok": True})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = json.loads(raw)
                if isinstance(message, list):  # bulk delivery: every message of the batch acked
                    with app.lock:
                        app.received.extend(message)
                        app.batches += 1
                    self.send_json(200, {"statuses": [{"id": m["id"], "status": "SUCCESS"} for m in message]})
                    return
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


class SseReader:
    """A thread reading a topic's SSE stream from a sidecar's API for as long as it runs, through that sidecar's
    restarts: it reconnects (to the API's new port) with ``Last-Event-ID`` of the last event it saw."""

    def __init__(self, process: SidecarProcess, topic: str) -> None:
        self.process = process
        self.topic = topic
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return [message for _, message in self.events]

    def _run(self) -> None:
        last: int | None = None
        while not self.stopping.is_set():
            api = self.process.listeners.get("api")
            if api is None:
                self.stopping.wait(0.05)
                continue
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                request = urllib.request.Request(f"http://{api}/v1/subscribe/{self.topic}", headers=headers)
                with urllib.request.urlopen(request, timeout=5) as response:
                    self.connections += 1
                    event_id = None
                    for raw in response:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("id: "):
                            event_id = int(line[4:])
                        elif line.startswith("data: ") and event_id is not None:
                            with self.lock:
                                self.events.append((event_id, json.loads(line[6:])))
                            last = event_id
                        if self.stopping.is_set():
                            return
            except (OSError, ValueError, http_client.HTTPException):  # killed, restarting, or idle for 5 s
                self.stopping.wait(0.05)

    def connected(self) -> bool:
        return self.connections > 0

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)


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


__all__ = ["RecordingApp", "SseReader", "knows_subscription", "publish", "read_sse", "restart", "wait_for"]
