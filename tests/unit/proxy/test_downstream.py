"""An HTTP/1.1 client connection (DownstreamProtocol) fed bytes, sans-IO: a fake transport, a fake clock and
fake pools; what reaches the upstream stream, and in how many pieces."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.proxy.downstream import DownstreamProtocol
from sidecar.proxy.engine import Engine
from sidecar.proxy.http1 import ResponseHead
from sidecar.proxy.limits import ProxyLimits
from sidecar.proxy.target import ConnectionInfo
from sidecar.proxy.tracecontext import IdSource
from tests.unit.proxy.test_exchange import FakeLoop, FakePool, FakePools, FakeTransport, target
from tests.unit.proxy.test_h2down import Stream


class Transport(FakeTransport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name in ("peername", "sockname") else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class Listener:
    """The Acceptor a client connection reports to."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connections: set[Any] = set()
        self.accepted = self.rejected = self.protocol_errors = self.header_timeouts = 0
        self.h2c = False

    def displace_idle(self) -> bool:
        return False

    def start_h2c(self, transport: asyncio.Transport, first: bytes, info: ConnectionInfo) -> None:
        raise AssertionError("not an h2c test")


def connection() -> tuple[DownstreamProtocol, FakePool]:
    pool = FakePool()
    engine = Engine("test", lambda head, info: target(), ProxyLimits(), FakePools(pool), IdSource(),
                    edit_headers=False)
    conn = DownstreamProtocol(Listener(engine), FakeLoop())  # type: ignore[arg-type]
    conn.connection_made(Transport())
    return conn, pool


def test_a_request_read_whole_goes_upstream_in_one_piece() -> None:
    # head, chunked body and its end in one read (what the caller's sidecar writes for a unary gRPC call): the
    # upstream stream starts with all of it, one write towards an h2c app instead of HEADERS, DATA and
    # END_STREAM each flushed on its own
    conn, pool = connection()
    stream = Stream()
    pool.ready.append(stream)
    conn.data_received(b"POST /pkg.Service/Method HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\n\r\n")
    assert stream.calls == [("start", b"/pkg.Service/Method", b"hello", True)]


