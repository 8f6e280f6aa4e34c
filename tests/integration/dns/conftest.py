"""A real DnsServer on loopback, fed a snapshot the test controls, and the clients that query it.

The server runs on its own event loop in a thread, so tests can call blocking clients (dig, kdig,
dnspython's sync API) directly. Helpers are handed out as fixtures, not imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from sidecar.catalog.model import CatalogSnapshot, HealthStatus, NodeInfo, ServiceMetadata
from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.model import DnsConfig, DnsRateLimit
from sidecar.config.values import Duration, HostPort
from sidecar.dns.server import DnsServer
from tests.loops import LoopThread

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
CLIENT_TIMEOUT = 3.0


# --------------------------------------------------------------------------------------- catalog


def instance(id: str, name: str, node: str, status: HealthStatus = H, tags: tuple[str, ...] = ()) -> ServiceMetadata:
    return ServiceMetadata(id=id, name=name, version="1", host="127.0.0.1", port=8080, tags=tags, status=status,
                           node=node)


def catalog(version: int = 1, web3: HealthStatus = D, big: int = 100) -> CatalogSnapshot:
    """web on n1 (blue), n2 (green) healthy, n3 (blue, ``web3``); api on an IPv6 node; big on ``big`` nodes."""
    nodes = {
        "n1": NodeInfo("n1", "10.0.0.1", 15001),
        "n2": NodeInfo("n2", "10.0.0.2", 15002),
        "n3": NodeInfo("n3", "10.0.0.3", 15003),
        "n6": NodeInfo("n6", "fd00::6", 15006),
    }
    nodes.update({f"b{i}": NodeInfo(f"b{i}", f"10.2.{i // 250}.{i % 250 + 1}", 20000) for i in range(big)})
    instances = (
        instance("web-1", "web", "n1", tags=("blue",)),
        instance("web-2", "web", "n2", tags=("green",)),
        instance("web-3", "web", "n3", web3, tags=("blue",)),
        instance("api-6", "api", "n6"),
        *(instance(f"big-{i}", "big", f"b{i}") for i in range(big)),
    )
    return CatalogSnapshot(version=version, nodes=nodes, instances=instances)


class Cell:
    """The snapshot the server sees; tests swap it."""

    def __init__(self, snapshot: CatalogSnapshot) -> None:
        self.current = snapshot

    def __call__(self) -> CatalogSnapshot:
        return self.current


# ------------------------------------------------------------------------------------ event loop


# ----------------------------------------------------------------------------------- client output


@dataclass
class Result:
    """One response as any client showed it; records are (name, ttl, type, rdata) with names as printed."""

    status: str
    flags: set[str]
    answer: list[tuple[str, int, str, str]] = field(default_factory=list)
    authority: list[tuple[str, int, str, str]] = field(default_factory=list)
    additional: list[tuple[str, int, str, str]] = field(default_factory=list)
    text: str = ""

    def rdata(self, section: str = "answer", rdtype: str | None = None) -> list[str]:
        return [r[3] for r in getattr(self, section) if rdtype is None or r[2] == rdtype]


def parse_client_output(text: str) -> Result:
    """dig and kdig print the same sections; their headers differ in punctuation only."""
    statuses = re.findall(r"status: (\w+)", text)
    flag_lines = re.findall(r"[Ff]lags: ([a-z ]*);", text)
    assert statuses and flag_lines, f"no response in client output:\n{text}"
    result = Result(statuses[-1], set(flag_lines[-1].split()), text=text)
    section: list[tuple[str, int, str, str]] | None = None
    for line in text.splitlines():
        if "ANSWER SECTION" in line:
            section = result.answer = []
        elif "AUTHORITY SECTION" in line:
            section = result.authority = []
        elif "ADDITIONAL SECTION" in line:
            section = result.additional = []
        elif not line.strip() or line.startswith(";"):
            if not line.strip():
                section = None
        elif section is not None:
            name, ttl, _cls, rdtype, *rdata = line.split()
            section.append((name, int(ttl), rdtype, " ".join(rdata)))
    return result


def from_message(message: dns.message.Message) -> Result:
    def rows(rrsets: list[dns.rrset.RRset]) -> list[tuple[str, int, str, str]]:
        return [(rrset.name.to_text(), rrset.ttl, dns.rdatatype.to_text(rrset.rdtype), rd.to_text())
                for rrset in rrsets for rd in rrset]

    flags = set(dns.flags.to_text(message.flags).lower().split())
    return Result(dns.rcode.to_text(message.rcode()), flags, rows(message.answer), rows(message.authority),
                  rows(message.additional))


# ----------------------------------------------------------------------------------- the server


@dataclass
class Running:
    server: DnsServer
    host: str
    port: int
    cell: Cell
    loop: LoopThread

    from_message = staticmethod(from_message)

    def set(self, snapshot: CatalogSnapshot) -> None:
        self.cell.current = snapshot

    def message(self, name: str, rdtype: str = "A", *, tcp: bool = False, **kw: Any) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **kw)
        if tcp:
            return dns.query.tcp(query, self.host, timeout=CLIENT_TIMEOUT, port=self.port)
        return dns.query.udp(query, self.host, timeout=CLIENT_TIMEOUT, port=self.port)

    def dig(self, *args: str) -> Result:
        return parse_client_output(_run_tool("dig", f"@{self.host}", "-p", str(self.port), "+tries=1",
                                             f"+timeout={int(CLIENT_TIMEOUT)}", *args))

    def kdig(self, *args: str) -> Result:
        return parse_client_output(_run_tool("kdig", f"@{self.host}", "-p", str(self.port), "+retry=0",
                                             f"+timeout={int(CLIENT_TIMEOUT)}", *args))


def _run_tool(tool: str, *args: str) -> str:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (Debian: bind9-dnsutils for dig, knot-dnsutils for kdig)")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=4 * CLIENT_TIMEOUT, check=False)
    return done.stdout + done.stderr


@pytest.fixture(params=["uvloop"])
def loop_thread(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    thread = LoopThread(use_uvloop=request.param == "uvloop")
    yield thread
    thread.close()


@pytest.fixture
def asyncio_loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread(use_uvloop=False)
    yield thread
    thread.close()


StartServer = Callable[..., Running]


def _server_factory(loop: LoopThread) -> tuple[StartServer, list[Running]]:
    started: list[Running] = []

    def start(
        snapshot: CatalogSnapshot | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        upstreams: list[tuple[str, int]] = (),  # type: ignore[assignment]
        upstream_timeout: float = 1.0,
        qps: float = 0.0,
        burst: int = 100,
        clock: Clock = SYSTEM_CLOCK,
        **server_kw: Any,
    ) -> Running:
        config = DnsConfig(
            listen=HostPort(host, port),
            upstreams=[HostPort(h, p) for h, p in upstreams],
            upstream_timeout=Duration(upstream_timeout),
            rate_limit=DnsRateLimit(qps=qps, burst=burst),
        )
        cell = Cell(snapshot or catalog())
        server = DnsServer(config, cell, clock, **server_kw)
        bound_host, port = loop.run(server.start())
        running = Running(server, bound_host, port, cell, loop)
        started.append(running)
        return running

    return start, started


@pytest.fixture
def dns_server(loop_thread: LoopThread) -> Iterator[StartServer]:
    start, started = _server_factory(loop_thread)
    yield start
    for running in started:
        loop_thread.run(running.server.stop())


@pytest.fixture
def dns_server_on_asyncio(asyncio_loop_thread: LoopThread) -> Iterator[StartServer]:
    start, started = _server_factory(asyncio_loop_thread)
    yield start
    for running in started:
        asyncio_loop_thread.run(running.server.stop())


# --------------------------------------------------------------------------------- an upstream


class FakeUpstream:
    """A small authoritative server for ``example.test`` on UDP and TCP, made with dnspython.

    ``NAME.example.test A`` → 192.0.2.1; ``big.example.test TXT`` → ~4.6 kB (truncated over UDP);
    ``wide.example.test TXT`` → ~3.7 kB, whole over UDP with a 4096-byte EDNS buffer (80 times its query);
    anything else NXDOMAIN.
    """

    def __init__(self) -> None:
        self.udp_queries = 0
        self.tcp_queries = 0
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.port = 0

    def respond(self, data: bytes, limit: int) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        origin = dns.name.from_text("example.test")
        if question.name == dns.name.from_text("big.example.test") and question.rdtype == dns.rdatatype.TXT:
            texts = [f'"{i:02d}{"x" * 98}"' for i in range(40)]
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", "TXT", texts))
        elif question.name == dns.name.from_text("wide.example.test") and question.rdtype == dns.rdatatype.TXT:
            texts = [f'"{i:02d}{"x" * 98}"' for i in range(32)]
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", "TXT", texts))
        elif question.name.is_subdomain(origin) and question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "192.0.2.1"))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire(max_size=limit, prefer_truncation=True)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        upstream = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
                upstream.udp_queries += 1
                query = dns.message.from_wire(data)
                limit = max(512, query.payload) if query.edns >= 0 else 512
                self.transport.sendto(upstream.respond(data, limit), addr)  # type: ignore[attr-defined]

        async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                    upstream.tcp_queries += 1
                    answer = upstream.respond(data, 65535)
                    writer.write(len(answer).to_bytes(2, "big") + answer)
                    await writer.drain()
            writer.close()

        for _ in range(20):
            self.udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            self.port = self.udp.get_extra_info("sockname")[1]
            try:
                self.tcp = await asyncio.start_server(on_tcp, "127.0.0.1", self.port)
            except OSError:
                self.udp.close()
                continue
            return self.port
        raise RuntimeError("no free port for the fake upstream")

    async def stop(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()


@pytest.fixture
def upstream(loop_thread: LoopThread) -> Iterator[Callable[[], tuple[FakeUpstream, int]]]:
    started: list[FakeUpstream] = []

    def start() -> tuple[FakeUpstream, int]:
        fake = FakeUpstream()
        port = loop_thread.run(fake.start())
        started.append(fake)
        return fake, port

    yield start
    for fake in started:
        loop_thread.run(fake.stop())


@pytest.fixture
def dead_udp_port() -> Iterator[int]:
    """A loopback port nobody listens on (UDP gets ICMP port unreachable at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    yield port


@pytest.fixture
def silent_udp_port() -> Iterator[int]:
    """A loopback UDP port that receives and never answers (and a TCP port nobody accepts on)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield int(sock.getsockname()[1])
    sock.close()


@pytest.fixture
def snapshots() -> type[_Snapshots]:
    return _Snapshots


class _Snapshots:
    catalog = staticmethod(catalog)
    instance = staticmethod(instance)
    parse = staticmethod(parse_client_output)
    from_message = staticmethod(from_message)
