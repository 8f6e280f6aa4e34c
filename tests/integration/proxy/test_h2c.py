"""h2c with prior knowledge on the engine's HTTP/1.1 port, with real clients: curl, h2load, grpcio, and a raw
HTTP/2 peer for what well-behaved clients never send (resets, floods). The backend is HTTP/1.1 (aiohttp)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from sidecar.proxy import HttpProxy, ProxyLimits, Target
from tests.grpcapps.service import channel
from tests.h2client import RawH2, ended, get
from tests.harness import wait_for
from tests.integration.http2.h2load import h2load_all_2xx
from tests.integration.proxy.conftest import Harness, LoopThread, _harness
from tests.integration.proxy.test_http import curl, needs_curl

needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason="nghttp2-client is missing: make tools")
MB = 1 << 20


@pytest.fixture
def h2(loop_thread: LoopThread) -> Iterator[Harness]:
    for harness in _harness(loop_thread, ProxyLimits()):
        harness.proxy.h2c = True
        yield harness


def h2curl(port: int, *args: str, path: str = "/hello", host: str = "svc") -> tuple[bytes, str]:
    """curl over h2c with prior knowledge; the body and "HTTP_VERSION STATUS"."""
    out = curl("--http2-prior-knowledge", "-H", f"Host: {host}", "-w", "\n%{http_version} %{http_code}", *args,
               f"http://127.0.0.1:{port}{path}")
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition(b"\n")
    return body, tail.decode()


# ------------------------------------------------------------------------------------------ what goes through


@needs_curl
def test_curl_prior_knowledge_is_routed_by_authority_with_the_engines_headers(h2: Harness) -> None:
    out = curl("--http2-prior-knowledge", "-i", "-H", "Host: svc", f"http://127.0.0.1:{h2.port}/hello/a?b=1")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode().lower()
    assert text.startswith("http/2 200"), text
    assert "hello /hello/a?b=1" in text
    assert "x-seen-host: svc" in text                      # the HTTP/1.1 hop got :authority as Host
    assert "x-seen-x-request-id:" in text and "x-seen-traceparent: 00-" in text
    assert "connection:" not in text.split("\r\n\r\n")[0]  # no connection-specific field towards the client
    stats = wait_for(lambda: h2.stats, 5, what="the request reported")[-1]   # reported after the response went
    assert (stats.status, stats.error, stats.host, stats.target) == (200, None, "svc", b"/hello/a?b=1")


@needs_curl
def test_large_bodies_both_ways_and_a_chunked_response(h2: Harness, tmp_path: Path) -> None:
    body = bytes(range(256)) * (12 * 1024)   # 3 MiB: more than every HTTP/2 window
    (tmp_path / "body").write_bytes(body)
    echoed, tail = h2curl(h2.port, "--data-binary", f"@{tmp_path / 'body'}", path="/echo")
    assert tail == "2 200" and echoed == body
    chunks, tail = h2curl(h2.port, path="/chunks")
    assert (chunks, tail) == (b"part0;part1;part2;part3;part4;", "2 200")
    echo = wait_for(lambda: [s for s in h2.stats if s.target == b"/echo"], 5, what="the echo reported")[0]
    assert echo.request_bytes == len(body) and echo.response_bytes == len(body)


@needs_curl
def test_http1_clients_on_the_same_port_are_unaffected(h2: Harness) -> None:
    out = curl("--http1.1", "-H", "Host: svc", "-w", "\n%{http_version} %{http_code}",
               f"http://127.0.0.1:{h2.port}/hello/x", f"http://127.0.0.1:{h2.port}/hello/y")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello /hello/x\n1.1 200hello /hello/y\n1.1 200"
    body, tail = h2curl(h2.port, path="/hello/z")
    assert (body, tail) == (b"hello /hello/z", "2 200")


@needs_h2load
def test_h2load_thousands_of_requests_with_no_error(h2: Harness, tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(b"x" * 100)
    h2load_all_2xx(f"http://127.0.0.1:{h2.port}/echo", tmp_path / "body", "svc", streams=20)
    assert h2.proxy.protocol_errors == 0


# ------------------------------------------------------------------------------------------ the sidecar's errors


@needs_curl
def test_unknown_service_is_404_json_over_h2(h2: Harness) -> None:
    out = curl("--http2-prior-knowledge", "-i", "-H", "Host: missing", f"http://127.0.0.1:{h2.port}/x")
    head, _, body = out.stdout.decode().partition("\r\n\r\n")
    assert head.lower().startswith("http/2 404"), head
    assert "x-sidecar-error: NOT_FOUND" in head
    assert json.loads(body)["error"] == {"code": "NOT_FOUND", "grpcCode": 5, "message": "no service missing",
                                         "details": {}}


def test_unknown_service_is_a_trailers_only_not_found_for_grpcio(h2: Harness) -> None:
    with channel(f"127.0.0.1:{h2.port}", "missing") as ch, pytest.raises(grpc.RpcError) as failure:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    e = failure.value
    assert e.code() == grpc.StatusCode.NOT_FOUND, e  # type: ignore[attr-defined]
    assert e.details() == "no service missing"  # type: ignore[attr-defined]
    metadata = dict(e.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert metadata.get("x-sidecar-error") == "NOT_FOUND", metadata
    record = wait_for(lambda: h2.stats, 5, what="the call reported")[-1]
    assert (record.status, record.target) == (404, b"/test.Echo/Unary")   # SPEC's status in records, not 200


def test_upstream_refused_is_a_trailers_only_unavailable_for_grpcio(h2: Harness) -> None:
    with channel(f"127.0.0.1:{h2.port}", "refused") as ch, pytest.raises(grpc.RpcError) as failure:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    e = failure.value
    assert e.code() == grpc.StatusCode.UNAVAILABLE, e  # type: ignore[attr-defined]
    # the sidecar's status, not grpcio's own failure to connect
    assert dict(e.trailing_metadata() or ()).get("x-sidecar-error") == "UNAVAILABLE", e  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ cancellation, drain


def test_a_client_reset_ends_its_exchange_as_client_reset_and_the_connection_goes_on(h2: Harness) -> None:
    client = RawH2(h2.port)
    try:
        client.send(client.peer.headers(1, get(b"/sse"), end_stream=True))
        client.read_until(lambda got: any(isinstance(f, DataFrame) and f.stream_id == 1 and f.data for f in got))
        client.send(client.peer.rst(1))
        stats = wait_for(lambda: [s for s in h2.stats if s.target == b"/sse"], 5, what="the /sse exchange reported")
        assert stats[0].error == "client-reset", stats[0]
        # the connection goes on serving other streams
        client.send(client.peer.headers(3, get(b"/hello/after"), end_stream=True))
        got = client.read_until(ended(3))
        assert b"hello /hello/after" in b"".join(f.data for f in got if isinstance(f, DataFrame))
    finally:
        client.close()
        for _ in range(3):
            h2.ack()   # the backend's /sse handler ends instead of waiting out its deadline


def test_drain_sends_goaway_and_the_stream_in_flight_finishes(h2: Harness) -> None:
    client = RawH2(h2.port)
    try:
        client.send(client.peer.headers(1, get(b"/sse"), end_stream=True))
        first = client.read_until(lambda got: any(isinstance(f, DataFrame) and f.stream_id == 1 and f.data
                                                  for f in got))
        closing = asyncio.run_coroutine_threadsafe(h2.proxy.close(grace=10.0), h2.loop_thread.loop)
        got = client.read_until(lambda got: any(isinstance(f, GoAwayFrame) for f in got))
        goaway = next(f for f in got if isinstance(f, GoAwayFrame))
        assert (goaway.error_code, goaway.last_stream_id) == (0, 1)
        h2.ack()
        h2.ack()
        h2.ack()
        rest = client.read_until(ended(1))
        data = b"".join(f.data for f in first + got + rest if isinstance(f, DataFrame) and f.stream_id == 1)
        assert data == b"data: event0\n\ndata: event1\n\ndata: event2\n\n"
        closing.result(10)
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ abuse


@needs_curl
def test_rapid_reset_is_cut_off_while_another_client_is_served(h2: Harness) -> None:
    client = RawH2(h2.port)
    try:
        hello = client.peer.block(get(b"/hello/flood"))
        client.send(b"".join(client.peer.headers(s, block=hello, end_stream=True) + client.peer.rst(s)
                             for s in range(1, 2 * 1500, 2)))
        got = client.read_until(lambda got: any(isinstance(f, GoAwayFrame) for f in got))
    finally:
        client.close()
    assert [f.error_code for f in got if isinstance(f, GoAwayFrame)] == [0xB]   # ENHANCE_YOUR_CALM
    assert h2.proxy.protocol_errors == 1
    body, tail = h2curl(h2.port, path="/hello/other")
    assert (body, tail) == (b"hello /hello/other", "2 200")


@needs_curl
def test_a_bad_first_frame_gets_goaway_and_others_are_served(h2: Harness) -> None:
    client = RawH2(h2.port)   # the preface and SETTINGS, then a DATA frame on stream 0
    try:
        client.send(b"\x00\x00\x01" b"\x00" b"\x00" b"\x00\x00\x00\x00" b"x")
        got = client.read_until(lambda got: any(isinstance(f, GoAwayFrame) for f in got))
    finally:
        client.close()
    assert {f.error_code for f in got if isinstance(f, GoAwayFrame)} == {0x1}   # PROTOCOL_ERROR
    body, tail = h2curl(h2.port, path="/hello/other")
    assert (body, tail) == (b"hello /hello/other", "2 200")


def test_a_broken_preface_is_read_as_http1_and_refused(h2: Harness) -> None:
    with socket.create_connection(("127.0.0.1", h2.port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer


# ------------------------------------------------------------------------------------------ flow control


@needs_curl
def test_a_stalled_upstream_stops_the_clients_upload_at_its_window(loop_thread: LoopThread, tmp_path: Path) -> None:
    """An upstream that reads nothing: the proxy stops acknowledging the stream's DATA once the upstream's
    write buffer is full, so the client can send only about its window, not the whole body."""
    sink = socket.socket()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sink.bind(("127.0.0.1", 0))
    sink.listen(4)
    target = Target(("127.0.0.1", sink.getsockname()[1]), timeout=30.0)

    async def start() -> tuple[HttpProxy, int]:
        proxy = HttpProxy(lambda head, conn: target, h2c=True)
        server = await proxy.listen("127.0.0.1", 0)
        return proxy, server.sockets[0].getsockname()[1]

    proxy, port = loop_thread.run(start())
    # what the proxy may hold: the upstream socket's kernel send buffer (autotuned up to tcp_wmem's maximum),
    # its transport's high water mark (256 KiB) and the stream's receive window (256 KiB), with slack
    bound = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]) + 2 * MB
    size = max(16 * MB, 3 * bound)
    (tmp_path / "body").write_bytes(b"b" * size)
    try:
        out = curl("--http2-prior-knowledge", "-m", "3", "-H", "Host: sink", "-o", "/dev/null", "-w", "%{size_upload}",
                   "--data-binary", f"@{tmp_path / 'body'}", f"http://127.0.0.1:{port}/up")
        assert out.returncode == 28, out   # curl's timeout: the upload never finished
        uploaded = int(out.stdout)
        assert 0 < uploaded < bound < size, (uploaded, bound)
    finally:
        sink.close()
        loop_thread.run(proxy.close(grace=0.5))


def test_an_upstream_reset_mid_response_resets_the_clients_stream(h2: Harness) -> None:
    client = RawH2(h2.port)
    try:
        client.send(client.peer.headers(1, get(b"/reset"), end_stream=True))
        first = client.read_until(lambda got: any(isinstance(f, DataFrame) and f.data for f in got))
        assert b"partial" in b"".join(f.data for f in first if isinstance(f, DataFrame))
        h2.ack()   # the backend aborts its connection now
        got = client.read_until(lambda got: any(isinstance(f, RstStreamFrame) for f in got))
        assert [(f.stream_id, f.error_code) for f in got if isinstance(f, RstStreamFrame)] == [(1, 0x2)]
        # the connection itself goes on
        client.send(client.peer.headers(3, get(b"/hello/next"), end_stream=True))
        assert b"hello /hello/next" in b"".join(f.data for f in client.read_until(ended(3))
                                                 if isinstance(f, DataFrame))
    finally:
        client.close()


@needs_curl
def test_more_header_fields_than_the_listener_takes_is_431(h2: Harness) -> None:
    fields = [arg for i in range(101) for arg in ("-H", f"x-field-{i}: v")]
    body, tail = h2curl(h2.port, *fields)
    assert tail == "2 431", (body, tail)
    assert json.loads(body)["error"]["code"] == "HEADERS_TOO_LARGE"


@pytest.fixture
def h2_one_connection(loop_thread: LoopThread) -> Iterator[Harness]:
    for harness in _harness(loop_thread, ProxyLimits(max_connections=1)):
        harness.proxy.h2c = True
        yield harness


def test_an_h2_connection_counts_against_max_connections(h2_one_connection: Harness) -> None:
    h2 = h2_one_connection
    client = RawH2(h2.port)
    try:
        client.send(client.peer.headers(1, get(b"/sse"), end_stream=True))   # busy: not displaced as idle
        client.read_until(lambda got: any(isinstance(f, DataFrame) and f.data for f in got))
        with socket.create_connection(("127.0.0.1", h2.port), timeout=10) as other:
            other.sendall(b"GET /hello HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert other.recv(65536).startswith(b"HTTP/1.1 503")
    finally:
        client.close()
        for _ in range(3):
            h2.ack()   # the backend's /sse handler ends instead of waiting out its deadline


def test_a_header_list_over_the_listeners_head_limit_ends_the_connection(h2: Harness) -> None:
    """The listener's 60 KiB head limit is the HTTP/2 header list limit (the core's own default is 64 KiB)."""
    client = RawH2(h2.port)
    try:
        block = client.peer.block([*get(b"/hello/big"), (b"x-big", b"v" * (62 * 1024))])
        pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        frames_out = client.peer.headers(1, block=pieces[0], end_stream=True, end_headers=False)
        frames_out += b"".join(client.peer.continuation(1, piece, end_headers=i == len(pieces) - 1)
                               for i, piece in enumerate(pieces[1:], 1))
        client.send(frames_out)
        got = client.read_until(lambda got: any(isinstance(f, GoAwayFrame) for f in got))
    finally:
        client.close()
    assert {f.error_code for f in got if isinstance(f, GoAwayFrame)} == {0xB}   # ENHANCE_YOUR_CALM
    assert not [f for f in got if isinstance(f, HeadersFrame)]   # nothing of it went upstream


@pytest.fixture
def h2_impatient(loop_thread: LoopThread) -> Iterator[Harness]:
    for harness in _harness(loop_thread, ProxyLimits(header_timeout=0.5, idle_timeout=3.0)):
        harness.proxy.h2c = True
        yield harness


def closed_by_server(client: RawH2) -> tuple[list[Frame], float]:
    """Every frame until the server closes, and how long that took from now."""
    started = time.monotonic()
    got = client.read_until(lambda got: False, timeout=10.0)   # returns on the server's close
    return got, time.monotonic() - started


def test_a_client_sending_only_the_preface_is_closed_at_the_header_timeout(h2_impatient: Harness) -> None:
    h2 = h2_impatient
    client = RawH2(h2.port)      # preface + SETTINGS, then silence
    try:
        got, took = closed_by_server(client)
    finally:
        client.close()
    assert 0.5 * 0.9 <= took < 2.0, took    # the header timeout (0.5s), well before the idle timeout (3s)
    assert [f.error_code for f in got if isinstance(f, GoAwayFrame)] == [0]   # one GOAWAY (NO_ERROR), then close
    assert h2.proxy.header_timeouts == 1


def test_a_connection_whose_streams_ended_closes_at_the_idle_timeout(h2_impatient: Harness) -> None:
    h2 = h2_impatient
    client = RawH2(h2.port)
    try:
        client.send(client.peer.headers(1, get(b"/hello"), end_stream=True))
        client.read_until(ended(1))
        got, took = closed_by_server(client)
    finally:
        client.close()
    assert 3.0 * 0.9 <= took < 3.0 + 2.0, took      # the idle timeout, not the header timeout
    assert [f.error_code for f in got if isinstance(f, GoAwayFrame)] == [0]
    assert h2.proxy.header_timeouts == 0
