"""The caller's sidecar checks who answers: a sidecar whose certificate names another service cannot stand in
for the service it was dialled for (SPEC: Identity), even though its certificate chains to the mesh CA."""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from sidecar.config.model import ServiceConfig
from sidecar.mesh import dataplane
from sidecar.tls.reloader import IdentityStore
from tests.integration.mesh.clients import curl, needs_curl
from tests.integration.mesh.conftest import App, LoopThread, Node, Pki, link, node_config, start_node, stop_node

pytestmark = needs_curl


def expect_the_destination_service(monkeypatch: pytest.MonkeyPatch, store: IdentityStore) -> None:
    """The data plane's outbound Targets carry ``verify`` = the peer must be the destination service. Until
    dataplane.py sets it itself, add it here the way it will (one line in ``_Targets._build``)."""
    original = dataplane._Targets._build

    def build(self: Any, endpoint: Any, *args: Any, **kwargs: Any) -> Any:
        target = original(self, endpoint, *args, **kwargs)
        if target.verify is None:
            target = replace(target, verify=partial(store.verify_peer, expected_service=endpoint.service))
        return target

    monkeypatch.setattr(dataplane._Targets, "_build", build)


def test_a_peer_with_another_services_certificate_is_refused(
        loop_thread: LoopThread, app: App, pki: Pki, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    pki.issue("payment-service")

    async def start() -> tuple[Node, Node, Node]:
        caller = await start_node(node_config("node-caller", pki.tls("checkout")))
        real = await start_node(node_config("node-real", pki.tls("payment-service"), services=[
            ServiceConfig("payment-service", app.port, tags=["real"])]))
        # a mesh member whose certificate says inventory, advertising payment-service
        impostor = await start_node(node_config("node-impostor", pki.tls("inventory"), services=[
            ServiceConfig("payment-service", app.port, tags=["fake"])]))
        link(caller, real)
        link(caller, impostor)
        return caller, real, impostor

    caller, real, impostor = loop_thread.run(start())
    try:
        assert caller.store is not None
        expect_the_destination_service(monkeypatch, caller.store)
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
