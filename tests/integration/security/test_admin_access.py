"""The admin port: loopback by default, and every change through it needs the token when admin.token_file is
set (and comes from this host's loopback, not from a web page, when it is not). Reads stay open."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.load import config_from_raw
from sidecar.config.values import HostPort
from tests.harness import SidecarProcess, assert_error, http, run_cli, wait_for
from tests.integration.security.inproc import running
from tests.integration.security.secrets import new_gossip_key, new_token

SAFE = {"GET", "HEAD", "OPTIONS"}


def listening_sockets(port: int, tables: dict[str, str] | None = None) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state on ``port``, from /proc/net/tcp and tcp6 (this network
    namespace's, or the texts given as ``tables``)."""
    if tables is None:
        tables = {name: Path(f"/proc/net/{name}").read_text() for name in ("tcp", "tcp6")
                  if Path(f"/proc/net/{name}").exists()}
    found = []
    for name, text in tables.items():
        family = socket.AF_INET6 if name == "tcp6" else socket.AF_INET
        for line in text.splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address_hex)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(socket.inet_ntop(family, raw))
    return found


# --------------------------------------------------------------------------------------------- loopback


def test_the_admin_port_defaults_to_loopback() -> None:
    assert config_from_raw({}).admin.listen == HostPort("127.0.0.1", 9901)
    # an admin section that names only the token keeps the loopback default
    assert config_from_raw({"admin": {"token_file": None}}).admin.listen.host == "127.0.0.1"
    # the other local-only listeners too (inbound and gossip face peers on other hosts, by design)
    defaults = config_from_raw({})
    assert {defaults.api.listen.host, defaults.outbound.listen.host, defaults.dns.listen.host} == {"127.0.0.1"}


def test_a_running_sidecar_binds_the_admin_port_on_loopback_only(tmp_path: Path) -> None:
    # default ports are fixed (9901), so this run names loopback with port 0; the default itself runs in a
    # network namespace of its own in test_netns_admin.py
    process = SidecarProcess(tmp_path, {}).start()
    try:
        port = HostPort.from_text(process.listeners["admin"]).port
        assert listening_sockets(port) == ["127.0.0.1"]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        assert process.terminate() == 0


# --------------------------------------------------------------------------------------------- the token


def snapshot(admin: str, token: str) -> dict[str, Any]:
    """What a refused mutation must leave unchanged."""
    ready = http("GET", admin + "/ready")
    good = {"Authorization": f"Bearer {token}"}
    return {"ready": ready.status, "keys": http("GET", admin + "/keys", headers=good).json(),
            "services": sorted(s["id"] for s in http("GET", admin + "/v1/services", headers=good).json()),
            "deadletters": http("GET", admin + "/deadletters", headers=good).status}


def fill(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "x", path)


def test_every_mutation_needs_the_token(tmp_path: Path) -> None:
    token = new_token()
    (tmp_path / "token").write_text(token + "\n")
    first, second = new_gossip_key(), new_gossip_key()
    config = {"admin": {"token_file": str(tmp_path / "token")}, "gossip": {"encrypt_keys": [first]},
              "services": [{"name": "pay", "port": 3000}]}
    with running(tmp_path, config) as sidecar:
        admin = sidecar.admin
        routes = sidecar.routes()
        mutations = [(m, fill(p)) for m, p in routes if m not in SAFE]
        paths = {p for _, p in mutations}
        # the SPEC's mutations and the ones parts add are all there (a route renamed or dropped fails here)
        assert {"/drain", "/leave", "/reload", "/logging", "/keys/install", "/keys/use", "/keys/remove",
                "/deadletters/replay", "/deadletters/purge"} <= paths, routes
        # any method on any path, registered or not: a request that is not a read is refused before routing
        mutations += [("POST", "/no-such-route"), ("PUT", "/config"), ("DELETE", "/keys"), ("PATCH", "/drain")]
        before = snapshot(admin, token)
        wrong = {"no header": {}, "wrong token": {"Authorization": "Bearer " + new_token()},
                 "near miss": {"Authorization": "Bearer " + token[:-1]},
                 "token and more": {"Authorization": "Bearer " + token + "0"},
                 "basic scheme": {"Authorization": "Basic " + token}, "bare token": {"Authorization": token}}
        for method, path in mutations:
            for what, headers in wrong.items():
                body = {"key": second} if path.startswith("/keys/") else {"all": True}
                response = http(method if method != "*" else "POST", admin + path + "?level=debug", body=body,
                                headers=headers)
                assert_error(response, 401, "UNAUTHENTICATED")
                assert token.encode() not in response.body, (method, path, what)
        assert snapshot(admin, token) == before  # nothing changed: still ready, same keys, same services
        assert sidecar.sidecar.state == "ready"

        # the right token: each mutation does what it says
        good = {"Authorization": f"Bearer {token}"}
        assert http("POST", admin + "/logging?level=debug", headers=good).json() == {"level": "debug"}
        http("POST", admin + "/logging?level=info", headers=good)
        assert http("POST", admin + "/keys/install", {"key": second}, good).status == 200
        assert http("POST", admin + "/keys/use", {"key": second}, good).status == 200
        keys = http("POST", admin + "/keys/remove", {"key": first}, good)
        assert keys.status == 200 and len(keys.json()["keys"]) == 1 and keys.json() != before["keys"]
        assert http("POST", admin + "/reload", headers=good).status == 200
        assert http("POST", admin + "/deadletters/purge", {"all": True}, good).status == 200
        for method, path in mutations:  # and none of the others says 401 to the right token
            response = http(method if method != "*" else "POST", admin + path, body={}, headers=good)
            if path != "/leave" and path != "/drain":
                assert response.status != 401, (method, path, response)
        assert http("POST", admin + "/drain", headers=good).json()["state"] == "draining"
        assert http("GET", admin + "/ready").status == 503
        # the probes never need it
        for path in ("/ready", "/healthz", "/metrics"):
            assert http("GET", admin + path).status in (200, 503), path


