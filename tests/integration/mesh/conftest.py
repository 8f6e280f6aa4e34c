"""Sidecar data planes on loopback with real sockets and real mTLS: several DataPlanes in one uvloop thread,
the destination app in its own process, blocking clients (curl, openssl, grpcio, sockets) in the test thread.

The catalog is fed by hand (``link``), as gossip would: node A learns node B's address and services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import SYSTEM_CLOCK
from sidecar.config.model import (
    AuthorizationConfig,
    AuthorizationRule,
    Config,
    InboundConfig,
    NodeConfig,
    OutboundConfig,
    ServiceConfig,
    TlsConfig,
    TlsIdentityConfig,
    UpstreamConfig,
)
from sidecar.config.values import HostPort
from sidecar.events import EventBus
from sidecar.mesh.dataplane import DataPlane
from sidecar.proxy import RequestStats
from sidecar.tls import certs
from sidecar.tls.reload import RotationPolicy
from sidecar.tls.reloader import IdentityStore
from tests.harness import ROOT
from tests.loops import LoopThread

TRUST_DOMAIN = "mesh.local"
FAST_ROTATION = RotationPolicy(poll_interval=0.05, settle=2.0)


# ------------------------------------------------------------------------------------------ the app


@dataclass
class App:
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)


def start_app() -> App:
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.mesh.app"], cwd=ROOT,
                               stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout is not None
    line = b""
    deadline = time.monotonic() + 20
    # readline blocks until the app prints, or ends when it dies; the deadline bounds a hung start
    timer = threading.Timer(20, process.kill)
    timer.start()
    try:
        line = process.stdout.readline()
    finally:
        timer.cancel()
    if not line.startswith(b"PORT ") or time.monotonic() > deadline:
        process.kill()
        raise AssertionError(f"the test app did not start: {line!r}")
    return App(process, int(line.split()[1]))


# ------------------------------------------------------------------------------------------ certificates


@dataclass
class Pki:
    directory: Path

    @classmethod
    def create(cls, directory: Path, *services: str) -> Pki:
        certs.init_ca(directory, TRUST_DOMAIN)
        pki = cls(directory)
        for service in services:
            pki.issue(service)
        return pki

    def issue(self, service: str, ttl: str = "1h") -> int:
        """(Re)issue SERVICE.pem and SERVICE-key.pem; returns the new serial number."""
        paths = certs.issue(service, self.directory, ttl)
        return int(certs.load_certificate(paths.cert).serial_number)

    def tls(self, service: str, *more: str) -> TlsConfig:
        """``service``'s identity, and one more per service of ``more`` (issued here if missing): a node holds
        one certificate per service it hosts (SPEC: Identity)."""
        d = self.directory
        extra = []
        for other in more:
            if not (d / f"{other}.pem").exists():
                self.issue(other)
            extra.append(TlsIdentityConfig(other, str(d / f"{other}.pem"), str(d / f"{other}-key.pem")))
        return TlsConfig(TRUST_DOMAIN, str(d / "ca.pem"), str(d / f"{service}.pem"), str(d / f"{service}-key.pem"),
                         identities=extra)


# ------------------------------------------------------------------------------------------ nodes


@dataclass
class Node:
    name: str
    config: Config
    registry: LocalRegistry
    catalog: MeshCatalog
    store: IdentityStore | None
    dataplane: DataPlane
    bound: dict[str, HostPort]
    requests: list[tuple[str, RequestStats]] = field(default_factory=list)
    watcher: asyncio.Task[None] | None = None

    def port(self, listener: str) -> int:
        return self.bound[listener].port

    @property
    def outbound(self) -> int:
        return self.port("outbound")


def node_config(name: str, tls: TlsConfig | None, services: list[ServiceConfig] | None = None,
                upstreams: list[UpstreamConfig] | None = None,
                authorization: AuthorizationConfig | None = None) -> Config:
    return Config(node=NodeConfig(name=name, cluster="test"),
                  outbound=OutboundConfig(HostPort("127.0.0.1", 0)),
                  inbound=InboundConfig(HostPort("127.0.0.1", 0)),
                  tls=tls, services=services or [], upstreams=upstreams or [],
                  authorization=authorization or AuthorizationConfig())


async def start_node(config: Config, watch: bool = False) -> Node:
    name = config.node.name
    registry = LocalRegistry(name, EventBus())
    for spec in config.services:
        registry.register(spec, "config", SYSTEM_CLOCK.monotonic(), int(SYSTEM_CLOCK.wall() * 1000))
    catalog = MeshCatalog(registry, NodeInfo(name, "127.0.0.1", 0, "test"))
    store = IdentityStore.load(config.tls, policy=FAST_ROTATION) if config.tls is not None else None
    dataplane = DataPlane(config, catalog, registry, store, SYSTEM_CLOCK)
    bound = await dataplane.start()
    node = Node(name, config, registry, catalog, store, dataplane, bound)
    dataplane.request_listeners.append(lambda listener, stats: node.requests.append((listener, stats)))
    if watch and store is not None:
        node.watcher = asyncio.get_running_loop().create_task(store.watch())
    return node


async def stop_node(node: Node) -> None:
    if node.watcher is not None:
        node.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node.watcher
    await node.dataplane.stop(1.0)


_versions: dict[tuple[str, str], int] = {}


def link(a: Node, b: Node) -> None:
    """``a`` learns ``b``'s address and services, as gossip would tell it. Call in the loop's thread."""
    a.catalog.node_state(b.catalog.local_node)
    version = _versions[a.name, b.name] = _versions.get((a.name, b.name), 0) + 1
    a.catalog.apply_node(b.name, version, b.registry.instances())


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread(timeout=15.0, name="mesh-test-loop")
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    started = start_app()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"), "checkout", "inventory", "reports")


def rules(*items: dict[str, Any]) -> AuthorizationConfig:
    made = [AuthorizationRule(to=i["to"], from_=i.get("from", ["*"]), methods=i.get("methods", ["*"]),
                              paths=i.get("paths", ["*"]), action=i.get("action", "allow")) for i in items]
    return AuthorizationConfig(default="allow", rules=made)


# ------------------------------------------------------------------------------------------ a three-node mesh

# on node B, who may call what
B_RULES = rules(
    {"to": "inventory", "paths": ["/admin/*"], "action": "deny"},                       # rules[0]
    {"to": "inventory", "from": ["checkout"], "methods": ["GET", "POST", "PUT"]},       # rules[1]
    {"to": "grpc-echo", "from": ["checkout"], "methods": ["CONNECT"]},                  # rules[2]
)


@dataclass
class Mesh:
    loop: LoopThread
    app: App
    grpc_port: int
    a: Node   # checkout: the caller, with fixed upstream ports
    b: Node   # inventory, grpc-echo and an unhealthy "sleepy": the destination
    c: Node   # reports: a caller that B's rules refuse


@pytest.fixture(scope="module")
def grpc_port() -> Iterator[int]:
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio)")
    from concurrent import futures

    def unary(request: bytes, context: object) -> bytes:
        return request[::-1]

    def stream(request: bytes, context: object) -> Iterator[bytes]:
        for i in range(int(request)):
            yield f"item {i}".encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Stream": grpc.unary_stream_rpc_method_handler(stream)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def mesh(loop_thread: LoopThread, app: App, pki: Pki, grpc_port: int) -> Iterator[Mesh]:
    from sidecar.config.model import CheckConfig
    from sidecar.config.values import Duration

    async def start() -> Mesh:
        a = await start_node(node_config(
            "node-a", pki.tls("checkout"),
            services=[ServiceConfig("checkout", app.port)],
            upstreams=[UpstreamConfig("inventory", 0, "http"), UpstreamConfig("grpc-echo", 0, "tcp")]))
        b = await start_node(node_config(
            "node-b", pki.tls("inventory", "grpc-echo", "sleepy"),
            services=[ServiceConfig("inventory", app.port, tags=["v1"]), ServiceConfig("grpc-echo", grpc_port),
                      ServiceConfig("sleepy", app.port, check=CheckConfig(ttl=Duration(3600)))],
            authorization=B_RULES))
        c = await start_node(node_config("node-c", pki.tls("reports"),
                                         upstreams=[UpstreamConfig("grpc-echo", 0, "tcp")]))
        for caller in (a, c):
            link(caller, b)
        return Mesh(loop_thread, app, grpc_port, a, b, c)

    m = loop_thread.run(start())
    yield m

    async def stop() -> None:
        await asyncio.gather(stop_node(m.a), stop_node(m.b), stop_node(m.c))

    loop_thread.run(stop())
