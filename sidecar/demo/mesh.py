"""`sidecar demo`: a local mesh in one command, in a temporary folder that is removed afterwards.

Four sidecars, each beside a small demo service (``sidecar.demo.app``), with a fresh CA and one certificate per
service, joined by gossip:

    node-checkout   checkout          the demo drives it: calls payment-service and inventory through its
                                      sidecar's outbound (Host: header), publishes to the ``orders`` topic
    node-payment-1  payment-service   healthy
    node-payment-2  payment-service   flaky: a share of its answers are 503 and all are slow, so checkout's
                                      sidecar retries and ejects it (outlier detection)
    node-inventory  inventory         subscribes to ``orders`` at /events/orders

A live view shows members, services and health, per-destination rate, latency and errors, retries and
ejections, and messages delivered. ``--duration N`` runs without a view and prints a summary; it exits 0 only
when traffic went through every sidecar. Ctrl-C stops every process and removes the folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from sidecar.tls.certs import init_ca, issue

CLUSTER = "demo"
TRUST_DOMAIN = "demo.local"
REQUEST_INTERVAL = 0.05     # one request to each destination every 50 ms: about 20 per second each
PUBLISH_INTERVAL = 0.5      # one order every half second
MAX_IN_FLIGHT = 16          # the driver never has more requests than this outstanding


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range, which it never hands to an outgoing connection on its own (empty
    when the range starts too low to leave room under it)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(max(1024, low - 10_000), low)


def free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` loopback ports free for TCP and for UDP alike (gossip listens on both with one number, and a port
    free for TCP may be held by some other program's UDP socket), none of them in ``taken``, to which they are
    added. A port is chosen between its probe and the process binding it, so it is taken under the ephemeral range
    where one is free there (an outgoing connection of any program could otherwise take it in between), with the
    probing sockets held until all are chosen, and ``taken`` keeps a number given to a process that has not bound
    it yet from going to another."""
    candidates = _below_ephemeral()
    rng = random.Random()
    chosen: list[int] = []
    with contextlib.ExitStack() as held:
        for attempt in range(100 * count):
            if len(chosen) == count:
                break
            tcp = held.enter_context(socket.socket())
            try:
                # half the attempts under the ephemeral range; then the kernel's choice
                tcp.bind(("127.0.0.1", rng.choice(candidates) if candidates and attempt < 50 * count else 0))
            except OSError:
                continue
            port = int(tcp.getsockname()[1])
            if port in taken:
                continue
            udp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen.append(port)
    if len(chosen) < count:
        raise RuntimeError("no loopback port free for both TCP and UDP")
    taken.update(chosen)
    return chosen


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node: str
    service: str
    app_args: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)   # more top-level config keys (policies, subscriptions)
    note: str = ""


# checkout's sidecar retries 503s (POST too: the demo's charges are idempotent) and ejects an instance after
# three failures in a row, for a few seconds; round robin so both payment instances get their share
CHECKOUT_POLICIES: dict[str, Any] = {
    "payment-service": {
        "timeout": "3s",
        "load_balancer": "round_robin",
        "retries": {"attempts": 2, "per_try_timeout": "1s", "retry_on": ["connect-failure", "reset", "503"],
                    "retry_non_idempotent": True},
        "outlier_detection": {"consecutive_failures": 3, "interval": "1s", "base_ejection_time": "5s",
                              "max_ejection_percent": 50},
    },
}

NODES = (
    NodeSpec("node-checkout", "checkout", extra={"policies": CHECKOUT_POLICIES}, note="driven by the demo"),
    NodeSpec("node-payment-1", "payment-service", note="healthy"),
    NodeSpec("node-payment-2", "payment-service", ("--fail-rate", "0.4", "--delay", "0.05", "--seed", "7"),
             note="flaky: 40% 503, +50ms"),
    NodeSpec("node-inventory", "inventory", extra={"subscriptions": [{"topic": "orders", "path": "/events/orders"}]},
             note="subscribes to orders"),
)


