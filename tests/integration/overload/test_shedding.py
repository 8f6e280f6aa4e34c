"""The overload guard in a real ``sidecar run``: over its memory limit it answers 503 UNAVAILABLE in SPEC's shape
with Retry-After on the API, outbound and inbound listeners while the admin port answers; under its limits it
sheds nothing; a stalled event loop (the process stopped with SIGSTOP for a second) sheds requests until the lag
is gone, then serves again."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

from tests.harness import FakeApp, Response, assert_error, free_port, http, wait_for
from tests.integration.overload.common import Mesh, sample, start_mesh

MESSAGE = re.compile(r"^overloaded: resident memory \d+\.\d MiB over overload\.max_memory_bytes 16\.0 MiB$")


def assert_overloaded(response: Response, pattern: re.Pattern[str]) -> None:
    """The guard's answer: SPEC's error shape, 503 UNAVAILABLE, Retry-After, a message naming the reason."""
    error = assert_error(response, 503, "UNAVAILABLE")
    assert response.headers.get("retry-after") == "1", response.headers
    assert error["grpcCode"] == 14
    assert pattern.search(error["message"]), error


def parse_raw(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Response(int(lines[0].split()[1]), headers, body)


def tunnel_closed_at_once(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


def test_over_the_memory_limit_every_listener_but_admin_sheds(tmp_path: Path) -> None:
    with FakeApp("web") as app:
        # 16 MiB: a sidecar is several times that from its first moment
        tunnel_port = free_port()
        mesh = start_mesh(tmp_path, app, {"overload": {"max_memory_bytes": 16 << 20},
                                          "upstreams": [{"service": "web", "local_port": tunnel_port,
                                                         "protocol": "tcp"}]})
        try:
            for _ in range(3):
                assert_overloaded(mesh.api(), MESSAGE)
                assert_overloaded(mesh.outbound(), MESSAGE)
                assert_overloaded(parse_raw(mesh.inbound()), MESSAGE)
            assert not [path for _, path in app.requests if path in ("/normal", "/inbound")], app.requests
            details = mesh.api().json()["error"]["details"]
            assert details["reasons"] == ["memory"] and details["maxMemoryBytes"] == 16 << 20
            assert details["residentBytes"] > 16 << 20
            # the admin port is never shed: probes, metrics and the guard's own view answer
            assert http("GET", mesh.process.admin + "/ready").status == 200
            assert http("GET", mesh.process.admin + "/healthz").status == 200
            status = mesh.overload()
            assert status["shedding"] and status["refusingConnections"], status
            assert status["reasons"]["memory"]["active"] and not status["reasons"]["loop_lag"]["active"]
            metrics = mesh.metrics()
            assert sample(metrics, "sidecar_overload_active", reason="memory") == 1.0
            assert sample(metrics, "sidecar_overload_active", reason="loop_lag") == 0.0
            # memory over: new connections are answered and closed, counted per listener
            for listener in ("api", "outbound", "inbound"):
                refused = sample(metrics, "sidecar_overload_refused_connections_total", listener=listener,
                                 reason="memory")
                assert refused is not None and refused >= 3, (listener, refused)
            # a tcp upstream has no request to answer 503 on: new tunnels are closed at once, and counted
            for _ in range(2):
                assert tunnel_closed_at_once(tunnel_port)
            shed = sample(mesh.metrics(), "sidecar_overload_shed_total", listener="upstream:web", reason="memory")
            assert shed is not None and shed >= 2, shed
            # logged once on entering, not per request
            entered = [line for line in mesh.process.lines if "overloaded: shedding new requests" in line]
            assert len(entered) == 1, entered
            assert "resident memory" in entered[0] and "overload.max_memory_bytes 16.0 MiB" in entered[0]
        finally:
            mesh.process.kill()


def test_under_its_limits_nothing_is_shed(tmp_path: Path) -> None:
    with FakeApp("web") as app:
        # the default memory limit (1 GiB); a lag limit no busy test machine reaches, so only memory is tested
        mesh = start_mesh(tmp_path, app, {"overload": {"max_loop_lag": "5s"}})
        try:
            for _ in range(20):
                outbound = mesh.outbound()
                assert outbound.status == 200 and outbound.json()["path"] == "/normal", outbound
                assert mesh.api().status == 200
            assert mesh.inbound().startswith(b"HTTP/1.1 200 ")
            status = mesh.overload()
            assert not status["shedding"] and status["samples"] > 0, status
            assert status["reasons"]["memory"]["limit"] == 1 << 30
            assert 0 < status["lastSample"]["residentBytes"] < 1 << 30
            metrics = mesh.metrics()
            assert sample(metrics, "sidecar_overload_active", reason="memory") == 0.0
            assert "sidecar_overload_shed_total{" not in metrics
            assert "sidecar_overload_refused_connections_total{" not in metrics
            assert not [line for line in mesh.process.lines if "overloaded" in line]
        finally:
            mesh.process.kill()


def test_a_stalled_event_loop_sheds_requests_then_recovers(tmp_path: Path) -> None:
    with FakeApp("web") as app:
        mesh = start_mesh(tmp_path, app, {"overload": {"max_loop_lag": "200ms"}})
        try:
            assert mesh.api().status == 200 and mesh.outbound().status == 200
            shed = stall_and_collect(mesh, seconds=1.0)
            assert {"api", "outbound"} <= set(shed), shed
            assert shed["admin-while-shedding"], "the admin port did not answer while shedding"
            lag = re.compile(r"^overloaded: event-loop lag \d+ms over overload\.max_loop_lag 200ms")
            for name in ("api", "outbound"):
                response = shed[name]
                assert isinstance(response, Response)
                assert_overloaded(response, lag)
            # lag shedding refuses requests, not connections
            wait_for(lambda: mesh.api().status == 200, 15, what="the API serving again after the stall")
            wait_for(lambda: mesh.outbound().status == 200, 15, what="outbound serving again after the stall")
            metrics = mesh.metrics()
            for listener in ("api", "outbound"):
                count = sample(metrics, "sidecar_overload_shed_total", listener=listener, reason="loop_lag")
                assert count is not None and count >= 1, (listener, metrics)
            assert "sidecar_overload_refused_connections_total{" not in metrics
            transitions = sample(metrics, "sidecar_overload_transitions_total", reason="loop_lag")
            assert transitions is not None and transitions >= 2
            mesh.process.wait_log(r"overload cleared: event-loop lag .* back under 180ms")
        finally:
            mesh.process.kill()


def stall_and_collect(mesh: Mesh, seconds: float) -> dict[str, object]:
    """Stop the process for ``seconds`` (its event loop with it), continue it, then send requests until the API
    and outbound listeners have each answered 503 or 5 s have passed; returns each one's 503 response, and
    whether the admin port answered while the guard said it was shedding."""
    assert mesh.process.proc is not None
    pid = mesh.process.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)   # the stimulus, not a wait for a condition: the loop is held this long
    finally:
        os.kill(pid, signal.SIGCONT)
    shed: dict[str, object] = {"admin-while-shedding": False}
    deadline = time.monotonic() + 5.0
    for _ in range(500):
        if time.monotonic() > deadline or ({"api", "outbound"} <= set(shed) and shed["admin-while-shedding"]):
            break
        for name, call in (("api", mesh.api), ("outbound", mesh.outbound)):
            if name not in shed:
                response = call()
                if response.status == 503 and b"overloaded: " in response.body:  # the guard's, not another 503
                    shed[name] = response
        if not shed["admin-while-shedding"]:
            shed["admin-while-shedding"] = bool(mesh.overload()["shedding"])
    return shed
