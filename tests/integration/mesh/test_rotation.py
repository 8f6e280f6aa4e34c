"""Certificate rotation on both sidecars under a running load of requests: zero failed requests, and the new
certificates in use for new connections."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from sidecar.config.model import ServiceConfig
from sidecar.tls import certs
from tests.harness import LoadThreads, wait_for
from tests.integration.mesh.conftest import App, LoopThread, Pki, link, node_config, start_node, stop_node

CHECKOUT = "spiffe://mesh.local/service/checkout"


class Load(LoadThreads):
    """Client threads sending requests through the outbound listener until stopped; every failure is kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        super().__init__()

    def loops(self) -> list[Callable[[], None]]:
        return [self._keep_alive, self._new_connections, self._slow]

    def _check(self, conn: http.client.HTTPConnection, path: str) -> None:
        conn.request("GET", path, headers={"Host": "inventory"})
        response = conn.getresponse()
        body = response.read()
        with self.lock:
            if response.status == 200:
                self.ok += 1
            else:
                self.failures.append(f"{path}: {response.status} {body[:200]!r}")

    def _keep_alive(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for _ in range(50):
                if self.stop.is_set():
                    return
                self._check(conn, "/headers")
        finally:
            conn.close()

    def _new_connections(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            self._check(conn, "/headers")
        finally:
            conn.close()

    def _slow(self) -> None:  # requests in flight while the certificates change
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            self._check(conn, "/slow?ms=150")
        finally:
            conn.close()


def _server_serial(port: int, pki: Pki) -> int:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki.directory / "ca.pem")
    context.load_cert_chain(pki.directory / "checkout.pem", pki.directory / "checkout-key.pem")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


def test_rotation_of_both_sidecars_under_load_fails_no_request(loop_thread: LoopThread, app: App,
                                                               tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki", "checkout", "inventory")

    async def start() -> tuple[object, object]:
        a = await start_node(node_config("node-ra", pki.tls("checkout")), watch=True)
        b = await start_node(node_config("node-rb", pki.tls("inventory"),
                                         services=[ServiceConfig("inventory", app.port)]), watch=True)
        link(a, b)
        return a, b

    a, b = loop_thread.run(start())
    from tests.integration.mesh.conftest import Node

    assert isinstance(a, Node) and isinstance(b, Node)
    assert a.store is not None and b.store is not None and b.dataplane.inbound is not None
    old_serial = format(a.store.identity.serial, "x")
    try:
        with Load(a.outbound) as load:
            wait_for(lambda: load.ok >= 50, 15, what="load running")
            wait_for(lambda: b.dataplane.inbound.serials.get(CHECKOUT) == old_serial, 5,  # type: ignore[union-attr]
                     what="old certificate in use")
            new_checkout = pki.issue("checkout")
            new_inventory = pki.issue("inventory")
            wait_for(lambda: a.store.rotations == 1 and b.store.rotations == 1, 15,  # type: ignore[union-attr]
                     what="both sidecars reloaded")
            # new connections from A present A's new certificate
            wait_for(lambda: b.dataplane.inbound.serials.get(CHECKOUT) == format(new_checkout, "x"),  # type: ignore[union-attr]
                     15, what="new client certificate in use")
            at_rotation = load.ok
            wait_for(lambda: load.ok >= at_rotation + 100, 15, what="load after the rotation")
        assert load.failures == []
        assert load.ok >= 150
        assert _server_serial(b.port("inbound"), pki) == new_inventory
        assert b.store.refusals.total == 0
        # a pool per peer, service and context: the rotated context dialed new connections, the old pool was left
        # to drain
        generations = sorted(pool.key[3] for pool in a.dataplane.pools)
        assert generations == [1, 2], generations
        assert certs.load_certificate(pki.directory / "checkout.pem").serial_number == new_checkout
    finally:
        loop_thread.run(stop_node(a))
        loop_thread.run(stop_node(b))
