"""The HTTP/2 core's server side over a real loopback socket, driven by real clients: curl with prior
knowledge, nghttp and h2load; and an abusive client refused without harming the others."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from hyperframe.frame import GoAwayFrame, RstStreamFrame

from tests.integration.http2.echo_server import EchoServer
from tests.unit.http2.peer import RawPeer, frames

pytestmark = pytest.mark.skipif(not (shutil.which("h2load") and shutil.which("nghttp")),
                                reason="nghttp2-client is missing: make tools")


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
    assert [t.reason for t in echo.terminations] == ["more than 1000 RST_STREAM frames in 10s"]
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{echo.port}/after"],
                         capture_output=True, timeout=30, check=True).stdout
    assert out == b"echo:/after"


def exchange(port: int, data: bytes, until_closed: bool = True, wait_for_bytes: int = 0) -> list[object]:
    """Send ``data`` on a new connection; read frames until the server closes (or enough bytes came)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        while (until_closed or len(received) < wait_for_bytes) and (chunk := sock.recv(65536)):
            received += chunk
    return list(frames(received))


def test_bad_preface_gets_goaway_and_close(echo: EchoServer) -> None:
    got = exchange(echo.port, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert [(type(f).__name__, getattr(f, "error_code", None)) for f in got][-1] == ("GoAwayFrame", 0x1)
    assert echo.connections[-1].counters == {"bad_preface": 1}


def test_streams_past_the_limit_are_refused_on_the_wire_and_the_rest_answered(echo: EchoServer) -> None:
    peer = RawPeer()
    # 150 requests before the client has read our SETTINGS (100 streams): 50 are refused, 100 answered
    burst = peer.preface() + b"".join(peer.headers(s) for s in range(1, 301, 2))
    burst += b"".join(peer.data(s, b"x", end_stream=True) for s in range(1, 301, 2))
    with socket.create_connection(("127.0.0.1", echo.port), timeout=10) as sock:
        sock.sendall(burst)
        received = b""
        while received.count(b"echo:") < 100:
            chunk = sock.recv(65536)
            assert chunk, "closed early"
            received += chunk
    got = frames(received)
    refused = sorted(f.stream_id for f in got if isinstance(f, RstStreamFrame) and f.error_code == 0x7)
    assert refused == list(range(201, 301, 2))
    assert not any(isinstance(f, GoAwayFrame) for f in got)
    assert echo.connections[-1].counters == {"refused_streams": 50}


def test_continuation_flood_is_cut_off(echo: EchoServer) -> None:
    peer = RawPeer()
    flood = peer.preface() + peer.headers(1, block=peer.block()[:2], end_headers=False)
    flood += b"".join(peer.continuation(1, b"\x00" * 1000) for _ in range(200))
    got = exchange(echo.port, flood)
    assert [f.error_code for f in got if isinstance(f, GoAwayFrame)] == [0xB]
    assert echo.connections[-1].counters == {"continuation_flood": 1}
