"""HTTP/2 at the inbound mTLS listener of a real `sidecar run`, with real clients: openssl s_client sees `h2`
selected by ALPN, python-hyper's h2 over ssl with a member certificate reaches the app (the caller identity set as
for HTTP/1.1) and is authorized per request on one connection, curl --http2 negotiates HTTP/2, and closing the
listener (SIGTERM) sends GOAWAY while the stream in flight finishes."""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.h2client import H2Client, RawH2
from tests.harness import FakeApp, JsonHandler, SidecarProcess, make_certs, wait_for
from tests.integration.grpc.mesh import launch
from tests.integration.mesh.clients import needs_curl

OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl (Debian package openssl) is not installed")
CALLER = "spiffe://mesh.local/service/checkout"
AUTHORIZATION = {"default": "allow", "rules": [{"to": "web", "paths": ["/secret*"], "action": "deny"}]}


@dataclass
class Callee:
    process: SidecarProcess
    certs: dict[str, dict[str, str]]
    app: FakeApp

    @property
    def port(self) -> int:
        return int(self.process.listeners["inbound"].rsplit(":", 1)[1])

    def member(self, service: str) -> dict[str, str]:
        return self.certs[service]


@pytest.fixture(scope="module")
def callee(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callee]:
    tmp = tmp_path_factory.mktemp("inbound-h2")
    certs = make_certs(tmp / "certs", ["checkout", "web"])
    with FakeApp("web") as app:
        process = launch(SidecarProcess(tmp, {"node": {"name": "node-b", "cluster": "h2"}, "tls": certs["web"],
                                              "services": [{"name": "web", "port": app.port}],
                                              "authorization": AUTHORIZATION}, name="node-b"))
        try:
            yield Callee(process, certs, app)
        finally:
            process.kill()


def openssl_alpn(port: int, tls: dict[str, str], offer: str) -> str:
    """The protocol the inbound selected for an `openssl s_client -alpn OFFER` handshake, as openssl prints it."""
    assert OPENSSL is not None
    out = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", offer, "-CAfile", tls["ca"],
                          "-cert", tls["cert"], "-key", tls["key"], "-servername", "web"],
                         input=b"", capture_output=True, timeout=15)
    for line in out.stdout.decode(errors="replace").splitlines():
        if line.startswith(("ALPN protocol:", "No ALPN negotiated")):
            return line
    raise AssertionError(out.stdout.decode(errors="replace")[-2000:])


@needs_openssl
def test_openssl_s_client_is_given_h2_when_it_offers_it(callee: Callee) -> None:
    member = callee.member("checkout")
    assert openssl_alpn(callee.port, member, "h2") == "ALPN protocol: h2"
    assert openssl_alpn(callee.port, member, "http/1.1,h2") == "ALPN protocol: h2"   # h2 preferred
    assert openssl_alpn(callee.port, member, "http/1.1") == "ALPN protocol: http/1.1"
    assert openssl_alpn(callee.port, member, "sidecar-tcp/1,h2") == "ALPN protocol: sidecar-tcp/1"


def test_an_h2_client_with_a_member_certificate_reaches_the_app_authorized_per_request(callee: Callee) -> None:
    client = H2Client(callee.port, callee.member("checkout"))
    try:
        seen = len(callee.app.headers)
        headers, body = client.request("GET", "/hello")
        assert headers[":status"] == "200", (headers, body)
        assert json.loads(body)["path"] == "/hello"
        assert callee.app.headers[seen]["x-sidecar-caller"] == CALLER   # the app sees who called, as over HTTP/1.1
        # a path the rules deny, on the same connection: refused for that request only
        headers, body = client.request("GET", "/secret/plans")
        assert headers[":status"] == "403", (headers, body)
        assert headers["x-sidecar-error"] == "PERMISSION_DENIED"
        assert "checkout may not call web" in json.loads(body)["error"]["message"]
        assert ("GET", "/secret/plans") not in callee.app.requests
        # many streams at once on the one connection
        sids = [client.start("GET", f"/many/{i}") for i in range(20)]
        for i, sid in enumerate(sids):
            headers, body = client.response(sid)
            assert headers[":status"] == "200" and json.loads(body)["path"] == f"/many/{i}"
    finally:
        client.close()


