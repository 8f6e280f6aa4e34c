"""Real clients' HTTP/2 traffic (curl, nghttp, h2load, grpcio), recorded at the core's echo server and
replayed through sidecar.http2's frames and HPACK and through hyperframe and hpack: both agree on every frame
and every header block, both ways. ``SIDECAR_SAVE_CAPTURES=DIR`` also writes the recordings to DIR (the seeds
of tests/fuzz/corpus/http2_codec came from there)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.fuzz.replay import replay
from tests.integration.http2.echo_server import EchoServer

pytestmark = pytest.mark.skipif(not (shutil.which("h2load") and shutil.which("nghttp")),
                                reason="nghttp2-client is missing: make tools")


CLIENTS = ["curl", "nghttp", "h2load", "h2load", "grpcio"]  # the order _clients connects in


def _clients(port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{port}"
    subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-H", "authorization: Bearer secret",
                    "-H", "cookie: a=1", "--data-binary", "ping", f"{url}/curl"], capture_output=True, timeout=30,
                   check=True)
    upload = tmp_path / "upload"
    upload.write_bytes(os.urandom(20_000))
    subprocess.run(["nghttp", "-d", str(upload), "-H", "x-trace: abc", f"{url}/nghttp", f"{url}/nghttp2"],
                   capture_output=True, timeout=30, check=True)
    subprocess.run(["h2load", "-n", "200", "-c", "2", "-m", "10", "-H", "x-user: someone", f"{url}/h2load"],
                   capture_output=True, timeout=60, check=True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/pkg.Service/Method")
        for _ in range(3):
            with pytest.raises(grpc.RpcError):  # the echo server does not speak gRPC: only its bytes matter
                call(b"\x08\x01", timeout=5, metadata=[("x-tenant", "blue"), ("x-bin", b"\x00\xff")])


def test_real_clients_traffic_replays_equal_through_ours_and_python_hyper(echo: EchoServer,
                                                                          tmp_path: Path) -> None:
    _clients(echo.port, tmp_path)
    save = os.environ.get("SIDECAR_SAVE_CAPTURES")
    checked_frames = checked_blocks = 0
    assert len(echo.captures) >= 5  # curl, nghttp, h2load's two, grpcio's
    for i, (received, sent) in enumerate(echo.captures):
        for direction, wire in (("c2s", received), ("s2c", sent)):
            n_frames, n_blocks = replay(bytes(wire))
            checked_frames += n_frames
            checked_blocks += n_blocks
            if save:
                Path(save, f"{CLIENTS[min(i, len(CLIENTS) - 1)]}-{i}-{direction}.h2").write_bytes(bytes(wire))
    assert checked_blocks >= 400  # h2load's 200 requests and their 200 answers at least
    assert checked_frames > checked_blocks
