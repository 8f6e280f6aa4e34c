"""Without tls, every outbound request is refused with 503; the refusal must not keep anything of the requests
it refused (a shared exception raised again and again chains each raise's traceback, and with it each request's
frames, onto itself: about 6 KiB leaked per request)."""

from __future__ import annotations

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import NodeInfo
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import SYSTEM_CLOCK
from sidecar.config.model import Config, NodeConfig
from sidecar.errors import Unavailable
from sidecar.events import EventBus
from sidecar.mesh.dataplane import DataPlane
from sidecar.proxy import ConnectionInfo
from sidecar.proxy.http1 import Headers, RequestHead


def refusal(dataplane: DataPlane) -> Unavailable:
    head = RequestHead("GET", b"/", "HTTP/1.1", Headers(), "web")
    try:
        dataplane._route_outbound(head, ConnectionInfo("outbound", None, None, None))
    except Unavailable as e:
        return e
    raise AssertionError("an outbound request without tls was not refused")


def test_each_refusal_is_its_own_error_holding_only_its_own_traceback() -> None:
    registry = LocalRegistry("a", EventBus())
    catalog = MeshCatalog(registry, NodeInfo("a", "127.0.0.1", 0, "default"))
    dataplane = DataPlane(Config(node=NodeConfig(name="a")), catalog, registry, None, SYSTEM_CLOCK)
    first, second = refusal(dataplane), refusal(dataplane)
    assert first is not second
    assert first.details == {"reason": "no-tls"} and "mTLS is not configured" in first.message
    depth = []
    for error in (first, second):
        tb, n = error.__traceback__, 0
        while tb is not None:
            n, tb = n + 1, tb.tb_next
        depth.append(n)
    assert depth[0] == depth[1] <= 3, depth
