"""Protocol hygiene of the sidecar.httpd listeners (admin port, app API): a real app built with sidecar.web
(errors_middleware + Site) on a free port, raw sockets sending what real clients and attackers send."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar.config.values import HostPort
from sidecar.httpd import App, Request, Response, Site, WebLimits, get, post
from sidecar.web import errors_middleware, json_response, read_json_object
from tests.harness import read_response, wait_for
from tests.integration.proxy.conftest import LoopThread

LIMITS = WebLimits(header_timeout=0.5, max_connections=4, refuse_linger=0.2)
# for holding idle connections open longer than LIMITS' header timeout
PATIENT = WebLimits(header_timeout=30, max_connections=4, refuse_linger=0.2)


@dataclass
class Served:
    site: Site
    port: int


def build_app() -> App:
    app = App(middlewares=[errors_middleware])

    async def hello(request: Request) -> Response:
        return json_response({"hello": request.path})

    async def echo(request: Request) -> Response:
        return json_response(await read_json_object(request))

    async def hold(request: Request) -> Response:
        # a request in the app's hands until the test lets go (bounded)
        await asyncio.sleep(float(request.query.get("seconds", "3")))
        return json_response({"held": True})

    app.add_routes([get("/hello", hello), post("/echo", echo), get("/hold", hold)])
    return app


def serve(loop_thread: LoopThread, limits: WebLimits) -> Iterator[Served]:
    site = Site("test", build_app(), HostPort("127.0.0.1", 0), shutdown_timeout=1.0, limits=limits)
    bound = loop_thread.run(site.start())
    yield Served(site, bound.port)
    loop_thread.run(site.stop())


@pytest.fixture
def served(loop_thread: LoopThread) -> Iterator[Served]:
    yield from serve(loop_thread, LIMITS)


@pytest.fixture
def patient(loop_thread: LoopThread) -> Iterator[Served]:
    yield from serve(loop_thread, PATIENT)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool      # the server closed the connection after the reply

    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = json.loads(self.body)["error"]
        return error


def read_reply(sock: socket.socket, check_closed: bool = True) -> Reply:
    status, headers, body = read_response(sock)
    closed = False
    if check_closed:
        sock.settimeout(2)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
    return Reply(status, headers, body, closed)


def send(port: int, raw: bytes) -> Reply:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        return read_reply(s)


def assert_refused(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, reply
    assert reply.headers["x-sidecar-error"] == code
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.error()
    assert error["code"] == code and error["message"]
    assert reply.closed, "the connection must be closed after a protocol error"
    return error


GET = b"GET /hello HTTP/1.1\r\nHost: x\r\n"


def test_a_good_request_is_served_and_kept_alive(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        for _ in range(2):
            s.sendall(GET + b"\r\n")
            data = b""
            while not data.endswith(b'{"hello":"/hello"}'):
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 ")
    # the app's own errors keep their shape too
    missing = send(served.port, b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert missing.status == 404 and missing.error()["code"] == "NOT_FOUND"


@pytest.mark.parametrize(("name", "head"), [
    ("one field over the field limit", GET + b"X-Big: " + b"a" * 10_000 + b"\r\n\r\n"),
    ("a request line over the line limit", b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("over 100 header fields", GET + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"),
    ("a head over 60 KiB in fields under the limit", GET + b"".join(
        b"X-%d: " % i + b"v" * 8000 + b"\r\n" for i in range(9)) + b"\r\n"),
])
def test_too_large_heads_get_431_in_specs_shape(served: Served, name: str, head: bytes) -> None:
    error = assert_refused(send(served.port, head), 431, "HEADERS_TOO_LARGE")
    assert "request head too large" in error["message"], name


@pytest.mark.parametrize(("name", "request_bytes", "says"), [
    ("bad request line", b"GARBAGE\r\n\r\n", "Invalid method"),
    ("bad method", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", "Invalid method"),
    ("Content-Length and Transfer-Encoding", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "Transfer-Encoding can't be present with Content-Length"),
    ("two Content-Lengths", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
     "Duplicate Content-Length"),
    ("a Content-Length list", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}",
     "Content-Length"),
    ("obfuscated Transfer-Encoding", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
     b"0\r\n\r\n", "Transfer-Encoding"),
    ("Transfer-Encoding with a space before the colon", b"POST /echo HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "header"),
    ("chunked then identity", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
     b"0\r\n\r\n", "Transfer-Encoding"),
    ("identity then chunked", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
     b"0\r\n\r\n", "only 'chunked' is accepted"),
    ("Transfer-Encoding in HTTP/1.0", b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", "HTTP/1.0"),
    ("obs-fold", GET + b"X-A: a\r\n folded\r\n\r\n", "whitespace"),
    ("bare LF", b"GET /hello HTTP/1.1\nHost: x\n\n", "CRLF"),
    ("HTTP/2.0 in a request line", b"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", "unsupported HTTP version 2.0"),
])
def test_malformed_requests_get_400_in_specs_shape_and_the_connection_closed(
        served: Served, name: str, request_bytes: bytes, says: str) -> None:
    error = assert_refused(send(served.port, request_bytes), 400, "INVALID_ARGUMENT")
    assert error["message"].startswith("malformed HTTP request: "), error
    assert says in error["message"], (name, error)


def test_a_slow_header_client_is_cut_off_while_a_normal_client_is_served(served: Served) -> None:
    before = served.site.stats.header_timeouts
    slow = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    started = time.monotonic()
    cut_after: float | None = None
    try:
        trickle = GET + b"X-Slow: " + b"z" * 200
        for i in range(len(trickle)):   # bounded: at most ~2 s of trickling, the timeout is 0.5 s
            try:
                slow.sendall(trickle[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                cut_after = time.monotonic() - started
                break
            # a normal client is served meanwhile
            if i == 3:
                assert send(served.port, GET + b"Connection: close\r\n\r\n").status == 200
            slow.settimeout(0.01)
            try:
                if slow.recv(1) == b"":
                    cut_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
            if time.monotonic() - started > 3:
                break
    finally:
        slow.close()
    assert cut_after is not None, "the slow client was never cut off"
    assert LIMITS.header_timeout * 0.9 <= cut_after < LIMITS.header_timeout + 1.5, cut_after
    assert served.site.stats.header_timeouts == before + 1


def test_a_silent_connection_is_closed_after_the_header_timeout(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        started = time.monotonic()
        assert s.recv(1) == b""  # blocks until the server closes, within the socket timeout
        assert time.monotonic() - started < LIMITS.header_timeout + 1.5


def test_connections_over_the_limit_get_429_and_are_closed(patient: Served) -> None:
    served = patient
    held: list[socket.socket] = []
    try:
        for _ in range(PATIENT.max_connections):
            s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            s.sendall(b"GET /hold?seconds=4 HTTP/1.1\r\nHost: x\r\n\r\n")  # busy: never displaced
            held.append(s)
        wait_for(lambda: served.site.stats.open == PATIENT.max_connections, 5, what="all held connections open")
        over = send(served.port, GET + b"\r\n")
        error = assert_refused(over, 429, "RESOURCE_EXHAUSTED")
        assert f"over {PATIENT.max_connections} connections" in error["message"]
        assert served.site.stats.refused == 1 and served.site.stats.displaced == 0
    finally:
        for s in held:
            s.close()
    wait_for(lambda: served.site.stats.open == 0, 10, what="held connections closed")
    assert send(served.port, GET + b"Connection: close\r\n\r\n").status == 200


def test_at_the_limit_the_longest_waiting_connection_makes_room(patient: Served) -> None:
    served = patient
    held: list[socket.socket] = []
    try:
        for i in range(PATIENT.max_connections):
            s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            if i == 0:  # a kept-alive connection between requests: displaced first
                s.sendall(GET + b"\r\n")
                assert read_reply(s, check_closed=False).status == 200
            else:
                s.sendall(b"GET /hello HTTP/1.1\r\n")  # a slow head, never finished
            held.append(s)
        wait_for(lambda: served.site.stats.open == PATIENT.max_connections, 5, what="all held connections open")
        for _ in range(3):
            assert send(served.port, GET + b"Connection: close\r\n\r\n").status == 200
        # one made room; the new clients close after their answers, so the others fit again
        assert served.site.stats.displaced == 1 and served.site.stats.refused == 0
        held[0].settimeout(2)
        assert held[0].recv(1) == b""  # the idle keep-alive went first
    finally:
        for s in held:
            s.close()
