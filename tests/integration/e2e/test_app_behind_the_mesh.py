"""An httpbin-like app behind two real `sidecar run` processes (mTLS between them, gossip for the catalog), called
by real curl through the caller's outbound listener, as an app's own traffic would be:

* an upload with ``Expect: 100-continue``: the app answers ``100 Continue``, reads the body, then answers; the
  final response reaches curl with every header and its own framing;
* a request the app takes 6 s to answer (longer than the 5 s per-try timeout the product once defaulted to,
  shorter than the 15 s timeout) succeeds with the default policy, having reached the app once; with
  ``per_try_timeout: 1s`` set, each try is cut at 1 s and retried.
"""

from __future__ import annotations

import hashlib
import http.server as http_server
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import JsonHandler, SidecarProcess, http, make_certs, wait_for

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl (Debian package curl) is not installed")

SERVICE = "httpbin"
SLOW_SECONDS = 6.0   # past the old 5 s per-try default, well inside the 15 s timeout


class HttpbinApp:
    """A real HTTP/1.1 server (the stdlib's, as many small apps are) that records every request it gets.

    ``POST /post`` answers like httpbin: JSON with the body's size and digest, Content-Type, Content-Length, a CORS
    header and a custom one. The stdlib answers ``Expect: 100-continue`` with ``100 Continue`` written (and sent)
    on its own before the handler reads the body, so the final head can only follow in a later read: the client
    sends the body only once the interim response has crossed both sidecars.
    ``GET /delay?s=N`` answers after N seconds."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, float, str | None]] = []   # method, path, arrival (monotonic), Expect
        app = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                app.requests.append((self.command, self.path, time.monotonic(), self.headers.get("Expect")))
                if self.path.startswith("/delay"):
                    time.sleep(min(float(self.path.partition("s=")[2] or 0), 10.0))
                self._answer({"path": self.path})

            def do_POST(self) -> None:
                app.requests.append((self.command, self.path, time.monotonic(), self.headers.get("Expect")))
                remaining = int(self.headers.get("Content-Length") or 0)
                digest = hashlib.sha256()
                size = 0
                while remaining > 0:
                    piece = self.rfile.read(min(remaining, 1 << 16))
                    if not piece:
                        break
                    digest.update(piece)
                    size += len(piece)
                    remaining -= len(piece)
                self._answer({"path": self.path, "received": size, "sha256": digest.hexdigest()})

            def _answer(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Access-Control-Allow-Origin", "*")
                    self.send_header("X-Httpbin-Custom", "kept")
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass   # the caller gave up on this try (a per-try timeout cut it)

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mesh:
    caller: SidecarProcess     # node-a: "checkout", the app's side
    app: HttpbinApp            # behind node-b, as the service "httpbin"

    @property
    def outbound(self) -> str:
        return self.caller.listeners["outbound"]


StartMesh = Callable[[dict[str, Any] | None], Mesh]


@pytest.fixture
def start_mesh(start_sidecar, tmp_path: Path) -> Iterator[StartMesh]:  # type: ignore[no-untyped-def]
    apps: list[HttpbinApp] = []

    def start(policies: dict[str, Any] | None = None) -> Mesh:
        """node-a (with ``policies``, else the defaults) and node-b hosting the app; returns once node-a's
        catalog shows the service healthy."""
        certs = make_certs(tmp_path / "certs", ["checkout", SERVICE])
        app = HttpbinApp()
        apps.append(app)
        extra = {"policies": policies} if policies is not None else {}
        caller = start_sidecar({"node": {"name": "node-a", "cluster": "test"}, "tls": certs["checkout"],
                                "gossip": {"profile": "local"}, **extra}, name="node-a")
        start_sidecar({"node": {"name": "node-b", "cluster": "test"}, "tls": certs[SERVICE],
                       "gossip": {"profile": "local", "join": [caller.listeners["gossip"]]},
                       "services": [{"name": SERVICE, "port": app.port}]}, name="node-b")
        wait_for(lambda: [i["status"] for i in http("GET", caller.api + f"/v1/catalog/{SERVICE}").json()]
                 == ["healthy"], timeout=20, what=f"{SERVICE} healthy in node-a's catalog")
        return Mesh(caller, app)

    yield start
    for app in apps:
        app.close()


@dataclass
class CurlResult:
    heads: list[list[str]]        # every response head curl saw, interim ones first, as lines
    body: bytes
    seconds: float

    @property
    def final(self) -> dict[str, str]:
        lines = self.heads[-1]
        return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}

    @property
    def status(self) -> int:
        return int(self.heads[-1][0].split()[1])


def curl(*args: str, timeout: float = 30.0) -> CurlResult:
    assert CURL is not None
    with tempfile.TemporaryDirectory(prefix="app-curl-") as folder:
        head, body = Path(folder) / "head", Path(folder) / "body"
        started = time.monotonic()
        done = subprocess.run([CURL, "-sS", "-D", str(head), "-o", str(body), *args], capture_output=True,
                              timeout=timeout)
        seconds = time.monotonic() - started
        assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr.decode()}"
        blocks = head.read_bytes().decode("latin-1").split("\r\n\r\n")
        heads = [block.split("\r\n") for block in blocks if block]
        return CurlResult(heads, body.read_bytes(), seconds)


def test_an_upload_with_expect_100_continue_gets_the_final_response_whole(start_mesh: StartMesh,
                                                                          tmp_path: Path) -> None:
    mesh = start_mesh(None)
    upload = tmp_path / "upload.bin"
    data = bytes(range(256)) * (8 * 1024)   # 2 MiB: larger than the proxy's replay buffer, as a real upload is
    upload.write_bytes(data)
    result = curl(f"http://{mesh.outbound}/post", "-H", f"Host: {SERVICE}", "-H", "Expect: 100-continue",
                  "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{upload}")
    # the app itself answered 100 Continue (it got the Expect header), and curl saw it before the final head
    assert [expect for method, _, _, expect in mesh.app.requests if method == "POST"] == ["100-continue"]
    assert [head[0].split()[1] for head in result.heads] == ["100", "200"], result.heads
    final = result.final
    assert final.get("content-type") == "application/json", final
    assert final.get("access-control-allow-origin") == "*" and final.get("x-httpbin-custom") == "kept", final
    assert "transfer-encoding" not in final, final
    assert final.get("content-length") == str(len(result.body)), final
    assert json.loads(result.body) == {"path": "/post", "received": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()}


def test_a_slow_answer_inside_the_timeout_is_waited_for_once(start_mesh: StartMesh) -> None:
    mesh = start_mesh(None)
    result = curl(f"http://{mesh.outbound}/delay?s={SLOW_SECONDS:g}", "-H", f"Host: {SERVICE}", timeout=30)
    assert result.status == 200, (result.heads, result.body)
    assert json.loads(result.body) == {"path": f"/delay?s={SLOW_SECONDS:g}"}
    assert SLOW_SECONDS <= result.seconds < 15.0
    assert [path for _, path, _, _ in mesh.app.requests] == [f"/delay?s={SLOW_SECONDS:g}"]   # asked once


def test_a_per_try_timeout_set_in_the_policy_cuts_each_try(start_mesh: StartMesh) -> None:
    mesh = start_mesh({"*": {"retries": {"per_try_timeout": "1s"}}})
    result = curl(f"http://{mesh.outbound}/delay?s={SLOW_SECONDS:g}", "-H", f"Host: {SERVICE}", timeout=30)
    assert result.status == 504 and json.loads(result.body)["error"]["code"] == "DEADLINE_EXCEEDED", result.body
    # three tries (attempts: 2 retries), each cut at 1 s: the app saw the next one about a second after the last
    arrivals = wait_for(lambda: [at for _, _, at, _ in mesh.app.requests] if len(mesh.app.requests) == 3 else None,
                        timeout=5, what="three tries at the app")
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(0.9 <= gap < 2.0 for gap in gaps), gaps
    assert 2.9 <= result.seconds < SLOW_SECONDS, result.seconds
    assert len(mesh.app.requests) == 3
