"""sidecar.httpd served on a free port, driven by raw sockets and curl: bodies by Content-Length and chunked, the
body limit, HEAD, 405 with Allow, pipelining, 100-continue, streamed Server-Sent Events (each event out as it is
written, the handler cancelled when the client leaves) and a graceful stop."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from sidecar.config.values import HostPort
from sidecar.httpd import App, Request, Response, Site, StreamResponse, WebLimits, get, post
from sidecar.web import errors_middleware, json_response, sse_stream
from tests.cycles import collector_paused, sidecar_garbage
from tests.harness import read_response, wait_for
from tests.loops import LoopThread

LIMITS = WebLimits(header_timeout=1.0, max_connections=16, refuse_linger=0.2)
MAX_BODY = 1000


@dataclass
class Events:
    """What the handlers saw, written on the loop's thread and read by the test."""

    bodies: list[bytes] = field(default_factory=list)
    stream_ended: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Served:
    site: Site
    port: int
    events: Events
    loop: LoopThread


def build_app(events: Events) -> App:
    async def echo(request: Request) -> Response:
        body = await request.read()
        events.bodies.append(body)
        return Response(200, body, {"X-Path": request.path}, content_type="text/plain")

    async def hello(request: Request) -> Response:
        return json_response({"hello": request.query.get("n", "")})

    async def slow(request: Request) -> Response:
        await asyncio.wait_for(events.release.wait(), 10)
        return json_response({"released": True})

    async def ticks() -> AsyncIterator[tuple[int, str, object]]:
        for i in range(3):
            yield i, "tick", {"n": i}
            await asyncio.sleep(0.05)
        # then quiet: nothing is written (the heartbeat is 15 s away), so only the connection noticing that the
        # client left can end the handler
        await asyncio.sleep(30)

    async def stream(request: Request) -> StreamResponse:
        try:
            return await sse_stream(request, ticks())
        finally:
            events.stream_ended += 1

    app = App(middlewares=[errors_middleware], max_body=MAX_BODY)
    app.add_routes([post("/echo", echo), get("/hello", hello), get("/slow", slow), get("/stream", stream)])
    return app


@pytest.fixture
def served() -> Iterator[Served]:
    loop = LoopThread()
    events: Events = loop.run(_events())
    site = Site("test", build_app(events), HostPort("127.0.0.1", 0), shutdown_timeout=2.0, limits=LIMITS)
    bound = loop.run(site.start())
    try:
        yield Served(site, bound.port, events, loop)
    finally:
        loop.run(site.stop())
        loop.close()


async def _events() -> Events:
    return Events()   # made on the loop: its Event belongs there


def connect(served: Served) -> socket.socket:
    return socket.create_connection(("127.0.0.1", served.port), timeout=5)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_bodies_by_content_length_and_chunked_reach_the_handler_on_one_kept_alive_connection(served: Served) -> None:
    with connect(served) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        status, headers, body = read_response(s)
        assert (status, body, headers["x-path"]) == (200, b"hello", "/echo")
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        status, headers, body = read_response(s)
        assert (status, body) == (200, b"abcdefg")
    assert served.events.bodies == [b"hello", b"abcdefg"]


@pytest.mark.parametrize("request_bytes", [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n" + b"a" * 1001,
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"200\r\n" + b"a" * 512 + b"\r\n"
    + b"200\r\n" + b"a" * 512 + b"\r\n0\r\n\r\n",
])
def test_a_body_over_the_limit_is_refused_before_the_handler_and_the_connection_closed(
        served: Served, request_bytes: bytes) -> None:
    with connect(served) as s:
        s.sendall(request_bytes)
        status, headers, body = read_response(s)
        assert status == 400 and headers["x-sidecar-error"] == "INVALID_ARGUMENT"
        assert json.loads(body)["error"]["message"] == f"request body is larger than {MAX_BODY} bytes"
        assert headers["connection"] == "close"
        s.settimeout(3)
        assert read_until_closed(s) == b""
    assert served.events.bodies == []
    assert served.site.stats.malformed == 1


