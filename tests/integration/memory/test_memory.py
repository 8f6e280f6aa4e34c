"""What a ``sidecar run`` costs in memory, read from outside as the kernel reports it (VmRSS of /proc), and which
modules it loads (every import the real process makes, printed by Python's ``-X importtime``): an idle sidecar,
the example config's or one with mTLS and a gossip key, imports none of DEFERRED_PACKAGES and DEFERRED_MODULES (the
OpenTelemetry SDK, ``rich``, HTTP/2, dnspython's codec, the request explainer, the CLI's HTTP client, tempfile,
shutil...), each of which loads with the feature, the command or the first request that uses it, and no
``cryptography`` at all, even two sidecars that seal their gossip, sign their claims and verify each other's (the ssl
module's libcrypto does it); one with ``exporter: otlp`` imports our OTLP encoder but not the SDK's exporter, and its
spans still reach the collector. Resident memory is checked idle, right after fifty concurrent clients, and per idle
mTLS connection on the inbound listener (run with -s to see the figures).

The bounds are regression guards set from what this 2-core machine measures, with room for allocator noise; the
targets of issue 21 (idle 45 MB, 60 MB after the c=50 bench, 16 KiB an idle mTLS connection) are not reached yet,
and ``python -m bench.memory`` prints the figures beside them. Where the memory goes, measured (``python -m
bench.memory.imports``, each package's marginal cost with all the others loaded): the interpreter, ssl and asyncio
~20 MiB (the gossip cipher and the claims' signatures call the libcrypto ssl maps, through sidecar.tls.libcrypto:
~0.5 MiB, where cryptography's Rust extension and its own OpenSSL cost ~9 MiB), sqlite and the message store's two
connections ~1.5 MiB, yaml ~1 MiB, the sidecar's own modules ~12 MiB. dnspython's message codec (~3 MiB) loads with
the first DNS query; /metrics needs no library; aiohttp is not imported (the HTTP servers are sidecar.httpd). Per
connection, OpenSSL 3's own state for a session with a verified client certificate is ~32 KiB
(bench/memory/openssl.py) before any buffer.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config.load import deep_merge
from sidecar.gossip.keyring import generate_key
from tests.harness import ROOT, FakeApp, LoadThreads, SidecarProcess, http, make_certs, raise_fd_limit, wait_for
from tests.integration.overload.common import sample
from tests.integration.telemetry.conftest import OtlpReceiver

# One service, mTLS, tracing off, everything else default: about 68 MiB when every module was imported up front,
# about 66.5 MiB with the SDK left out and start-up garbage returned to the kernel, 70.0 MiB with the larger compiled
# request path (DNS, telemetry, HTTP/2 framing and HPACK in the one shared library), 66.5 MiB with dnspython's
# message codec left to the first DNS query and /metrics written without prometheus_client; HTTP/2 itself is not
# imported while idle; 65.5 MiB with aiohttp's default client contexts left without the system CA store
# (67.1 MiB without); 63.5 MiB with certificates read by sidecar.tls.der instead of cryptography.x509; 54.4 MiB
# with the admin port, the app API and the delivery receiver on sidecar.httpd rather than aiohttp, which is no longer
# imported at all; 51.2 MiB with urllib.request (http.client, email), importlib.resources, tempfile, shutil (bz2,
# lzma), difflib and uuid left to the commands and the first uses that need them; 50.8 MiB with the compiled
# library's symbol tables and relocations no longer resident (setup.py); 41.4 MiB with that and gossip's AES-GCM and
# the claims' signatures on the ssl module's libcrypto rather than cryptography (about 10 MiB). Issue 21's goal is
# 45 MB (42.9 MiB). The bound is the measured figure plus 2 MiB, a guard against regressions with room for
# allocator noise; what it cannot see (a module imported and barely used) the module assertions do.
IDLE_RSS_BOUND = int(43.5 * 1024 * 1024)
# right after 50 concurrent keep-alive clients through outbound -> mTLS -> our own inbound -> the app: 48 MiB
# measured (the pooled mTLS connections, both ends in this one process, stay open for the peer idle timeout)
AFTER_LOAD_RSS_BOUND = 60 * 1024 * 1024
CLIENTS = 50
# per idle mTLS connection on the inbound: 44 KiB measured with 2,000, 44-59 with 10,000 (OpenSSL's state for the
# session and the verified client certificate ~32 KiB, uvloop's 256 KiB read buffer of which the touched pages, the
# engine's connection objects); a leaked request buffer (64 KiB) per connection fails it
CONNECTION_BOUND = 80 * 1024
CONNECTIONS = 2000
MiB = 1 << 20
# the answerer with dnspython's messages, names and rdata (~3 MiB resident), imported with the first DNS query
DNS_CODEC = ("sidecar.dns.answerer", "dns.message", "dns.name", "dns.rdata")
# the request explainer behind /debug/explain and `sidecar explain`, imported with the first question
EXPLAINER = "sidecar.ops.explain"
GOSSIP_KEY = generate_key()
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$")


# packages and modules an idle sidecar that does not use them never imports, each with what loads it
DEFERRED_PACKAGES = (
    "aiohttp",                    # never: the admin port, the app API and the delivery receiver are sidecar.httpd
                                  # (the SDK, sidecar.client, and the demo apps use it in their own processes)
    "yarl",                       # aiohttp's URL type, never either
    "multidict",                  # aiohttp's header type, never either
    "opentelemetry.sdk",          # telemetry.tracing.exporter: console (otlp is encoded by sidecar.telemetry.otlp)
    "opentelemetry.exporter",     # never: the OTLP exporter is sidecar.telemetry.export
    "rich",                       # the CLI's tables (sidecar members|catalog|clusters)
    "sidecar.demo",               # sidecar demo
    "h2",                         # python-hyper's h2: only the reference core, SIDECAR_H2_CORE=h2
    "prometheus_client",          # never: /metrics is written by sidecar.telemetry.exposition
    "cryptography",               # `sidecar certs` and renewals by tls.issuer.ca_key, which build certificates;
                                  # AES-GCM, signatures and HKDF are the ssl module's libcrypto (sidecar.tls.libcrypto)
    "urllib.request",             # the CLI commands that ask an admin port (sidecar.cli.admin), never `sidecar run`
    "http.client",                # urllib.request's, and telemetry.tracing.exporter: otlp (sidecar.telemetry.export)
    "email",                      # http.client's header parser
    "importlib.resources",        # the dashboard's page, read with the first GET / of the admin port
    "zipfile",                    # importlib.resources' readers
    "tempfile",                   # renewals by tls.issuer.command; TLS material where Linux has no memfd_create
    "difflib",                    # a config with an unknown key ("did you mean ...?")
    "uuid",                       # the first message an app sends (its id)
    "platform",                   # uuid's
    "shutil",                     # argparse's own help formatter (sidecar.cli.commands.help_formatter reads the
                                  # width without it), renewals by tls.issuer.command
    "bz2",                        # shutil's
    "lzma",                       # shutil's
)
# Plain-Python modules only: a compiled module imported by a compiled one (the tracer by the telemetry hub, our
# HPACK by the HTTP/2 core) is set up inside the compiled library and prints no import line, so its absence could
# not be seen here; each is named by the plain module that loads it instead.
DEFERRED_MODULES = (
    "sidecar.cli.views",          # the CLI's tables
    "sidecar.catalog.grpccheck",  # a check: {grpc: ...}
    "sidecar.http2.connection",   # the first h2c client, h2c app or gRPC check (and with it the HTTP/2 core, HPACK)
    "sidecar.telemetry.export",   # tracing.exporter: otlp (the tracer is loaded with any exporter but none)
    "sidecar.dns.forwarder",      # the first query outside the domain, with dns.upstreams
    *DNS_CODEC,                   # the first DNS query
    EXPLAINER,                    # the first /debug/explain question
)


def deferred_in(modules: set[str], packages: tuple[str, ...] = DEFERRED_PACKAGES) -> set[str]:
    """The modules of ``packages`` (DEFERRED_PACKAGES) and DEFERRED_MODULES among ``modules``."""
    return {m for m in modules if m in DEFERRED_MODULES
            or any(m == p or m.startswith(p + ".") for p in packages)}


def rss(process: SidecarProcess) -> int:
    """Resident memory of the sidecar process, as the kernel reports it (not as the sidecar does)."""
    assert process.proc is not None
    with open(f"/proc/{process.proc.pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def imported(process: SidecarProcess) -> set[str]:
    """Every module the process imported so far (PYTHONPROFILEIMPORTTIME prints one line per import)."""
    return {match.group(1) for line in list(process.lines) if (match := IMPORT_LINE.match(line))}


def start(tmp: Path, app: FakeApp, overrides: dict[str, Any] | None = None) -> SidecarProcess:
    """A sidecar hosting ``web`` with mTLS (its catalog claims signed) and a gossip key (its packets sealed)."""
    pki = make_certs(tmp / "certs", ["web", "client"])
    config: dict[str, Any] = {"tls": pki["web"], "services": [{"name": "web", "port": app.port}],
                              "gossip": {"encrypt_keys": [GOSSIP_KEY]}, **(overrides or {})}
    return SidecarProcess(tmp, config, env={"PYTHONPROFILEIMPORTTIME": "1"}).start()


def quiet_rss(process: SidecarProcess, seconds: float) -> int:
    """The largest resident size seen over ``seconds`` (a sample every 0.25 s)."""
    deadline, largest = time.monotonic() + seconds, rss(process)
    while time.monotonic() < deadline:
        time.sleep(0.25)     # a sampling period, not a wait for a condition
        largest = max(largest, rss(process))
    return largest


def open_sockets(process: SidecarProcess) -> int:
    value = sample(http("GET", process.admin + "/metrics").body.decode(), "sidecar_process_open_sockets")
    assert value is not None
    return int(value)


def peer_context(tmp: Path) -> ssl.SSLContext:
    """A peer sidecar's client side: the "client" service's certificate, the mesh CA (certs from ``start``)."""
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp / "certs" / "ca.pem"))
    client.check_hostname = False  # peers are named by SPIFFE URI, not DNS
    client.load_cert_chain(str(tmp / "certs" / "client.pem"), str(tmp / "certs" / "client-key.pem"))
    return client


def mtls_connection(host: str, port: int, client: ssl.SSLContext) -> ssl.SSLSocket:
    """A completed mTLS handshake with the inbound, as a peer sidecar's; closed with a reset (no TIME_WAIT)."""
    raw = socket.create_connection((host, port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return client.wrap_socket(raw, server_hostname="web")


class KeepAliveClients(LoadThreads):
    """``CLIENTS`` threads, each sending GETs on its own keep-alive connection to the outbound listener."""

    max_seconds = 30.0

    def __init__(self, address: str, per_client: int) -> None:
        self.host, _, port = address.rpartition(":")
        self.port = int(port)
        self.per_client = per_client
        self.sent = 0
        super().__init__()

    def loops(self) -> list[Callable[[], None]]:
        return [self._client for _ in range(CLIENTS)]

    def _client(self) -> None:
        conn = HTTPConnection(self.host, self.port, timeout=10)
        try:
            for _ in range(self.per_client):
                conn.request("GET", "/load", headers={"Host": "web"})
                reply = conn.getresponse()
                reply.read()
                if reply.status != 200:
                    self.fail(f"status {reply.status}")
                with self.lock:
                    self.sent += 1
        finally:
            conn.close()
        self.stop.wait(self.max_seconds)  # once is enough: idle until the test stops the threads


@pytest.fixture
def app() -> Iterator[FakeApp]:
    with FakeApp("web") as fake:
        yield fake


def outbound(process: SidecarProcess, path: str) -> int:
    """One request from the app's side: outbound listener -> our inbound over mTLS -> the app."""
    return http("GET", f"http://{process.listeners['outbound']}{path}", headers={"Host": "web"}).status


def test_idle_sidecar_without_tracing_stays_small_and_never_imports_the_sdk(tmp_path: Path, app: FakeApp) -> None:
    process = start(tmp_path, app)
    try:
        assert imported(process) >= {"sidecar.app", "sidecar.httpd", "ssl"}  # the lines are there to be read
        wait_for(lambda: outbound(process, "/warm") == 200, 10, what="a request through the mesh")
        # idle: the largest resident size seen over three seconds of health checks, gossip and admin reads
        samples = [rss(process)]
        for _ in range(6):
            assert http("GET", process.admin + "/ready").status == 200
            time.sleep(0.5)     # a sampling period, not a wait for a condition
            samples.append(rss(process))
        assert not deferred_in(imported(process))
        print(f"\nidle RSS {max(samples) / MiB:.1f} MiB")
        assert max(samples) < IDLE_RSS_BOUND, f"idle RSS {max(samples) / 2**20:.1f} MiB (samples {samples})"
    finally:
        process.terminate()


def test_the_example_config_idle_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    # config/sidecar.yaml as shipped (one service with an HTTP check, no tls, tracing off), its listeners moved to
    # free ports and its data to tmp_path
    example = yaml.safe_load((ROOT / "config" / "sidecar.yaml").read_text())
    listeners = {name: {"listen": "127.0.0.1:0"} for name in ("admin", "api", "outbound", "inbound", "dns", "gossip")}
    config = deep_merge(example, {**listeners, "node": {"data_dir": str(tmp_path / "data")}})
    process = SidecarProcess(tmp_path, config, name=example["node"]["name"],
                             env={"PYTHONPROFILEIMPORTTIME": "1"}).start()
    try:
        assert imported(process) >= {"sidecar.app", "sidecar.httpd", "ssl"}  # the lines are there to be read
        for _ in range(3):
            assert http("GET", process.admin + "/ready").status == 200
            assert http("GET", process.admin + "/metrics").status == 200
            assert http("GET", process.admin + "/debug/failures").status == 200
        assert not deferred_in(imported(process))
    finally:
        process.terminate()


def test_two_sidecars_seal_sign_and_verify_without_loading_cryptography(tmp_path: Path, app: FakeApp) -> None:
    # gossip sealed both ways under the key, each node's claim signed by its key and verified by the other (the
    # certificate checked against the CA, then the signature), a request over mTLS: all on the ssl module's libcrypto
    pki = make_certs(tmp_path / "certs", ["web", "client"])
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    a = SidecarProcess(tmp_path, {"tls": pki["web"], "services": [{"name": "web", "port": app.port}],
                                  "gossip": {"encrypt_keys": [GOSSIP_KEY]}}, name="node-a", env=env).start()
    try:
        b = SidecarProcess(tmp_path, {"tls": pki["client"], "services": [{"name": "client", "port": app.port}],
                                      "gossip": {"encrypt_keys": [GOSSIP_KEY], "join": [a.listeners["gossip"]]}},
                           name="node-b", env=env).start()
        try:
            wait_for(lambda: in_catalog(b, "web") and in_catalog(a, "client"), 30,
                     what="each node's signed claim in the other's catalog")
            reply = http("GET", f"http://{b.listeners['outbound']}/through", headers={"Host": "web"})
            assert reply.status == 200, reply
            for process in (a, b):
                modules = imported(process)
                assert "sidecar.tls.libcrypto" in modules        # the lines are there to be read
                assert not deferred_in(modules), (process.name, sorted(deferred_in(modules)))
        finally:
            b.terminate()
    finally:
        a.terminate()


def in_catalog(process: SidecarProcess, service: str) -> bool:
    reply = http("GET", f"{process.api}/v1/catalog/{service}")
    return reply.status == 200 and bool(reply.json())


def test_dns_loads_its_message_codec_with_the_first_query(tmp_path: Path, app: FakeApp) -> None:
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed (Debian: bind9-dnsutils)")
    process = start(tmp_path, app)
    try:
        assert not {*DNS_CODEC, "sidecar.dns.forwarder"} & imported(process)
        host, _, port = process.listeners["dns"].rpartition(":")
        done = subprocess.run(["dig", f"@{host}", "-p", port, "+short", "+tries=1", "+timeout=5",
                               "web.service.mesh", "A"], capture_output=True, text=True, timeout=20, check=False)
        assert done.stdout.split() == ["127.0.0.1"], done.stdout + done.stderr
        assert wait_for(lambda: set(DNS_CODEC) <= imported(process), 5, what="the import lines of dnspython")
        assert "sidecar.dns.forwarder" not in imported(process)  # a name in the domain: nothing to forward
        metrics = http("GET", process.admin + "/metrics").body.decode()
        assert sample(metrics, "sidecar_dns_responses_total", rcode="NOERROR") == 1
    finally:
        process.terminate()


def test_the_request_explainer_loads_with_the_first_question(tmp_path: Path, app: FakeApp) -> None:
    process = start(tmp_path, app)
    try:
        assert EXPLAINER not in imported(process)
        failures = http("GET", process.admin + "/debug/failures")       # the ring is there without the explainer
        assert failures.status == 200 and failures.json()["failures"] == []
        assert EXPLAINER not in imported(process)
        reply = http("GET", process.admin + "/debug/explain?service=web&path=/x&method=GET")
        assert reply.status == 200, reply
        assert reply.json()["service"] == "web"
        assert wait_for(lambda: EXPLAINER in imported(process), 5, what="the import line of the explainer")
    finally:
        process.terminate()


def test_otlp_tracing_reaches_the_collector_without_loading_the_sdk(tmp_path: Path, app: FakeApp) -> None:
    collector = OtlpReceiver()
    process = start(tmp_path, app, {"telemetry": {"tracing": {"exporter": "otlp", "endpoint": collector.url}}})
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        reply = http("GET", f"http://{process.listeners['outbound']}/traced", headers={
            "Host": "web", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert reply.status == 200, reply
        spans = wait_for(lambda: len(collector.trace(trace_id)) >= 2 and collector.trace(trace_id), 15,
                         what="the client and server spans at the OTLP collector")
        assert {span.kind for span in spans} == {2, 3}          # SERVER and CLIENT
        modules = imported(process)
        # our OTLP exporter was loaded (export is plain Python: a compiled module imported by a compiled one,
        # as tracing and otlp are, prints no import line)
        assert "sidecar.telemetry.export" in modules
        assert not {m for m in modules if m == "opentelemetry.sdk" or m.startswith("opentelemetry.sdk.")}
        assert not {m for m in modules if m.startswith("opentelemetry.exporter")}
    finally:
        process.terminate()
        collector.close()


def test_console_tracing_imports_only_the_console_exporter(tmp_path: Path, app: FakeApp) -> None:
    process = start(tmp_path, app, {"telemetry": {"tracing": {"exporter": "console"}}})
    try:
        trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
        reply = http("GET", f"http://{process.listeners['outbound']}/traced", headers={
            "Host": "web", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert reply.status == 200, reply
        process.wait_log(f"0x{trace_id}", 15)                   # ConsoleSpanExporter's JSON on stdout
        modules = imported(process)
        assert "opentelemetry.sdk.trace" in modules
        assert not {m for m in modules if m.startswith("opentelemetry.exporter")}
    finally:
        process.terminate()


def test_rss_right_after_fifty_concurrent_clients_stays_bounded(tmp_path: Path, app: FakeApp) -> None:
    process = start(tmp_path, app)
    try:
        wait_for(lambda: outbound(process, "/warm") == 200, 10, what="a request through the mesh")
        idle = quiet_rss(process, 2.0)
        per_client = 60
        clients = KeepAliveClients(process.listeners["outbound"], per_client)
        with clients:
            wait_for(lambda: clients.sent >= CLIENTS * per_client or clients.failures, 60,
                     what=f"{CLIENTS} x {per_client} requests through the mesh")
        assert not clients.failures, clients.failures[:5]
        loaded = quiet_rss(process, 1.0)
        print(f"\nRSS idle {idle / MiB:.1f} MiB, right after {clients.sent} requests from {CLIENTS} concurrent "
              f"clients {loaded / MiB:.1f} MiB")
        assert loaded < AFTER_LOAD_RSS_BOUND, f"after load {loaded / MiB:.1f} MiB (idle {idle / MiB:.1f} MiB)"
    finally:
        process.terminate()


def test_an_idle_mtls_connection_on_the_inbound_costs_a_bounded_resident_size(tmp_path: Path, app: FakeApp) -> None:
    wanted = CONNECTIONS + 1024
    if raise_fd_limit(wanted) < wanted:
        pytest.skip(f"needs {wanted} open files; the hard limit (ulimit -Hn) is lower")
    # the event-loop lag check off: on a machine busy with other work, 2,000 handshakes in a row can lag the loop
    # past 500 ms, and the guard would then refuse new connections (memory is what is measured here)
    process = start(tmp_path, app, {"overload": {"max_loop_lag": 0}})
    held: list[ssl.SSLSocket] = []
    try:
        host, _, port = process.listeners["inbound"].rpartition(":")
        client = peer_context(tmp_path)
        base, before = open_sockets(process), quiet_rss(process, 1.0)
        # opened from 4 threads: the inbound closes a connection that sends no request for a while, so all of them
        # must be open well within that time, even on a busy machine
        with ThreadPoolExecutor(4) as pool:
            held = list(pool.map(lambda _: mtls_connection(host, int(port), client), range(CONNECTIONS)))
        wait_for(lambda: open_sockets(process) - base >= CONNECTIONS * 0.95, 30,
                 what=f"the inbound holding the {CONNECTIONS} mTLS connections")
        at = quiet_rss(process, 1.0)
        accepted = open_sockets(process) - base        # read after the RSS: any closed since only raise the figure
        assert outbound(process, "/still") == 200       # the process serves on with the connections held
        per = (at - before) / accepted
        print(f"\n{accepted} idle mTLS connections: RSS {before / MiB:.1f} -> {at / MiB:.1f} MiB, "
              f"{per / 1024:.1f} KiB each")
        assert per < CONNECTION_BOUND, f"{per / 1024:.1f} KiB per idle mTLS connection"
    finally:
        for sock in held:
            sock.close()
        process.terminate()
