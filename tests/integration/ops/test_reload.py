"""Config transactions against real ``sidecar run`` processes (issue 11, point 1).

Two sidecars joined by gossip over real mTLS: ``a`` (identity ``client``, admin token set) calls ``echo`` on ``b``,
whose app is the resilience tests' backend (its instance 0 can be told to fail every Nth request). The client
load runs on keep-alive connections to a's outbound listener, in a thread, bounded in count and time. Each test
rewrites the config files and reloads; an autouse fixture puts the base files back (and reloads) after it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config.crosscheck import show
from sidecar.config.load import deep_merge
from tests.harness import SidecarProcess, assert_error, free_port, http, make_certs, run_cli, wait_for
from tests.integration.resilience.conftest import Backend, start_backend

TOKEN = "reload-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
B_AUTHORIZATION = {"default": "allow", "rules": [{"to": "echo", "from": ["client"], "paths": ["/work*"]}]}
A_POLICIES = {"*": {"retries": {"attempts": 0}}}


@dataclass
class Mesh:
    a: SidecarProcess
    b: SidecarProcess
    backend: Backend
    base: dict[str, dict[str, Any]]
    token_file: Path

    @property
    def outbound(self) -> int:
        return int(self.a.listeners["outbound"].rsplit(":", 1)[1])

    def write(self, process: SidecarProcess, changes: dict[str, Any]) -> None:
        process.config_path.write_text(yaml.safe_dump(deep_merge(self.base[process.name], changes)))

    def reload(self, process: SidecarProcess, query: str = "") -> Any:
        return http("POST", process.admin + "/reload" + query, headers=AUTH if process is self.a else None,
                    timeout=15)

    def auth(self, process: SidecarProcess) -> dict[str, str] | None:
        """a has admin.token_file: every route but the probes needs the token."""
        return AUTH if process is self.a else None

    def config(self, process: SidecarProcess) -> Any:
        return http("GET", process.admin + "/config", headers=self.auth(process)).json()

    def history(self, process: SidecarProcess) -> Any:
        return http("GET", process.admin + "/config/history", headers=self.auth(process)).json()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("reload")
    certs = make_certs(tmp / "certs", ["client", "echo"])
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    backend = start_backend(2)
    started: list[SidecarProcess] = []
    try:
        b = SidecarProcess(tmp, {"node": {"name": "b", "cluster": "t"}, "tls": certs["echo"],
                                 "services": [{"name": "echo", "port": backend.ports[0]}],
                                 "authorization": B_AUTHORIZATION, "reload": {"history": 50}}, name="b")
        started.append(b)
        b.start()
        a = SidecarProcess(tmp, {"node": {"name": "a", "cluster": "t"}, "tls": certs["client"],
                                 "admin": {"listen": "127.0.0.1:0", "token_file": str(token_file)},
                                 "gossip": {"listen": "127.0.0.1:0", "profile": "local",
                                            "join": [b.listeners["gossip"]]},
                                 "policies": A_POLICIES, "reload": {"history": 50}}, name="a")
        started.append(a)
        a.start()
        wait_for(lambda: http("GET", a.admin + "/catalog", headers=AUTH).json().get("echo"), 20,
                 what="echo in a's catalog")
        yield Mesh(a, b, backend, {"a": a.config, "b": b.config}, token_file)
    finally:
        for process in started:
            process.kill()
        backend.stop()


@pytest.fixture(autouse=True)
def restore(mesh: Mesh) -> Iterator[None]:
    mesh.backend.reset()
    yield
    mesh.backend.reset()
    for process in (mesh.a, mesh.b):
        mesh.write(process, {})
        assert mesh.reload(process, "?canary=off").status == 200


# ------------------------------------------------------------------------------------------ client load


class Load:
    """GET /work through a's outbound on ``workers`` keep-alive connections until stopped, ``max_requests`` or
    ``max_seconds``; every status (0: no answer) in order, and each connection's local port over its life."""

    def __init__(self, port: int, workers: int = 4, max_requests: int = 20000, max_seconds: float = 60.0) -> None:
        self.port = port
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.ports: list[set[int]] = [set() for _ in range(workers)]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._max = max_requests
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(workers)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _work(self, index: int) -> None:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            while not self._stop.is_set() and len(self.statuses) < self._max and time.monotonic() < self._deadline:
                try:
                    conn.request("GET", "/work", headers={"Host": "echo"})
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                    assert conn.sock is not None
                    self.ports[index].add(conn.sock.getsockname()[1])
                except (OSError, HTTPException) as e:
                    conn.close()
                    conn = HTTPConnection("127.0.0.1", self.port, timeout=15)
                    status = 0
                    with self._lock:
                        self.errors.append(repr(e))
                with self._lock:
                    self.statuses.append(status)
        finally:
            conn.close()

    def count(self) -> int:
        return len(self.statuses)

    def wait_more(self, n: int, timeout: float = 30.0) -> None:
        target = self.count() + n
        wait_for(lambda: self.count() >= target, timeout, what=f"{n} more requests (have {self.count()})")

    def stop(self) -> Counter[int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a load thread hung"
        return Counter(self.statuses)


def get(mesh: Mesh, path: str, port: int | None = None) -> int:
    conn = HTTPConnection("127.0.0.1", port or mesh.outbound, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "echo"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def metric(process: SidecarProcess, name: str) -> float:
    text = http("GET", process.admin + "/metrics").body.decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


# ------------------------------------------------------------------------------------------ the "done when"


def test_a_reload_under_load_changes_retries_and_authorization_without_a_failed_request(mesh: Mesh) -> None:
    # the old behaviour: no retries (an app failing every 2nd request shows), /extra not allowed to client
    mesh.backend.control(0, mode="every:2")
    assert Counter(get(mesh, "/work") for _ in range(10))[503] >= 4
    mesh.backend.reset()
    assert get(mesh, "/extra") == 403

    with Load(mesh.outbound) as load:
        load.wait_more(200)
        dialed = metric(mesh.a, "sidecar_upstream_connections_dialed_total")
        mesh.write(mesh.a, {"policies": {"*": {"retries": {"attempts": 2, "retry_on": ["503"]}}}})
        answer = mesh.reload(mesh.a)
        assert answer.status == 200, answer
        assert answer.json()["applied"] == ["policies"]
        assert [c["path"] for c in answer.json()["changes"]] == ["policies.*.retries.attempts",
                                                                 "policies.*.retries.retry_on"]
        load.wait_more(200)
        rules = [*B_AUTHORIZATION["rules"], {"to": "echo", "from": ["client"], "paths": ["/extra*"]}]
        mesh.write(mesh.b, {"authorization": {"rules": rules}})
        answer = mesh.reload(mesh.b)
        assert answer.status == 200 and answer.json()["applied"] == ["authorization"], answer
        load.wait_more(200)
        dialed_after = metric(mesh.a, "sidecar_upstream_connections_dialed_total")
        statuses = load.stop()
    assert statuses == {200: sum(statuses.values())} and not load.errors, (statuses, load.errors[:3])
    assert all(len(ports) == 1 for ports in load.ports), load.ports   # every client connection lived on
    assert dialed_after == dialed, (dialed, dialed_after)             # and a's pooled connections to b

    # the new behaviour: retries hide the failing requests, /extra is allowed
    mesh.backend.control(0, mode="every:2")
    assert Counter(get(mesh, "/work") for _ in range(20)) == {200: 20}
    assert mesh.backend.stats(0)["failures"] >= 10
    assert http("GET", mesh.a.admin + "/clusters", headers=AUTH).json()["echo"]["counters"]["retries"] >= 10
    assert get(mesh, "/extra") == 200
    assert mesh.a.wait_log(r"config change .*policies\.\*\.retries\.attempts: 0 -> 2")


def test_a_bad_reload_is_refused_with_every_problem_and_the_old_config_serves(mesh: Mesh) -> None:
    before = mesh.config(mesh.b)
    mesh.write(mesh.b, {"policies": {"*": {"retries": {"attempts": -1}}}, "bogus": 1})
    expected = run_cli("validate", str(mesh.b.config_path))
    assert expected.returncode == 2
    with Load(mesh.outbound, workers=2) as load:
        load.wait_more(50)
        error = assert_error(mesh.reload(mesh.b), 400, "INVALID_ARGUMENT")
        load.wait_more(50)
        statuses = load.stop()
    assert error["details"]["problems"] == expected.stderr.splitlines()
    assert "bogus: unknown key" in error["message"] and "policies.*.retries.attempts" in error["message"]
    assert statuses == {200: sum(statuses.values())}
    assert mesh.config(mesh.b) == before

    mesh.b.config_path.write_text("policies: [unclosed\n")
    error = assert_error(mesh.reload(mesh.b), 400, "INVALID_ARGUMENT")
    assert "invalid YAML" in error["details"]["problems"][0] and mesh.config(mesh.b) == before
    assert get(mesh, "/work") == 200


def test_a_listener_change_refuses_the_whole_reload_with_the_reason(mesh: Mesh) -> None:
    before = mesh.config(mesh.b)
    moved = f"127.0.0.1:{free_port()}"
    mesh.write(mesh.b, {"admin": {"listen": moved}, "authorization": {"default": "deny", "rules": []}})
    error = assert_error(mesh.reload(mesh.b), 400, "FAILED_PRECONDITION")
    assert f'admin.listen: "127.0.0.1:0" -> "{moved}": a listener address' in error["message"]
    assert [c["path"] for c in error["details"]["needsRestart"]] == ["admin.listen"]
    assert mesh.config(mesh.b) == before                    # the live change in the same file was not applied
    assert get(mesh, "/work") == 200
    assert mesh.b.wait_log("reload refused: it needs a restart")


def test_an_access_log_path_that_cannot_be_opened_is_refused_as_invalid(mesh: Mesh, tmp_path: Path) -> None:
    before, version = mesh.config(mesh.b), mesh.history(mesh.b)["current"]
    path = tmp_path / "no-such-dir" / "access.log"
    mesh.write(mesh.b, {"telemetry": {"access_log": {"enabled": True, "path": str(path)}},
                        "authorization": {"default": "deny", "rules": []}})
    error = assert_error(mesh.reload(mesh.b), 400, "INVALID_ARGUMENT")
    assert error["details"]["problems"] == [
        f"telemetry.access_log.path: cannot open for appending: No such file or directory (got {show(str(path))})"]
    assert "the running configuration is unchanged" in error["message"]
    assert mesh.config(mesh.b) == before and mesh.history(mesh.b)["current"] == version
    assert get(mesh, "/work") == 200                       # the authorization change in the same file was not applied
    assert mesh.b.wait_log("reload failed; nothing changed")


def test_an_upstream_port_opens_live_and_closes_when_removed(mesh: Mesh) -> None:
    port = free_port()
    mesh.write(mesh.a, {"upstreams": [{"service": "echo", "local_port": port}]})
    answer = mesh.reload(mesh.a)
    assert answer.status == 200 and answer.json()["applied"] == ["upstreams"], answer
    assert http("GET", mesh.a.admin + "/ready").json()["listeners"]["upstream:echo"] == f"127.0.0.1:{port}"
    assert get(mesh, "/work", port) == 200

    # a port in use: refused with the reason, and the policy change in the same file is not applied
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        mesh.write(mesh.a, {"upstreams": [{"service": "echo", "local_port": port},
                                          {"service": "echo", "local_port": busy}],
                            "policies": {"*": {"timeout": "3s"}}})
        error = assert_error(mesh.reload(mesh.a), 400, "FAILED_PRECONDITION")
    assert f"upstreams[{busy}]: cannot listen on 127.0.0.1:{busy}" in error["message"]
    assert mesh.config(mesh.a)["policies"]["*"]["timeout"] == "15s"
    assert get(mesh, "/work", port) == 200

    mesh.write(mesh.a, {"upstreams": []})
    assert mesh.reload(mesh.a).json()["applied"] == ["upstreams"]
    assert "upstream:echo" not in http("GET", mesh.a.admin + "/ready").json()["listeners"]

    def refused() -> bool:
        try:
            get(mesh, "/work", port)
        except ConnectionRefusedError:
            return True
        return False
    wait_for(refused, 10, what=f"port {port} closed")


def test_the_canary_rolls_back_an_error_spike_within_its_window(mesh: Mesh) -> None:
    original = mesh.config(mesh.b)["authorization"]
    with Load(mesh.outbound, workers=2) as load:
        load.wait_more(300)
        deny = {"rules": [{"to": "echo", "from": ["client"], "paths": ["/work*"], "action": "deny"}]}
        mesh.write(mesh.b, {"authorization": deny})
        answer = mesh.reload(mesh.b, "?canary=15s")
        assert answer.status == 200, answer
        assert answer.json()["canary"]["state"] == "watching"
        reloaded = answer.json()["version"]
        started = time.monotonic()
        current = wait_for(lambda: (h := mesh.history(mesh.b))["versions"][0]["source"] == "canary" and h, 15,
                           what="the canary's rollback")
        rolled_back_in = time.monotonic() - started
        seen = load.count()
        load.wait_more(100)
        statuses = load.stop()
    assert rolled_back_in < 15
    assert statuses[403] >= 20                                       # the spike happened
    assert set(load.statuses[seen + 20:]) == {200}                   # and ended with the rollback
    rollback, bad = current["versions"][0], current["versions"][1]
    assert bad["version"] == reloaded and bad["canary"]["state"] == "rolled-back"
    assert "error ratio" in bad["canary"]["reason"] and bad["canary"]["observed"]["errors"] >= 20
    assert rollback["restores"] == reloaded - 1 and rollback["current"]
    assert [c["text"] for c in rollback["changes"]] == ['authorization.rules[0].action: "deny" -> "allow"']
    assert mesh.config(mesh.b)["authorization"] == original
    assert mesh.b.wait_log("canary failed: rolling back")


def test_sighup_reloads_like_post_reload(mesh: Mesh) -> None:
    mesh.write(mesh.b, {"logging": {"level": "debug"}, "authorization": {"default": "deny"}})
    assert mesh.b.proc is not None
    mesh.b.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: mesh.config(mesh.b)["authorization"]["default"] == "deny", 10, what="SIGHUP applied")
    assert mesh.b.wait_log("SIGHUP reload done")
    assert mesh.history(mesh.b)["versions"][0]["applied"] == ["authorization", "logging"]
    # a bad file on SIGHUP: logged with its problem, the process serves on
    mesh.b.config_path.write_text("nope: 1\n")
    mesh.b.proc.send_signal(signal.SIGHUP)
    assert mesh.b.wait_log("SIGHUP reload not applied")
    assert mesh.b.wait_log(r"problem=.*nope: unknown key")
    assert mesh.b.proc.poll() is None and get(mesh, "/work") == 200


def test_dry_run_prints_the_diff_with_secrets_redacted_and_applies_nothing(mesh: Mesh, tmp_path: Path) -> None:
    import base64
    key = base64.b64encode(os.urandom(32)).decode()
    before = mesh.config(mesh.b)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(deep_merge(mesh.base["b"], {
        "policies": {"*": {"timeout": "5s"}}, "gossip": {"encrypt_keys": [key]}})))
    shown = run_cli("reload", "--dry-run", str(candidate), "--admin", mesh.b.admin)
    assert shown.returncode == 1, shown
    assert key not in shown.stdout + shown.stderr
    assert 'live     policies.*.timeout: "15s" -> "5s"' in shown.stdout
    assert 'restart  gossip.encrypt_keys: [] -> ["<redacted>"] (secret changed)' in shown.stdout
    assert "POST /keys/install" in shown.stdout and "a reload would be refused" in shown.stderr

    candidate.write_text(yaml.safe_dump(deep_merge(mesh.base["b"], {"policies": {"*": {"timeout": "5s"}}})))
    shown = run_cli("reload", "--dry-run", str(candidate), "--admin", mesh.b.admin)
    assert shown.returncode == 0, shown
    assert shown.stdout.splitlines()[-1] == "a reload would apply: policies"
    assert mesh.config(mesh.b) == before                    # a dry run applies nothing

    candidate.write_text("policies: {'*': {timeout: 0s}}\n")
    invalid = run_cli("reload", "--dry-run", str(candidate), "--admin", mesh.b.admin)
    validated = run_cli("validate", str(candidate))
    assert invalid.returncode == validated.returncode == 2 and invalid.stderr == validated.stderr

    mesh.write(mesh.b, {"policies": {"*": {"timeout": "7s"}}})   # no FILE: the sidecar's own files
    own = run_cli("reload", "--dry-run", "--admin", mesh.b.admin)
    assert own.returncode == 0 and 'policies.*.timeout: "15s" -> "7s"' in own.stdout
    done = run_cli("reload", "--admin", mesh.b.admin)
    assert done.returncode == 0 and "applied (policies)" in done.stdout, done
    assert mesh.config(mesh.b)["policies"]["*"]["timeout"] == "7s"


