"""An HTTP/1.1 client connection (DownstreamProtocol) fed bytes, sans-IO: a fake transport, a fake clock and
fake pools; what reaches the upstream stream, and in how many pieces."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.proxy.downstream import DownstreamProtocol
from sidecar.proxy.engine import Engine
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