PROBES = {"/ready", "/healthz", "/metrics"}


def test_with_a_token_every_read_but_the_probes_needs_it(tmp_path: Path) -> None:
    token = new_token()
    (tmp_path / "token").write_text(token + "\n")
    config = {"admin": {"token_file": str(tmp_path / "token")}, "services": [{"name": "pay", "port": 3000}]}
    with running(tmp_path, config) as sidecar:
        admin = sidecar.admin
        reads = sorted({fill(p) for m, p in sidecar.routes() if m == "GET"})
        # the routes that show traffic or messages are among them (a route renamed or dropped fails here)
        assert {"/deadletters", "/debug/failures", "/debug/explain", "/v1/metrics", "/v1/metrics/summary",
                "/clusters", "/catalog", "/members", "/config", "/config/history", "/tls", "/messaging",
                "/dashboard/snapshot", "/dashboard/events", "/", "/keys", "/gossip"} <= set(reads), reads
        good = {"Authorization": f"Bearer {token}"}
        for path in [*reads, "/no-such-route"]:
            for method in ("GET", "HEAD"):
                if path in PROBES:
                    assert http(method, admin + path).status in (200, 503), path
                    continue
                for headers in ({}, {"Authorization": "Bearer " + new_token()}, {"Authorization": token}):
                    refused = http(method, admin + path, headers=headers)
                    assert refused.status == 401, (method, path, refused)
                    if method == "GET":
                        assert_error(refused, 401, "UNAUTHENTICATED")
                        assert token.encode() not in refused.body
            if path in ("/dashboard/events", "/no-such-route") or path in PROBES:
                continue   # an endless stream; a 404
            answered = http("GET", admin + path + ("?service=pay" if path == "/debug/explain" else ""),
                            headers=good)
            assert answered.status != 401, (path, answered)   # 200, or what the route says (404, 405...)


def test_without_a_token_changes_come_from_loopback_and_not_from_web_pages(tmp_path: Path) -> None:
    with running(tmp_path, {}) as sidecar:
        admin = sidecar.admin
        # a cross-site form POST or a DNS-rebinding page in a browser on this host carries an Origin header
        for origin in ("https://evil.example", "null", f"http://127.0.0.1:{sidecar.sidecar.bound['admin'].port}"):
            refused = http("POST", admin + "/logging?level=debug", headers={"Origin": origin})
            assert_error(refused, 403, "PERMISSION_DENIED")
            assert "admin.token_file" in refused.json()["error"]["message"]
            assert_error(http("POST", admin + "/drain", headers={"Origin": origin}), 403, "PERMISSION_DENIED")
        assert http("GET", admin + "/ready").status == 200  # the refused drain did nothing
        # curl, the CLI and the chart's preStop hook send no Origin: accepted from loopback
        assert http("POST", admin + "/logging?level=warning").json() == {"level": "warning"}
        assert http("POST", admin + "/drain").json()["state"] == "draining"


def test_an_empty_token_file_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    process = SidecarProcess(tmp_path, {"admin": {"token_file": str(tmp_path / "token")}})
    process.start(wait_ready=False)
    assert process.proc is not None
    assert process.proc.wait(20) == 2
    wait_for(lambda: any("admin.token_file" in line and "empty" in line for line in process.lines), 5,
             what="the reason on stderr")
    assert not any("Traceback" in line for line in process.lines)


def test_validate_names_no_token_content(tmp_path: Path) -> None:
    # the config names the token's file, never its content: validate and /config show the path only
    token = new_token()
    (tmp_path / "token").write_text(token)
    config = tmp_path / "c.yaml"
    config.write_text(f"admin: {{token_file: {tmp_path / 'token'}, bogus: 1}}\n")
    result = run_cli("validate", str(config))
    assert result.returncode == 2 and "admin.bogus: unknown key" in result.stderr
    assert token not in result.stdout + result.stderr


