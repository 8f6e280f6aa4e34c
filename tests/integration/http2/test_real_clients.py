"""The HTTP/2 core's server side over a real loopback socket, driven by real clients: curl with prior
knowledge, nghttp and h2load; and an abusive client refused without harming the others."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hyperframe.frame import GoAwayFrame

from tests.integration.http2.echo_server import EchoServer
from tests.loops import LoopThread
from tests.unit.http2.peer import RawPeer, frames

pytestmark = pytest.mark.skipif(not (shutil.which("h2load") and shutil.which("nghttp")),
                                reason="nghttp2-client is missing: make tools")


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    loop = LoopThread()
    server = loop.run(EchoServer().start())
    yield server
    loop.run(server.stop())
    loop.close()


def test_curl_with_prior_knowledge(echo: EchoServer) -> None:
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
                          "--data-binary", "ping", f"http://127.0.0.1:{echo.port}/hello"],
                         capture_output=True, timeout=30, check=True).stdout
    assert out == b"echo:/helloping\n2 200"


def test_nghttp_upload_larger_than_every_window(echo: EchoServer, tmp_path: Path) -> None:
    body = bytes(range(256)) * 12 * 1024  # 3 MiB: more than the stream and connection windows
    (tmp_path / "body").write_bytes(body)
    out = subprocess.run(["nghttp", "-d", str(tmp_path / "body"), f"http://127.0.0.1:{echo.port}/up"],
                         capture_output=True, timeout=60, check=True).stdout
    assert out == b"echo:/up" + body


def test_h2load_thousands_of_requests_over_multiplexed_connections(echo: EchoServer, tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(b"\x00\x00\x00\x00\x05hello")  # a small gRPC-sized POST
    out = subprocess.run(["h2load", "-n", "3000", "-c", "4", "-m", "20", "-d", str(tmp_path / "body"),
                          f"http://127.0.0.1:{echo.port}/load"],
                         capture_output=True, timeout=120, check=True, text=True).stdout
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    assert done is not None, out
    assert done.groups() == ("3000", "3000", "3000", "3000", "0"), out
    assert echo.terminations == [] and all(c.counters == {} for c in echo.connections)


def test_rapid_reset_attacker_is_cut_off_and_others_are_served(echo: EchoServer) -> None:
    peer = RawPeer()
    attack = peer.preface() + b"".join(peer.headers(s) + peer.rst(s) for s in range(1, 2 * 1500, 2))
    with socket.create_connection(("127.0.0.1", echo.port), timeout=10) as sock:
        sock.sendall(attack)
        received = b""
        while chunk := sock.recv(65536):  # the server closes once its GOAWAY is written
            received += chunk
    goaways = [f for f in frames(received) if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [0xB]  # ENHANCE_YOUR_CALM
    assert [t.reason for t in echo.terminations] == ["more than 1000 streams reset or refused in 10s"]
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{echo.port}/after"],
                         capture_output=True, timeout=30, check=True).stdout
    assert out == b"echo:/after"
