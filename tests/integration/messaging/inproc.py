"""Sidecars in one event loop with real sockets, real mTLS and real SQLite: DataPlane + Messaging per node, the
catalog and subscriptions fed by hand as gossip would (``Mesh.sync``), apps as small aiohttp servers."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.api.server import build_api
from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import SYSTEM_CLOCK
from sidecar.config.model import (
    BackoffConfig,
    Config,
    InboundConfig,
    MessagingConfig,
    NodeConfig,
    OutboundConfig,
    ServiceConfig,
    SubscriptionConfig,
    TlsConfig,
)
from sidecar.config.values import Duration, HostPort
from sidecar.events import EventBus
from sidecar.httpd import App as HttpApp
from sidecar.httpd import Site
from sidecar.mesh.dataplane import DataPlane
from sidecar.messaging.routes import admin_handlers, api_routes
from sidecar.messaging.service import Messaging
from sidecar.tls.reloader import IdentityStore
from sidecar.web import errors_middleware
from tests.harness import make_certs

Behaviour = Callable[[dict[str, Any]], Awaitable[web.Response]]


async def ok(message: dict[str, Any]) -> web.Response:
    return web.json_response({"ok": True})


class App:
    """A subscriber/target app: records every ServiceMessage it gets (by path), answers with ``behaviour``."""

    def __init__(self, name: str, behaviour: Behaviour = ok) -> None:
        self.name = name
        self.behaviour = behaviour
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/health":
            return web.json_response({"ok": True})
        message = json.loads(await request.read())
        self.received.append(message)
        self.headers.append(dict(request.headers))
        return await self.behaviour(message)

    async def start(self, port: int = 0) -> App:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def messaging_config(**overrides: Any) -> MessagingConfig:
    base = MessagingConfig(max_attempts=3, retry_backoff=BackoffConfig(Duration(0.01), Duration(0.05)),
                           delivery_timeout=Duration(2), request_timeout=Duration(2))
    return replace(base, **overrides)


@dataclass
class Node:
    name: str
    config: Config
    registry: LocalRegistry
    catalog: MeshCatalog
    identity: IdentityStore | None
    dataplane: DataPlane
    messaging: Messaging
    api: Site
    api_url: str
    admin_url: str
    admin: Site
    version: int = 0


@dataclass
class Mesh:
    tmp: Path
    identities: list[str]
    certs: dict[str, dict[str, str]] = field(init=False)
    nodes: dict[str, Node] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.certs = make_certs(self.tmp / "certs", self.identities)

    def tls(self, identity: str) -> TlsConfig:
        c = self.certs[identity]
        return TlsConfig(c["trust_domain"], c["ca"], c["cert"], c["key"])

    async def add(self, name: str, identity: str, services: list[ServiceConfig] | None = None,
                  subscriptions: list[SubscriptionConfig] | None = None,
                  messaging: MessagingConfig | None = None) -> Node:
        config = Config(node=NodeConfig(name=name, cluster="test", data_dir=str(self.tmp / f"data-{name}")),
                        outbound=OutboundConfig(HostPort("127.0.0.1", 0)),
                        inbound=InboundConfig(HostPort("127.0.0.1", 0)), tls=self.tls(identity),
                        services=services or [], subscriptions=subscriptions or [],
                        messaging=messaging or messaging_config())
        registry = LocalRegistry(name, EventBus())
        for spec in config.services:
            registry.register(spec, "config", SYSTEM_CLOCK.monotonic(), int(SYSTEM_CLOCK.wall() * 1000))
        catalog = MeshCatalog(registry, NodeInfo(name, "127.0.0.1", 0, "test"))
        identity_store = IdentityStore.load(config.tls) if config.tls is not None else None
        dataplane = DataPlane(config, catalog, registry, identity_store, SYSTEM_CLOCK)
        bound = await dataplane.start()
        node = await self._start_messaging(name, config, registry, catalog, identity_store, dataplane, bound)
        self.nodes[name] = node
        registry.listeners.append(self.sync)  # registrations through the API spread at once
        self.sync()
        return node

    async def _start_messaging(self, name: str, config: Config, registry: LocalRegistry, catalog: MeshCatalog,
                               identity: IdentityStore | None, dataplane: DataPlane,
                               bound: dict[str, HostPort]) -> Node:
        messaging = Messaging(config, catalog, registry, SYSTEM_CLOCK, identity, random.Random(7))
        messaging.bind(self.sync)
        dataplane.routes.internal = messaging.internal_route
        await messaging.start(bound["outbound"])
        api_app = build_api(registry, catalog, EventBus(), SYSTEM_CLOCK)  # the real API, plus messaging's routes
        api_app.add_routes(api_routes(messaging))
        api = Site("api", api_app, HostPort("127.0.0.1", 0))
        port = (await api.start()).port
        admin_app = HttpApp(middlewares=[errors_middleware])
        for key, handler in admin_handlers(messaging).items():
            method, path = key.split(" ")
            admin_app.router.add(method, path, handler)
        admin = Site("admin", admin_app, HostPort("127.0.0.1", 0))
        admin_port = (await admin.start()).port
        return Node(name, config, registry, catalog, identity, dataplane, messaging, api,
                    f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", admin)

    def sync(self) -> None:
        """Every live node learns every other live node's address, services and subscriptions (gossip's job)."""
        for a in self.nodes.values():
            if a.name in self.down:
                continue
            for b in self.nodes.values():
                if b.name == a.name:
                    continue
                if b.name in self.down:
                    a.catalog.remove_node(b.name)
                    a.messaging.on_remote_subscriptions(b.name, ())
                    continue
                b.version += 1
                a.catalog.node_state(b.catalog.local_node)
                a.catalog.apply_node(b.name, b.version, tuple(b.registry.instances()))
                a.messaging.on_remote_subscriptions(b.name, b.messaging.local_subscriptions())

    async def stop_node(self, name: str) -> None:
        """The node leaves (its messaging stops cleanly); peers forget it, as gossip would say it is dead."""
        node = self.nodes[name]
        self.down.add(name)
        await node.messaging.stop()
        await node.api.stop()
        await node.admin.stop()
        await node.dataplane.stop(0.5)
        self.sync()

    async def restart_node(self, name: str) -> Node:
        """The same node (name, data_dir, services) comes back on new ports."""
        old = self.nodes.pop(name)
        self.down.discard(name)
        node = await self.add(name, _identity_of(old), list(old.config.services), list(old.config.subscriptions),
                              old.config.messaging)
        return node

    async def close(self) -> None:
        for name in list(self.nodes):
            if name not in self.down:
                await self.stop_node(name)


def _identity_of(node: Node) -> str:
    assert node.config.tls is not None
    return Path(node.config.tls.cert).stem


async def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            url, json=body, headers=headers or {}, timeout=aiohttp.ClientTimeout(total=10)) as response:
        raw = await response.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw
        return response.status, dict(response.headers), data


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
        return await r.json()
