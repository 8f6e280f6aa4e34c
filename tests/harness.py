"""Real processes and sockets for integration tests: a `sidecar run` subprocess, a controllable app,
and waiting for conditions with deadlines (never bare sleeps)."""

from __future__ import annotations

import asyncio
import http.server as http_server
import inspect
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from sidecar.config.load import deep_merge

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until ``predicate()`` is truthy and return its value; fail the test at the deadline.

    A predicate that raises has not been met yet (a port not open, a key not there): its exception is kept
    as the last value and shown if the deadline passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(_timed_out(timeout, what or predicate, last))


async def wait_for_async(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
                         what: str = "") -> Any:
    """:func:`wait_for` inside a running event loop: polls without blocking the loop, and ``predicate`` may
    return an awaitable (it is awaited). The deadline is in loop time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        try:
            last = predicate()
            if inspect.isawaitable(last):
                last = await last
        except Exception as e:
            last = e
        else:
            if last:
                return last
        await asyncio.sleep(interval)
    raise AssertionError(_timed_out(timeout, what or predicate, last))


def _timed_out(timeout: float, what: object, last: object) -> str:
    return f"timed out after {timeout}s waiting for {what}; last value: {last!r}"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ HTTP client


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> Response:
    data: bytes | None
    if body is None:
        data = None
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response framed by Content-Length from ``sock``: its status, its fields (lowercase names) and its body;
    the test fails if the connection closes before its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def assert_error(response: Response, status: int, code: str) -> dict[str, Any]:
    """SPEC's error shape: JSON body and the x-sidecar-error header."""
    assert response.status == status, response
    assert response.headers.get("x-sidecar-error") == code, response.headers
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["grpcCode"], int)
    assert error["message"]
    return dict(error)


# -------------------------------------------------------------------------------------- sidecar process

_LISTENING = re.compile(r"listening listener=(\w+) address=(\S+)")


class SidecarProcess:
    """``sidecar run`` in a subprocess, with every listener on a free port unless the config says otherwise."""

    def __init__(self, tmp: Path, config: dict[str, Any], name: str = "node-a",
                 extra_args: list[str] | None = None, command: list[str] | None = None,
                 cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.name = name
        base: dict[str, Any] = {
            "node": {"name": name, "data_dir": str(tmp / f"data-{name}")},
            "admin": {"listen": "127.0.0.1:0"},
            "api": {"listen": "127.0.0.1:0"},
            "outbound": {"listen": "127.0.0.1:0"},
            "inbound": {"listen": "127.0.0.1:0"},
            "dns": {"listen": "127.0.0.1:0"},
            "gossip": {"listen": "127.0.0.1:0", "profile": "local"},
        }
        merged = deep_merge(base, config)
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(merged))
        self.config = merged
        # command: how to start the product (an installed console script, in the install tests)
        self.args = [*(command or [sys.executable, "-m", "sidecar"]), "run", "-c", str(self.config_path),
                     *(extra_args or [])]
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] = []
        self.listeners: dict[str, str] = {}
        self.ready_logged = False
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> SidecarProcess:
        self.ready_logged = False
        self.proc = subprocess.Popen(self.args, cwd=str(self.cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=self.env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait_ready:
            # the "sidecar ready" line follows every "listening" line: once the reader thread has seen it,
            # ``listeners`` is complete (/ready can answer 200 before the thread has read that far)
            wait_for(lambda: self.ready_logged and self.ready(), timeout,
                     what=f"{self.name} ready; log: {self.lines[-5:]}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "sidecar ready" in line:
                self.ready_logged = True
            match = _LISTENING.search(line)
            if match:
                self.listeners[match.group(1)] = match.group(2)
            elif line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("msg") == "listening":
                    self.listeners[entry["listener"]] = entry["address"]

    def ready(self) -> bool:
        try:
            return http("GET", self.admin + "/ready", timeout=2).status == 200
        except OSError:
            return False

    @property
    def admin(self) -> str:
        return "http://" + self.listeners["admin"]

    @property
    def api(self) -> str:
        return "http://" + self.listeners["api"]

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> str:
        regex = re.compile(pattern)
        return str(wait_for(lambda: next((line for line in self.lines if regex.search(line)), None), timeout,
                            what=f"log line matching {pattern!r}"))

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_cli(*args: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ------------------------------------------------------------------------------------ a controllable app


class JsonHandler(http_server.BaseHTTPRequestHandler):
    """Base of the test apps' handlers: HTTP/1.1 keep-alive, JSON answers, no Nagle, no request log."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # the stdlib writes the head and the body separately: without this, Nagle and delayed ACKs cost 40 ms
        # per answer on loopback
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http_server.ThreadingHTTPServer):
    # the socket module's listen backlog (128 on Linux), as real servers use; the standard library's default of
    # 5 drops the SYNs of a burst of new connections, which then wait seconds for the retransmission
    request_queue_size = socket.SOMAXCONN


class FakeApp:
    """A real HTTP server on a free loopback port whose /health answer and other answers' status the test sets;
    it records what it got."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.health_status = 200
        self.answer_status = 200
        self.requests: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []
        app = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._answer(self.rfile.read(length))

            def _answer(self, received: bytes) -> None:
                app.requests.append((self.command, self.path))
                if not self.path.startswith("/health"):
                    app.headers.append({k.lower(): v for k, v in self.headers.items()})
                status = app.health_status if self.path.startswith("/health") else app.answer_status
                self.send_json(status, {"app": app.name, "path": self.path, "status": status,
                                        "method": self.command, "received": len(received)})

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpApp:
    """A real TCP listener that can be closed and reopened on the same port."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.port = free_port()

    def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# ------------------------------------------------------------------------------------------------- a mesh


def make_certs(directory: Path, identities: list[str], trust_domain: str = "mesh.local") -> dict[str, dict[str, str]]:
    """A fresh CA and one certificate per identity, as `sidecar certs init/issue` make them."""
    from sidecar.tls import certs
    certs.init_ca(directory, trust_domain)
    out = {}
    for name in identities:
        paths = certs.issue(name, directory, ttl="1h")
        out[name] = {"trust_domain": trust_domain, "ca": str(directory / "ca.pem"), "cert": str(paths.cert),
                     "key": str(paths.key)}
    return out


def members_by_state(process: SidecarProcess, headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers``: the admin token's, when admin.token_file is set."""
    return {m["name"]: m["state"] for m in http("GET", process.admin + "/members", headers=headers).json()}


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it) toward ``wanted``; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class LoadThreads:
    """Client threads, one per function of ``loops()``, each calling its function until stopped (bounded by
    ``max_seconds`` whatever happens), ``pace`` seconds apart; every exception is kept in ``failures``."""

    max_seconds = 60.0
    pace = 0.0

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(fn,), daemon=True) for fn in self.loops()]

    def loops(self) -> list[Callable[[], None]]:
        raise NotImplementedError

    def __enter__(self) -> LoadThreads:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "a load thread did not stop"

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def _run(self, fn: Callable[[], None]) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                fn()
            except Exception as exc:
                self.fail(f"{fn.__name__}: {exc!r}")
            if self.pace:
                self.stop.wait(self.pace)
