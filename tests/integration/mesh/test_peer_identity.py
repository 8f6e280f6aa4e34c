"""The caller's sidecar checks who answers: a sidecar whose certificate names another service cannot stand in
for the service it was dialled for (SPEC: Identity), even though its certificate chains to the mesh CA."""

from __future__ import annotations

import logging

import pytest

from sidecar.config.model import ServiceConfig
from sidecar.tls.reloader import IdentityStore
from tests.integration.mesh.clients import curl, needs_curl
from tests.integration.mesh.conftest import App, LoopThread, Node, Pki, link, node_config, start_node, stop_node

pytestmark = needs_curl


def answer_every_name_with_own_certificate(store: IdentityStore) -> None:
    """What a modified sidecar would do: ignore the SNI and present its one certificate to every caller."""
    for held in store.hosted.values():
        held.material.server_context.sni_callback = None


def test_a_peer_with_another_services_certificate_is_refused(
        loop_thread: LoopThread, app: App, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    pki.issue("payment-service")

    async def start() -> tuple[Node, Node, Node]:
        caller = await start_node(node_config("node-caller", pki.tls("checkout")))
        real = await start_node(node_config("node-real", pki.tls("payment-service"), services=[
            ServiceConfig("payment-service", app.port, tags=["real"])]))
        # a mesh member whose certificate says inventory, advertising payment-service besides inventory (so the
        # catalog lists inventory on its node: "a service the catalog places on its node" is no proof)
        impostor = await start_node(node_config("node-impostor", pki.tls("inventory"), services=[
            ServiceConfig("inventory", app.port), ServiceConfig("payment-service", app.port, tags=["fake"])]))
        link(caller, real)
        link(caller, impostor)
        return caller, real, impostor

    caller, real, impostor = loop_thread.run(start())
    try:
        assert impostor.store is not None
        answer_every_name_with_own_certificate(impostor.store)
        url = f"http://127.0.0.1:{caller.outbound}/headers"

        good = curl(url, "-H", "Host: real.payment-service.service.mesh")
        assert good.status == 200, good
        assert good.seen_headers["x-sidecar-caller"] == ["spiffe://mesh.local/service/checkout"]

        with caplog.at_level(logging.WARNING, logger="sidecar.proxy.pool"):
            bad = curl(url, "-H", "Host: fake.payment-service.service.mesh")
        assert bad.status == 503, bad
        assert bad.headers["x-sidecar-error"] == "UNAVAILABLE"
        error = bad.error
        assert error["code"] == "UNAVAILABLE" and error["details"]["identity"] == "refused"
        why = "server is spiffe://mesh.local/service/inventory, not the service payment-service"
        assert why in error["message"], error
        assert str(impostor.port("inbound")) in error["message"]
        logged = [r.getMessage() for r in caplog.records if r.name == "sidecar.proxy.pool"]
        assert any(why in line for line in logged), logged
        # nothing reached the impostor's app through its inbound
        assert not [s for listener, s in impostor.requests if listener == "inbound" and s.status == 200]
        # and the right sidecar still serves
        assert curl(url, "-H", "Host: real.payment-service.service.mesh").status == 200
    finally:
        async def stop() -> None:
            for node in (caller, real, impostor):
                await stop_node(node)

        loop_thread.run(stop())
