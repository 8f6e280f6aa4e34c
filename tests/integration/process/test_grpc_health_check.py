"""The gRPC health check against a real grpcio server running grpcio-health-checking's servicer: the check's
driver directly, then through a real ``sidecar run`` whose catalog follows the servicer's status."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.catalog.grpccheck import grpc_check
from sidecar.catalog.health import CheckResult
from sidecar.catalog.model import HealthStatus
from tests.harness import free_port, wait_for
from tests.integration.process.test_health_checks import EventReader, status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthApp:
    def __init__(self) -> None:
        self.servicer = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def set(self, service: str, serving: int) -> None:
        self.servicer.set(service, serving)  # type: ignore[arg-type]


@pytest.fixture
def app() -> Iterator[HealthApp]:
    health_app = HealthApp()
    yield health_app
    health_app.server.stop(grace=None)


def check(port: int, service: str, timeout: float = 2.0) -> CheckResult:
    return asyncio.run(grpc_check("127.0.0.1", port, service, timeout))


def test_serving_passes_and_not_serving_fails(app: HealthApp) -> None:
    app.set("pkg.Payments", SERVING)
    result = check(app.port, "pkg.Payments")
    assert result == CheckResult(HealthStatus.HEALTHY,
                                 f"gRPC Health/Check 127.0.0.1:{app.port} service 'pkg.Payments': SERVING")
    app.set("pkg.Payments", NOT_SERVING)
    result = check(app.port, "pkg.Payments")
    assert result == CheckResult(HealthStatus.UNHEALTHY,
                                 f"gRPC Health/Check 127.0.0.1:{app.port} service 'pkg.Payments': NOT_SERVING")


def test_empty_service_asks_about_the_whole_server(app: HealthApp) -> None:
    # grpcio's servicer answers "" with SERVING until told otherwise
    assert check(app.port, "").status is HealthStatus.HEALTHY
    app.set("", NOT_SERVING)
    assert check(app.port, "").output.endswith("service '': NOT_SERVING")


def test_unknown_service_is_a_grpc_status_failure(app: HealthApp) -> None:
    result = check(app.port, "pkg.Nobody")
    assert result.status is HealthStatus.UNHEALTHY
    assert result.output == (f"gRPC Health/Check 127.0.0.1:{app.port} service 'pkg.Nobody': "
                             "grpc-status 5 NOT_FOUND")


def test_refused_connection_fails() -> None:
    port = free_port()
    result = check(port, "pkg.Payments")
    assert result == CheckResult(HealthStatus.UNHEALTHY,
                                 f"gRPC Health/Check 127.0.0.1:{port} service 'pkg.Payments': Connection refused")


def test_silent_server_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # connects, never answers
        port = silent.getsockname()[1]
        result = check(port, "pkg.Payments", timeout=0.3)
    assert result == CheckResult(HealthStatus.UNHEALTHY,
                                 f"gRPC Health/Check 127.0.0.1:{port} service 'pkg.Payments': timed out after 0.300s")


def test_http1_server_fails_clearly() -> None:
    with socket.socket() as http1:
        http1.bind(("127.0.0.1", 0))
        http1.listen(1)
        port = http1.getsockname()[1]

        async def run() -> CheckResult:
            loop = asyncio.get_running_loop()
            task = asyncio.create_task(grpc_check("127.0.0.1", port, "x", 2.0))
            conn, _ = await loop.sock_accept(http1)
            conn.setblocking(False)
            await loop.sock_recv(conn, 65536)
            await loop.sock_sendall(conn, b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
            conn.close()
            return await task

        http1.setblocking(False)
        result = asyncio.run(run())
    assert result.status is HealthStatus.UNHEALTHY
    assert result.output.startswith(f"gRPC Health/Check 127.0.0.1:{port} service 'x': connection ended: ")


def test_sidecar_catalog_follows_the_grpc_servicer(app: HealthApp, start_sidecar) -> None:  # type: ignore[no-untyped-def]
    app.set("pkg.Payments", SERVING)
    sidecar = start_sidecar({"services": [{
        "name": "pay", "port": app.port,
        "check": {"grpc": "pkg.Payments", "interval": "100ms", "timeout": "100ms"}}]})
    sid = f"pay:node-a:{app.port}"
    events = EventReader(sidecar.api)
    wait_for(lambda: status(sidecar, sid) == "healthy", what="healthy while SERVING")
    app.set("pkg.Payments", NOT_SERVING)
    wait_for(lambda: status(sidecar, sid) == "unhealthy", what="unhealthy once NOT_SERVING")
    app.set("pkg.Payments", SERVING)
    wait_for(lambda: status(sidecar, sid) == "healthy", what="healthy again")
    outputs = [e["data"].get("output", "") for e in list(events.events) if e["type"] == "health-changed"]
    assert any(o.endswith("service 'pkg.Payments': NOT_SERVING") for o in outputs), outputs
    events.close()
