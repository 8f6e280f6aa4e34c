"""What the overload tests share: a real ``sidecar run`` with mTLS and one registered app (so outbound requests
cross the mesh: outbound -> our inbound over mTLS -> the app), and ways to read it from outside: resident
memory from /proc, samples from /metrics, a raw mTLS request to the inbound listener."""

from __future__ import annotations

import re
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import FakeApp, Response, SidecarProcess, http, make_certs


@dataclass
class Mesh:
    process: SidecarProcess
    app: FakeApp
    client_tls: ssl.SSLContext

    def address(self, listener: str) -> tuple[str, int]:
        host, _, port = self.process.listeners[listener].rpartition(":")
        return host, int(port)

    def outbound(self, path: str = "/normal", timeout: float = 5.0) -> Response:
        host, port = self.address("outbound")
        return http("GET", f"http://{host}:{port}{path}", headers={"Host": "web"}, timeout=timeout)

    def api(self, timeout: float = 5.0) -> Response:
        return http("GET", self.process.api + "/v1/catalog/web", timeout=timeout)

    def inbound(self, timeout: float = 5.0) -> bytes:
        """One request to the inbound listener over mTLS, as a peer sidecar; the raw response."""
        with socket.create_connection(self.address("inbound"), timeout=timeout) as raw, \
                self.client_tls.wrap_socket(raw, server_hostname="web") as tls:
            tls.sendall(b"GET /inbound HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            chunks = []
            for _ in range(1000):
                try:
                    data = tls.recv(65536)
                except (ConnectionResetError, ssl.SSLError):
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)

    def overload(self) -> dict[str, Any]:
        return dict(http("GET", self.process.admin + "/overload").json())

    def metrics(self) -> str:
        response = http("GET", self.process.admin + "/metrics")
        assert response.status == 200, response
        return response.body.decode()

    def rss(self) -> int:
        """Resident memory of the sidecar process, as the kernel reports it (not as the sidecar does)."""
        assert self.process.proc is not None
        with open(f"/proc/{self.process.proc.pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    @property
    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None


# every process start_mesh made in the running test; conftest.py kills those still running when the test ends,
# passed or failed (a failed assertion skips a test's own kill)
STARTED: list[SidecarProcess] = []


def start_mesh(tmp: Path, app: FakeApp, overrides: dict[str, Any] | None = None) -> Mesh:
    pki = make_certs(tmp / "certs", ["web", "client"])
    config: dict[str, Any] = {"tls": pki["web"], "services": [{"name": "web", "port": app.port}],
                              **(overrides or {})}
    process = SidecarProcess(tmp, config)
    STARTED.append(process)
    process.start()
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["client"]["ca"])
    client.check_hostname = False  # peers are named by SPIFFE URI, not DNS
    client.load_cert_chain(pki["client"]["cert"], pki["client"]["key"])
    return Mesh(process, app, client)


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition, or None when the series is absent."""
    for line in metrics.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0])) if "{" in line else {}
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return None


def open_idle(address: tuple[str, int], count: int, deadline: float) -> list[socket.socket]:
    """``count`` idle TCP connections to ``address``, opened before ``deadline`` (monotonic) or the test fails.
    Each is set to close with a reset (SO_LINGER 0): no TIME_WAIT left holding thousands of loopback ports."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(sockets)} of {count} connections opened in time")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.settimeout(10)
            sock.connect(address)
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
    sockets.clear()


def dropped_by_peer(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the peer has acted on: closed, reset, or answered (a refusal); a held idle
    connection is none of these. Does not block."""
    import select
    poller = select.poll()
    for sock in sockets:
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    return len(poller.poll(0))
