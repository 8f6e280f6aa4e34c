"""The sidecar's own HTTP/1.1 client (sidecar.proxy.client) against real servers: an aiohttp app, a raw socket
server answering malformed, oversized, slow and closing responses, and an mTLS server with a SPIFFE certificate.
Each failure is named, and none outlasts the deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from sidecar.proxy.client import HttpClient
from sidecar.proxy.failures import ConnectFailure, UpstreamProtocolError, UpstreamReset
from sidecar.tls.context import client_context, server_context, service_server_name
from sidecar.tls.errors import PeerRefused
from tests.harness import free_port, make_certs

TIMEOUT = 1.0
SLACK = 0.75   # a deadline may end this much later on a loaded machine, never more


def run(main: Callable[[], Awaitable[Any]], loop: str = "asyncio") -> Any:
    """``main`` on asyncio's loop, or on uvloop's (whose TLS transport is a class of its own), as the sidecar runs."""
    if loop == "uvloop":
        return uvloop.run(main())
    return asyncio.run(main())


async def aiohttp_app(seen: list[dict[str, Any]], ssl_context: Any = None) -> tuple[web.AppRunner, int]:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append({"headers": dict(request.headers), "body": body, "path": request.path,
                     "peer": request.transport.get_extra_info("peername") if request.transport else None})
        if request.path == "/chunked":
            response = web.StreamResponse(status=200)
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b'{"status": ')
            await response.write(b'"DROP"}')
            await response.write_eof()
            return response
        if request.path == "/close":
            return web.Response(status=503, body=b"bye", headers={"Connection": "close"})
        return web.json_response({"got": len(body)}, headers={"x-sidecar-error": "NOT_FOUND"}
                                 if request.path == "/mesh-error" else {})

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_posts_to_an_aiohttp_app_keep_the_connection_and_read_every_framing(loop: str) -> None:
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        runner, port = await aiohttp_app(seen)
        client = HttpClient()
        try:
            headers = [("Content-Type", "application/json"), ("x-sidecar-topic", "orders")]
            first = await client.post(("127.0.0.1", port), "/in", b'{"a": 1}', headers, timeout=TIMEOUT, limit=1024,
                                      authority="payments")
            assert (first.status, first.body) == (200, b'{"got": 8}')
            assert seen[0]["headers"]["Host"] == "payments"
            assert seen[0]["headers"]["Content-Type"] == "application/json"
            assert seen[0]["headers"]["x-sidecar-topic"] == "orders"
            assert seen[0]["body"] == b'{"a": 1}'
            second = await client.post(("127.0.0.1", port), "/mesh-error", b"{}", headers, timeout=TIMEOUT,
                                       limit=1024)
            assert second.header("x-sidecar-error") == "NOT_FOUND"
            chunked = await client.post(("127.0.0.1", port), "/chunked", b"{}", [], timeout=TIMEOUT, limit=1024)
            assert chunked.body == b'{"status": "DROP"}'
            assert client.dialed == 1 and seen[0]["peer"] == seen[2]["peer"]   # one connection for all three
            closing = await client.post(("127.0.0.1", port), "/close", b"{}", [], timeout=TIMEOUT, limit=1024)
            assert (closing.status, closing.body) == (503, b"bye")
            await client.post(("127.0.0.1", port), "/in", b"{}", [], timeout=TIMEOUT, limit=1024)
            assert client.dialed == 2   # Connection: close dropped the first
        finally:
            client.close()
            await runner.cleanup()

    run(main, loop)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(handler: Handler) -> tuple[asyncio.Server, int]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.sleep(30)


async def drips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(300):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.1)


def answers(raw: bytes, close: bool = True) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(raw)
            await writer.drain()
            if close:
                return
    return handler


async def closes_without_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


CASES: list[tuple[str, Handler, type[BaseException], str]] = [
    ("malformed", answers(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"), UpstreamProtocolError, "invalid"),
    ("not HTTP", answers(b"SSH-2.0-OpenSSH\r\n\r\n"), UpstreamProtocolError, "invalid"),
    ("oversized head", answers(b"HTTP/1.1 200 OK\r\n" + b"x-a: " + b"b" * 70_000 + b"\r\n\r\n"),
     UpstreamProtocolError, "larger than|over the limits"),
    ("upgrade", answers(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n", False),
     UpstreamProtocolError, "protocol switch"),
    ("silent", never_answers, TimeoutError, "no answer"),
    ("dripping", drips, TimeoutError, "no answer"),
    ("short body", answers(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), UpstreamReset, "closed"),
    ("no answer", closes_without_answer, UpstreamReset, "closed"),
]


@pytest.mark.parametrize(("handler", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_server_gets_a_named_failure_within_the_deadline(handler: Handler, error: type[BaseException],
                                                                 match: str) -> None:
    async def main() -> float:
        server, port = await raw_server(handler)
        client = HttpClient()
        started = time.monotonic()
        try:
            with pytest.raises(error, match=match):
                await client.post(("127.0.0.1", port), "/", b"{}", [], timeout=TIMEOUT, limit=1024)
            return time.monotonic() - started
        finally:
            client.close()
            server.close()

    assert run(main) < TIMEOUT + SLACK


def test_an_oversized_body_is_cut_at_the_limit_and_its_connection_dropped() -> None:
    async def main() -> None:
        server, port = await raw_server(answers(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" +
                                                b"z" * 5_000_000, close=False))
        client = HttpClient()
        try:
            answer = await client.post(("127.0.0.1", port), "/", b"{}", [], timeout=TIMEOUT, limit=4096)
            assert (answer.status, answer.body, answer.truncated) == (200, b"z" * 4096, True)
            assert client.idle == 0
        finally:
            client.close()
            server.close()

    run(main)


def test_a_refused_port_is_a_connect_failure() -> None:
    async def main() -> None:
        client = HttpClient()
        with pytest.raises(ConnectFailure, match="refused"):
            await client.post(("127.0.0.1", free_port()), "/", b"{}", [], timeout=TIMEOUT, limit=1024)

    run(main)


def test_a_kept_alive_connection_the_server_closed_is_replaced_by_a_new_one() -> None:
    """The server answers keep-alive, then closes the connection as the next request goes out: the request is
    sent again on a new connection and answered."""
    served: list[int] = []

    async def once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)   # the next request's first byte: closed without an answer

    async def main() -> None:
        server, port = await raw_server(once_per_connection)
        client = HttpClient()
        try:
            for _ in range(3):
                answer = await client.post(("127.0.0.1", port), "/", b"{}", [], timeout=TIMEOUT, limit=1024)
                assert answer.body == b"ok"
            assert client.dialed == 3 and len(served) == 3
        finally:
            client.close()
            server.close()

    run(main)


@pytest.mark.parametrize("then", ["silent", "dripping"])
def test_a_kept_connection_s_request_ends_at_the_deadline_and_the_connection_with_it(then: str) -> None:
    """A request on a kept-alive connection (its deadline a timer on the connection, not ``asyncio.timeout``) that
    gets no whole answer fails with TimeoutError within the deadline; that connection is closed, and the next
    request goes on a new one."""
    async def answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await (never_answers if then == "silent" else drips)(reader, writer)

    async def main() -> float:
        server, port = await raw_server(answers_once)
        client = HttpClient()
        try:
            answer = await client.post(("127.0.0.1", port), "/", b"{}", [], timeout=TIMEOUT, limit=1024)
            assert answer.body == b"ok" and client.idle == 1
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=f"no answer from 127.0.0.1:{port} within 1.000s"):
                await client.post(("127.0.0.1", port), "/", b"{}", [], timeout=TIMEOUT, limit=1024)
            took = time.monotonic() - started
            assert client.idle == 0 and client.dialed == 1
            answer = await client.post(("127.0.0.1", port), "/", b"{}", [], timeout=TIMEOUT, limit=1024)
            assert answer.body == b"ok" and client.dialed == 2
            return took
        finally:
            client.close()
            server.close()

    assert TIMEOUT <= run(main) < TIMEOUT + SLACK


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_mtls_demands_the_named_services_certificate(tmp_path: Path, loop: str) -> None:
    certs = make_certs(tmp_path, ["publisher", "sub", "other"])
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        sub = certs["sub"]
        runner, port = await aiohttp_app(seen, server_context(sub["ca"], sub["cert"], sub["key"]))
        pub = certs["publisher"]
        tls = client_context(pub["ca"], pub["cert"], pub["key"])
        client = HttpClient()
        try:
            answer = await client.post(("127.0.0.1", port), "/deliver", b"[]", [], timeout=TIMEOUT, limit=1024,
                                       tls=tls, server_hostname=service_server_name("sub", "127.0.0.1", port))
            assert answer.status == 200 and len(seen) == 1
            with pytest.raises(PeerRefused, match="other"):
                await client.post(("127.0.0.1", port), "/deliver", b"[]", [], timeout=TIMEOUT, limit=1024,
                                  tls=tls, server_hostname=service_server_name("other", "127.0.0.1", port))
            assert len(seen) == 1   # nothing reached the server that could not show "other"'s certificate
            again = await client.post(("127.0.0.1", port), "/deliver", b"[]", [], timeout=TIMEOUT, limit=1024,
                                      tls=tls, server_hostname=service_server_name("sub", "127.0.0.1", port))
            assert again.status == 200 and client.dialed == 1   # the first connection, kept alive
        finally:
            client.close()
            await runner.cleanup()

    run(main, loop)
