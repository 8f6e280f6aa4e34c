"""The mTLS listeners graded against Mozilla's "intermediate" profile.

The inbound listener of a real sidecar is scanned by sslyze (with a client certificate, since the listener
requires one), sslyze's own verdict is taken, and its JSON is read again independently (``tls_profile``):
versions, suites, key-exchange groups, the certificate's key, signature and lifetime, and the usual
vulnerabilities. A deliberately weak server is scanned the same way, to show the reading catches what it should.
The outbound side (the client of mTLS) is checked against real servers that offer only what it must refuse.

One difference from a web server is set up on purpose: sslyze's path validation is the web PKI's (a DNS name
to match, and a verifier without URI name constraints), while sidecars identify peers by SPIFFE URI and the
mesh CA is name-constrained to its trust domain. The scanned sidecar's certificate therefore comes from an
unconstrained CA and carries a DNS name as well; everything else is what `sidecar certs issue` makes by default.
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.tls import certs, context
from tests.harness import SidecarProcess
from tests.integration.security.tls_profile import SSLYZE, mozilla_profile, violations

pytestmark = [pytest.mark.skipif(not SSLYZE.exists(), reason=f"{SSLYZE} is missing; run `make tools`"),
              pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")]
SCANNED_NAME = "web.sidecar.test"  # resolved by sslyze's NAME:PORT{IP} target syntax, never by DNS


def pki(directory: Path) -> dict[str, Path]:
    """An unconstrained CA; the scanned server's certificate and the scanner's client certificate, both with
    the product's defaults (EC P-256, ECDSA-SHA256, `sidecar certs issue`'s default lifetime)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = certs.make_ca("mesh.local", constrained=False)
    certs.write_file(directory / "ca.pem", ca.certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    server = certs.write_issued(certs.issue_from(ca, "web", dns_names=[SCANNED_NAME]), directory, "web")
    client = certs.write_issued(certs.issue_from(ca, "scanner"), directory, "scanner")
    return {"ca": directory / "ca.pem", "cert": server.cert, "key": server.key, "client_cert": client.cert,
            "client_key": client.key}


def sslyze(port: int, files: dict[str, Path], out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One scan with the commands the Mozilla check needs, and nothing else; its exit status and JSON result."""
    result = subprocess.run(
        [str(SSLYZE), "--mozilla_config=intermediate", "--cert", str(files["client_cert"]),
         "--key", str(files["client_key"]), "--certinfo_ca_file", str(files["ca"]), "--json_out", str(out),
         f"{SCANNED_NAME}:{port}{{127.0.0.1}}"],
        capture_output=True, text=True, timeout=240)
    servers = json.loads(out.read_text())["server_scan_results"]
    assert len(servers) == 1, result.stdout[-2000:]
    return result, servers[0]


def test_the_inbound_listener_complies_with_mozilla_intermediate(tmp_path: Path) -> None:
    files = pki(tmp_path / "pki")
    tls = {"trust_domain": "mesh.local", "ca": str(files["ca"]), "cert": str(files["cert"]), "key": str(files["key"])}
    process = SidecarProcess(tmp_path, {"tls": tls, "services": [{"name": "web", "port": 9}]}).start()
    try:
        port = int(process.listeners["inbound"].rsplit(":", 1)[1])
        result, server = sslyze(port, files, tmp_path / "scan.json")
        assert process.proc is not None and process.proc.poll() is None  # the scan did not hurt it
    finally:
        assert process.terminate() == 0
    # sslyze's verdict
    assert "OK - Compliant" in result.stdout and result.returncode == 0, result.stdout[-3000:]
    # and our own reading of its JSON
    assert violations(server, mozilla_profile()) == []
    scan = server["scan_result"]
    for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
        assert scan[old]["result"]["is_tls_version_supported"] is False, old
        assert scan[old]["result"]["accepted_cipher_suites"] == []
    tls12 = {s["cipher_suite"]["name"] for s in scan["tls_1_2_cipher_suites"]["result"]["accepted_cipher_suites"]}
    assert tls12 and all("ECDHE" in s and ("GCM" in s or "CHACHA20" in s) for s in tls12), tls12
    assert {c["name"] for c in scan["elliptic_curves"]["result"]["supported_curves"]} == {"secp256r1"}


# ------------------------------------------------------------------------------------------ a weak server


@contextmanager
def tls_server(make: Any) -> Iterator[int]:
    """A real TLS server on loopback (threads), its context from ``make()``; yields its port."""
    server_context = make()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                with server_context.wrap_socket(self.request, server_side=True) as conn:
                    conn.settimeout(2)
                    conn.recv(1)
            except (OSError, ssl.SSLError):
                pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def weak_context(files: dict[str, Path]) -> ssl.SSLContext:
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    weak.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    weak.set_ciphers("ALL:@SECLEVEL=0")
    weak.load_cert_chain(files["cert"], files["key"])
    return weak


def test_the_reading_catches_a_weak_server(tmp_path: Path) -> None:
    files = pki(tmp_path / "pki")
    with tls_server(lambda: weak_context(files)) as port:
        result, server = sslyze(port, files, tmp_path / "scan.json")
    assert result.returncode != 0 and "Not compliant" in result.stdout
    found = violations(server, mozilla_profile())
    assert any(p.startswith("TLSv1 is accepted") for p in found), found
    assert any("weak suite" in p and "_CBC_" in p for p in found), found
    assert any(p.startswith("curve ") for p in found), found


# ------------------------------------------------------------------------------------------ the client side


def handshake(client: ssl.SSLContext, port: int) -> str | None:
    """The negotiated version, or None when the client refused (or was refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with client.wrap_socket(raw, server_hostname=SCANNED_NAME) as conn:
                return conn.version()
        except (ssl.SSLError, OSError):
            return None


@pytest.mark.parametrize(("offer", "configure"), [
    ("TLS 1.0 and 1.1 only", lambda c: (setattr(c, "maximum_version", ssl.TLSVersion.TLSv1_1),
                                         c.set_ciphers("ALL:@SECLEVEL=0"))),
    ("TLS 1.2 with CBC suites only", lambda c: (setattr(c, "maximum_version", ssl.TLSVersion.TLSv1_2),
                                                c.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384"))),
    ("TLS 1.2 without forward secrecy", lambda c: (setattr(c, "maximum_version", ssl.TLSVersion.TLSv1_2),
                                                   c.set_ciphers("AES128-GCM-SHA256:@SECLEVEL=0"))),
    ("key exchange on P-521 only", lambda c: c.set_ecdh_curve("secp521r1")),
    ("key exchange on X448 only", lambda c: c.set_ecdh_curve("X448")),
])
def test_the_outbound_side_refuses_what_the_profile_refuses(tmp_path: Path, offer: str, configure: Any) -> None:
    files = pki(tmp_path / "pki")
    client = context.client_context(files["ca"], files["client_cert"], files["client_key"])

    def make() -> ssl.SSLContext:
        server = weak_context(files)
        server.verify_mode = ssl.CERT_OPTIONAL
        server.load_verify_locations(files["ca"])
        configure(server)
        return server
    with tls_server(make) as port:
        assert handshake(client, port) is None, offer
    # the same server, left at its defaults, is reached (so the refusal above was the offer's doing)
    with tls_server(lambda: weak_context(files)) as port:
        assert handshake(client, port) == "TLSv1.3"


def test_the_outbound_side_speaks_the_profile_with_the_inbound_side(tmp_path: Path) -> None:
    files = pki(tmp_path / "pki")
    client = context.client_context(files["ca"], files["client_cert"], files["client_key"])
    with tls_server(lambda: context.server_context(files["ca"], files["cert"], files["key"], diagnose=False)) as port:
        assert handshake(client, port) == "TLSv1.3"
    # TLS 1.2 between sidecars works too (a peer limited to 1.2): the group and the certificate's curve agree
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_server(lambda: context.server_context(files["ca"], files["cert"], files["key"], diagnose=False)) as port:
        assert handshake(client, port) == "TLSv1.2"
