"""A mesh of real `sidecar run` processes on loopback: gossip converges, the catalog spreads, traffic
crosses sidecars over mTLS, a killed member is declared dead and its services vanish, a restart rejoins."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.harness import FakeApp, SidecarProcess, assert_error, http, make_certs, members_by_state, wait_for

# local profile: probe every 1 s; a dead member is declared within a few seconds
GOSSIP = {"profile": "local"}


def node_config(name: str, tls: dict[str, str], services: list[dict[str, Any]], join: list[str],
                **extra: Any) -> dict[str, Any]:
    return {"node": {"name": name, "cluster": "test"}, "tls": tls, "services": services,
            "gossip": {**GOSSIP, "join": join}, **extra}


def outbound_get(process: SidecarProcess, host: str, path: str = "/hello",
                 headers: dict[str, str] | None = None) -> Any:
    return http("GET", f"http://{process.listeners['outbound']}{path}", headers={"Host": host, **(headers or {})})


@pytest.fixture
def mesh(start_sidecar, tmp_path: Path):  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["checkout", "payment-service", "inventory"])
    apps = {"payment-service": FakeApp("payment"), "inventory": FakeApp("inventory")}
    for app in apps.values():
        app.__enter__()
    a = start_sidecar(node_config("node-a", certs["checkout"], [], []), name="node-a")
    seed = [a.listeners["gossip"]]
    b = start_sidecar(node_config("node-b", certs["payment-service"], [
        {"name": "payment-service", "port": apps["payment-service"].port, "tags": ["v1"],
         "check": {"http": "/health", "interval": "250ms", "timeout": "250ms",
                   "failures_before_unhealthy": 2}}], seed), name="node-b")
    c = start_sidecar(node_config("node-c", certs["inventory"], [
        {"name": "inventory", "port": apps["inventory"].port}], seed), name="node-c")
    yield {"a": a, "b": b, "c": c, "apps": apps, "certs": certs, "seed": seed}
    for app in apps.values():
        app.__exit__()


def converged(processes: list[SidecarProcess], names: set[str]) -> bool:
    return all(members_by_state(p) == dict.fromkeys(names, "alive") for p in processes)


def test_gossip_catalog_and_traffic_across_the_mesh(mesh: dict[str, Any], start_sidecar) -> None:  # type: ignore[no-untyped-def]
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    wait_for(lambda: converged([a, b, c], {"node-a", "node-b", "node-c"}), timeout=20, what="3 members alive")
    # the catalog spreads: node-a sees both remote services, healthy
    wait_for(lambda: {n: [i["status"] for i in v] for n, v in http("GET", a.api + "/v1/catalog").json().items()}
             == {"payment-service": ["healthy"], "inventory": ["healthy"]}, timeout=15, what="catalog on node-a")
    payment = http("GET", a.api + "/v1/catalog/payment-service").json()[0]
    assert payment["node"] == "node-b" and payment["tags"] == ["v1"]

    # traffic: the app on node-a calls payment-service by name; it crosses to node-b over mTLS
    response = outbound_get(a, "payment-service", "/pay?x=1")
    assert response.status == 200, response
    assert response.json()["app"] == "payment" and response.json()["path"] == "/pay?x=1"
    seen = mesh["apps"]["payment-service"].headers[-1]
    assert seen["x-sidecar-caller"] == "spiffe://mesh.local/service/checkout"
    assert seen["x-request-id"] and seen["traceparent"].startswith("00-")
    assert outbound_get(a, "inventory.service.mesh").json()["app"] == "inventory"
    assert outbound_get(a, "v1.payment-service.service.mesh").json()["app"] == "payment"
    # absolute form, as HTTP_PROXY makes clients send
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "-x", f"http://{a.listeners['outbound']}", "http://payment-service/abs"],
                             capture_output=True, text=True, timeout=10)
        assert json.loads(out.stdout)["path"] == "/abs"
    assert_error(outbound_get(a, "nothing-here"), 404, "NOT_FOUND")

    # health spreads: payment turns unhealthy on node-b → node-a stops routing to it and DNS drops it
    mesh["apps"]["payment-service"].health_status = 500
    wait_for(lambda: http("GET", a.api + "/v1/catalog/payment-service").json()[0]["status"] == "unhealthy",
             timeout=10, what="unhealthy status gossiped to node-a")
    assert_error(outbound_get(a, "payment-service"), 503, "UNAVAILABLE")
    mesh["apps"]["payment-service"].health_status = 200
    wait_for(lambda: outbound_get(a, "payment-service").status == 200, timeout=10, what="healthy again")

    # kill -9 node-c: everyone declares it dead and its service leaves the catalog; until node-c is reaped its
    # name is a service that is down (503, DNS NODATA), not one nobody serves (404, NXDOMAIN)
    c.kill()
    wait_for(lambda: members_by_state(a).get("node-c") == "dead" and members_by_state(b).get("node-c") == "dead",
             timeout=20, what="node-c dead on a and b")
    wait_for(lambda: "inventory" not in http("GET", a.api + "/v1/catalog").json(), timeout=5)
    down = assert_error(outbound_get(a, "inventory"), 503, "UNAVAILABLE")
    assert down["details"] == {"service": "inventory", "instances": 0, "down": 1, "reason": "members-down"}, down
    assert "on members that are down" in down["message"], down
    host, port = a.listeners["dns"].rsplit(":", 1)
    for name, rcode in (("inventory.service.mesh", dns.rcode.NOERROR), ("nothing-here.service.mesh",
                                                                        dns.rcode.NXDOMAIN)):
        reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=3)
        assert (reply.rcode(), reply.answer) == (rcode, []), (name, reply)
    incarnation_before = next(m["incarnation"] for m in http("GET", a.admin + "/members").json()
                              if m["name"] == "node-c")

    # restart with the same name and address: it learns it was declared dead and refutes with a higher
    # incarnation; its service returns
    config = node_config("node-c", mesh["certs"]["inventory"], [
        {"name": "inventory", "port": mesh["apps"]["inventory"].port}], mesh["seed"])
    config["gossip"]["listen"] = c.listeners["gossip"]
    c2 = start_sidecar(config, name="node-c")
    wait_for(lambda: converged([a, b, c2], {"node-a", "node-b", "node-c"}), timeout=20, what="node-c back")
    after = next(m["incarnation"] for m in http("GET", a.admin + "/members").json() if m["name"] == "node-c")
    assert after > incarnation_before
    wait_for(lambda: outbound_get(a, "inventory").status == 200, timeout=10, what="traffic to restarted node-c")


def test_graceful_leave_is_seen_as_left(mesh: dict[str, Any]) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    wait_for(lambda: converged([a, b, c], {"node-a", "node-b", "node-c"}), timeout=20)
    assert c.terminate() == 0
    wait_for(lambda: members_by_state(a).get("node-c") == "left", timeout=10, what="node-c left")
    wait_for(lambda: "inventory" not in http("GET", a.api + "/v1/catalog").json(), timeout=5)


def test_wrong_key_and_wrong_cluster_are_refused(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key_one = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    key_two = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
    a = start_sidecar({"node": {"name": "node-a", "cluster": "prod"},
                       "gossip": {**GOSSIP, "encrypt_keys": [key_one]}}, name="node-a")
    seed = [a.listeners["gossip"]]
    good = start_sidecar({"node": {"name": "node-b", "cluster": "prod"},
                          "gossip": {**GOSSIP, "encrypt_keys": [key_one], "join": seed}}, name="node-b")
    wait_for(lambda: converged([a, good], {"node-a", "node-b"}), timeout=15)
    wrong_key = start_sidecar({"node": {"name": "node-x", "cluster": "prod"},
                               "gossip": {**GOSSIP, "encrypt_keys": [key_two], "join": seed}},
                              name="node-x", wait_ready=False)
    wrong_cluster = start_sidecar({"node": {"name": "node-y", "cluster": "staging"},
                                   "gossip": {**GOSSIP, "encrypt_keys": [key_one], "join": seed}},
                                  name="node-y", wait_ready=False)
    plain = start_sidecar({"node": {"name": "node-z", "cluster": "prod"}, "gossip": {**GOSSIP, "join": seed}},
                          name="node-z", wait_ready=False)
    for refused in (wrong_key, wrong_cluster, plain):
        refused.wait_log("sidecar ready", timeout=15)  # every part started; only the join is missing
        ready = http("GET", refused.admin + "/ready")
        assert ready.status == 503 and ready.json()["reason"] == "joining the mesh"
    # the refused ones keep trying; give them a few join rounds, then check nobody admitted them
    wait_for(lambda: sum(int(v) for v in _refusals(a).values()) >= 3, timeout=15, what="refusals counted on node-a")
    for process in (a, good):
        assert set(members_by_state(process)) == {"node-a", "node-b"}


def _refusals(process: SidecarProcess) -> dict[str, int]:
    gossip = http("GET", process.admin + "/gossip").json()
    return dict(gossip["refused"])


def test_five_sidecars_converge_and_see_each_others_services(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    names = [f"node-{i}" for i in range(1, 6)]
    first = start_sidecar({"node": {"name": names[0]}, "gossip": GOSSIP,
                           "services": [{"name": "svc-1", "port": 9001}]}, name=names[0])
    seed = [first.listeners["gossip"]]
    processes = [first] + [
        start_sidecar({"node": {"name": name}, "gossip": {**GOSSIP, "join": seed},
                       "services": [{"name": f"svc-{i + 2}", "port": 9002 + i}]}, name=name)
        for i, name in enumerate(names[1:])]
    wait_for(lambda: converged(processes, set(names)), timeout=20, what="5 members alive everywhere")
    wanted = {f"svc-{i}" for i in range(1, 6)}
    wait_for(lambda: all(set(http("GET", p.api + "/v1/catalog").json()) == wanted for p in processes),
             timeout=15, what="every service in every catalog")


def test_key_rotation_through_the_admin_port(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    import base64
    import os
    old = base64.b64encode(os.urandom(32)).decode()
    new = base64.b64encode(os.urandom(32)).decode()
    a = start_sidecar({"node": {"name": "node-a"}, "gossip": {**GOSSIP, "encrypt_keys": [old]}}, name="node-a")
    b = start_sidecar({"node": {"name": "node-b"}, "gossip": {**GOSSIP, "encrypt_keys": [old],
                                                              "join": [a.listeners["gossip"]]}}, name="node-b")
    wait_for(lambda: converged([a, b], {"node-a", "node-b"}), timeout=15)
    keyring = http("GET", a.admin + "/keys").json()
    assert len(keyring["keys"]) == 1 and old not in str(keyring)  # keys only by fingerprint
    # rotate: install the new key everywhere, make it primary everywhere, remove the old one
    for step in ("install", "use"):
        for process in (a, b):
            assert http("POST", f"{process.admin}/keys/{step}", {"key": new}).status == 200
    for process in (a, b):
        keys = http("POST", f"{process.admin}/keys/remove", {"key": old}).json()
        assert len(keys["keys"]) == 1
    # the members still talk (new packets only decrypt with the new key) and a newcomer with only the new key joins
    c = start_sidecar({"node": {"name": "node-c"}, "gossip": {**GOSSIP, "encrypt_keys": [new],
                                                              "join": [a.listeners["gossip"]]}}, name="node-c")
    wait_for(lambda: converged([a, b, c], {"node-a", "node-b", "node-c"}), timeout=15, what="3 alive after rotation")
    # removing the primary is refused with a reason
    refused = http("POST", f"{a.admin}/keys/remove", {"key": new})
    assert_error(refused, 400, "INVALID_ARGUMENT")
    assert_error(http("GET", f"{a.admin}/keys/install"), 405, "METHOD_NOT_ALLOWED")


def test_membership_changes_stream_on_v1_events(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    import socket
    a = start_sidecar({"node": {"name": "node-a"}, "gossip": GOSSIP}, name="node-a")
    host, port = a.listeners["api"].rsplit(":", 1)
    stream = socket.create_connection((host, int(port)), timeout=20)
    stream.sendall(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    b = start_sidecar({"node": {"name": "node-b"}, "gossip": {**GOSSIP, "join": [a.listeners["gossip"]]}},
                      name="node-b")
    received = b""

    def saw(kind: str) -> bool:
        nonlocal received
        stream.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            received += stream.recv(65536)
        return f"event: {kind}".encode() in received and b'"name":"node-b"' in received

    def seen() -> str:   # what the stream carried and how node-b went, for a failure's message
        events = [line for line in received.decode(errors="replace").splitlines() if line.startswith("event:")]
        return f"events {events}; node-b's log: {b.lines[-8:]}"

    wait_for(lambda: saw("member-joined"), timeout=15, what="member-joined event")
    code = b.terminate()
    assert code == 0, seen()
    try:
        wait_for(lambda: saw("member-left"), timeout=15, what="member-left event")
    except AssertionError as e:
        raise AssertionError(f"{e}; {seen()}") from None
    stream.close()