@dataclass
class DemoNode:
    spec: NodeSpec
    admin: str
    api: str
    config_path: Path
    process: subprocess.Popen[bytes] | None = None
    listeners: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.node


@dataclass
class Traffic:
    """What the driver saw, per destination: requests, successes, latency sum; and publishes."""

    requests: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    published: int = 0
    publish_failed: int = 0

    def record(self, destination: str, ok: bool, seconds: float) -> None:
        self.requests[destination] = self.requests.get(destination, 0) + 1
        self.ok[destination] = self.ok.get(destination, 0) + int(ok)
        self.latency[destination] = self.latency.get(destination, 0.0) + seconds


@dataclass
class Demo:
    root: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nodes: list[DemoNode] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)   # given to the demo's processes (see free_ports)

    def spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(self.root / f"{log_name}.log", "wb") as log:   # the child keeps its own descriptor
            process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def add_node(self, spec: NodeSpec, ca_dir: Path, seed: str | None) -> DemoNode:
        app_port, admin, api, gossip = free_ports(4, self.ports)
        self.spawn(["-m", "sidecar.demo.app", "--name", spec.service, "--port", str(app_port), *spec.app_args],
                   f"{spec.node}-app")
        certs = issue(spec.service, ca_dir, "24h", out_directory=self.root / spec.node / "certs")
        config: dict[str, Any] = {
            "node": {"name": spec.node, "cluster": CLUSTER, "data_dir": str(self.root / spec.node / "data")},
            "admin": {"listen": f"127.0.0.1:{admin}"},
            "api": {"listen": f"127.0.0.1:{api}"},
            "outbound": {"listen": "127.0.0.1:0"},
            "inbound": {"listen": "127.0.0.1:0"},
            "dns": {"listen": "127.0.0.1:0"},
            "gossip": {"listen": f"127.0.0.1:{gossip}", "profile": "local", "join": [seed] if seed else []},
            "tls": {"trust_domain": TRUST_DOMAIN, "ca": str(ca_dir / "ca.pem"), "cert": str(certs.cert),
                    "key": str(certs.key)},
            "services": [{"name": spec.service, "version": "1.0.0", "port": app_port,
                          "check": {"http": "/health", "interval": "1s", "timeout": "500ms"}}],
            **spec.extra,
        }
        path = self.root / f"{spec.node}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        node = DemoNode(spec, f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{api}", path)
        node.process = self.spawn(["-m", "sidecar", "run", "-c", str(path)], spec.node)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError):
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return await r.json(content_type=None)
    return None


