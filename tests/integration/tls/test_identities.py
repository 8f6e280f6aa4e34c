"""One sidecar, several services, one X.509-SVID each (SPEC: Identity): the inbound answers with the certificate of
the service the caller's SNI names, refuses a name it holds no certificate for, and keeps a connection opened
for one service to that service. Real sidecar processes, real clients (openssl s_client, Python's ssl)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from sidecar.tls import certs
from sidecar.tls.context import service_server_name
from sidecar.tls.der import parse_certificate
from sidecar.tls.identity import spiffe_ids
from tests.harness import FakeApp, SidecarProcess, http, make_certs, wait_for

OPENSSL = shutil.which("openssl")


def client(pki: dict[str, dict[str, str]], name: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki[name]["ca"])
    context.load_cert_chain(pki[name]["cert"], pki[name]["key"])
    return context


def served_identity(port: int, context: ssl.SSLContext, server_name: str | None) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return spiffe_ids(parse_certificate(der))[0]


def serial(port: int, context: ssl.SSLContext, service: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=service_server_name(service, "127.0.0.1", port)) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return parse_certificate(der).serial_number


def ask(port: int, context: ssl.SSLContext, server_name: str, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        tls.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data


def test_the_inbound_answers_each_service_with_its_own_certificate(tmp_path: Path) -> None:
    pki = make_certs(tmp_path / "certs", ["pay", "inv", "checkout"])
    with FakeApp("pay") as pay_app, FakeApp("inv") as inv_app:
        tls = {**pki["pay"], "identities": [{"service": "inv", "cert": pki["inv"]["cert"], "key": pki["inv"]["key"]}]}
        b = SidecarProcess(tmp_path, {"tls": tls, "services": [{"name": "pay", "port": pay_app.port},
                                                               {"name": "inv", "port": inv_app.port}]},
                           name="node-b").start()
        wait_for(lambda: "gossip" in b.listeners, 10, what="node-b's gossip address")
        a = SidecarProcess(tmp_path, {"tls": pki["checkout"], "gossip": {"join": [b.listeners["gossip"]]}},
                           name="node-a").start()
        try:
            outbound = f"http://{a.listeners['outbound']}/x"
            wait_for(lambda: http("GET", outbound, headers={"Host": "inv"}).status == 200, 20, what="inv reachable")
            for service in ("pay", "inv"):   # each through its own certificate, checked by the caller
                reply = http("GET", outbound, headers={"Host": service})
                assert (reply.status, reply.json()["app"]) == (200, service), reply

            port = int(b.listeners["inbound"].rsplit(":", 1)[1])
            checkout = client(pki, "checkout")
            assert served_identity(port, checkout, service_server_name("inv", "127.0.0.1", port)) \
                == "spiffe://mesh.local/service/inv"
            assert served_identity(port, checkout, service_server_name("pay", "127.0.0.1", port)) \
                == "spiffe://mesh.local/service/pay"
            # no service named: the first identity
            assert served_identity(port, checkout, None) == "spiffe://mesh.local/service/pay"
            # a service this sidecar holds no certificate for: the handshake fails
            with pytest.raises(ssl.SSLError):
                served_identity(port, checkout, service_server_name("ghost", "127.0.0.1", port))
            b.wait_log("refused inbound mTLS connection .*asked \\(by SNI\\) for service ghost, which this sidecar"
                       " holds no certificate for")
            # a connection opened for pay carries pay's requests only
            assert ask(port, checkout, service_server_name("pay", "127.0.0.1", port), "pay").startswith(b"HTTP/1.1 200")
            wrong = ask(port, checkout, service_server_name("pay", "127.0.0.1", port), "inv")
            assert wrong.startswith(b"HTTP/1.1 400") and b"opened for pay" in wrong, wrong[:300]

            # a new certificate for inv is picked up without a restart, for that identity only
            before = {name: serial(port, checkout, name) for name in ("pay", "inv")}
            reissued = certs.issue("inv", tmp_path / "certs", ttl="1h")
            fresh = certs.load_certificate(reissued.cert).serial_number
            wait_for(lambda: serial(port, checkout, "inv") == fresh, 20, what="inv's new certificate served")
            assert serial(port, checkout, "pay") == before["pay"] and before["inv"] != fresh
            # and inv's claims are signed again with it: the caller refuses none and still reaches inv
            assert http("GET", a.admin + "/gossip").json()["catalogClaimsRefused"] == {}
            assert http("GET", outbound, headers={"Host": "inv"}).status == 200

            if OPENSSL is not None:
                shown = subprocess.run(
                    [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                     service_server_name("inv", "127.0.0.1", port), "-cert", pki["checkout"]["cert"],
                     "-key", pki["checkout"]["key"], "-CAfile", pki["checkout"]["ca"]],
                    input="", capture_output=True, text=True, timeout=10)
                assert "CN = inv" in shown.stdout or "CN=inv" in shown.stdout, shown.stdout[-2000:]
        finally:
            a.kill()
            b.kill()


def test_a_dial_for_a_service_refuses_another_services_certificate_in_the_handshake(tmp_path: Path) -> None:
    """Any dialer with the mesh client context (the data plane, messaging's deliveries to a node's stream readers)
    that names a service by SNI gets that service's certificate or no connection: an impostor answering every
    name with its own certificate (here a plain TLS server) never receives a byte."""
    import asyncio
    import threading

    from sidecar.tls.context import WrongServiceError, client_context

    pki = make_certs(tmp_path / "certs", ["pay", "intruder", "checkout"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["intruder"]["cert"], pki["intruder"]["key"])
    server.load_verify_locations(pki["intruder"]["ca"])
    server.verify_mode = ssl.CERT_REQUIRED
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            raw, _ = listener.accept()
            try:
                with server.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(5)
                    received.append(tls.recv(1024))
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    mesh = client_context(pki["checkout"]["ca"], pki["checkout"]["cert"], pki["checkout"]["key"])

    async def dial() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=mesh,
                                                  server_hostname=service_server_name("pay", "127.0.0.1", port))
        writer.write(b"POST /.sidecar/deliver/news HTTP/1.1\r\n\r\nsecret")
        await writer.drain()

    refused = r"server is spiffe://mesh\.local/service/intruder, not the service pay"
    with pytest.raises(WrongServiceError, match=refused):
        asyncio.run(asyncio.wait_for(dial(), 10))
    thread.join(10)
    assert received in ([], [b""]), received
