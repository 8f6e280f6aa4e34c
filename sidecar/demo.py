"""`sidecar demo`: a local mesh in one command, in a temporary folder that is removed afterwards.

Today it runs one sidecar beside a demo payment service whose health cycles healthy → degraded →
unhealthy, and shows the catalog and the live event stream; later parts add peers and traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from sidecar.views import catalog_table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoNode:
    name: str
    admin: str
    api: str
    config_path: Path
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Demo:
    root: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nodes: list[DemoNode] = field(default_factory=list)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=12))

    def spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{log_name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def add_node(self, name: str, services: list[dict[str, Any]]) -> DemoNode:
        admin, api = _free_port(), _free_port()
        config = {
            "node": {"name": name, "cluster": "demo", "data_dir": str(self.root / name)},
            "admin": {"listen": f"127.0.0.1:{admin}"},
            "api": {"listen": f"127.0.0.1:{api}"},
            "outbound": {"listen": "127.0.0.1:0"},
            "inbound": {"listen": "127.0.0.1:0"},
            "dns": {"listen": "127.0.0.1:0"},
            "gossip": {"listen": "127.0.0.1:0", "profile": "local"},
            "services": services,
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        node = DemoNode(name, f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{api}", path)
        node.process = self.spawn(["-m", "sidecar", "run", "-c", str(path)], name)
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


async def _wait_ready(session: aiohttp.ClientSession, node: DemoNode, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process is not None and node.process.poll() is not None:
            raise RuntimeError(f"sidecar {node.name} exited with {node.process.returncode}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(node.admin + "/ready") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"sidecar {node.name} not ready after {timeout}s")


async def _follow_events(session: aiohttp.ClientSession, node: DemoNode, demo: Demo) -> None:
    async with session.get(node.api + "/v1/events", headers={"Last-Event-ID": "0"},
                           timeout=aiohttp.ClientTimeout(total=None)) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            data = event["data"]
            stamp = time.strftime("%H:%M:%S", time.localtime(event["timestamp"] / 1000))
            if event["type"] == "health-changed":
                text = f"{stamp} {data['service']}: {data['before']} → {data['after']}  ({data['output']})"
            elif "service" in data and isinstance(data["service"], dict):
                text = f"{stamp} {event['type']}: {data['service']['name']} ({data['service']['id']})"
            else:
                text = f"{stamp} {event['type']}"
            demo.events.append(text)
            if not sys.stdout.isatty():
                print(text, flush=True)


def _events_panel(demo: Demo) -> Panel:
    table = Table.grid()
    for line in demo.events:
        table.add_row(line)
    return Panel(table, title="events (GET /v1/events)")


async def _main(duration: float | None, console: Console) -> int:
    root = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    demo = Demo(root)
    try:
        payment_port = _free_port()
        demo.spawn(["-m", "sidecar.demoapp", "--name", "payment-service", "--port", str(payment_port), "--flaky"],
                   "payment-app")
        node = demo.add_node("node-a", [{
            "name": "payment-service", "version": "1.0.0", "port": payment_port,
            "tags": ["financial", "payments"], "capabilities": ["stripe", "paypal"],
            "check": {"http": "/health", "interval": "1s", "timeout": "500ms"}}])
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, node)
            console.print(f"[bold]sidecar demo[/bold]: files in {root}")
            console.print(f"  admin {node.admin}   (try: curl {node.admin}/ready)")
            console.print(f"  app API {node.api}   (try: curl {node.api}/v1/catalog)")
            console.print("  payment-service's /health cycles healthy → degraded (429) → unhealthy (500)")
            console.print("  Ctrl-C stops and removes everything\n")
            follower = asyncio.create_task(_follow_events(session, node, demo))
            deadline = None if duration is None else time.monotonic() + duration
            interactive = console.is_terminal
            with Live(console=console, auto_refresh=False, transient=False) if interactive else \
                    contextlib.nullcontext() as live:
                while deadline is None or time.monotonic() < deadline:
                    async with session.get(node.api + "/v1/catalog") as r:
                        catalog = await r.json()
                    if live is not None:
                        live.update(Group(catalog_table(catalog), _events_panel(demo)), refresh=True)
                    if follower.done():
                        break
                    await asyncio.sleep(0.5)
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await follower
        return 0
    finally:
        demo.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_demo(duration: float | None) -> int:
    console = Console()
    try:
        return asyncio.run(_main(duration, console))
    except KeyboardInterrupt:
        console.print("stopped; everything cleaned up")
        return 0
    except RuntimeError as e:
        print(f"sidecar demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_demo(None))
