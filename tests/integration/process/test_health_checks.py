"""Health transitions through a real sidecar process against real app sockets: HTTP, TCP and TTL checks,
thresholds, automatic deregistration, and the event stream that reports every change."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from tests.harness import FakeApp, SidecarProcess, TcpApp, http, wait_for


def instance(sidecar: SidecarProcess, service_id: str) -> dict[str, Any] | None:
    for item in http("GET", sidecar.api + "/v1/services").json():
        if item["id"] == service_id:
            return dict(item)
    return None


def status(sidecar: SidecarProcess, service_id: str) -> str | None:
    item = instance(sidecar, service_id)
    return None if item is None else str(item["status"])


class EventReader:
    """Reads the SSE stream of /v1/events on a raw socket in a thread, as a browser's EventSource would."""

    def __init__(self, api: str) -> None:
        host, port = api.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while chunk := self.sock.recv(65536):
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    for line in block.decode(errors="replace").splitlines():
                        if line.startswith("data: "):
                            self.events.append(json.loads(line[6:]))
        except OSError:
            pass

    def health_changes(self, service_id: str) -> list[tuple[str, str]]:
        return [(e["data"]["before"], e["data"]["after"]) for e in list(self.events)
                if e["type"] == "health-changed" and e["data"]["id"] == service_id]

    def close(self) -> None:
        self.sock.close()


def test_http_check_healthy_degraded_unhealthy_removed(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    with FakeApp() as app:
        sidecar = start_sidecar({"services": [{
            "name": "pay", "port": app.port,
            "check": {"http": "/health", "interval": "100ms", "timeout": "100ms", "deregister_after": "1s"}}]})
        sid = f"pay:node-a:{app.port}"
        events = EventReader(sidecar.api)
        wait_for(lambda: status(sidecar, sid) == "healthy", what="healthy")
        app.health_status = 429
        wait_for(lambda: status(sidecar, sid) == "degraded", what="degraded on 429")
        app.health_status = 500
        wait_for(lambda: status(sidecar, sid) == "unhealthy", what="unhealthy on 500")
        wait_for(lambda: instance(sidecar, sid) is None, timeout=5, what="removed after deregister_after")
        wait_for(lambda: any(e["type"] == "service-deregistered" for e in events.events), what="deregistered event")
        changes = events.health_changes(sid)
        assert ("healthy", "degraded") in changes and ("degraded", "unhealthy") in changes
        assert "deregister_after" in next(e for e in events.events if e["type"] == "service-deregistered")["data"][
            "reason"]
        assert any(path == "/health" for _, path in app.requests)
        events.close()


def test_http_check_thresholds(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    with FakeApp() as app:
        sidecar = start_sidecar({"services": [{
            "name": "pay", "port": app.port,
            "check": {"http": "/health", "interval": "100ms", "timeout": "100ms",
                      "success_before_healthy": 3, "failures_before_unhealthy": 3}}]})
        sid = f"pay:node-a:{app.port}"
        wait_for(lambda: status(sidecar, sid) == "healthy")
        health_requests = sum(1 for _, p in app.requests if p == "/health")
        assert health_requests >= 3  # not healthy before three passing results
        app.health_status = 503
        before = sum(1 for _, p in app.requests if p == "/health")
        wait_for(lambda: status(sidecar, sid) == "unhealthy")
        after = sum(1 for _, p in app.requests if p == "/health")
        assert after - before >= 3  # not unhealthy before three failing results


def test_tcp_check_follows_the_listener(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    app = TcpApp()
    app.open()
    try:
        sidecar = start_sidecar({"services": [{
            "name": "db", "port": app.port, "check": {"tcp": True, "interval": "100ms", "timeout": "100ms"}}]})
        sid = f"db:node-a:{app.port}"
        wait_for(lambda: status(sidecar, sid) == "healthy")
        app.close()
        wait_for(lambda: status(sidecar, sid) == "unhealthy")
        app.open()
        wait_for(lambda: status(sidecar, sid) == "healthy")
    finally:
        app.close()


def test_ttl_check_with_heartbeats_and_expiry(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    registered = http("PUT", sidecar.api + "/v1/services",
                      {"name": "worker", "version": "2.0.0", "port": 4000, "check": {"ttl": "600ms",
                                                                                   "deregister_after": "2s"}})
    assert registered.status == 200
    sid = registered.json()["id"]
    assert status(sidecar, sid) == "unhealthy"  # until the first heartbeat
    beat = http("PUT", f"{sidecar.api}/v1/services/{sid}/heartbeat", {})
    assert beat.status == 200 and beat.json()["status"] == "healthy"
    beat = http("PUT", f"{sidecar.api}/v1/services/{sid}/heartbeat", {"status": "degraded", "note": "queue deep"})
    assert beat.json()["status"] == "degraded"
    wait_for(lambda: status(sidecar, sid) == "unhealthy", what="ttl expiry")
    wait_for(lambda: instance(sidecar, sid) is None, timeout=6, what="deregistered")


def test_draining_marks_services_unhealthy_and_ready_503(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar({"services": [{"name": "pay", "port": 3000}]})
    assert status(sidecar, "pay:node-a:3000") == "healthy"
    assert http("POST", sidecar.admin + "/drain").json() == {"state": "draining"}
    ready = http("GET", sidecar.admin + "/ready")
    assert ready.status == 503 and ready.json()["reason"] == "draining"
    assert status(sidecar, "pay:node-a:3000") == "unhealthy"