async def _wait_ready(session: aiohttp.ClientSession, node: DemoNode, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process is not None and node.process.poll() is not None:
            log = node.config_path.with_suffix(".log")
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise RuntimeError(f"sidecar {node.name} exited with {node.process.returncode}: {' '.join(tail)}")
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            async with session.get(node.admin + "/ready", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    body = await r.json(content_type=None)
                    node.listeners = dict(body.get("listeners", {})) if isinstance(body, dict) else {}
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"sidecar {node.name} not ready after {timeout:.0f}s")


async def _wait_mesh(session: aiohttp.ClientSession, checkout: DemoNode, timeout: float = 30) -> None:
    """Until checkout's sidecar sees every member alive and both payment instances and inventory healthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = await _get_json(session, checkout.admin + "/members") or []
        catalog = await _get_json(session, checkout.api + "/v1/catalog") or {}
        alive = sum(1 for m in members if isinstance(m, dict) and m.get("state") == "alive")
        healthy = {name: sum(1 for i in instances if i.get("status") == "healthy")
                   for name, instances in catalog.items()} if isinstance(catalog, dict) else {}
        if alive >= len(NODES) and healthy.get("payment-service", 0) >= 2 and healthy.get("inventory", 0) >= 1:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the mesh did not form within {timeout:.0f}s (members and health as seen by checkout)")


# ------------------------------------------------------------------------------------------ traffic


async def _call(session: aiohttp.ClientSession, outbound: str, destination: str, method: str, path: str,
                traffic: Traffic, slots: asyncio.Semaphore) -> None:
    started = time.monotonic()
    ok = False
    try:
        async with session.request(method, f"http://{outbound}{path}", headers={"Host": destination},
                                   json={"amount": 42} if method == "POST" else None,
                                   timeout=aiohttp.ClientTimeout(total=5)) as r:
            await r.read()
            ok = r.status < 400
    except (TimeoutError, aiohttp.ClientError, OSError):
        ok = False
    finally:
        slots.release()
    traffic.record(destination, ok, time.monotonic() - started)


async def _publish(session: aiohttp.ClientSession, api: str, n: int, traffic: Traffic) -> None:
    try:
        async with session.post(api + "/v1/publish/orders", json={"type": "order.created",
                                                                  "payload": {"order": n, "amount": 42}},
                                timeout=aiohttp.ClientTimeout(total=5)) as r:
            await r.read()
            if r.status == 202:
                traffic.published += 1
            else:
                traffic.publish_failed += 1
    except (TimeoutError, aiohttp.ClientError, OSError):
        traffic.publish_failed += 1


async def _drive(session: aiohttp.ClientSession, checkout: DemoNode, traffic: Traffic) -> None:
    """checkout's part: pay and check stock through the sidecar's outbound, publish orders; until cancelled."""
    outbound = checkout.listeners["outbound"]
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    n = 0
    next_publish = time.monotonic()
    try:
        while True:
            for destination, method, path in (("payment-service", "POST", "/charge"),
                                              ("inventory", "GET", f"/stock/{n % 10}")):
                await slots.acquire()
                task = asyncio.create_task(_call(session, outbound, destination, method, path, traffic, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if time.monotonic() >= next_publish:
                next_publish += PUBLISH_INTERVAL
                task = asyncio.create_task(_publish(session, checkout.api, n, traffic))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(REQUEST_INTERVAL)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------- view


@dataclass
class Snapshot:
    members: list[dict[str, Any]] = field(default_factory=list)
    catalog: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summaries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # node → serviceMethods rows
    clusters: dict[str, Any] = field(default_factory=dict)                      # checkout's /clusters
    messaging: dict[str, dict[str, Any]] = field(default_factory=dict)          # node → /messaging
    window: str = "10s"


async def _snapshot(session: aiohttp.ClientSession, nodes: list[DemoNode], window: str = "60s") -> Snapshot:
    checkout = nodes[0]
    snap = Snapshot(window=window)
    snap.members = await _get_json(session, checkout.admin + "/members") or []
    snap.catalog = await _get_json(session, checkout.api + "/v1/catalog") or {}
    snap.clusters = await _get_json(session, checkout.admin + "/clusters") or {}
    for node in nodes:
        summary = await _get_json(session, f"{node.admin}/v1/metrics/summary?window={window}") or {}
        snap.summaries[node.name] = summary.get("serviceMethods", []) if isinstance(summary, dict) else []
        messaging = await _get_json(session, node.admin + "/messaging")
        snap.messaging[node.name] = messaging if isinstance(messaging, dict) else {}
    return snap


def _counter(values: dict[str, Any], *words: str) -> int:
    """Sum of the integer counters whose name contains every word (the messaging counters' names are theirs)."""
    return sum(int(v) for k, v in values.items() if isinstance(v, int | float) and all(w in k for w in words))


def _delivered(snap: Snapshot) -> int:
    return sum(_counter(m.get("counters", {}), "deliver") - _counter(m.get("counters", {}), "deliver", "fail")
               for m in snap.messaging.values())


def _members_table(snap: Snapshot) -> Table:
    table = Table(title="members (gossip)", expand=False)
    for column in ("name", "address", "state"):
        table.add_column(column)
    for m in sorted(snap.members, key=lambda m: str(m.get("name"))):
        state = str(m.get("state"))
        table.add_row(str(m.get("name")), str(m.get("address")), f"[{'green' if state == 'alive' else 'red'}]{state}")
    return table


def _services_table(snap: Snapshot) -> Table:
    table = Table(title="services (catalog)")
    for column in ("service", "node", "address", "status"):
        table.add_column(column)
    colours = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
    for name in sorted(snap.catalog):
        for instance in snap.catalog[name]:
            status = str(instance.get("status"))
            table.add_row(name, str(instance.get("node")), f"{instance.get('host')}:{instance.get('port')}",
                          f"[{colours.get(status, 'white')}]{status}")
    return table


def _traffic_table(snap: Snapshot, window: str) -> Table:
    table = Table(title=f"traffic per sidecar (admin /v1/metrics/summary?window={window})")
    for column in ("sidecar", "direction", "service method", "req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right" if column in ("req/s", "p50 ms", "p99 ms", "errors") else "left")
    for node, rows in snap.summaries.items():
        for row in rows:
            table.add_row(node, str(row.get("direction", "")), str(row.get("serviceMethod")),
                          f"{row.get('ratePerSecond', 0):.1f}", f"{row.get('p50', 0):.1f}", f"{row.get('p99', 0):.1f}",
                          str(row.get("errors", 0)))
    return table


def _clusters_table(snap: Snapshot) -> Table:
    """checkout's view of each destination: instances, ejection, breaker, retries (admin /clusters)."""
    table = Table(title="checkout's upstreams (admin /clusters)")
    for column in ("service", "endpoint", "health", "ejected", "requests", "failures", "ewma ms"):
        table.add_column(column)
    clusters = snap.clusters.get("clusters", snap.clusters) if isinstance(snap.clusters, dict) else {}
    items = clusters.items() if isinstance(clusters, dict) else ((c.get("service"), c) for c in clusters)
    for service, cluster in items:
        if not isinstance(cluster, dict):
            continue
        for endpoint in cluster.get("endpoints", []):
            if not isinstance(endpoint, dict):
                continue
            ewma = endpoint.get("latencyEwmaMs", endpoint.get("latency_ewma_ms", endpoint.get("ewma", "")))
            table.add_row(str(service), str(endpoint.get("node", endpoint.get("address", ""))),
                          str(endpoint.get("health", endpoint.get("status", ""))), str(endpoint.get("ejected", "")),
                          str(endpoint.get("requests", "")), str(endpoint.get("failures", "")), str(ewma))
        details = [f"lb {cluster.get('loadBalancer', '?')}"]
        breaker = cluster.get("breaker", {})
        if isinstance(breaker, dict):
            states = [f"{k} {v.get('state')} {v.get('active')}/{v.get('max')}" for k, v in breaker.items()
                      if isinstance(v, dict)]
            tripped = [state for state in states if " open " in state]
            details.append("breaker " + (", ".join(tripped) if tripped else "closed"))
        counters = cluster.get("counters", {})
        if isinstance(counters, dict):
            details.append(f"retries {counters.get('retries', 0)}, ejections {counters.get('ejections', 0)}")
        table.add_row(str(service), "[dim]" + "; ".join(details), "", "", "", "", "")
    return table


def _render(snap: Snapshot, traffic: Traffic, dashboard: str) -> Group:
    published = f"orders published {traffic.published}, delivered {_delivered(snap)}"
    return Group(f"[bold]sidecar demo[/bold]  dashboard: {dashboard}   {published}   (Ctrl-C stops)",
                 _members_table(snap), _services_table(snap), _traffic_table(snap, snap.window), _clusters_table(snap))


def _summary(console: Console, snap: Snapshot, traffic: Traffic, nodes: list[DemoNode]) -> bool:
    """Print the end-of-run summary; True if traffic went through every sidecar."""
    console.print("\n[bold]summary[/bold]")
    for destination in sorted(traffic.requests):
        total, ok = traffic.requests[destination], traffic.ok.get(destination, 0)
        mean = traffic.latency.get(destination, 0.0) / total * 1000 if total else 0.0
        console.print(f"  {destination}: {total} requests, success rate {ok / total * 100:.1f}%, "
                      f"mean latency {mean:.1f} ms", soft_wrap=True)
    clusters = snap.clusters.get("clusters", snap.clusters) if isinstance(snap.clusters, dict) else {}
    for service, cluster in sorted(clusters.items()) if isinstance(clusters, dict) else ():
        counters = cluster.get("counters", {}) if isinstance(cluster, dict) else {}
        if isinstance(counters, dict):
            console.print(f"  {service} at checkout's sidecar: {counters.get('retries', 0)} retries, "
                          f"{counters.get('ejections', 0)} ejections", soft_wrap=True)
    delivered = _delivered(snap)
    console.print(f"  orders: {traffic.published} published, {delivered} delivered", soft_wrap=True)
    everywhere = True
    for node in nodes:
        count = sum(int(row.get("count", 0)) for row in snap.summaries.get(node.name, []))
        everywhere = everywhere and count > 0
        console.print(f"  sidecar {node.name}: {count} requests", soft_wrap=True)
    everywhere = everywhere and traffic.published > 0
    console.print(f"  traffic through every sidecar: {'yes' if everywhere else 'NO'}", soft_wrap=True)
    return everywhere


async def _main(duration: float | None, console: Console) -> int:
    root = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    demo = Demo(root)
    try:
        ca_dir = root / "ca"
        init_ca(ca_dir, TRUST_DOMAIN)
        seed: str | None = None
        for spec in NODES:
            node = demo.add_node(spec, ca_dir, seed)
            if seed is None:
                seed = yaml.safe_load(node.config_path.read_text())["gossip"]["listen"]
        checkout = demo.nodes[0]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT * 2)) as session:
            for node in demo.nodes:
                await _wait_ready(session, node)
            await _wait_mesh(session, checkout)
            console.print(f"[bold]sidecar demo[/bold]: {len(demo.nodes)} sidecars, files in {root}", soft_wrap=True)
            for node in demo.nodes:
                console.print(f"  {node.name:15} {node.spec.service:16} admin {node.admin}  api {node.api}"
                              f"  ({node.spec.note})", soft_wrap=True)
            console.print(f"  dashboard: {checkout.admin}/   try: curl {checkout.admin}/clusters", soft_wrap=True)
            console.print("  Ctrl-C stops and removes everything\n")
            traffic = Traffic()
            started = time.monotonic()
            driver = asyncio.create_task(_drive(session, checkout, traffic))
            deadline = None if duration is None else time.monotonic() + duration
            snap = Snapshot()
            live = Live(console=console, auto_refresh=False) if console.is_terminal and duration is None else None
            try:
                with live if live is not None else contextlib.nullcontext():
                    while deadline is None or time.monotonic() < deadline:
                        if driver.done():
                            driver.result()
                        snap = await _snapshot(session, demo.nodes, "10s")
                        if live is not None:
                            live.update(_render(snap, traffic, checkout.admin + "/"), refresh=True)
                        for node in demo.nodes:
                            if node.process is not None and node.process.poll() is not None:
                                raise RuntimeError(f"sidecar {node.name} exited with {node.process.returncode}")
                        left = 1.0 if deadline is None else deadline - time.monotonic()
                        await asyncio.sleep(min(1.0, max(0.0, left)))
            finally:
                driver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driver
            # the last deliveries settle within a moment: wait for them (bounded) before the summary
            settle = time.monotonic() + 3
            window = f"{int(time.monotonic() - started) + 60}s"   # the whole run
            while time.monotonic() < settle:
                snap = await _snapshot(session, demo.nodes, window)
                if _delivered(snap) >= traffic.published:
                    break
                await asyncio.sleep(0.2)
            if not console.is_terminal or duration is not None:
                console.print(_render(snap, traffic, checkout.admin + "/"))
            return 0 if _summary(console, snap, traffic, demo.nodes) else 1
    finally:
        demo.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _interruptible(duration: float | None, console: Console) -> int:
    """_main, cancelled by Ctrl-C or SIGTERM: its clean-up (stop every process, remove the folder) then runs."""
    task = asyncio.create_task(_main(duration, console))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_demo(duration: float | None) -> int:
    console = Console()
    try:
        return asyncio.run(_interruptible(duration, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("stopped; everything cleaned up")
        return 0
    except RuntimeError as e:
        print(f"sidecar demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_demo(None))