def test_a_caller_the_rules_deny_is_refused_per_request_over_h2(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", ["checkout", "web", "intruder"])
    only_checkout = {"default": "deny", "rules": [{"to": "web", "from": ["checkout"]}]}
    with FakeApp("web") as app:
        process = launch(SidecarProcess(tmp_path, {"node": {"name": "node-z", "cluster": "h2"}, "tls": certs["web"],
                                                   "services": [{"name": "web", "port": app.port}],
                                                   "authorization": only_checkout}, name="node-z"))
        try:
            port = int(process.listeners["inbound"].rsplit(":", 1)[1])
            intruder = H2Client(port, certs["intruder"])
            allowed = H2Client(port, certs["checkout"])
            try:
                for _ in range(2):
                    headers, body = intruder.request("GET", "/anything")
                    assert headers[":status"] == "403", (headers, body)
                    assert "intruder may not call web" in json.loads(body)["error"]["message"]
                headers, _ = allowed.request("GET", "/anything")
                assert headers[":status"] == "200"
            finally:
                intruder.close()
                allowed.close()
            assert app.requests.count(("GET", "/anything")) == 1
        finally:
            process.kill()


@needs_curl
@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_http2_over_mtls_negotiates_h2_and_reaches_the_app(callee: Callee) -> None:
    assert CURL is not None
    member = callee.member("checkout")
    # curl checks host names, which SPIFFE certificates do not carry: -k skips only that check's failure here;
    # the client certificate is still required and verified by the inbound
    out = subprocess.run([CURL, "-sS", "-k", "--http2", "--cert", member["cert"], "--key", member["key"],
                          "-H", "Host: web", "-w", "\\n%{http_version} %{http_code}",
                          f"https://127.0.0.1:{callee.port}/via-curl"], capture_output=True, timeout=15, text=True)
    body, _, summary = out.stdout.rpartition("\n")
    assert summary == "2 200", (out.stdout, out.stderr)
    assert json.loads(body)["path"] == "/via-curl"


class _SlowHandler(JsonHandler):
    arrived = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            self.send_json(200, {})
            return
        self.arrived.set()
        self.release.wait(10)
        self.send_json(200, {"path": self.path})


def test_sigterm_sends_goaway_and_the_stream_in_flight_finishes(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", ["checkout", "web"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    process = launch(SidecarProcess(tmp_path, {"node": {"name": "node-s", "cluster": "h2"}, "tls": certs["web"],
                                               "services": [{"name": "web", "port": server.server_address[1]}]},
                                    name="node-s"))
    try:
        port = int(process.listeners["inbound"].rsplit(":", 1)[1])
        # frames as they come: python-hyper's h2 stops reading a connection at its GOAWAY
        client = RawH2.over_tls(f"127.0.0.1:{port}", certs["checkout"], "web")
        try:
            sid = client.request([(":method", "GET"), (":scheme", "https"), (":path", "/slow"), (":authority", "web")],
                                 b"")
            wait_for(_SlowHandler.arrived.is_set, 10, what="the request reached the app")
            assert process.proc is not None
            process.proc.send_signal(signal.SIGTERM)
            client.read_until_goaway(10)   # the drain's GOAWAY, while the app still holds the answer
            _SlowHandler.release.set()
            frames = client.read_until_end(sid, 15)
        finally:
            client.close()
        goaway = next((i for i, f in enumerate(frames) if f.kind == "GOAWAY"), None)
        assert goaway is not None, frames
        assert frames[goaway].code == 0 and frames[goaway].stream == sid, frames[goaway]
        after = [f for f in frames[goaway:] if f.stream == sid and f.kind != "GOAWAY"]
        assert after and after[0].kind == "HEADERS" and dict(after[0].headers)[":status"] == "200", frames
        assert json.loads(b"".join(f.data for f in after))["path"] == "/slow"
        assert process.proc.wait(20) == 0
    finally:
        process.kill()
        server.shutdown()
        server.server_close()
