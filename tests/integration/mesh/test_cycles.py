"""Connections through two data planes leave nothing for the cyclic garbage collector: HTTP/1.1 and h2c clients at the
caller's outbound, over mTLS (HTTP/1.1 and HTTP/2 between the sidecars) to the callee's inbound and on to the app, a
WebSocket tunnel and a TCP relay. Once the clients have closed and the pools' idle connections are swept, every
connection object is freed by reference counting (the collector paused meanwhile), and a full collection then finds
nothing of the sidecar's.
"""

from __future__ import annotations

import socket

from sidecar.config.model import ServiceConfig, UpstreamConfig
from sidecar.proxy.client import KeptConnection
from sidecar.proxy.downstream import DownstreamProtocol
from sidecar.proxy.h2down import H2Downstream, H2Stream
from sidecar.proxy.h2up import H2UpstreamConnection
from sidecar.proxy.relay import _RelayClientSide, _RelayServerSide
from sidecar.proxy.tunnel import Tunnel
from sidecar.proxy.upstream import UpstreamConnection
from tests.cycles import alive, collector_paused, sidecar_garbage
from tests.h2client import RawH2, get
from tests.harness import wait_for
from tests.integration.mesh.conftest import App, Node, Pki, link, node_config, start_node, stop_node
from tests.integration.proxy.test_cycles import upgrade
from tests.loops import LoopThread

ROUNDS = 5
CONNECTION_TYPES = (DownstreamProtocol, H2Downstream, H2Stream, UpstreamConnection, H2UpstreamConnection, Tunnel,
                    _RelayClientSide, _RelayServerSide, KeptConnection)


def until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def http1(port: int, path: str = "/headers", close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n".encode())
        return until_closed(sock)


def websocket(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        upgrade(sock, "inventory")


def h2c(port: int) -> list[int]:
    client = RawH2.connect("127.0.0.1", port)
    try:
        return [client.exchange(stream, get(b"/headers", b"inventory"))[0] for stream in (1, 3)]
    finally:
        client.close()


def all_freed() -> bool:
    left = alive(CONNECTION_TYPES)
    if left:
        raise AssertionError(f"connection objects left: {dict(left)}")
    return True


def sweep(*nodes: Node) -> None:
    """Close every idle pooled connection now (to peers, and the inbound's to the app), as the pools' idle sweep
    does (call in the loop's thread)."""
    for node in nodes:
        inbound = node.dataplane.inbound
        for pools in (node.dataplane.pools, *([] if inbound is None else [inbound.http.pools])):
            for pool in [*pools, *pools.http2_pools()]:
                pool.sweep(float("inf"))


def test_connections_through_two_sidecars_leave_no_reference_cycles(loop_thread: LoopThread, app: App,
                                                                    pki: Pki) -> None:
    async def start() -> tuple[Node, Node]:
        a = await start_node(node_config("node-ca", pki.tls("checkout"),
                                         upstreams=[UpstreamConfig("inventory", 0, "tcp")]))
        b = await start_node(node_config("node-cb", pki.tls("inventory"),
                                         services=[ServiceConfig("inventory", app.port)]))
        link(a, b)
        return a, b

    a, b = loop_thread.run(start())
    relay = a.port("upstream:inventory")
    try:
        assert http1(a.outbound).startswith(b"HTTP/1.1 200 ")   # first imports and caches are not counted
        assert h2c(a.outbound) == [200, 200]
        loop_thread.call(sweep, a, b)
        wait_for(lambda: not sidecar_garbage() and all_freed(), 10, what="the first connections freed")
        with collector_paused():
            for _ in range(ROUNDS):
                assert http1(a.outbound).startswith(b"HTTP/1.1 200 ")
                assert h2c(a.outbound) == [200, 200]
                websocket(a.outbound)
                assert http1(relay).startswith(b"HTTP/1.1 200 ")
            wait_for(lambda: not a.dataplane.outbound.connections, 10, what="the clients' connections closed")
            loop_thread.call(sweep, a, b)
            # closed, each connection's objects are freed by reference counting: the collector is paused
            wait_for(all_freed, 10, what="every connection's objects freed")
            garbage = sidecar_garbage()
        assert not garbage, f"closed connections left reference cycles: {dict(garbage)}"
    finally:
        loop_thread.run(stop_node(a))
        loop_thread.run(stop_node(b))
