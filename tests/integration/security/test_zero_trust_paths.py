"""Authorization rules against other spellings of a denied path, with real sidecars over real mTLS.

Three `sidecar run` processes: ``caller`` (certificate: checkout) whose outbound the test talks to; ``vault``
(inventory) whose rules deny ``/admin/*`` and ``GET /secret``; ``shop`` (shop) whose rules allow only
``/public/*`` and ``/pay*``. Every spelling that once reached the denied content is refused, on the caller's
outbound and on the callee's inbound alike (sent there straight, with the caller's certificate), and the app
never sees it; allowed requests reach the app with the canonical path and the query as sent."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import FakeApp, SidecarProcess, assert_error, free_port, make_certs, wait_for
from tests.integration.security.zero_trust import client_context, node_config, raw, wait_reachable

DENY_RULES = {"rules": [
    {"to": "inventory", "paths": ["/admin/*"], "action": "deny"},
    {"to": "inventory", "methods": ["GET"], "paths": ["/secret"], "action": "deny"},
]}
ALLOW_LIST = {"rules": [
    {"to": "shop", "from": ["checkout"], "paths": ["/public/*"]},
    {"to": "shop", "from": ["checkout"], "paths": ["/pay*"]},
]}


@dataclass
class Mesh:
    caller: SidecarProcess
    vault: SidecarProcess
    shop: SidecarProcess
    vault_app: FakeApp
    shop_app: FakeApp
    certs: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp: Path = tmp_path_factory.mktemp("zero-trust-paths")
    certs = make_certs(tmp / "certs", ["checkout", "inventory", "shop"])
    started: list[SidecarProcess] = []
    with FakeApp("inventory") as vault_app, FakeApp("shop") as shop_app:
        try:
            vault = SidecarProcess(tmp, node_config("vault", certs["inventory"],
                                                   [{"name": "inventory", "port": vault_app.port}], [],
                                                   authorization=DENY_RULES), name="vault")
            started.append(vault.start())
            seed = [wait_for(lambda: vault.listeners.get("gossip"), 10, what="the gossip address logged")]
            shop = SidecarProcess(tmp, node_config("shop", certs["shop"], [{"name": "shop", "port": shop_app.port}],
                                                  seed, authorization=ALLOW_LIST), name="shop")
            started.append(shop.start())
            upstream = {"service": "inventory", "local_port": free_port(), "protocol": "http"}
            caller = SidecarProcess(tmp, node_config("caller", certs["checkout"], [], seed, upstreams=[upstream]),
                                    name="caller")
            started.append(caller.start())
            wait_reachable(caller, "inventory")
            wait_reachable(caller, "shop", "/public/ping")
            yield Mesh(caller, vault, shop, vault_app, shop_app, certs)
        finally:
            for process in started:
                process.kill()


# (method, target, service, status, error code) — each reached the app's denied content before
BYPASSES = [
    ("GET", "/%61dmin/users", "inventory", 403, "PERMISSION_DENIED"),
    ("GET", "//admin/users", "inventory", 403, "PERMISSION_DENIED"),
    ("GET", "/./admin/users", "inventory", 403, "PERMISSION_DENIED"),
    ("GET", "/admin/./users", "inventory", 403, "PERMISSION_DENIED"),
    ("GET", "/x/%2e%2e/admin/users", "inventory", 403, "PERMISSION_DENIED"),
    ("GET", "/admin#frag", "inventory", 400, "INVALID_ARGUMENT"),
    ("GET", "/secre%74", "inventory", 403, "PERMISSION_DENIED"),
    ("HEAD", "/secret", "inventory", 403, "PERMISSION_DENIED"),
    ("GET", "/public/../admin/users", "shop", 403, "PERMISSION_DENIED"),
    ("GET", "/payx/..%2fadmin/users", "shop", 400, "INVALID_ARGUMENT"),
    ("GET", "/public/..%5cadmin/users", "shop", 400, "INVALID_ARGUMENT"),
    ("GET", "/public/%zz", "shop", 400, "INVALID_ARGUMENT"),
]


def _denied_content_seen(app: FakeApp) -> list[tuple[str, str]]:
    return [(m, p) for m, p in app.requests if "admin" in p or "secret" in p or "%" in p or "#" in p]


def _check_refusal(response_status: int, headers: dict[str, str], body: bytes, method: str, status: int,
                   code: str) -> None:
    assert response_status == status, (response_status, body[:300])
    assert headers.get("x-sidecar-error") == code, headers
    if method != "HEAD":  # a HEAD answer has no body
        from tests.harness import Response
        assert_error(Response(response_status, headers, body), status, code)


@pytest.mark.parametrize(("method", "target", "service", "status", "code"), BYPASSES)
def test_a_bypass_through_the_outbound_is_refused(mesh: Mesh, method: str, target: str, service: str, status: int,
                                                  code: str) -> None:
    response = raw(mesh.caller.listeners["outbound"], method, target, {"Host": service})
    _check_refusal(response.status, response.headers, response.body, method, status, code)
    assert _denied_content_seen(mesh.vault_app) == [] and _denied_content_seen(mesh.shop_app) == []


@pytest.mark.parametrize(("method", "target", "service", "status", "code"), BYPASSES)
def test_a_bypass_sent_straight_to_the_inbound_is_refused(mesh: Mesh, method: str, target: str, service: str,
                                                          status: int, code: str) -> None:
    # a member holding a valid certificate need not go through its own sidecar: the callee normalizes too
    inbound = (mesh.vault if service == "inventory" else mesh.shop).listeners["inbound"]
    response = raw(inbound, method, target, {"Host": service}, context=client_context(mesh.certs["checkout"]))
    _check_refusal(response.status, response.headers, response.body, method, status, code)
    assert _denied_content_seen(mesh.vault_app) == [] and _denied_content_seen(mesh.shop_app) == []


def test_allowed_requests_reach_the_app_with_the_canonical_path_and_the_query_as_sent(mesh: Mesh) -> None:
    outbound = mesh.caller.listeners["outbound"]
    for target, seen in [("/%70ublic//a/./b?q=..%2F/x&y=%61", "/public/a/b?q=..%2F/x&y=%61"),
                         ("/public/../pay/now", "/pay/now"),
                         ("/pay", "/pay")]:
        response = raw(outbound, "GET", target, {"Host": "shop"})
        assert response.status == 200, (target, response)
        assert response.json()["path"] == seen
    # HEAD of an allowed resource reaches the app (rules written for GET cover HEAD both ways); the test app has
    # no HEAD handler, so its own 501 comes back, with no x-sidecar-error
    for service, target in [("shop", "/public/x"), ("inventory", "/other")]:
        response = raw(outbound, "HEAD", target, {"Host": service})
        assert "x-sidecar-error" not in response.headers and response.status == 501, response


@pytest.mark.parametrize("target", ["/.sidecar/v1/deliver/orders", "/%2Esidecar/v1/deliver/orders",
                                    "//x/../.sidecar/v1/deliver/orders"])
def test_an_app_cannot_reach_sidecar_internal_paths_through_its_sidecar(mesh: Mesh, target: str) -> None:
    upstream = f"127.0.0.1:{mesh.caller.config['upstreams'][0]['local_port']}"
    for address in (mesh.caller.listeners["outbound"], upstream):
        response = raw(address, "POST", target, {"Host": "inventory"}, b"{}")
        error = assert_error(response, 403, "PERMISSION_DENIED")
        assert error["details"] == {"path": "/.sidecar/v1/deliver/orders"}
