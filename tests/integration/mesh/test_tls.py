"""The inbound listener's mTLS edge with real clients (openssl s_client, Python ssl, raw sockets), tunnels with a
bad header, and a sidecar without tls."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from sidecar.config.model import ServiceConfig, UpstreamConfig
from sidecar.tls import certs
from sidecar.tls.context import ALPN_TCP_TUNNEL
from sidecar.tls.reasons import Refusal
from tests.harness import wait_for
from tests.integration.mesh.clients import curl, needs_curl
from tests.integration.mesh.conftest import App, LoopThread, Node, Pki, node_config, start_node, stop_node

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl (Debian package openssl) is not installed")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA of the same trust domain: its certificates name mesh.local but do not chain to our CA."""
    return Pki.create(tmp_path_factory.mktemp("foreign"), "checkout")


@pytest.fixture
def inbound(loop_thread: LoopThread, app: App, pki: Pki) -> Iterator[Node]:
    """A fresh node (so its refusal log starts empty) hosting inventory."""
    node = loop_thread.run(start_node(node_config("node-t", pki.tls("inventory"),
                                                  services=[ServiceConfig("inventory", app.port)])))
    yield node
    loop_thread.run(stop_node(node))


def refusals(node: Node, count: int) -> list[tuple[Refusal, str]]:
    assert node.store is not None
    log = node.store.refusals
    wait_for(lambda: len(log.recent) >= count, 10, what=f"{count} refusals")
    return [(r.kind, r.message) for r in log.recent]


def openssl(port: int, *args: str, stdin: bytes = b"") -> bytes:
    assert OPENSSL is not None
    out = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", *args], input=stdin,
                         capture_output=True, timeout=15)
    return out.stdout


@needs_openssl
def test_openssl_with_a_mesh_certificate_speaks_http_to_the_inbound(inbound: Node, pki: Pki) -> None:
    d = pki.directory
    out = openssl(inbound.port("inbound"), "-CAfile", str(d / "ca.pem"), "-cert", str(d / "checkout.pem"),
                  "-key", str(d / "checkout-key.pem"),
                  stdin=b"GET /headers HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 "), out[:300]
    assert b"spiffe://mesh.local/service/checkout" in out  # the app saw the caller
    listener = inbound.dataplane.inbound
    assert listener is not None
    wait_for(lambda: listener.handshakes["spiffe://mesh.local/service/checkout"] == 1, 5, what="handshake counted")


@needs_openssl
def test_inbound_refuses_and_logs_each_bad_client(inbound: Node, pki: Pki, foreign: Pki,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    port = inbound.port("inbound")
    request = b"GET /headers HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n"
    with caplog.at_level(logging.WARNING, logger="sidecar.tls"):
        # 1. plaintext HTTP
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request)
            reply = b""
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
            assert b"inventory" not in reply and b"200" not in reply
        # 2. no client certificate (openssl)
        out = openssl(port, "-CAfile", str(pki.directory / "ca.pem"), stdin=request)
        assert b"HTTP/1.1 200" not in out
        # 3. a certificate from a foreign CA (openssl)
        f = foreign.directory
        out = openssl(port, "-CAfile", str(pki.directory / "ca.pem"), "-cert", str(f / "checkout.pem"),
                      "-key", str(f / "checkout-key.pem"), stdin=request)
        assert b"HTTP/1.1 200" not in out
        # 4. an expired certificate (Python ssl)
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        old = certs.write_issued(certs.issue_from(certs.CertificateAuthority.load(pki.directory), "old", 86400.0,
                                                  not_before=start), pki.directory, "old")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(pki.directory / "ca.pem")
        context.load_cert_chain(old.cert, old.key)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            try:
                with context.wrap_socket(raw) as tls:
                    tls.sendall(request)
                    assert tls.recv(100) == b""
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                pass  # TLS 1.3: the refusal may arrive as an alert on the first read or write
        seen = refusals(inbound, 4)
        # each refusal is counted, then logged, in the loop's thread: wait for the fourth line too
        wait_for(lambda: sum("refused inbound mTLS" in r.getMessage() for r in caplog.records) >= 4, 5,
                 what="four refusals logged")
    kinds = [kind for kind, _ in seen]
    assert kinds == [Refusal.PLAINTEXT_HTTP, Refusal.NO_CERTIFICATE, Refusal.UNKNOWN_CA, Refusal.EXPIRED], seen
    assert "peer presented no certificate" in seen[1][1]
    assert "not signed by the mesh CA" in seen[2][1]
    assert seen[3][1].startswith("client certificate expired at 20")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for _, message in seen:
        assert message in logged
    assert inbound.dataplane.inbound is not None
    wait_for(lambda: inbound.dataplane.inbound is not None and inbound.dataplane.inbound.refused == 4, 5,
             what="refused handshakes counted")
    assert sum(inbound.dataplane.stats.requests.values()) == 0  # nothing reached the app


def _tunnel_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki.directory / "ca.pem")
    context.load_cert_chain(pki.directory / "checkout.pem", pki.directory / "checkout-key.pem")
    context.set_alpn_protocols([ALPN_TCP_TUNNEL])
    return context


def test_a_tunnel_with_a_bad_header_is_closed(inbound: Node, pki: Pki) -> None:
    listener = inbound.dataplane.inbound
    assert listener is not None
    for header in (b"GET / HTTP/1.1\r\n", b"x" * 300, b"sidecar-tcp/1 nosuch\n"):
        with socket.create_connection(("127.0.0.1", inbound.port("inbound")), timeout=5) as raw, \
                _tunnel_context(pki).wrap_socket(raw) as tls:
            assert tls.selected_alpn_protocol() == ALPN_TCP_TUNNEL
            tls.sendall(header)
            with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                assert tls.recv(100) == b""
    # two bad headers; the third is well formed but names a service this node does not have
    wait_for(lambda: listener.tunnel_refused == 2, 5, what="bad tunnel headers counted")
    wait_for(lambda: inbound.dataplane.inbound is not None and inbound.dataplane.inbound.tunnels.failed == 1, 5,
             what="unknown tunnel service refused")


def test_a_tunnel_reaches_a_plain_tcp_app(inbound: Node, pki: Pki, app: App) -> None:
    with socket.create_connection(("127.0.0.1", inbound.port("inbound")), timeout=5) as raw, \
            _tunnel_context(pki).wrap_socket(raw) as tls:
        tls.sendall(b"sidecar-tcp/1 inventory\nGET /headers HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"raw"' in reply  # bytes as sent: no header edits


@needs_curl
def test_without_tls_outbound_answers_503_and_inbound_is_not_opened(loop_thread: LoopThread, app: App) -> None:
    node = loop_thread.run(start_node(node_config("node-plain", None, services=[ServiceConfig("inventory", app.port)],
                                                  upstreams=[UpstreamConfig("inventory", 0, "tcp")])))
    try:
        assert set(node.bound) == {"outbound", "upstream:inventory"}
        reply = curl(f"http://127.0.0.1:{node.outbound}/headers", "-H", "Host: inventory")
        assert reply.status == 503 and reply.headers["x-sidecar-error"] == "UNAVAILABLE"
        assert "mTLS is not configured" in reply.error["message"]
        with socket.create_connection(("127.0.0.1", node.port("upstream:inventory")), timeout=5) as s, \
                contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
        wait_for(lambda: node.dataplane.stats.no_tls == 1, 5, what="counted")
    finally:
        loop_thread.run(stop_node(node))
