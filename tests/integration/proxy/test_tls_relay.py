"""TLS on both sides of the engine, TLS session reuse, and the TCP relay carrying gRPC (grpcio)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest

from sidecar.proxy import ConnectionInfo, HttpProxy, RequestHead, Target, TcpRelay
from tests.integration.proxy.conftest import LoopThread, start_backend
from tests.integration.proxy.pki import SPIFFE_ID, make_pki

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio)")


def test_tls_on_both_sides_gives_route_the_peer_certificate_and_reuses_sessions(
        loop_thread: LoopThread, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    seen: list[ConnectionInfo] = []

    async def start() -> tuple[HttpProxy, HttpProxy, int, object]:
        backend = await start_backend()
        backend_target = Target(("127.0.0.1", backend.port))

        def inner_route(head: RequestHead, conn: ConnectionInfo) -> Target:
            seen.append(conn)
            return backend_target

        inner = HttpProxy(inner_route, name="inbound")
        server = await inner.listen("127.0.0.1", 0, ssl_context=pki.server_context())
        to_inner = Target(("127.0.0.1", server.sockets[0].getsockname()[1]), ssl=pki.client_context(),
                          server_hostname="localhost")
        outer = HttpProxy(lambda head, conn: to_inner, name="outbound")
        outer_server = await outer.listen("127.0.0.1", 0)
        return inner, outer, outer_server.sockets[0].getsockname()[1], backend

    inner, outer, port, backend = loop_thread.run(start())
    try:
        for i in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"GET /hello/{i} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".encode())
                response = b""
                while chunk := s.recv(65536):
                    response += chunk
            assert response.startswith(b"HTTP/1.1 200") and response.endswith(f"hello /hello/{i}".encode())

            async def drop_idle() -> None:  # the next request must dial again, offering the TLS session
                for pool in outer.pools:
                    pool.sweep(asyncio.get_running_loop().time() + 1e6)

            loop_thread.run(drop_idle())
        cert = seen[0].peer_certificate
        assert cert is not None
        assert ("URI", SPIFFE_ID) in cert["subjectAltName"]
        assert seen[0].listener == "inbound"
        assert seen[0].ssl_object is not None and not seen[0].ssl_object.session_reused
        assert seen[1].ssl_object is not None and seen[1].ssl_object.session_reused, "TLS session not resumed"
    finally:
        async def stop() -> None:
            await outer.close(grace=0.5)
            await inner.close(grace=0.5)
            await backend.runner.cleanup()  # type: ignore[attr-defined]

        loop_thread.run(stop())


# ------------------------------------------------------------------------------------------ TCP relay


class _Echo:
    """A gRPC service without generated code: bytes in, bytes out."""

    @staticmethod
    def unary(request: bytes, context: object) -> bytes:
        return request[::-1]

    @staticmethod
    def stream(request: bytes, context: object) -> Iterator[bytes]:
        for i in range(int(request)):
            yield f"item {i}".encode()


@pytest.fixture
def grpc_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_Echo.unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_Echo.stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None)


def test_grpc_unary_and_streaming_through_tcp_relays_over_mtls(
        loop_thread: LoopThread, grpc_server: int, tmp_path: Path) -> None:
    """app -> relay (plain) -> mTLS -> relay -> gRPC server: the shape of a `protocol: tcp` upstream."""
    pki = make_pki(tmp_path)

    async def start() -> tuple[TcpRelay, TcpRelay, int]:
        inner = TcpRelay(lambda info: Target(("127.0.0.1", grpc_server)), name="inbound-tcp")
        inner_server = await inner.listen("127.0.0.1", 0, ssl_context=pki.server_context())
        to_inner = Target(("127.0.0.1", inner_server.sockets[0].getsockname()[1]), ssl=pki.client_context(),
                          server_hostname="localhost")
        outer = TcpRelay(lambda info: to_inner, name="outbound-tcp")
        outer_server = await outer.listen("127.0.0.1", 0)
        return inner, outer, outer_server.sockets[0].getsockname()[1]

    inner, outer, port = loop_thread.run(start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = channel.unary_unary("/test.Echo/Unary")
            assert unary(b"hello grpc", timeout=10) == b"cprg olleh"
            assert unary(b"x" * 300_000, timeout=10) == b"x" * 300_000
            stream = channel.unary_stream("/test.Echo/Stream")
            assert list(stream(b"50", timeout=10)) == [f"item {i}".encode() for i in range(50)]
    finally:
        async def stop() -> None:
            await outer.close()
            await inner.close()

        loop_thread.run(stop())


def test_tcp_relay_passes_half_close(loop_thread: LoopThread) -> None:
    async def start() -> tuple[asyncio.Server, TcpRelay, int]:
        async def count_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()  # until the client's FIN
            writer.write(f"got {len(data)}".encode())
            await writer.drain()
            writer.close()

        upstream = await asyncio.start_server(count_until_eof, "127.0.0.1", 0)
        relay = TcpRelay(lambda info: Target(("127.0.0.1", upstream.sockets[0].getsockname()[1])))
        server = await relay.listen("127.0.0.1", 0)
        return upstream, relay, server.sockets[0].getsockname()[1]

    upstream, relay, port = loop_thread.run(start())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"a" * 100_000)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply == b"got 100000"
    finally:
        async def stop() -> None:
            await relay.close()
            upstream.close()

        loop_thread.run(stop())


def test_tcp_relay_refused_upstream_closes_client(loop_thread: LoopThread) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    relay = TcpRelay(lambda info: Target(("127.0.0.1", dead_port)))
    port = loop_thread.run(relay.listen("127.0.0.1", 0)).sockets[0].getsockname()[1]
    try:
        # aborted (a reset) or closed: either way, nothing is received
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s, contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
        assert relay.failed == 1
    finally:
        loop_thread.run(relay.close())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_through_tcp_relay_to_http_backend(loop_thread: LoopThread) -> None:
    async def start() -> tuple[TcpRelay, int, object]:
        backend = await start_backend()
        relay = TcpRelay(lambda info: Target(("127.0.0.1", backend.port)))
        server = await relay.listen("127.0.0.1", 0)
        return relay, server.sockets[0].getsockname()[1], backend

    relay, port, backend = loop_thread.run(start())
    try:
        out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/hello/tcp"], capture_output=True, timeout=10)
        assert out.stdout == b"hello /hello/tcp"
    finally:
        async def stop() -> None:
            await relay.close()
            await backend.runner.cleanup()  # type: ignore[attr-defined]

        loop_thread.run(stop())
