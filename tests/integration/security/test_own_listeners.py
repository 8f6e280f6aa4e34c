"""A service registered at one of the sidecar's own listeners would let peers reach that listener through the
inbound, from loopback (the admin port's changes, the app API, the outbound under this node's identity): such a
registration is refused, through the app API, the configuration at start and a reload, with a real process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import SidecarProcess, assert_error, http, make_certs, run_cli, wait_for


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    tls = make_certs(tmp_path / "certs", ["app"])["app"]   # with tls, the inbound listener is open too
    process = SidecarProcess(tmp_path, {"gossip": {"listen": "0.0.0.0:0"}, "tls": tls}).start()
    yield process
    assert process.terminate() == 0


def test_the_app_api_refuses_a_registration_at_the_sidecars_own_listeners(sidecar: SidecarProcess) -> None:
    api = sidecar.api
    this_host = socket.gethostbyname(socket.gethostname())
    listeners = {name: port_of(address) for name, address in sidecar.listeners.items()}
    assert {"admin", "api", "outbound", "inbound", "dns", "gossip"} <= set(listeners), listeners
    for name, port in listeners.items():
        hosts = ["127.0.0.1", "localhost", "0.0.0.0", "::ffff:127.0.0.1"]
        if name == "gossip":   # bound to every address: any address of this host reaches it
            hosts += ["127.0.0.2", this_host]
        for host in hosts:
            refused = http("PUT", api + "/v1/services", {"name": "evil", "port": port, "host": host})
            error = assert_error(refused, 400, "INVALID_ARGUMENT")
            assert error["details"] == {"field": "port", "listener": name}, (name, host, error)
            assert f"own {name} listener" in error["message"]
    assert http("GET", api + "/v1/services").json() == []
    # another loopback address at a loopback listener's port is another socket: allowed
    admin_port = listeners["admin"]
    assert http("PUT", api + "/v1/services", {"name": "app", "port": admin_port, "host": "127.0.0.2"}).status == 200
    assert http("PUT", api + "/v1/services", {"name": "app", "port": 3000}).status == 200


def test_the_configuration_may_not_name_a_listener(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"admin": {"listen": "127.0.0.1:9911"}, "gossip": {"listen": "0.0.0.0:7999"},
                                      "services": [{"name": "a", "port": 9911}, {"name": "b", "port": 7999},
                                                   {"name": "c", "port": 9911, "host": "localhost"},
                                                   {"name": "d", "port": 3500}, {"name": "ok", "port": 3000}]}))
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    problems = result.stderr.splitlines()
    assert [p.split(":", 1)[0] for p in problems] == ["services[0].port", "services[1].port", "services[2].port",
                                                      "services[3].port"], problems
    assert "own admin listener" in problems[0] and "own gossip listener" in problems[1]
    assert "own api listener (127.0.0.1:3500)" in problems[3]   # the default address counts too


def test_a_reload_and_a_start_refuse_it_too(tmp_path: Path) -> None:
    process = SidecarProcess(tmp_path, {"services": [{"name": "app", "port": 3000}]}).start()
    try:
        admin_port = port_of(process.listeners["admin"])
        config = dict(process.config)
        config["services"] = [{"name": "app", "port": 3000}, {"name": "evil", "port": admin_port}]
        process.config_path.write_text(yaml.safe_dump(config))
        refused = http("POST", process.admin + "/reload")
        error = assert_error(refused, 400, "INVALID_ARGUMENT")
        assert "services[1].port" in error["message"] and "own admin listener" in error["message"]
        assert [s["name"] for s in http("GET", process.api + "/v1/services").json()] == ["app"]
    finally:
        assert process.terminate() == 0
    # at start: a listener's fixed address is known from the file
    (tmp_path / "again").mkdir()
    again = SidecarProcess(tmp_path / "again", {"outbound": {"listen": f"127.0.0.1:{admin_port}"},
                                                "services": [{"name": "evil", "port": admin_port}]})
    again.start(wait_ready=False)
    assert again.proc is not None and again.proc.wait(20) == 2
    assert any("services[0].port" in line and "own outbound listener" in line for line in again.lines), again.lines


def test_a_peer_cannot_reach_the_admin_port_through_a_registration(tmp_path: Path) -> None:
    # node-a holds the identity of service "evil"; its app API is asked to register "evil" at node-a's own admin
    # port. Were it taken, node-b's request to "evil" would reach node-a's admin port from loopback, where a
    # change needs no token
    certs = make_certs(tmp_path / "certs", ["evil", "client"])
    a = SidecarProcess(tmp_path, {"tls": certs["evil"]}, name="node-a").start()
    b: SidecarProcess | None = None
    try:
        admin_port = port_of(a.listeners["admin"])
        refused = http("PUT", a.api + "/v1/services", {"name": "evil", "port": admin_port})
        assert_error(refused, 400, "INVALID_ARGUMENT")
        b = SidecarProcess(tmp_path, {"tls": certs["client"], "gossip": {"join": [a.listeners["gossip"]]}},
                           name="node-b").start()
        wait_for(lambda: {m["name"]: m["state"] for m in http("GET", b.admin + "/members").json()}.get("node-a")
                 == "alive", 20, what="node-a alive in node-b's view")
        outbound = b.listeners["outbound"]
        answer = http("POST", f"http://{outbound}/logging?level=debug", headers={"Host": "evil"}, timeout=10)
        assert answer.status in (404, 503), answer
        assert b'"level"' not in answer.body
        assert not any("admin request" in line or "level=debug" in line for line in a.lines)
    finally:
        if b is not None:
            assert b.terminate() == 0
        assert a.terminate() == 0
