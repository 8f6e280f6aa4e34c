"""Two in-process sidecar data planes (node-a: checkout, the caller; node-b: inventory) over real mTLS, each with
its Telemetry and an admin site serving the telemetry routes and the dashboard, wired as ``sidecar.app`` wires
them; and a small OTLP/HTTP receiver that collects the spans both export."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.proxy import observers
from sidecar.clock import SYSTEM_CLOCK
from sidecar.config.model import Config, ServiceConfig, TelemetryConfig, TracingConfig
from sidecar.config.values import HostPort
from sidecar.httpd import App as HttpApp
from sidecar.httpd import Site
from sidecar.telemetry import Sources, Telemetry, build_registry, telemetry_routes
from sidecar.web import errors_middleware
from tests.integration.mesh.conftest import (
    App,
    LoopThread,
    Node,
    Pki,
    link,
    node_config,
    start_app,
    start_node,
    stop_node,
)

# ------------------------------------------------------------------------------------------ OTLP receiver


@dataclass
class ReceivedSpan:
    resource: dict[str, Any]
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    start: int
    end: int
    status_code: int


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver(observers.OtlpReceiver):
    """POST /v1/traces with an ExportTraceServiceRequest (protobuf), as opentelemetry-proto defines it; keeps every
    export as received and every span decoded."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        self.requests = 0
        super().__init__()

    def received(self, body: bytes, request: Any) -> None:
        self.bodies.append(body)
        self.requests += 1
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(ReceivedSpan(
                        resource, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind,
                        {a.key: _value(a.value) for a in s.attributes}, s.start_time_unix_nano, s.end_time_unix_nano,
                        s.status.code))

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------ observed nodes


@dataclass
class Observed:
    node: Node
    telemetry: Telemetry
    site: Site
    admin: str
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.admin + path, timeout=5) as r:
            return r.read()


def admin_app(telemetry: Telemetry, node: Node, dashboard: Any = None) -> HttpApp:
    """The admin routes telemetry adds, as ``build_admin`` registers them (see the report's wiring)."""
    app = HttpApp(middlewares=[errors_middleware])
    sources = Sources(dataplane=node.dataplane, identity=node.store, catalog=node.catalog)
    app.add_routes(telemetry_routes(telemetry, build_registry(telemetry, sources)))
    if dashboard is not None:
        app.add_routes(dashboard.routes())
    return app


async def observe(node: Node, tracing: TracingConfig) -> Observed:
    from sidecar.admin.dashboard import Dashboard
    from sidecar.catalog.model import group_json

    config = node.config
    telemetry = Telemetry(Config(node=config.node, services=config.services,
                                 telemetry=TelemetryConfig(tracing=tracing)), SYSTEM_CLOCK)
    node.dataplane.request_listeners.append(telemetry.on_request)
    telemetry.start()
    dashboard = Dashboard(telemetry, node=node.name, cluster=config.node.cluster,
                          members=lambda: [{"name": n.name, "address": n.address, "port": n.inbound_port,
                                            "state": n.state, "incarnation": 1, "cluster": n.cluster}
                                           for n in node.catalog.snapshot().nodes.values()],
                          catalog=lambda: group_json(node.catalog.snapshot().instances),
                          clusters=node.dataplane.clusters_json)
    site = Site("admin", admin_app(telemetry, node, dashboard), HostPort("127.0.0.1", 0))
    bound = await site.start()
    return Observed(node, telemetry, site, f"http://{bound}", {"dashboard": dashboard})


@dataclass
class Pair:
    loop: LoopThread
    app: App
    otlp: OtlpReceiver
    a: Observed
    b: Observed


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    loop = LoopThread()
    app = start_app()
    otlp = OtlpReceiver()
    pki = Pki.create(tmp_path_factory.mktemp("pki"), "checkout", "inventory")
    tracing = TracingConfig("otlp", otlp.url, 1.0)

    async def start() -> tuple[Observed, Observed]:
        a = await start_node(node_config("node-a", pki.tls("checkout"), services=[ServiceConfig("checkout", app.port)]))
        b = await start_node(node_config("node-b", pki.tls("inventory"),
                                         services=[ServiceConfig("inventory", app.port)]))
        link(a, b)
        return await observe(a, tracing), await observe(b, tracing)

    try:
        a, b = loop.run(start())
        yield Pair(loop, app, otlp, a, b)

        async def stop() -> None:
            for o in (a, b):
                o.extra["dashboard"].close()
                await o.site.stop()
                await o.telemetry.stop()
                await stop_node(o.node)

        loop.run(stop(), timeout=30)
    finally:
        otlp.close()
        app.stop()
        loop.close()
