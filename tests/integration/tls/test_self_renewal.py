"""Certificates that renew themselves (tls.issuer) in real `sidecar run` processes: two sidecars whose 30 s
certificates renew at least twice under load with no failed request or handshake, a command issuer, a
failing one, and an unusable CA key refused at start."""

from __future__ import annotations

import shlex
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from sidecar.tls import certs
from tests.harness import FakeApp, LoadThreads, SidecarProcess, http, wait_for

TTL = "30s"
CHECKOUT = "spiffe://mesh.local/service/checkout"


def tls_for(directory: Path, name: str, issuer: dict[str, Any]) -> dict[str, Any]:
    return {"trust_domain": "mesh.local", "ca": str(directory / "ca.pem"), "cert": str(directory / f"{name}.pem"),
            "key": str(directory / f"{name}-key.pem"), "issuer": issuer}


def tls_status(process: SidecarProcess) -> dict[str, Any]:
    response = http("GET", process.admin + "/tls")
    assert response.status == 200, response
    return dict(response.json())


class SerialWatch:
    """Every serial a sidecar's /tls showed, in order, polled in a thread until stopped."""

    def __init__(self, processes: dict[str, SidecarProcess]) -> None:
        self.processes = processes
        self.seen: dict[str, list[str]] = {name: [] for name in processes}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            for name, process in self.processes.items():
                try:
                    serial = tls_status(process)["serial"]
                except (OSError, AssertionError) as exc:
                    self.errors.append(f"{name}: {exc!r}")
                    continue
                if not self.seen[name] or self.seen[name][-1] != serial:
                    self.seen[name].append(serial)
            self.stop.wait(0.2)

    def renewals(self, name: str) -> int:
        return max(len(self.seen[name]) - 1, 0)