def test_head_405_with_allow_and_404_in_specs_shape(served: Served) -> None:
    with connect(served) as s:
        s.sendall(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"\r\n\r\n") < 2 or not data.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 12" in head   # {"hello":""}, not sent
    assert rest.startswith(b"HTTP/1.1 405 ")
    assert b"allow: POST\r\n" in rest and b"x-sidecar-error: METHOD_NOT_ALLOWED" in rest
    missing = subprocess.run(["curl", "-s", "-i", f"http://127.0.0.1:{served.port}/nothing"], capture_output=True,
                             timeout=10, check=True).stdout
    assert missing.startswith(b"HTTP/1.1 404 ") and b'"code":"NOT_FOUND"' in missing


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    with connect(served) as s:
        s.sendall(b"".join(b"GET /hello?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
                  + b"GET /hello?n=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_closed(s)
    order = [json.loads(part.split(b"\r\n\r\n", 1)[1])["hello"] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert order == ["0", "1", "2", "3", "4", "last"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_gets_100_continue_and_no_wait_for_a_larger_body(served: Served) -> None:
    body = "x" * 900   # curl asks for 100-continue over 1 KiB of headers and body together; forced here
    started = time.monotonic()
    done = subprocess.run(["curl", "-s", "-H", "Expect: 100-continue", "--data-binary", body,
                           f"http://127.0.0.1:{served.port}/echo"], capture_output=True, timeout=10, check=True)
    assert done.stdout.decode() == body
    assert time.monotonic() - started < 0.9   # curl waits 1 s for a 100 that does not come


def test_a_slow_body_is_cut_off_like_a_slow_head(served: Served) -> None:
    before = served.site.stats.header_timeouts
    with connect(served) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        assert read_until_closed(s) == b""
        assert LIMITS.header_timeout * 0.9 <= time.monotonic() - started < LIMITS.header_timeout + 1.5
    assert served.site.stats.header_timeouts == before + 1
    assert served.events.bodies == []


def test_server_sent_events_go_out_one_by_one_and_a_client_that_leaves_ends_the_handler(served: Served) -> None:
    s = connect(served)
    try:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"event: tick") < 3:     # each event arrives while the stream is still open
            chunk = s.recv(65536)
            assert chunk
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert b"content-type: text/event-stream" in head and b"transfer-encoding: chunked" in head
        assert served.events.stream_ended == 0
    finally:
        s.close()
    wait_for(lambda: served.events.stream_ended == 1, 2, what="the stream's handler ended by the client leaving")
    wait_for(lambda: served.site.stats.open == 0, 2, what="the connection counted closed")


def test_stop_lets_a_request_in_flight_finish_and_closes_the_rest(served: Served) -> None:
    busy, idle, stream = connect(served), connect(served), connect(served)
    try:
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        stream.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        assert stream.recv(65536).startswith(b"HTTP/1.1 200 ")
        wait_for(lambda: served.site.stats.open == 3, 2, what="three connections open")
        stopping = asyncio.run_coroutine_threadsafe(served.site.stop(), served.loop.loop)
        idle.settimeout(2)
        assert read_until_closed(idle) == b""                  # closed at once
        stream.settimeout(2)
        read_until_closed(stream)                              # ended at once
        wait_for(lambda: served.events.stream_ended == 1, 2, what="the stream's handler ended")
        assert not stopping.done()                             # the request in flight holds the stop
        served.loop.call(served.events.release.set)
        status, headers, body = read_response(busy)
        assert (status, json.loads(body)) == (200, {"released": True})
        assert headers["connection"] == "close"
        stopping.result(5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", served.port), timeout=2)
    finally:
        for s in (busy, idle, stream):
            s.close()


def test_closed_connections_leave_no_reference_cycles(served: Served) -> None:
    """Served connections are freed by reference counting as they close (``sidecar run`` collects rarely)."""

    def rounds() -> None:
        with connect(served) as s:    # kept alive, then closed by the client
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            assert read_response(s)[0] == 200
        with connect(served) as s:    # pipelined, the last one closing
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            read_until_closed(s)
        with connect(served) as s:    # refused: a body over the limit
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
            assert read_response(s)[0] == 400
        with connect(served) as s:    # a stream the client leaves
            s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")

    rounds()   # what the first requests import and cache is not counted
    wait_for(lambda: served.site.stats.open == 0, 5, what="the first connections closed")
    sidecar_garbage()
    with collector_paused():   # every cycle left is still there when counted
        for _ in range(3):
            rounds()
        wait_for(lambda: served.site.stats.open == 0 and served.events.stream_ended == 4, 5,
                 what="every connection closed and every stream ended")
        garbage = sidecar_garbage()
    assert not garbage, f"closed connections left reference cycles: {dict(garbage)}"
