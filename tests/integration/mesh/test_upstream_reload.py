"""``DataPlane.set_upstreams`` (a config reload's fixed local ports) on real sockets with real mTLS: a removed port
stops accepting while its request in flight finishes, a port changes protocol in place, and a port in use
refuses the whole change with nothing changed."""

from __future__ import annotations

import socket
import threading
from http.client import HTTPConnection

from sidecar.config.model import ServiceConfig, UpstreamConfig
from tests.harness import free_port, wait_for
from tests.integration.mesh.conftest import App, LoopThread, Node, Pki, link, node_config, start_node, stop_node


def get(port: int, path: str, timeout: float = 10.0) -> int:
    conn = HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_upstream_ports_open_close_and_change_live(loop_thread: LoopThread, app: App, pki: Pki) -> None:
    port = free_port()
    http_up = UpstreamConfig("inventory", port, "http")
    tcp_up = UpstreamConfig("inventory", port, "tcp")

    async def start() -> tuple[Node, Node]:
        target = await start_node(node_config("inv-1", pki.tls("inventory"),
                                              services=[ServiceConfig("inventory", app.port)]))
        caller = await start_node(node_config("caller-1", pki.tls("checkout")))
        link(caller, target)
        return caller, target

    caller, target = loop_thread.run(start())
    plane = caller.dataplane

    def in_flight() -> bool:
        proxy = plane.upstreams.get("upstream:inventory")
        return proxy is not None and bool(loop_thread.call(lambda: any(not c.idle for c in proxy.connections)))
    try:
        change = loop_thread.run(plane.set_upstreams([http_up], 2.0))
        assert change.opened == {"upstream:inventory": plane.bound["upstream:inventory"]} and change.closed == []
        assert get(port, "/headers") == 200

        # removed while a request is in flight: no new connection, the request still gets its answer
        slow: list[int] = []
        thread = threading.Thread(target=lambda: slow.append(get(port, "/slow?ms=1500")))
        thread.start()
        wait_for(in_flight, 5, what="the slow request in flight")
        change = loop_thread.run(plane.set_upstreams([], 5.0))
        assert change.closed == ["upstream:inventory"] and "upstream:inventory" not in plane.bound
        wait_for(lambda: refuses(port), 5, what="the removed port refusing")
        thread.join(10)
        assert slow == [200]

        # the same port changes protocol: closed, then opened as a TCP tunnel
        loop_thread.run(plane.set_upstreams([http_up], 2.0))
        change = loop_thread.run(plane.set_upstreams([tcp_up], 2.0))
        assert change.closed == ["upstream:inventory"] and list(change.opened) == ["upstream:inventory"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")

        # a port in use: refused as a whole, the tunnel port untouched
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            try:
                loop_thread.run(plane.set_upstreams([tcp_up, UpstreamConfig("inventory", busy)], 2.0))
            except OSError as e:
                assert f"upstreams[{busy}]: cannot listen on 127.0.0.1:{busy}" in str(e.strerror)
            else:
                raise AssertionError("a port in use was not refused")
        assert set(plane.bound) == {"outbound", "inbound", "upstream:inventory"}
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        async def stop() -> None:
            await stop_node(caller)
            await stop_node(target)
        loop_thread.run(stop())

