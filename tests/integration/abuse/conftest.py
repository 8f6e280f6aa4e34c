"""One real ``sidecar run`` process with every listener open (mTLS inbound, a registered app, an admin token,
gossip encryption), shared by the abuse tests of a module; and clients that check each listener still works.

The process is started once per module: abuse that kills it fails every later check of the module, which
is the point. Each check is a normal request on one listener, answered within ``NORMAL_LATENCY``.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from sidecar.gossip.envelope import Envelope
from sidecar.gossip.keyring import Keyring
from sidecar.gossip.messages import Ping, ProbeAck, from_wire, to_wire
from tests.harness import FakeApp, SidecarProcess, http, make_certs, raise_fd_limit

GOSSIP_KEY = "YWJ1c2UtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZjA="  # a fixed test key, never used elsewhere
ADMIN_TOKEN = "abuse-admin-token-7f3c9d"
# a normal request on loopback takes a few milliseconds; abuse may slow it, never past this
NORMAL_LATENCY = 1.0




def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Target:
    process: SidecarProcess
    app: FakeApp
    client_tls: ssl.SSLContext
    tmp: Path

    def address(self, listener: str) -> tuple[str, int]:
        return hostport(self.process.listeners[listener])

    @property
    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    # ------------------------------------------------------------------------- one normal request each

    def check_admin(self) -> None:
        assert http("GET", self.process.admin + "/ready", timeout=NORMAL_LATENCY).status == 200

    def check_api(self) -> None:
        response = http("GET", self.process.api + "/v1/catalog/web", timeout=NORMAL_LATENCY)
        assert response.status == 200 and response.json()[0]["name"] == "web", response

    def check_outbound(self) -> None:
        host, port = self.address("outbound")
        response = http("GET", f"http://{host}:{port}/normal", headers={"Host": "web"}, timeout=NORMAL_LATENCY)
        assert response.status == 200 and response.json()["path"] == "/normal", response

    def check_inbound(self) -> None:
        with socket.create_connection(self.address("inbound"), timeout=NORMAL_LATENCY) as raw, \
                self.client_tls.wrap_socket(raw, server_hostname="web") as tls:
            tls.sendall(b"GET /inbound HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            reply = read_until_close(tls, NORMAL_LATENCY)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]

    def check_dns(self) -> None:
        host, port = self.address("dns")
        query = dns.message.make_query("web.service.mesh", "A")
        for response in (dns.query.udp(query, host, port=port, timeout=NORMAL_LATENCY),
                         dns.query.tcp(query, host, port=port, timeout=NORMAL_LATENCY)):
            assert response.rcode() == dns.rcode.NOERROR and response.answer, response

    def check_gossip(self) -> None:
        """A sealed ping gets its ack, over UDP and over a TCP frame."""
        envelope = Envelope("default", Keyring([GOSSIP_KEY]))
        address = self.address("gossip")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(NORMAL_LATENCY)
            udp.bind(("127.0.0.1", 0))
            udp.sendto(envelope.seal(to_wire(Ping(4242, "node-a"))), address)
            deadline = time.monotonic() + NORMAL_LATENCY
            for _ in range(50):  # the member may also probe us: skip what is not our ack
                udp.settimeout(max(0.01, deadline - time.monotonic()))
                data = udp.recv(65535)
                if any(m == ProbeAck(4242) for m in _messages(envelope, data)):
                    break
            else:
                raise AssertionError("no ack over UDP")
        with socket.create_connection(address, timeout=NORMAL_LATENCY) as tcp:
            body = envelope.seal(to_wire(Ping(4243, "node-a")))
            tcp.sendall(struct.pack(">I", len(body)) + body)
            reply = read_until_close(tcp, NORMAL_LATENCY)
        assert from_wire(envelope.open(reply[4:])) == ProbeAck(4243)

    def check_all(self) -> dict[str, float]:
        """Every listener answers a normal request; returns the seconds each took."""
        took = {}
        for name, check in (("admin", self.check_admin), ("api", self.check_api), ("outbound", self.check_outbound),
                            ("inbound", self.check_inbound), ("dns", self.check_dns),
                            ("gossip", self.check_gossip)):
            start = time.monotonic()
            check()
            took[name] = time.monotonic() - start
        assert self.alive
        return took


def _messages(envelope: Envelope, data: bytes) -> list[object]:
    from sidecar.gossip.messages import packet_from_wire
    try:
        return list(packet_from_wire(envelope.open(data)))
    except Exception:
        return []


def read_until_close(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes; fails if it does not close within ``timeout``."""
    deadline = time.monotonic() + timeout
    chunks = []
    for _ in range(10000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the peer did not close within {timeout}s; got {b''.join(chunks)[:300]!r}")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def start_target(tmp: Path, app: FakeApp, overrides: dict[str, object] | None = None) -> Target:
    raise_fd_limit(16384)
    pki = make_certs(tmp / "certs", ["web", "client"])
    token = tmp / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    token.chmod(0o600)
    config: dict[str, object] = {
        "tls": pki["web"],
        "services": [{"name": "web", "port": app.port}],
        "admin": {"listen": "127.0.0.1:0", "token_file": str(token)},
        "gossip": {"encrypt_keys": [GOSSIP_KEY]},
        **(overrides or {}),
    }
    process = SidecarProcess(tmp, config).start()
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["client"]["ca"])
    client.check_hostname = False  # peers are named by SPIFFE URI, not DNS
    client.load_cert_chain(pki["client"]["cert"], pki["client"]["key"])
    return Target(process, app, client, tmp)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("abuse")
    with FakeApp("web") as app:
        started = start_target(tmp, app)
        try:
            yield started
        finally:
            started.process.kill()
