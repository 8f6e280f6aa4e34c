"""Streams through two sidecars: 100 MB bodies both ways with flat memory, SSE event by event, a WebSocket echo,
and gRPC (unary and server streaming) through a ``protocol: tcp`` upstream."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.harness import wait_for
from tests.integration.mesh.clients import curl, needs_curl
from tests.integration.mesh.conftest import Mesh

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio)")

BIG = 100 * 1024 * 1024


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@needs_curl
def test_100_mb_up_and_down_stream_without_buffering(mesh: Mesh, tmp_path: Path) -> None:
    """Both sidecars run in this process: if either buffered a body, the peak RSS would grow by ~100 MB."""
    upload = tmp_path / "upload.bin"
    with upload.open("wb") as f:
        block = b"u" * (1 << 20)
        for _ in range(BIG // len(block)):
            f.write(block)
    before = _peak_rss_mib()
    port = mesh.a.outbound
    reply = curl(f"http://127.0.0.1:{port}/count", "-H", "Host: inventory", "-H", "Expect:",
                 "--data-binary", f"@{upload}", timeout=60)
    assert (reply.status, reply.body) == (200, str(BIG).encode())
    # chunked upload from stdin (no length known in advance), through the fixed upstream port
    reply = curl(f"http://127.0.0.1:{mesh.a.port('upstream:inventory')}/count", "-H", "Transfer-Encoding: chunked",
                 "--data-binary", f"@{upload}", timeout=60)
    assert (reply.status, reply.body) == (200, str(BIG).encode())
    reply = curl(f"http://127.0.0.1:{port}/big?size={BIG}", "-H", "Host: inventory", timeout=60, keep_body=False)
    assert reply.status == 200 and reply.size == BIG
    grown = _peak_rss_mib() - before
    assert grown < 48, f"peak memory grew by {grown:.0f} MiB while streaming 100 MB bodies"


def test_server_sent_events_arrive_one_by_one(mesh: Mesh) -> None:
    ack_url = f"http://127.0.0.1:{mesh.app.port}/sse-ack"
    with socket.create_connection(("127.0.0.1", mesh.a.outbound), timeout=10) as s:
        s.sendall(b"GET /sse?n=3 HTTP/1.1\r\nHost: inventory\r\nAccept: text/event-stream\r\n\r\n")
        received = b""
        for i in range(3):
            # event i must arrive while the app still waits for our ack of it: nothing buffers the stream
            deadline = time.monotonic() + 10
            while f"data: event{i}\n\n".encode() not in received:
                assert time.monotonic() < deadline, f"event{i} did not arrive: {received!r}"
                chunk = s.recv(65536)
                assert chunk, f"stream ended before event{i}: {received!r}"
                received += chunk
            assert f"event{i + 1}".encode() not in received
            with urllib.request.urlopen(ack_url, timeout=5) as r:
                assert r.status == 200
        head = received.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200") and b"text/event-stream" in head


def test_websocket_echo_across_two_sidecars(mesh: Mesh) -> None:
    async def talk() -> list[str | bytes]:
        got: list[str | bytes] = []
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{mesh.a.outbound}/ws", headers={"Host": "inventory"}) as ws:
            for i in range(5):
                await ws.send_str(f"msg{i}")
                got.append((await ws.receive(timeout=5)).data)
            await ws.send_bytes(b"\x00" * 200_000)
            got.append((await ws.receive(timeout=5)).data)
        return got

    got = asyncio.run(asyncio.wait_for(talk(), 20))
    assert got[:5] == [f"echo:msg{i}" for i in range(5)]
    assert got[5] == b"\x00" * 200_000
    # the upgraded request is counted when its tunnel closes
    wait_for(lambda: mesh.b.dataplane.stats.requests.get(("inbound", "inventory", "1xx"), 0) >= 1, 5,
             what="101 counted")


def test_grpc_unary_and_server_streaming_through_a_tcp_upstream(mesh: Mesh) -> None:
    before = mesh.b.dataplane.stats.tunnels["inbound", "grpc-echo", "ok"]
    port = mesh.a.port("upstream:grpc-echo")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        assert unary(b"hello grpc", timeout=10) == b"cprg olleh"
        assert unary(b"x" * 300_000, timeout=10) == b"x" * 300_000
        stream = channel.unary_stream("/test.Echo/Stream")
        assert list(stream(b"50", timeout=10)) == [f"item {i}".encode() for i in range(50)]
    # the tunnel is counted when it closes
    wait_for(lambda: mesh.b.dataplane.stats.tunnels["inbound", "grpc-echo", "ok"] > before, 5, what="tunnel counted")
    assert mesh.b.dataplane.stats.tunnel_bytes["inbound", "grpc-echo", "up"] > 300_000


def test_grpc_tunnel_of_a_caller_the_rules_refuse_is_closed(mesh: Mesh) -> None:
    denials = mesh.b.dataplane.stats.denials
    before = denials["grpc-echo", "reports", "authorization.rules[2]"]
    port = mesh.c.port("upstream:grpc-echo")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary("/test.Echo/Unary")(b"hi", timeout=5)
        assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    assert denials["grpc-echo", "reports", "authorization.rules[2]"] > before
