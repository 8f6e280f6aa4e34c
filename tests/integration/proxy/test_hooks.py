"""The hooks a resilience layer plugs into: retry policy, attempt observer, per-try timeout, stale pooled
connections."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field

import pytest

from sidecar.proxy import AttemptRecord, HttpProxy, RequestHead, Retry, Target
from tests.integration.proxy.conftest import LoopThread, closed_port, start_backend


@dataclass
class NextTarget:
    """Retries once, on ``then``; records what it was asked."""

    then: Target
    statuses: frozenset[int] = frozenset()
    asked: list[AttemptRecord] = field(default_factory=list)

    def next_attempt(self, attempt: AttemptRecord) -> Retry | None:
        self.asked.append(attempt)
        return Retry(self.then, 0.01) if attempt.number == 1 else None


def request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    return response


def run_proxy(loop_thread: LoopThread, route):  # type: ignore[no-untyped-def]
    async def start() -> tuple[HttpProxy, int]:
        proxy = HttpProxy(route)
        server = await proxy.listen("127.0.0.1", 0)
        return proxy, server.sockets[0].getsockname()[1]

    return loop_thread.run(start())


def test_connect_failure_is_retried_on_another_target_with_the_body_replayed(loop_thread: LoopThread) -> None:
    backend = loop_thread.run(start_backend())
    observed: list[AttemptRecord] = []
    good = Target(("127.0.0.1", backend.port), observer=observed.append)
    policy = NextTarget(good)
    bad = Target(("127.0.0.1", closed_port()), retry=policy, observer=observed.append)
    proxy, port = run_proxy(loop_thread, lambda head, conn: bad)
    try:
        response = request(port, b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n"
                                 b"Connection: close\r\n\r\nhello")
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"hello")
        assert [a.kind.value if a.kind else a.status for a in observed] == ["connect-failure", 200]
        assert policy.asked[0].replayable and not policy.asked[0].sent
    finally:
        loop_thread.run(proxy.close(grace=0.5))
        loop_thread.run(backend.runner.cleanup())  # type: ignore[union-attr]


async def start_503() -> asyncio.Server:
    """A backend that answers every request 503."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        await writer.drain()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_status_in_policy_is_retried_and_the_first_response_discarded(loop_thread: LoopThread) -> None:
    busy = loop_thread.run(start_503())
    backend = loop_thread.run(start_backend())
    policy = NextTarget(Target(("127.0.0.1", backend.port)), statuses=frozenset({503}))
    first = Target(("127.0.0.1", busy.sockets[0].getsockname()[1]), retry=policy)
    proxy, port = run_proxy(loop_thread, lambda head, conn: first)
    try:
        response = request(port, b"GET /hello/r HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"hello /hello/r")
        assert policy.asked[0].status == 503
    finally:
        loop_thread.run(proxy.close(grace=0.5))
        busy.close()
        loop_thread.run(backend.runner.cleanup())  # type: ignore[union-attr]


def test_a_retry_sends_the_head_as_the_policy_left_it(loop_thread: LoopThread) -> None:
    """The retry policy may edit the request head for the attempt it starts (the resilience layer tells the next
    hop the time left then): the retry carries the edited head, not the bytes of the first attempt."""
    busy = loop_thread.run(start_503())
    backend = loop_thread.run(start_backend())
    heads: list[RequestHead] = []

    @dataclass
    class Restamp(NextTarget):
        def next_attempt(self, attempt: AttemptRecord) -> Retry | None:
            heads[0].headers.set("x-try", str(attempt.number + 1))
            return super().next_attempt(attempt)

    policy = Restamp(Target(("127.0.0.1", backend.port)), statuses=frozenset({503}))
    first = Target(("127.0.0.1", busy.sockets[0].getsockname()[1]), retry=policy)

    def route(head: RequestHead, conn: object) -> Target:
        head.headers.set("x-try", "1")
        heads.append(head)
        return first

    proxy, port = run_proxy(loop_thread, route)
    try:
        response = request(port, b"GET /hello/r HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200") and b"\r\nx-seen-x-try: 2\r\n" in response.lower()
    finally:
        loop_thread.run(proxy.close(grace=0.5))
        busy.close()
        loop_thread.run(backend.runner.cleanup())  # type: ignore[union-attr]


def test_per_try_timeout_gives_504_deadline_exceeded(loop_thread: LoopThread) -> None:
    async def start_silent() -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    silent = loop_thread.run(start_silent())
    target = Target(("127.0.0.1", silent.sockets[0].getsockname()[1]), try_timeout=0.2)
    proxy, port = run_proxy(loop_thread, lambda head, conn: target)
    try:
        response = request(port, b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        head, body = response.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 504")
        assert json.loads(body)["error"]["code"] == "DEADLINE_EXCEEDED"
    finally:
        loop_thread.run(proxy.close(grace=0.5))
        silent.close()


def test_a_pooled_connection_closed_by_the_server_is_redialled_once(loop_thread: LoopThread) -> None:
    """The server answers one request per connection and closes without saying so; the proxy's reuse
    of that connection fails and the request goes out again on a fresh one."""

    async def start_one_shot() -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.read(1)  # wait for the next request's first byte, then drop the connection
            writer.transport.abort()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    one_shot = loop_thread.run(start_one_shot())
    target = Target(("127.0.0.1", one_shot.sockets[0].getsockname()[1]))
    proxy, port = run_proxy(loop_thread, lambda head, conn: target)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for _ in range(3):
                s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                response = b""
                while not response.endswith(b"ok"):
                    chunk = s.recv(65536)
                    assert chunk
                    response += chunk
                assert response.startswith(b"HTTP/1.1 200")
        assert [p.dialed for p in proxy.pools] == [3]
    finally:
        loop_thread.run(proxy.close(grace=0.5))
        one_shot.close()



@pytest.mark.parametrize("b3", [
    {"b3": "463ac35c9f6413ad48485a3953bb6124-0020000000000001-1"},
    {"X-B3-TraceId": "463ac35c9f6413ad48485a3953bb6124", "X-B3-SpanId": "0020000000000001", "X-B3-Sampled": "1"},
])
def test_b3_on_ingress_continues_the_trace(b3: dict[str, str]) -> None:
    import asyncio
    import re

    async def scenario() -> str:
        seen: list[dict[str, str]] = []

        async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            seen.append({k.lower(): v for k, v in (line.split(": ", 1) for line in head.split("\r\n")[1:] if line)})
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proxy = HttpProxy(lambda head, conn: Target(("127.0.0.1", port)))
        listener = await proxy.listen("127.0.0.1", 0)
        proxy_port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in b3.items())
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
        await writer.drain()
        await reader.read()
        writer.close()
        await proxy.close(1)
        server.close()
        return seen[0]["traceparent"]

    traceparent = asyncio.run(scenario())
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", traceparent)
    assert match and match.group(1) == "463ac35c9f6413ad48485a3953bb6124"
    assert match.group(2) != "0020000000000001"  # a new span for this hop
