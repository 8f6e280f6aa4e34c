"""A mesh of real `sidecar run` processes for the gRPC and HTTP/2 tests, with the test apps behind them.

    A   node-a: the caller (checkout); clients send to its outbound listener with :authority = the service
    B1  node-b1: echo (echo-1), flaky (refuses every 3rd call), victim (victim-1), h2app (h2c, not gRPC),
        web (HTTP/1.1), sleepy (a TTL check never fed: no healthy instance), drainer (drainer-1),
        hasty (echo-1 again, under a 300 ms policy timeout at the caller)
    B2  node-b2: echo (echo-2), victim (victim-2)
    B3  node-b3: echo (echo-3)
Tests add sidecars of their own with ``GrpcMesh.start_sidecar`` (a second caller, a drained destination, a
service behind a gRPC health check), killed with the mesh.
gRPC and h2c apps are registered with ``protocol: grpc`` (SPEC: h2c to the app), web with ``protocol: http``.
Every B denies /test.Echo/SetHealth on echo. A's policies: round-robin where a test counts instances,
retries on ``unavailable`` for flaky and victim, a 300 ms timeout for hasty.

A sidecar that exits while starting (a config it rejects) fails the fixture at once with its log, so the
tests that need the mesh fail in seconds instead of waiting for a readiness deadline."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.grpcapps.launch import Spawned, spawn_all
from tests.grpcapps.service import channel
from tests.harness import FakeApp, SidecarProcess, http, make_certs, wait_for

GRPC_APP = "tests.grpcapps.server"
SERVICES = ["checkout", "echo", "flaky", "victim", "h2app", "web", "sleepy", "drainer", "checked", "hasty"]
DENIED = "/test.Echo/SetHealth"
START_TIMEOUT = 20.0
H2_PREFIX = "sidecar_upstream_h2_"
BUDGET = {"budget": {"ratio": 1.0, "min_per_second": 1000}}
RETRY_ALL = {"retry_non_idempotent": True, **BUDGET}
HASTY_TIMEOUT = 0.3
# the policy timeout bounds a gRPC call whole (its deadline), so it is long enough for the 100 MB streams.
# "unavailable" alone would retry flaky's refusals (a status named in retry_on is retried although every call is a
# POST); "reset" with retry_non_idempotent also retries a call whose stream or connection was lost before any
# answer (the killed instance), which a POST is not by default
POLICIES: dict[str, Any] = {
    "*": {"timeout": "30s"},
    "echo": {"load_balancer": "round_robin"},
    "drainer": {"load_balancer": "round_robin"},
    "flaky": {"retries": {"attempts": 2, "retry_on": ["reset", "unavailable"], **RETRY_ALL}},
    "victim": {"load_balancer": "round_robin",
               "retries": {"attempts": 2, "retry_on": ["connect-failure", "reset", "unavailable"], **RETRY_ALL},
               "outlier_detection": {"consecutive_failures": 1, "max_ejection_percent": 50}},
    "hasty": {"timeout": f"{int(HASTY_TIMEOUT * 1000)}ms"},
}


def launch(process: SidecarProcess, timeout: float = START_TIMEOUT) -> SidecarProcess:
    """Start and wait until ready; a process that exits first fails at once, with the end of its log."""
    process.start(wait_ready=False)
    assert process.proc is not None
    proc = process.proc
    wait_for(lambda: proc.poll() is not None or (process.ready_logged and process.ready()), timeout,
             what=f"{process.name} ready")
    if proc.poll() is not None:
        process.terminate()  # joins the log reader, so the log is whole
        raise AssertionError(f"{process.name} exited with {proc.returncode}: {process.log_text()[-1500:]}")
    return process


def h2_counts(process: SidecarProcess, service: str) -> dict[str, dict[str, float]]:
    """The caller's HTTP/2-to-peer metrics for ``service``, by peer address: {peer: {sample name: value}} (the
    ``sidecar_upstream_h2_`` prefix taken off: ``connections``, ``connections_opened_total``, ``pings_total``...)."""
    text = http("GET", f"{process.admin}/metrics").body.decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(H2_PREFIX) and sample.labels.get("service") == service:
                out.setdefault(sample.labels["peer"], {})[sample.name[len(H2_PREFIX):]] = sample.value
    return out


def tls_for(certs: dict[str, dict[str, str]], first: str, *more: str) -> dict[str, Any]:
    return {**certs[first], "identities": [{"service": s, "cert": certs[s]["cert"], "key": certs[s]["key"]}
                                           for s in more]}


def grpc_service(name: str, app: Spawned, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": app.port, "protocol": "grpc", **extra}


DENY_SET_HEALTH = {"default": "allow", "rules": [{"to": "echo", "paths": [DENIED], "action": "deny"}]}


@dataclass
class GrpcMesh:
    tmp: Path
    certs: dict[str, dict[str, str]]
    apps: dict[str, Spawned]
    web: FakeApp
    a: SidecarProcess | None = None
    bs: list[SidecarProcess] = field(default_factory=list)
    extra: list[SidecarProcess] = field(default_factory=list)

    @property
    def caller(self) -> SidecarProcess:
        assert self.a is not None
        return self.a

    @property
    def seed(self) -> list[str]:
        return [self.bs[0].listeners["gossip"]]

    @property
    def outbound(self) -> str:
        return self.caller.listeners["outbound"]

    def channel(self, authority: str, via: SidecarProcess | None = None) -> grpc.Channel:
        """A grpcio channel to the caller's outbound listener (or ``via``'s), naming ``authority``."""
        return channel((via or self.caller).listeners["outbound"], authority)

    def pids(self) -> list[int]:
        return [p.proc.pid for p in [self.caller, *self.bs] if p.proc is not None]

    def healthy(self, via: SidecarProcess, service: str) -> int:
        instances = http("GET", f"{via.api}/v1/catalog/{service}").json()
        return sum(1 for i in instances if i["status"] == "healthy")

    def start_sidecar(self, name: str, config: dict[str, Any]) -> SidecarProcess:
        process = SidecarProcess(self.tmp, {"node": {"name": name, "cluster": "grpc"}, **config}, name=name)
        self.extra.append(process)
        return launch(process)

    def stop(self) -> None:
        for process in [*self.extra, *self.bs, *([self.a] if self.a else [])]:
            process.kill()
        for app in self.apps.values():
            app.kill()
        self.web.__exit__()


def start_mesh(tmp: Path) -> Iterator[GrpcMesh]:
    certs = make_certs(tmp / "certs", SERVICES)
    apps: dict[str, Spawned] = {}
    web = FakeApp("web").__enter__()
    mesh = GrpcMesh(tmp, certs, apps, web)
    try:
        specs = {name: (GRPC_APP, ["--instance", name])
                 for name in ("echo-1", "echo-2", "echo-3", "victim-1", "victim-2", "drainer-1")}
        specs["flaky-1"] = (GRPC_APP, ["--instance", "flaky-1", "--unavailable-every", "3"])
        specs["h2app"] = ("tests.grpcapps.h2app", ["--instance", "h2app"])
        apps.update(spawn_all(specs))
        victim_check = {"tcp": True, "interval": "250ms", "timeout": "250ms"}
        b1 = mesh.start_sidecar("node-b1", {
            "tls": tls_for(certs, "echo", "flaky", "victim", "h2app", "web", "sleepy", "drainer", "hasty"),
            "services": [grpc_service("echo", apps["echo-1"]), grpc_service("flaky", apps["flaky-1"]),
                         grpc_service("victim", apps["victim-1"], check=victim_check),
                         grpc_service("h2app", apps["h2app"], check={"tcp": True}),
                         {"name": "web", "port": web.port, "protocol": "http"},
                         grpc_service("sleepy", apps["echo-1"], check={"ttl": "1h"}),
                         grpc_service("drainer", apps["drainer-1"]), grpc_service("hasty", apps["echo-1"])],
            "authorization": DENY_SET_HEALTH, "gossip": {"profile": "local"}})
        mesh.bs.append(b1)
        mesh.bs.append(mesh.start_sidecar("node-b2", {
            "tls": tls_for(certs, "echo", "victim"),
            "services": [grpc_service("echo", apps["echo-2"]),
                         grpc_service("victim", apps["victim-2"], check=victim_check)],
            "authorization": DENY_SET_HEALTH, "gossip": {"profile": "local", "join": mesh.seed}}))
        mesh.bs.append(mesh.start_sidecar("node-b3", {
            "tls": tls_for(certs, "echo"), "services": [grpc_service("echo", apps["echo-3"])],
            "authorization": DENY_SET_HEALTH, "gossip": {"profile": "local", "join": mesh.seed}}))
        mesh.a = mesh.start_sidecar("node-a", {"tls": certs["checkout"], "policies": POLICIES,
                                               "gossip": {"profile": "local", "join": mesh.seed}})
        wanted = {"echo": 3, "flaky": 1, "victim": 2, "h2app": 1, "web": 1, "drainer": 1, "hasty": 1}
        wait_for(lambda: all(mesh.healthy(mesh.caller, s) == n for s, n in wanted.items()), 30,
                 what=f"the caller's catalog: {wanted} healthy")
        yield mesh
    finally:
        mesh.stop()