def test_history_lists_versions_and_rollback_restores_one(mesh: Mesh) -> None:
    token = ["--admin", mesh.a.admin, "--token-file", str(mesh.token_file)]
    assert_error(http("POST", mesh.a.admin + "/reload"), 401, "UNAUTHENTICATED")
    assert_error(http("POST", mesh.a.admin + "/config/rollback?version=1"), 401, "UNAUTHENTICATED")
    first = mesh.history(mesh.a)["current"]
    mesh.write(mesh.a, {"policies": {"*": {"timeout": "4s"}}})
    assert mesh.reload(mesh.a).status == 200
    mesh.write(mesh.a, {"policies": {"*": {"timeout": "6s"}}, "logging": {"level": "debug"}})
    assert mesh.reload(mesh.a).status == 200
    history = mesh.history(mesh.a)
    newest = history["versions"][0]
    assert newest["current"] and newest["source"] == "reload" and newest["applied"] == ["policies", "logging"]
    assert [c["text"] for c in newest["changes"]] == ['policies.*.timeout: "4s" -> "6s"',
                                                      'logging.level: "info" -> "debug"']
    assert history["versions"][-1]["source"] == "start"

    rolled = http("POST", mesh.a.admin + f"/config/rollback?version={first}", headers=AUTH)
    assert rolled.status == 200, rolled
    assert rolled.json()["source"] == "rollback" and rolled.json()["restores"] == first
    assert mesh.config(mesh.a)["policies"]["*"]["timeout"] == "15s"
    assert mesh.config(mesh.a)["logging"]["level"] == "info"
    assert get(mesh, "/work") == 200

    assert_error(http("POST", mesh.a.admin + "/config/rollback?version=9999", headers=AUTH), 404, "NOT_FOUND")
    assert_error(http("POST", mesh.a.admin + "/config/rollback?version=x", headers=AUTH), 400, "INVALID_ARGUMENT")
    assert_error(http("GET", mesh.a.admin + "/config/rollback"), 401, "UNAUTHENTICATED")
    assert_error(http("GET", mesh.a.admin + "/config/rollback", headers=AUTH), 405, "METHOD_NOT_ALLOWED")
    assert_error(mesh.reload(mesh.a, "?canary=soon"), 400, "INVALID_ARGUMENT")

    listed = run_cli("reload", "--history", *token)
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].startswith("*")
    assert "rollback (restores" in listed.stdout
    back = run_cli("reload", "--rollback", str(newest["version"]), *token)
    assert back.returncode == 0 and f"restoring version {newest['version']}" in back.stdout, back
    assert mesh.config(mesh.a)["policies"]["*"]["timeout"] == "6s"
    unauthorized = run_cli("reload", "--admin", mesh.a.admin)
    assert unauthorized.returncode == 1 and "Authorization" in unauthorized.stderr