class Load(LoadThreads):
    """New connections only: HTTP through node A with Connection: close, and direct mTLS handshakes (Python
    ssl, our own client certificate) to node B's inbound listener, each then asking for a page."""

    def __init__(self, outbound: str, inbound: str, directory: Path) -> None:
        self.outbound = outbound
        host, port = inbound.rsplit(":", 1)
        self.inbound = (host, int(port))
        self.directory = directory
        self.requests = 0
        self.handshakes = 0
        self.server_serials: list[int] = []
        super().__init__()

    max_seconds = 120.0  # bounded in time; in count by the pace
    pace = 0.01          # not a wait for anything: 2 cores are shared with the sidecars

    def loops(self) -> list[Callable[[], None]]:
        return [self._request, self._request, self._handshake]

    def _request(self) -> None:
        # urllib sends Connection: close: a new downstream connection for each request
        response = http("GET", f"http://{self.outbound}/renewal", headers={"Host": "inventory"}, timeout=10)
        with self.lock:
            if response.status == 200 and response.json()["app"] == "inventory":
                self.requests += 1
            else:
                self.failures.append(f"request: {response!r}")

    def _handshake(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # peers are named by SPIFFE ID, not host name
        context.load_verify_locations(self.directory / "ca.pem")
        context.load_cert_chain(self.directory / "prober.pem", self.directory / "prober-key.pem")
        with socket.create_connection(self.inbound, timeout=10) as raw, context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(b"GET /probe HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        if not data.startswith(b"HTTP/1.1 200 "):
            raise AssertionError(f"inbound answered {data[:200]!r}")
        with self.lock:
            self.handshakes += 1
            serial = x509.load_der_x509_certificate(der).serial_number
            if not self.server_serials or self.server_serials[-1] != serial:
                self.server_serials.append(serial)


def test_thirty_second_certificates_renew_twice_under_load(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "certs"
    certs.init_ca(directory, "mesh.local")
    for name in ("checkout", "inventory"):
        certs.issue(name, directory, TTL)  # backdated 5 min like every `sidecar certs issue`: renewed at start
    certs.issue("prober", directory, "1h")  # the test's own client, for direct handshakes
    issuer = {"ca_key": str(directory / "ca-key.pem"), "ttl": TTL}
    with FakeApp("inventory") as app:
        a = start_sidecar({"node": {"name": "node-a"}, "tls": tls_for(directory, "checkout", issuer)}, name="node-a")
        b = start_sidecar({"node": {"name": "node-b"}, "tls": tls_for(directory, "inventory", issuer),
                           "services": [{"name": "inventory", "port": app.port}],
                           "gossip": {"join": [a.listeners["gossip"]]}}, name="node-b")
        wait_for(lambda: http("GET", f"http://{a.listeners['outbound']}/", headers={"Host": "inventory"}).status
                 == 200, 20, what="inventory reachable through node-a")
        watch = SerialWatch({"a": a, "b": b})
        watch.thread.start()
        try:
            with Load(a.listeners["outbound"], b.listeners["inbound"], directory) as load:
                wait_for(lambda: load.requests >= 20 and load.handshakes >= 5, 20, what="load running")
                wait_for(lambda: watch.renewals("a") >= 2 and watch.renewals("b") >= 2, 75,
                         what=f"two renewals on each sidecar under load; seen {watch.seen}")
                # handshakes after the last renewal present B's newest certificate
                newest = int(watch.seen["b"][-1], 16)
                wait_for(lambda: load.server_serials[-1] == newest, 10, what="B's newest certificate presented")
        finally:
            watch.stop.set()
            watch.thread.join(10)
    print(f"requests {load.requests}, direct handshakes {load.handshakes}, serials seen {watch.seen},"
          f" B's certificates seen by the handshakes {len(load.server_serials)}")  # figures, shown with -s
    assert load.failures == [], load.failures[:10]
    assert watch.errors == []
    assert load.requests >= 100 and load.handshakes >= 50, (load.requests, load.handshakes)
    # the handshakes saw B's certificates change with its renewals
    assert len(load.server_serials) >= 3, load.server_serials
    for process, name in ((a, "checkout"), (b, "inventory")):
        status = tls_status(process)
        renewal = status["renewal"]
        assert renewal["results"]["failure"] == 0 and renewal["results"]["success"] >= 3, renewal
        assert status["refusals"]["total"] == 0, status["refusals"]
        assert status["last_error"] is None
        # the files hold what is served: a restart would find the renewed certificate
        assert format(certs.load_certificate(directory / f"{name}.pem").serial_number, "x") == status["serial"]
        assert certs.key_matches(certs.load_certificate(directory / f"{name}.pem"),
                                 certs.load_private_key(directory / f"{name}-key.pem"))
        assert (directory / f"{name}-key.pem").stat().st_mode & 0o777 == 0o600
        metrics = http("GET", process.admin + "/metrics").body.decode()
        assert 'sidecar_tls_certificate_renewals_total{result="failure"} 0.0' in metrics
        assert "sidecar_tls_certificate_expiry_timestamp_seconds " in metrics
        failures = [line for line in metrics.splitlines()
                    if line.startswith("sidecar_tls_handshake_failures_total{") and not line.endswith(" 0.0")]
        assert failures == []
        log = process.log_text()
        assert log.count("renewed our certificate") >= 3
        assert "certificate renewal failed" not in log
    assert "renewed our certificate spiffe_id=" + CHECKOUT in a.log_text()


def sidecar_certs_issue(directory: Path) -> str:
    """An issuer command around `sidecar certs issue`, which writes SERVICE.pem next to its CA: the CA is linked
    into the private directory of $SIDECAR_CERT and the result moved to where the sidecar wants it. The YAML
    config expands ${VAR} when it is loaded ($${VAR} is a literal), so the command says $VAR for its shell."""
    ca = shlex.quote(str(directory))
    return (f'd=$(dirname "$SIDECAR_CERT") && ln -s {ca}/ca.pem {ca}/ca-key.pem "$d"/'
            f' && {shlex.quote(sys.executable)} -m sidecar certs issue "$SIDECAR_SERVICE" --dir "$d"'
            ' --ttl "$SIDECAR_TTL_SECONDS"s'
            ' && mv "$d/$SIDECAR_SERVICE.pem" "$SIDECAR_CERT" && mv "$d/$SIDECAR_SERVICE-key.pem" "$SIDECAR_KEY"')


def test_a_command_issuer_renews(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "certs"
    certs.init_ca(directory, "mesh.local")
    old = certs.issue("checkout", directory, TTL)
    old_serial = format(certs.load_certificate(old.cert).serial_number, "x")
    a = start_sidecar({"tls": tls_for(directory, "checkout", {"command": sidecar_certs_issue(directory),
                                                               "ttl": "45s"})})
    wait_for(lambda: tls_status(a)["renewal"]["results"]["success"] >= 1, 20, what="renewed by the command")
    status = tls_status(a)
    assert status["serial"] != old_serial and status["spiffe_id"] == CHECKOUT
    assert status["renewal"]["issuer"] == "command" and status["renewal"]["ttl_seconds"] == 45
    assert 25 < status["renewal"]["next_renewal_in_seconds"] <= 31.5  # 70% of 45 s
    leaf = certs.load_certificate(directory / "checkout.pem")
    assert format(leaf.serial_number, "x") == status["serial"]
    assert 40 < (leaf.not_valid_after_utc.timestamp() - time.time()) <= 45
    a.wait_log("renewed our certificate")


def test_a_failing_command_keeps_the_certificate_and_says_why(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "certs"
    certs.init_ca(directory, "mesh.local")
    paths = certs.issue("checkout", directory, TTL)
    before = paths.cert.read_bytes(), paths.key.read_bytes()
    serial = format(certs.load_certificate(paths.cert).serial_number, "x")
    command = 'echo "vault: permission denied (token expired)" >&2; exit 3'
    a = start_sidecar({"tls": tls_for(directory, "checkout", {"command": command, "ttl": TTL})})
    line = a.wait_log("certificate renewal failed", 15)
    assert ("certificate renewal failed: tls.issuer.command exited with status 3: vault: permission denied"
            " (token expired). The current certificate keeps serving until") in line
    wait_for(lambda: tls_status(a)["renewal"]["results"]["failure"] >= 2, 15, what="retried")
    status = tls_status(a)
    assert status["serial"] == serial
    assert status["renewal"]["last_error"] == ("tls.issuer.command exited with status 3: vault: permission"
                                               " denied (token expired)")
    assert (paths.cert.read_bytes(), paths.key.read_bytes()) == before
    assert a.ready()
    metrics = http("GET", a.admin + "/metrics").body.decode()
    assert 'sidecar_tls_certificate_renewals_total{result="success"} 0.0' in metrics
    assert 'sidecar_tls_certificate_renewals_total{result="failure"} 0.0' not in metrics


def test_an_unusable_ca_key_is_refused_at_start(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "certs"
    certs.init_ca(directory, "mesh.local")
    certs.issue("checkout", directory, "1h")
    other = tmp_path / "other"
    certs.init_ca(other, "other.example")
    issuer = {"ca_key": str(other / "ca-key.pem"), "ca_cert": str(other / "ca.pem")}
    a = start_sidecar({"tls": tls_for(directory, "checkout", issuer)}, wait_ready=False)
    assert a.proc is not None
    assert a.proc.wait(20) == 2
    a.wait_log("tls.issuer.ca_key: the CA in .* serves trust domain other.example, not ours", 5)