@pytest.mark.parametrize("listen", ["0.0.0.0:0"])
def test_an_exposed_admin_port_without_a_token_is_warned_about(tmp_path: Path, listen: str) -> None:
    process = SidecarProcess(tmp_path, {"admin": {"listen": listen}}).start()
    try:
        process.wait_log(r"warning .*admin port listens on 0\.0\.0\.0 without admin\.token_file")
    finally:
        process.terminate()


def curl(*args: str) -> tuple[int, str]:
    """``curl -s`` as an operator runs it: the status code and the body."""
    done = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\\n%{http_code}", *args],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def test_failed_request_urls_and_dead_letters_need_the_token(tmp_path: Path) -> None:
    token = new_token()
    (tmp_path / "token").write_text(token + "\n")
    process = SidecarProcess(tmp_path, {"admin": {"token_file": str(tmp_path / "token")}}).start()
    try:
        credential = "key-" + new_token()
        # a request the app sent with a credential in its URL, to a service that does not exist: it fails and is
        # kept for /debug/failures with its whole target
        status, _ = curl("-H", "Host: nosuch", f"http://{process.listeners['outbound']}/pay?api_key={credential}")
        assert status in (404, 503)
        bearer = ("-H", f"Authorization: Bearer {token}")
        wait_for(lambda: credential in curl(*bearer, process.admin + "/debug/failures")[1], 10,
                 what="the failed request in /debug/failures")
        for path in ("/debug/failures", "/debug/failures?limit=1", "/deadletters", "/v1/metrics",
                     "/debug/explain?service=nosuch", "/clusters", "/config"):
            for headers in ((), ("-H", "Authorization: Bearer wrong"), ("-H", "Origin: http://evil.example")):
                status, body = curl(*headers, process.admin + path)
                assert status == 401 and "UNAUTHENTICATED" in body, (path, headers, status, body)
                assert credential not in body and token not in body
            status, _ = curl(*bearer, process.admin + path)
            assert status == 200, path
        # the probes stay open to the kubelet and Prometheus
        assert curl(process.admin + "/ready")[0] == 200
        assert curl(process.admin + "/healthz")[0] == 200
        status, metrics = curl(process.admin + "/metrics")
        assert status == 200 and "sidecar_" in metrics and credential not in metrics
        # the commands that read the admin port take the token as reload does
        refused = run_cli("members", "--admin", process.admin)
        assert refused.returncode == 1 and "401" in refused.stderr and "--token-file" in refused.stderr
        assert token not in refused.stderr
        members = run_cli("members", "--admin", process.admin, "--json", "--token-file", str(tmp_path / "token"))
        assert members.returncode == 0 and json.loads(members.stdout)[0]["name"] == "node-a", members
        explained = run_cli("explain", "--service", "nosuch", "--admin", process.admin, "--json",
                            env={"SIDECAR_ADMIN_TOKEN_FILE": str(tmp_path / "token")})
        assert explained.returncode == 0, explained
    finally:
        assert process.terminate() == 0


def test_without_a_token_a_change_relayed_by_the_inbound_is_refused(tmp_path: Path) -> None:
    # the inbound sets x-sidecar-caller on every request it relays to a local app from loopback: a request that
    # carries it is a peer's, not the operator's
    process = SidecarProcess(tmp_path, {}).start()
    try:
        status, body = curl("-X", "POST", "-H", "x-sidecar-caller: spiffe://mesh.local/service/peer",
                            process.admin + "/logging?level=debug")
        assert status == 403 and "PERMISSION_DENIED" in body and "x-sidecar-caller" in body, body
        status, body = curl("-X", "POST", process.admin + "/logging?level=info")
        assert status == 200, body
    finally:
        assert process.terminate() == 0


def test_a_dns_rebinding_page_cannot_read_the_admin_port(tmp_path: Path) -> None:
    # a page whose name now resolves to 127.0.0.1 reads the port as its own origin; curl --resolve does the same
    process = SidecarProcess(tmp_path, {}).start()
    try:
        port = HostPort.from_text(process.listeners["admin"]).port
        rebound = ("--resolve", f"rebind.evil.example:{port}:127.0.0.1")
        for path in ("/config", "/deadletters", "/debug/failures", "/ready", "/metrics"):
            status, body = curl(*rebound, f"http://rebind.evil.example:{port}{path}")
            assert status == 403 and "PERMISSION_DENIED" in body and "rebinds" in body, (path, body)
            assert curl(f"http://localhost:{port}{path}")[0] == 200, path
            assert curl(f"http://127.0.0.1:{port}{path}")[0] == 200, path
        status, body = curl(*rebound, "-X", "POST", f"http://rebind.evil.example:{port}/drain")
        assert status == 403
        assert curl(f"http://127.0.0.1:{port}/ready")[0] == 200   # not drained
    finally:
        assert process.terminate() == 0
