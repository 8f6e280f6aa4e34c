"""A mesh of real `sidecar run` processes in network namespaces, for the chaos run: each host is a namespace
(tests.integration.netns) with one sidecar and its apps; faults are a kill -9, a partition (nftables drops
between two groups of hosts) and packet loss (nftables ``numgen random`` drops on every host).

The test process reaches into the namespaces with threads: a thread that called ``setns(CLONE_NEWNET)`` opens
its sockets in that namespace (only that thread moves; the sockets stay where they were made). So the apps,
the load and the admin queries are ordinary Python in this process, on each namespace's own loopback.

Inside a namespace the sidecar's listeners have fixed ports: nothing else lives in a namespace the test made,
so they cannot collide, and a restarted sidecar comes back at the same addresses."""

from __future__ import annotations

import contextlib
import ctypes
import http.server as http_server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.harness import ROOT, JsonHandler
from tests.integration.netns.netns import Lab, run

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

ADMIN, API, OUTBOUND, INBOUND, DNS, GOSSIP = 9901, 3500, 15001, 15006, 8600, 7946


def enter_netns(ns: str) -> None:
    """Move the calling thread, and only it, into network namespace ``ns``."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


class InNetns:
    """A worker thread inside one namespace: ``call(fn, ...)`` runs ``fn`` there and returns its result."""

    def __init__(self, ns: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"in-{ns}", initializer=enter_netns, initargs=(ns,))

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        return self._pool.submit(fn, *args).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def get_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


# ------------------------------------------------------------------------------------------------- apps


class Inbox:
    """What the subscriber apps received, in arrival order across all of them: (service, node, payload)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, str, dict[str, Any]]] = []

    def add(self, service: str, node: str, payload: dict[str, Any]) -> None:
        with self.lock:
            self.arrivals.append((service, node, payload))

    def snapshot(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self.lock:
            return list(self.arrivals)


class _Server(http_server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a sidecar killed (or a try timed out) while its app answered: the app's write fails, nothing more
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class App:
    """A service's app next to its sidecar: GET answers the request load, POST records a ServiceMessage.
    Build it on a thread inside the namespace (its listening socket is made in the constructor)."""

    def __init__(self, service: str, node: str, inbox: Inbox) -> None:
        self.service = service
        self.node = node
        app = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                self.send_json(200, {"service": app.service, "node": app.node})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(raw)["payload"]
                except (ValueError, KeyError):
                    # cut short: the sidecar was killed while it forwarded the message (it will come again)
                    self.close_connection = True
                    return
                inbox.add(app.service, app.node, payload)
                self.send_json(200, {})

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name=f"app-{service}-{node}")
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------ nodes


@dataclass
class Node:
    name: str
    ns: str
    address: str
    config: dict[str, Any]
    runner: InNetns
    proc: subprocess.Popen[bytes] | None = None
    up: bool = False
    generation: int = 0          # bumped at every kill and start: a request that saw it change lost its sidecar
    apps: list[App] = field(default_factory=list)

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{port}{path}"


class Mesh:
    """The hosts of a Lab, each with a sidecar; faults on them; cleanup of all of it in :meth:`close`."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.nodes: dict[str, Node] = {}
        self.inbox = Inbox()
        self.partitioned: list[str] = []
        self.lossy: list[str] = []
        self.dropped_total = 0   # packets the loss rules dropped, over every loss fault so far

    def add(self, name: str, tls: dict[str, Any], services: list[str], subscriptions: list[dict[str, str]],
            settings: dict[str, Any]) -> Node:
        """A host with a sidecar (not started) and an app per service; ``settings``: the config's ``gossip``
        (listen and join are set here), ``policies`` and any other top-level section, the same for every node."""
        ns = self.lab.add_host(name)
        runner = InNetns(ns)
        node = Node(name, ns, self.lab.addresses[name], {}, runner)
        for service in services:
            node.apps.append(runner.call(App, service, name, self.inbox))
        node.config = {
            "node": {"name": name, "cluster": "chaos", "data_dir": str(self.tmp / name)},
            "admin": {"listen": f"127.0.0.1:{ADMIN}"}, "api": {"listen": f"127.0.0.1:{API}"},
            "outbound": {"listen": f"127.0.0.1:{OUTBOUND}"}, "inbound": {"listen": f"0.0.0.0:{INBOUND}"},
            "dns": {"listen": f"127.0.0.1:{DNS}"},
            **settings,
            "gossip": {**settings.get("gossip", {}), "listen": f"{node.address}:{GOSSIP}"},
            "tls": tls,
            "services": [{"name": app.service, "port": app.port, "check": {"http": "/health", "interval": "1s"}}
                         for app in node.apps],
            "subscriptions": subscriptions,
        }
        self.nodes[name] = node
        return node

    def set_joins(self) -> None:
        """Every node may join through any other: a restarted node finds whoever is up."""
        for node in self.nodes.values():
            node.config["gossip"]["join"] = [f"{n.address}:{GOSSIP}" for n in self.nodes.values() if n is not node]

    # ---------------------------------------------------------------------------------- processes

    def start(self, name: str) -> None:
        node = self.nodes[name]
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(node.config))
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it; closed below
        try:
            # `ip netns exec` execs the command: the Popen pid is the sidecar's (kill -9 reaches it, /proc shows it)
            node.proc = subprocess.Popen(
                [*self.lab.exec_args(name), sys.executable, "-m", "sidecar", "run", "-c", str(path)],
                cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            log.close()
        node.generation += 1

    def ready(self, name: str) -> bool:
        node = self.nodes[name]
        try:
            node.runner.call(get_json, node.url(ADMIN, "/ready"), 2.0)
        except Exception:
            return False
        node.up = True
        return True

    def kill(self, name: str) -> None:
        """kill -9: no drain, no leave; the data_dir stays as the crash left it."""
        node = self.nodes[name]
        node.up = False
        node.generation += 1
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def running(self, name: str) -> bool:
        proc = self.nodes[name].proc
        return proc is not None and proc.poll() is None

    def rss_bytes(self, name: str) -> int:
        proc = self.nodes[name].proc
        if proc is None or proc.poll() is not None:
            return 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.tmp / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ---------------------------------------------------------------------------------- views

    def admin(self, name: str, path: str) -> Any:
        node = self.nodes[name]
        return node.runner.call(get_json, node.url(ADMIN, path))

    def api(self, name: str, path: str) -> Any:
        node = self.nodes[name]
        return node.runner.call(get_json, node.url(API, path))

    def members(self, name: str) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.admin(name, "/members")}

    def sees(self, observers: list[str], expected: dict[str, str]) -> bool:
        """Every observer's /members has these states (``"alive"``, or ``"down"`` for suspect/dead/left)."""
        for observer in observers:
            states = self.members(observer)
            for name, want in expected.items():
                got = states.get(name)
                if want == "alive" and got != "alive":
                    return False
                if want == "down" and got == "alive":
                    return False
        return True

    # ---------------------------------------------------------------------------------- network faults

    def _nft(self, name: str, *args: str) -> None:
        run(*self.lab.exec_args(name), "nft", *args)

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        """Every host drops what comes from, and what goes to, the other side."""
        for mine, theirs in ((side_a, side_b), (side_b, side_a)):
            others = "{ " + ", ".join(self.nodes[n].address for n in theirs) + " }"
            for name in mine:
                self.partitioned.append(name)
                self._nft(name, "add", "table", "inet", "chaos_partition")
                self._nft(name, "add", "chain", "inet", "chaos_partition", "input",
                          "{ type filter hook input priority 0 ; }")
                self._nft(name, "add", "chain", "inet", "chaos_partition", "output",
                          "{ type filter hook output priority 0 ; }")
                self._nft(name, "add", "rule", "inet", "chaos_partition", "input", "ip", "saddr", others, "drop")
                self._nft(name, "add", "rule", "inet", "chaos_partition", "output", "ip", "daddr", others, "drop")

    def heal(self) -> None:
        for name in self.partitioned:
            self._nft(name, "delete", "table", "inet", "chaos_partition")
        self.partitioned = []

    def loss(self, percent: int) -> None:
        for name in self.nodes:
            self.lab.drop_incoming(name, percent)
            self.lossy.append(name)

    def dropped(self) -> int:
        return sum(self.lab.dropped(name) for name in self.lossy)

    def no_loss(self) -> None:
        for name in self.lossy:
            self._nft(name, "delete", "table", "inet", "loss")
        self.lossy = []

    # ---------------------------------------------------------------------------------- cleanup

    def close(self) -> None:
        """Stop every sidecar (TERM, then KILL), the apps and the namespace threads; the Lab removes the
        namespaces, and with them every nftables table."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(10)
        for node in self.nodes.values():
            for app in node.apps:
                with contextlib.suppress(OSError):
                    app.close()
            node.runner.close()