def test_subscriptions_reload_live_and_are_announced_through_gossip(mesh: Mesh) -> None:
    def seen_by_a() -> list[dict[str, str]]:
        return [s for s in http("GET", mesh.a.api + "/v1/subscriptions").json() if s["node"] == "b"]

    events = {"rules": [*B_AUTHORIZATION["rules"], {"to": "echo", "from": ["client"], "paths": ["/events/*"]}]}
    mesh.write(mesh.b, {"subscriptions": [{"topic": "orders", "path": "/events/orders"}], "authorization": events})
    answer = mesh.reload(mesh.b)
    assert answer.status == 200 and answer.json()["applied"] == ["authorization", "subscriptions"], answer
    wait_for(lambda: seen_by_a() == [{"node": "b", "service": "echo", "topic": "orders", "path": "/events/orders"}],
             15, what="b's new subscription known to a")
    served = mesh.backend.stats(0)["requests"]
    published = http("POST", mesh.a.api + "/v1/publish/orders", {"type": "created", "payload": {"n": 1}})
    assert published.status == 202, published
    wait_for(lambda: mesh.backend.stats(0)["requests"] > served, 15, what="the message delivered to b's app")

    mesh.write(mesh.b, {"authorization": events})
    assert mesh.reload(mesh.b).json()["applied"] == ["subscriptions"]
    wait_for(lambda: seen_by_a() == [], 15, what="b's subscription gone from a's view")
