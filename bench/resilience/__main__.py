"""A scripted incident through the sidecar data plane and through HAProxy, against the same three backends.

    python -m bench.resilience [--rate 200] [--duration 16] [--script 2:fail,5:reset,9:ok] [--setups ...]

The incident (``--script``, seconds from the start of the load): instance 0 of 3 answers 503 to everything, then
cuts every connection without an answer, then recovers. The load is open-loop GETs at a fixed rate from a
client process of its own (``bench.resilience.client``), which also runs the script, so both are on one clock.

Setups, all on loopback with free ports (every server in the foreground, stopped at the end):
  sidecar   client -> caller sidecar -> mTLS -> instance's sidecar -> backend   (three instance nodes and the
            caller in one uvloop thread of this process). Retries: 2, on connect-failure, reset, 503; back-off
            25-250 ms; budget 20% + 10/s. Outlier ejection: 5 consecutive gateway errors, 2 s base ejection,
            interval 1 s, at most 34% (one of three). Balancer: least request (P2C), the nearest to HAProxy's
            leastconn.
  sidecar-ewma  the same with the default balancer, peak EWMA: it prefers the fastest instances, so which
            instance is sick matters (a slightly slower one may carry little traffic when it falls ill).
  haproxy   client -> HAProxy -> backend (one thread). ``retries 2``, ``retry-on conn-failure empty-response
            junk-response response-timeout 503``, ``option redispatch 1`` (each retry on another server), health
            checks ``inter 1s fall 3 rise 2`` on /_health, ``observe layer7 error-limit 5 on-error mark-down``
            (5 consecutive errors mark a server down, the passive check closest to outlier ejection); ``balance
            leastconn``.

Printed per setup: success rate, client-visible errors, requests the backends received beyond the client's
(``added``: retries, in % of the client's), the attempts the sick instance failed (503 or cut: what ejection
or health checks did not spare it), and ``time to recover``: after the instance is well again, how long until
it serves >= 20% of the answers over half a second. Exit status 0 (HAProxy missing: its row is skipped), 1 when
a setup failed to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import stop  # noqa: E402
from sidecar.catalog.mesh import MeshCatalog  # noqa: E402
from sidecar.catalog.model import NodeInfo  # noqa: E402
from sidecar.catalog.registry import LocalRegistry  # noqa: E402
from sidecar.clock import SYSTEM_CLOCK  # noqa: E402
from sidecar.config.model import (  # noqa: E402
    Config,
    InboundConfig,
    NodeConfig,
    OutboundConfig,
    OutlierDetectionConfig,
    PolicyConfig,
    ServiceConfig,
    TlsConfig,
)
from sidecar.config.values import Duration, HostPort  # noqa: E402
from sidecar.events import EventBus  # noqa: E402
from sidecar.mesh.dataplane import DataPlane  # noqa: E402
from sidecar.tls import certs  # noqa: E402
from sidecar.tls.reloader import IdentityStore  # noqa: E402

TRUST_DOMAIN = "bench.local"
SERVICE = "echo"
INSTANCES = 3
RECOVERED_SHARE = 0.2
WINDOW = 0.5

OUTLIERS = OutlierDetectionConfig(consecutive_failures=5, interval=Duration(1), base_ejection_time=Duration(2),
                                  max_ejection_time=Duration(10), max_ejection_percent=34)
POLICIES = {"sidecar": PolicyConfig(outlier_detection=OUTLIERS, load_balancer="least_request"),
            "sidecar-ewma": PolicyConfig(outlier_detection=OUTLIERS, load_balancer="ewma")}


@dataclass(frozen=True, slots=True)
class Outcome:
    setup: str
    requests: int
    ok: int
    errors: int
    upstream: int
    failed_attempts: int
    recover: float | None
    last_error: float | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ backends


@contextlib.contextmanager
def backends() -> Iterator[list[int]]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.resilience.backend", str(INSTANCES)], cwd=ROOT,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        timer = threading.Timer(20, proc.kill)
        timer.start()
        try:
            line = proc.stdout.readline().decode()
        finally:
            timer.cancel()
        if not line.startswith("PORTS "):
            raise RuntimeError(f"the backends did not start: {line!r}")
        yield [int(p) for p in line.split()[1:]]
    finally:
        proc.kill()
        proc.wait(5)


def reset(ports: list[int]) -> None:
    for port in ports:
        http_get(port, "/_reset")


def upstream_requests(ports: list[int]) -> tuple[int, int]:
    """Requests the backends received (health checks aside), and how many instance 0 failed."""
    stats = [http_get(port, "/_stats") for port in ports]
    return sum(int(s["requests"]) for s in stats), int(stats[0]["failures"])


# ------------------------------------------------------------------------------------------ the sidecar setup


class SidecarMesh:
    """A caller node and one node per backend, as in the integration tests: DataPlanes in one uvloop thread."""

    def __init__(self, folder: Path, ports: list[int], policy: PolicyConfig) -> None:
        import uvloop

        self.folder = folder
        self.ports = ports
        self.policy = policy
        if not (folder / "ca.pem").exists():
            certs.init_ca(folder, TRUST_DOMAIN)
            for service in ("client", SERVICE):
                certs.issue(service, folder, "1h")
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-mesh", daemon=True)
        self.thread.start()
        self.planes: list[DataPlane] = []
        self.outbound = self.run(self._start())

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _tls(self, service: str) -> TlsConfig:
        d = self.folder
        return TlsConfig(TRUST_DOMAIN, str(d / "ca.pem"), str(d / f"{service}.pem"), str(d / f"{service}-key.pem"))

    async def _node(self, name: str, service: str, port: int | None) -> tuple[DataPlane, LocalRegistry, MeshCatalog]:
        services = [ServiceConfig(SERVICE, port)] if port is not None else []
        config = Config(node=NodeConfig(name=name, cluster="bench"), outbound=OutboundConfig(HostPort("127.0.0.1", 0)),
                        inbound=InboundConfig(HostPort("127.0.0.1", 0)), tls=self._tls(service), services=services,
                        policies={"*": self.policy})
        registry = LocalRegistry(name, EventBus())
        for spec in services:
            registry.register(spec, "config", SYSTEM_CLOCK.monotonic(), int(SYSTEM_CLOCK.wall() * 1000))
        catalog = MeshCatalog(registry, NodeInfo(name, "127.0.0.1", 0, "bench"))
        plane = DataPlane(config, catalog, registry, IdentityStore.load(config.tls), SYSTEM_CLOCK)  # type: ignore[arg-type]
        await plane.start()
        self.planes.append(plane)
        return plane, registry, catalog

    async def _start(self) -> int:
        caller, _, caller_catalog = await self._node("caller", "client", None)
        for i, port in enumerate(self.ports):
            _, registry, catalog = await self._node(f"{SERVICE}-{i}", SERVICE, port)
            caller_catalog.node_state(catalog.local_node)          # as gossip would tell the caller
            caller_catalog.apply_node(catalog.local_node.name, 1, registry.instances())
        return caller.bound["outbound"].port

    def clusters(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            return self.planes[0].clusters_json()

        result: dict[str, Any] = self.run(get())
        return result

    def close(self) -> None:
        async def stop() -> None:
            await asyncio.gather(*(plane.stop(1.0) for plane in self.planes), return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ------------------------------------------------------------------------------------------ the HAProxy setup


@contextlib.contextmanager
def haproxy(folder: Path, ports: list[int]) -> Iterator[int]:
    port = free_port()
    servers = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(ports))
    conf = folder / "haproxy.cfg"
    conf.write_text(f"""
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 5s
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout 503
    http-reuse always
frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    balance leastconn
    option httpchk GET /_health
    default-server check inter 1s fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down
{servers}
""")
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"haproxy exited: {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy did not start listening")
            time.sleep(0.05)
        time.sleep(1.5)   # the first health checks have run: all servers up
        yield port
    finally:
        stop(proc)


# ------------------------------------------------------------------------------------------ one run


def drive(port: int, control_port: int, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.resilience.client", "--url", f"http://127.0.0.1:{port}/work",
                          "--host", SERVICE, "--control", f"http://127.0.0.1:{control_port}", "--script", args.script,
                          "--rate", str(args.rate), "--duration", str(args.duration)],
                         cwd=ROOT, capture_output=True, timeout=args.duration + 60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise RuntimeError(f"the load client failed: {out.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def outcome(setup: str, run: dict[str, Any], upstream: int, failed_attempts: int, failing_port: int) -> Outcome:
    records = run["requests"]
    script = run["script"]
    incident_start = next(t for t, mode in script if mode != "ok")
    recovered_at = max(t for t, mode in script if mode == "ok")
    ok = sum(1 for r in records if r[1] == 200)
    errors = [r for r in records if r[1] != 200]
    recover = None
    answered = sorted((r for r in records if r[1] == 200 and r[0] >= recovered_at), key=lambda r: r[0])
    for i, first in enumerate(answered):
        window = [r for r in answered[i:i + 10_000] if r[0] < first[0] + WINDOW]
        if len(window) >= 10 and sum(1 for r in window if r[2] == failing_port) / len(window) >= RECOVERED_SHARE:
            recover = first[0] - recovered_at
            break
    last_error = max((r[0] for r in errors), default=None)
    return Outcome(setup, len(records), ok, len(errors), upstream, failed_attempts, recover,
                   None if last_error is None else last_error - incident_start)


def table(outcomes: list[Outcome]) -> str:
    lines = ["| setup | requests | success | client errors | upstream requests | added | attempts failed by the "
             "sick instance | time to recover |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        added = o.upstream - o.requests
        recover = "never" if o.recover is None else f"{o.recover:.2f} s"
        lines.append(f"| {o.setup} | {o.requests} | {100.0 * o.ok / o.requests:.2f}% | {o.errors} | {o.upstream} | "
                     f"{added:+d} ({100.0 * added / o.requests:+.1f}%) | {o.failed_attempts} | {recover} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resilience")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=16.0)
    parser.add_argument("--script", default="2:fail,5:reset,9:ok",
                        help="instance 0's modes at seconds from the start: ok, fail (503), reset (cut), every:N")
    parser.add_argument("--setups", nargs="+", default=["sidecar", "sidecar-ewma", "haproxy"],
                        choices=["sidecar", "sidecar-ewma", "haproxy"])
    args = parser.parse_args(argv if argv is not None else [])
    outcomes: list[Outcome] = []
    failed = 0
    print(f"incident: {args.script} (instance 0 of {INSTANCES}); load: {args.rate:g} GET/s for {args.duration:g} s\n")
    with backends() as ports, tempfile.TemporaryDirectory(prefix="bench-resilience-") as tmp:
        folder = Path(tmp)
        for setup in args.setups:
            reset(ports)
            try:
                if setup in POLICIES:
                    mesh = SidecarMesh(folder / "pki", ports, POLICIES[setup])
                    try:
                        run = drive(mesh.outbound, ports[0], args)
                        upstream = upstream_requests(ports)
                        counters = mesh.clusters()[SERVICE]["counters"]
                    finally:
                        mesh.close()
                    print(f"{setup} counters: {json.dumps(counters)}")
                else:
                    if shutil.which("haproxy") is None:
                        print("haproxy: skipped (Debian package haproxy is not installed)")
                        continue
                    with haproxy(folder, ports) as port:
                        run = drive(port, ports[0], args)
                        upstream = upstream_requests(ports)
            except Exception as e:  # a setup that cannot run is reported, the others still run
                print(f"{setup}: failed: {e}", file=sys.stderr)
                failed += 1
                continue
            outcomes.append(outcome(setup, run, upstream[0], upstream[1], ports[0]))
    print()
    print(table(outcomes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