def test_a_body_that_comes_later_follows_the_head_as_it_arrives() -> None:
    conn, pool = connection()
    stream = Stream()
    pool.ready.append(stream)
    conn.data_received(b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nhello")
    assert stream.calls == [("start", b"/upload", b"hello", False)]
    conn.data_received(b"world")
    assert stream.calls == [("start", b"/upload", b"hello", False), ("body", b"world"), ("end",)]


def test_a_malformed_body_after_the_head_is_answered_400_and_nothing_goes_upstream() -> None:
    conn, pool = connection()
    stream = Stream()
    pool.ready.append(stream)
    conn.data_received(b"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert pool.acquired == [] and stream.calls == []
    assert conn.transport is not None
    written = b"".join(conn.transport.written)  # type: ignore[attr-defined]
    assert written.startswith(b"HTTP/1.1 400 "), written[:100]


class TlsTransport(Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return object() if name == "ssl_object" else super().get_extra_info(name, default)


def test_a_half_close_after_the_request_keeps_a_plain_connection_and_leaves_tls_to_close() -> None:
    # over plain TCP the response can still go out after the client's FIN (True keeps the transport open); TLS has
    # no half-close, so asyncio closes an SSL transport on EOF anyway and logs a warning for every True
    for transport, expected in ((Transport(), True), (TlsTransport(), None)):
        pool = FakePool()
        engine = Engine("test", lambda head, info: target(), ProxyLimits(), FakePools(pool), IdSource(),
                        edit_headers=False)
        conn = DownstreamProtocol(Listener(engine), FakeLoop())  # type: ignore[arg-type]
        conn.connection_made(transport)
        pool.ready.append(Stream())
        conn.data_received(b"GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert conn.eof_received() is expected


# ------------------------------------------------------------------------ an answer before the request's end

LINGER = ProxyLimits(linger_bytes=100, linger_timeout=1.0)


def lingering_connection(transport: Transport | None = None) -> tuple[DownstreamProtocol, FakePool, FakeLoop]:
    pool = FakePool()
    engine = Engine("test", lambda head, info: target(), LINGER, FakePools(pool), IdSource(), edit_headers=False)
    loop = FakeLoop()
    conn = DownstreamProtocol(Listener(engine), loop)  # type: ignore[arg-type]
    conn.connection_made(transport or Transport())
    return conn, pool, loop


def answer_at_once(conn: DownstreamProtocol, pool: FakePool, request: bytes) -> bytes:
    """``request`` (a head and part of its body) goes upstream and is answered 200 "ok" whole: what the client got."""
    stream = Stream()
    pool.ready.append(stream)
    conn.data_received(request)
    assert stream.user is not None
    stream.user.on_response_head(ResponseHead(200, b"OK", b"", content_length=2))
    stream.user.on_response_body(b"ok")
    stream.user.on_response_end(None)
    assert conn.exchange is None   # the exchange is over, its request is not
    written = b"".join(conn.transport.written)  # type: ignore[union-attr]
    conn.transport.written.clear()  # type: ignore[union-attr]
    return written


def served(conn: DownstreamProtocol, pool: FakePool) -> bool:
    """A second request on the connection reaches the upstream."""
    before = len(pool.acquired)
    pool.ready.append(Stream())
    conn.data_received(b"GET /next HTTP/1.1\r\nHost: svc\r\n\r\n")
    return len(pool.acquired) == before + 1


@pytest.mark.parametrize("head, rest", [
    (b"Content-Length: 90\r\n\r\n" + b"a" * 10, [b"b" * 40, b"c" * 40]),
    (b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", [b"28\r\n" + b"x" * 40 + b"\r\n", b"0\r\n\r\n"]),
])
def test_the_rest_of_an_answered_body_is_dropped_and_the_connection_serves_the_next_request(
        head: bytes, rest: list[bytes]) -> None:
    # an app answered before reading the body: the client (a peer sidecar's pool) may reuse the connection, so it
    # stays open without Connection: close, the rest of the body goes nowhere, and the next request is served
    conn, pool, _ = lingering_connection()
    response = answer_at_once(conn, pool, b"POST /upload HTTP/1.1\r\nHost: svc\r\n" + head)
    assert response.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in response.lower()
    for piece in rest:
        conn.data_received(piece)
        assert not conn.closed
    assert len(pool.acquired) == 1   # dropped, not a request of its own
    assert served(conn, pool)


def test_a_known_rest_over_the_budget_says_connection_close_and_reads_on_before_closing() -> None:
    # 101 bytes left of a Content-Length body, over linger_bytes: the client must not pool the connection. It is
    # half-closed after the response and read (dropped) for linger_timeout so the close does not reset it under
    # the response, then closed
    transport = HalfClosingTransport()
    conn, pool, loop = lingering_connection(transport)
    response = answer_at_once(conn, pool, b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 111\r\n\r\n"
                                          + b"a" * 10)
    assert b"connection: close" in response.lower()
    assert transport.eof and not transport.closed
    conn.data_received(b"b" * 101)
    assert transport.written == [] and len(pool.acquired) == 1
    loop.advance(1.0)
    assert transport.closed


def test_a_known_rest_within_the_budget_keeps_the_connection() -> None:
    conn, pool, _ = lingering_connection()
    response = answer_at_once(conn, pool, b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 110\r\n\r\n"
                                          + b"a" * 10)
    assert b"connection: close" not in response.lower()
    conn.data_received(b"b" * 100)
    assert served(conn, pool)


def test_an_unknown_rest_over_the_budget_closes_the_connection() -> None:
    conn, pool, _ = lingering_connection()
    answer_at_once(conn, pool, b"POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.data_received(b"64\r\n" + b"x" * 100 + b"\r\n")   # exactly the budget: still read
    assert not conn.closed
    conn.data_received(b"1\r\nx\r\n")
    assert conn.closed and conn.transport is not None and conn.transport.is_closing()


def test_a_rest_that_does_not_come_in_time_closes_the_connection() -> None:
    conn, pool, loop = lingering_connection()
    answer_at_once(conn, pool, b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 20\r\n\r\n" + b"a" * 10)
    loop.advance(0.9)
    assert not conn.closed
    loop.advance(0.1)
    assert conn.closed


def test_a_response_head_before_the_request_end_keeps_the_connection_when_the_request_then_ends() -> None:
    # a full-duplex exchange (the head goes out first, the request ends, then the response): nothing changes
    conn, pool, _ = lingering_connection()
    stream = Stream()
    pool.ready.append(stream)
    conn.data_received(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 20\r\n\r\n" + b"a" * 10)
    assert stream.user is not None
    stream.user.on_response_head(ResponseHead(200, b"OK", b"", content_length=20))
    conn.data_received(b"b" * 10)
    stream.user.on_response_body(b"a" * 10 + b"b" * 10)
    stream.user.on_response_end(None)
    assert b"connection: close" not in b"".join(conn.transport.written).lower()  # type: ignore[union-attr]
    assert served(conn, pool)


class HalfClosingTransport(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.eof = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True
