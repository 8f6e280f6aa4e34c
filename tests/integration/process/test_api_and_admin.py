"""The app API and the admin port through a real process: registration, errors in SPEC's shape,
the admin token, POST-only mutations, redaction and run-time log level."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.harness import assert_error, http


def test_register_list_and_deregister(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    body = {"name": "payment-service", "version": "1.0.0", "port": 3000, "tags": ["financial", "payments"],
            "capabilities": ["stripe", "paypal"]}
    registered = http("PUT", sidecar.api + "/v1/services", body)
    assert registered.status == 200
    sid = registered.json()["id"]
    listed = http("GET", sidecar.api + "/v1/services").json()
    assert [s["id"] for s in listed] == [sid]
    item = listed[0]
    assert set(item) == {"id", "name", "version", "host", "port", "tags", "capabilities", "status", "lastHeartbeat",
                         "node"}
    assert (item["name"], item["version"], item["host"], item["port"], item["status"], item["node"]) == (
        "payment-service", "1.0.0", "127.0.0.1", 3000, "healthy", "node-a")
    assert item["tags"] == ["financial", "payments"] and item["capabilities"] == ["stripe", "paypal"]
    assert item["lastHeartbeat"] > 1.7e12  # epoch milliseconds
    catalog = http("GET", sidecar.api + "/v1/catalog").json()
    assert list(catalog) == ["payment-service"] and catalog["payment-service"][0]["id"] == sid
    assert http("GET", sidecar.api + "/v1/catalog/payment-service").json()[0]["id"] == sid
    assert http("GET", sidecar.admin + "/catalog").json() == catalog
    assert http("GET", sidecar.admin + "/v1/services").json()[0]["id"] == sid
    members = http("GET", sidecar.admin + "/members").json()
    assert members[0]["name"] == "node-a" and members[0]["state"] == "alive"
    assert http("DELETE", f"{sidecar.api}/v1/services/{sid}").json() == {"id": sid}
    assert http("GET", sidecar.api + "/v1/services").json() == []
    assert_error(http("DELETE", f"{sidecar.api}/v1/services/{sid}"), 404, "NOT_FOUND")
    assert_error(http("GET", sidecar.api + "/v1/catalog/payment-service"), 404, "NOT_FOUND")


def test_registering_the_same_id_replaces(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    first = http("PUT", sidecar.api + "/v1/services", {"name": "a", "port": 1, "version": "1"}).json()["id"]
    second = http("PUT", sidecar.api + "/v1/services", {"name": "a", "port": 1, "version": "2"}).json()["id"]
    assert first == second
    listed = http("GET", sidecar.api + "/v1/services").json()
    assert [(s["id"], s["version"]) for s in listed] == [(first, "2")]


@pytest.mark.parametrize(("body", "fragment"), [
    (b"", "request body is empty"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"port": 3000}', "name: is required"),
    (b'{"name": "a", "port": "x"}', 'port: must be an integer (got \\"x\\")'),
    (b'{"name": "a", "port": 3000, "colour": "red"}', "colour: unknown key"),
    (b'{"name": "a", "port": 3000, "check": {"http": "/h", "ttl": "5s"}}', "check: needs exactly one of"),
    (b'{"name": "Not Valid", "port": 3000}', "name: must be a DNS label"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_registrations_are_400(start_sidecar, body: bytes, fragment: str) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    response = http("PUT", sidecar.api + "/v1/services", body, {"Content-Type": "application/json"})
    error = assert_error(response, 400, "INVALID_ARGUMENT")
    assert error["grpcCode"] == 3
    assert fragment in response.body.decode(), response.body


def test_malformed_heartbeats_are_400(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    sid = http("PUT", sidecar.api + "/v1/services", {"name": "w", "port": 1, "check": {"ttl": "30s"}}).json()["id"]
    assert_error(http("PUT", f"{sidecar.api}/v1/services/{sid}/heartbeat", {"status": "great"}), 400,
                 "INVALID_ARGUMENT")
    assert_error(http("PUT", f"{sidecar.api}/v1/services/{sid}/heartbeat", {"note": 5}), 400, "INVALID_ARGUMENT")
    assert_error(http("PUT", f"{sidecar.api}/v1/services/nope/heartbeat", {}), 404, "NOT_FOUND")
    plain = http("PUT", sidecar.api + "/v1/services", {"name": "p", "port": 2}).json()["id"]
    assert_error(http("PUT", f"{sidecar.api}/v1/services/{plain}/heartbeat", {}), 400, "INVALID_ARGUMENT")


def test_unknown_routes_and_methods_keep_the_error_shape(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    assert_error(http("GET", sidecar.api + "/v2/nothing"), 404, "NOT_FOUND")
    assert_error(http("POST", sidecar.api + "/v1/services", {}), 405, "METHOD_NOT_ALLOWED")
    assert_error(http("GET", sidecar.admin + "/nothing"), 404, "NOT_FOUND")


def test_a_broken_client_does_not_affect_others(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    host, port = sidecar.listeners["api"].rsplit(":", 1)
    for garbage in (b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                    b"PUT /v1/services HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            s.recv(4096)
    assert http("GET", sidecar.api + "/v1/services").status == 200


@pytest.mark.parametrize("path", ["/drain", "/leave", "/reload", "/logging"])
def test_mutating_endpoints_are_post_only(start_sidecar, path: str) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    response = http("GET", sidecar.admin + path)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "POST"


def test_admin_token_guards_mutations(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    sidecar = start_sidecar({"admin": {"token_file": str(token_file)}})
    assert_error(http("POST", sidecar.admin + "/logging?level=debug"), 401, "UNAUTHENTICATED")
    assert_error(http("POST", sidecar.admin + "/logging?level=debug", headers={"Authorization": "Bearer wrong"}),
                 401, "UNAUTHENTICATED")
    assert_error(http("POST", sidecar.admin + "/logging?level=debug", headers={"Authorization": "Basic s3cret-token"}),
                 401, "UNAUTHENTICATED")
    ok = http("POST", sidecar.admin + "/logging?level=debug", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status == 200 and ok.json() == {"level": "debug"}
    # the probes stay open; the other reads need the token too, and it never shows
    assert http("GET", sidecar.admin + "/ready").status == 200
    assert_error(http("GET", sidecar.admin + "/config"), 401, "UNAUTHENTICATED")
    config = http("GET", sidecar.admin + "/config", headers={"Authorization": "Bearer s3cret-token"})
    assert config.status == 200 and b"s3cret-token" not in config.body


def test_config_is_shown_with_secrets_redacted(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    sidecar = start_sidecar({"gossip": {"encrypt_keys": [key]}, "services": [{"name": "pay", "port": 3000}]})
    config = http("GET", sidecar.admin + "/config")
    assert key.encode() not in config.body
    data = config.json()
    assert data["gossip"]["encrypt_keys"] == ["<redacted>"]
    assert data["services"][0]["name"] == "pay" and data["dns"]["ttl"] == "5s"


def test_log_level_changes_at_run_time(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    from tests.harness import FakeApp
    with FakeApp() as app:
        sidecar = start_sidecar({"services": [{"name": "pay", "port": app.port,
                                               "check": {"http": "/health", "interval": "100ms",
                                                         "timeout": "100ms"}}]})
        assert "check result" not in sidecar.log_text()
        assert http("POST", sidecar.admin + "/logging?level=debug").json() == {"level": "debug"}
        sidecar.wait_log("check result")
        assert_error(http("POST", sidecar.admin + "/logging?level=loud"), 400, "INVALID_ARGUMENT")
        assert_error(http("POST", sidecar.admin + "/logging"), 400, "INVALID_ARGUMENT")


def test_reload_applies_services_and_refuses_an_invalid_file(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    import yaml
    sidecar = start_sidecar({"services": [{"name": "pay", "port": 3000}]})
    config = yaml.safe_load(sidecar.config_path.read_text())
    config["services"] = [{"name": "inventory", "port": 3001}]
    sidecar.config_path.write_text(yaml.safe_dump(config))
    result = http("POST", sidecar.admin + "/reload")
    assert result.status == 200 and result.json()["applied"] == ["services"]
    assert [s["name"] for s in http("GET", sidecar.api + "/v1/services").json()] == ["inventory"]
    sidecar.config_path.write_text(sidecar.config_path.read_text() + "\nbogus_key: 1\n")
    refused = http("POST", sidecar.admin + "/reload")
    error = assert_error(refused, 400, "INVALID_ARGUMENT")
    assert "bogus_key: unknown key" in error["details"]["problems"][0]
    assert [s["name"] for s in http("GET", sidecar.api + "/v1/services").json()] == ["inventory"]


def test_leave_stops_the_process_cleanly(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    assert http("POST", sidecar.admin + "/leave").json()["leaving"] is True
    assert sidecar.proc is not None and sidecar.proc.wait(15) == 0
