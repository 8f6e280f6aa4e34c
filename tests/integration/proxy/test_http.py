"""The engine with real clients on loopback: curl, raw sockets, aiohttp's WebSocket client."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import aiohttp
import pytest

from sidecar.proxy import ProxyLimits
from tests.harness import wait_for
from tests.integration.proxy.conftest import Harness, LoopThread, _harness

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed (Debian package curl)")


def curl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run([CURL, "-sS", *args], capture_output=True, timeout=timeout, check=False)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` and read until the proxy closes the connection (the test fails if it does not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    raise AssertionError(f"connection not closed within {timeout}s; got {b''.join(chunks)[:300]!r}")


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# ------------------------------------------------------------------------------------------ basics


@needs_curl
def test_host_routing_with_curl_adds_request_id_and_traceparent(harness: Harness) -> None:
    result = curl("-i", "-H", "Host: svc", f"http://127.0.0.1:{harness.port}/hello/a?b=1")
    text = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert text.startswith("HTTP/1.1 200")
    assert "hello /hello/a?b=1" in text
    assert "x-seen-x-request-id:" in text.lower()
    traceparent = next(line for line in text.lower().splitlines() if line.startswith("x-seen-traceparent:"))
    assert traceparent.split(": ")[1].startswith("00-")
    assert harness.stats[-1].status == 200 and harness.stats[-1].error is None


@needs_curl
def test_traceparent_is_continued_with_a_new_span(harness: Harness) -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    result = curl("-i", "-H", f"traceparent: {incoming}", "-H", "x-request-id: abc",
                  f"http://127.0.0.1:{harness.port}/hello")
    headers = {line.split(": ", 1)[0].lower(): line.split(": ", 1)[1]
               for line in result.stdout.decode().splitlines() if ": " in line}
    sent = headers["x-seen-traceparent"]
    assert sent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and sent.endswith("-01")
    assert "00f067aa0ba902b7" not in sent
    assert headers["x-seen-x-request-id"] == "abc"
    assert harness.stats[-1].parent_span_id == "00f067aa0ba902b7"


@needs_curl
def test_absolute_form_through_curl_proxy_option(harness: Harness) -> None:
    result = curl("-x", f"http://127.0.0.1:{harness.port}", "http://svc/hello/x")
    assert result.stdout == b"hello /hello/x", result.stderr
    assert harness.stats[-1].host == "svc"
    assert harness.stats[-1].target == b"/hello/x"


@needs_curl
def test_route_error_becomes_spec_json(harness: Harness) -> None:
    result = curl("-i", "-H", "Host: missing", f"http://127.0.0.1:{harness.port}/hello")
    head, body = result.stdout.split(b"\r\n\r\n", 1)
    assert status_of(head) == 404
    assert b"x-sidecar-error: NOT_FOUND" in head
    assert json.loads(body)["error"]["code"] == "NOT_FOUND"


@needs_curl
def test_upstream_refused_is_503_unavailable(harness: Harness) -> None:
    result = curl("-i", "-H", "Host: refused", f"http://127.0.0.1:{harness.port}/hello")
    head, body = result.stdout.split(b"\r\n\r\n", 1)
    assert status_of(head) == 503
    assert b"x-sidecar-error: UNAVAILABLE" in head
    error = json.loads(body)["error"]
    assert error["code"] == "UNAVAILABLE" and error["grpcCode"] == 14
    assert "refused" in error["message"]
    assert harness.stats[-1].error == "connect-failure"


def test_upstream_reset_mid_response_closes_the_client_connection(harness: Harness) -> None:
    with socket.create_connection(("127.0.0.1", harness.port), timeout=5) as s:
        s.sendall(b"GET /reset HTTP/1.1\r\nHost: svc\r\n\r\n")
        response = b""
        for _ in range(100):   # bounded; each recv by the socket's timeout
            if response.endswith(b"partial"):
                break
            chunk = s.recv(65536)
            assert chunk, f"closed before the partial body: {response!r}"
            response += chunk
        assert response.startswith(b"HTTP/1.1 200")
        assert response.endswith(b"partial")  # 7 of the promised 1000 bytes
        harness.ack()                         # the backend resets its connection only now
        assert s.recv(65536) == b""           # and the proxy closes ours
    assert harness.stats[-1].error == "reset-after-response"


def test_pool_reuses_one_upstream_connection_for_sequential_requests(harness: Harness) -> None:
    with socket.create_connection(("127.0.0.1", harness.port), timeout=5) as s:
        reader = s.makefile("rb")
        for i in range(100):
            s.sendall(f"GET /hello/{i} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
            length = 0
            while line := reader.readline():
                if line == b"\r\n":
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert reader.read(length) == f"hello /hello/{i}".encode()
    assert len(harness.backend.peers) == 1
    assert [p.dialed for p in harness.proxy.pools] == [1]


def test_pipelined_requests_are_answered_in_order(harness: Harness) -> None:
    requests = b"".join(f"GET /hello/{i} HTTP/1.1\r\nHost: svc\r\n\r\n".encode() for i in range(5))
    last = b"GET /hello/last HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
    response = raw_exchange(harness.port, requests + last)
    bodies = [part for part in response.split(b"\r\n\r\n")[1:]]
    order = [b.split(b"HTTP/1.1")[0] for b in bodies]
    assert order == [f"hello /hello/{i}".encode() for i in range(5)] + [b"hello /hello/last"]


# ------------------------------------------------------------------------------------------ bodies


@needs_curl
def test_chunked_request_and_chunked_response(harness: Harness) -> None:
    result = curl("-i", "-H", "Transfer-Encoding: chunked", "-H", "x-chunked-reply: 1", "--data-binary", "abc" * 1000,
                  f"http://127.0.0.1:{harness.port}/echo")
    head, body = result.stdout.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"abc" * 1000
    result = curl(f"http://127.0.0.1:{harness.port}/chunks", "--raw")
    assert b"part0;" in result.stdout and result.stdout.endswith(b"0\r\n\r\n")


@needs_curl
def test_server_sent_events_arrive_one_by_one(harness: Harness) -> None:
    assert CURL is not None
    process = subprocess.Popen([CURL, "-sSN", f"http://127.0.0.1:{harness.port}/sse"], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        for i in range(3):
            # the backend sends event i+1 only after we acknowledge event i: nothing can be buffered
            assert process.stdout.readline() == f"data: event{i}\n".encode()
            assert process.stdout.readline() == b"\n"
            harness.ack()
        assert process.wait(10) == 0
    finally:
        process.kill()


def test_websocket_echo_through_the_proxy(harness: Harness) -> None:
    async def talk() -> list[str | bytes]:
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{harness.port}/ws", headers={"Host": "svc"}
        ) as ws:
            await ws.send_str("hi")
            first = (await ws.receive(timeout=5)).data
            await ws.send_bytes(b"\x00\x01" * 40000)
            second = (await ws.receive(timeout=5)).data
            return [first, second]

    assert asyncio.run(talk()) == ["echo:hi", b"\x00\x01" * 40000]
    assert any(s.upgraded and s.status == 101 for s in harness.stats) or harness.proxy.connections


# ------------------------------------------------------------------------------------------ hygiene

HYGIENE = [
    ("bare LF", b"GET /hello HTTP/1.1\nHost: svc\n\n", 400),
    ("bare LF in one line", b"GET /hello HTTP/1.1\r\nHost: svc\nX: y\r\n\r\n", 400),
    ("obs-fold", b"GET /hello HTTP/1.1\r\nHost: svc\r\nX: y\r\n  z\r\n\r\n", 400),
    ("CL and TE", b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    ("conflicting CL", b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("duplicate CL", b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("obfuscated TE", b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE not chunked last", b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("TE with another coding", b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     400),
    ("space before colon", b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("NUL in value", b"GET /hello HTTP/1.1\r\nHost: svc\r\nX: a\x00b\r\n\r\n", 400),
    ("CR in value", b"GET /hello HTTP/1.1\r\nHost: svc\r\nX: a\rb\r\n\r\n", 400),
    ("bad header name", b"GET /hello HTTP/1.1\r\nHost: svc\r\nX(y): a\r\n\r\n", 400),
    ("bad chunk size", b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
     400),
    ("missing Host", b"GET /hello HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET /hello HTTP/1.1\r\nHost: svc\r\nHost: other\r\n\r\n", 400),
    ("too many headers", b"GET /hello HTTP/1.1\r\nHost: svc\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101))
     + b"\r\n", 431),
    ("header block too large", b"GET /hello HTTP/1.1\r\nHost: svc\r\nX: " + b"v" * (61 * 1024) + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize(("case", "request_bytes", "status"), HYGIENE, ids=[c[0] for c in HYGIENE])
def test_hygiene_case_answers_status_and_closes(harness: Harness, case: str, request_bytes: bytes,
                                                status: int) -> None:
    response = raw_exchange(harness.port, request_bytes)
    assert status_of(response) == status, (case, response[:300])
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"connection: close" in head.lower()
    assert b"x-sidecar-error:" in head.lower()
    assert json.loads(body)["error"]["message"]


# ------------------------------------------------------------------------------------------ limits


@pytest.fixture
def strict_harness(loop_thread: LoopThread) -> Iterator[Harness]:
    yield from _harness(loop_thread, ProxyLimits(header_timeout=0.5, max_connections=20))


def test_slow_header_client_is_cut_off_while_others_are_served(strict_harness: Harness) -> None:
    h = strict_harness
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as slow:
        slow.sendall(b"GET /hello HTTP/1.1\r\nHost: svc\r\n")  # and never the end of the head
        started = time.monotonic()
        for i in range(3):
            one = f"GET /hello/{i} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".encode()
            response = raw_exchange(h.port, one)
            assert response.endswith(f"hello /hello/{i}".encode())
        slow.settimeout(5)
        assert slow.recv(100) == b""  # closed by the proxy
        assert 0.4 < time.monotonic() - started < 4
    assert h.proxy.header_timeouts == 1


def test_connections_over_the_limit_get_503(strict_harness: Harness) -> None:
    h = strict_harness
    held = [socket.create_connection(("127.0.0.1", h.port), timeout=5) for _ in range(20)]
    for s in held:  # busy, each with a request in flight: idle ones would be displaced instead
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 100000\r\n\r\npartial")
    try:
        wait_for(lambda: len(h.proxy.connections) >= 20, 5.0, 0.01, what="the 20 connections accepted")
        response = raw_exchange(h.port, b"GET /hello HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert status_of(response) == 503
        # SPEC's shape and its code for 503: a peer sidecar retries it on another instance
        assert b"x-sidecar-error: UNAVAILABLE" in response and b'"reason":"connection-limit"' in response
    finally:
        for s in held:
            s.close()
    assert h.proxy.rejected == 1


def test_at_the_limit_an_idle_connection_makes_room_for_a_new_one(strict_harness: Harness) -> None:
    h = strict_harness
    held = [socket.create_connection(("127.0.0.1", h.port), timeout=5) for _ in range(20)]
    try:
        wait_for(lambda: len(h.proxy.connections) >= 20, 5.0, 0.01, what="the 20 connections accepted")
        response = raw_exchange(h.port, b"GET /hello HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        assert response.endswith(b"hello /hello")
    finally:
        for s in held:
            s.close()
    assert h.proxy.rejected == 0 and h.proxy.displaced == 1
