"""The same data plane on asyncio's own event loop (uvloop is optional): HTTP and a tunnel across two sidecars."""

from __future__ import annotations

import asyncio

from sidecar.config.model import ServiceConfig, UpstreamConfig
from tests.integration.mesh.conftest import App, Pki, link, node_config, start_node, stop_node


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    reply = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    writer.close()
    return reply


def test_http_and_tunnel_on_the_asyncio_loop(app: App, pki: Pki) -> None:
    async def main() -> None:
        assert "uvloop" not in type(asyncio.get_running_loop()).__module__
        a = await start_node(node_config("node-aa", pki.tls("checkout"),
                                         upstreams=[UpstreamConfig("inventory", 0, "tcp")]))
        b = await start_node(node_config("node-ab", pki.tls("inventory"),
                                         services=[ServiceConfig("inventory", app.port)]))
        link(a, b)
        try:
            request = b"GET /headers HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n"
            reply = await _exchange(a.outbound, request)
            assert reply.startswith(b"HTTP/1.1 200 ") and b"spiffe://mesh.local/service/checkout" in reply
            reply = await _exchange(a.port("upstream:inventory"),
                                    b"GET /headers HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 ") and b'"raw"' in reply
        finally:
            await stop_node(a)
            await stop_node(b)

    asyncio.run(asyncio.wait_for(main(), 30))
