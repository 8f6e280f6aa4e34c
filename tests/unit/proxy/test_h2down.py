"""An HTTP/2 client connection (H2Downstream) driven with frames, sans-IO: a fake transport, a fake clock and
fake pools; what reaches the upstream stream, and in how many pieces."""

from __future__ import annotations

from typing import Any

from sidecar.proxy.engine import Engine
from sidecar.proxy.h2down import H2Downstream
from sidecar.proxy.http1 import RequestHead, ResponseHead, Trailers
from sidecar.proxy.limits import ProxyLimits
from sidecar.proxy.sides import StreamUser
from sidecar.proxy.target import ConnectionInfo, RequestStats
from sidecar.proxy.tracecontext import IdSource
from tests.unit.http2.peer import RawPeer
from tests.unit.proxy.test_exchange import FakeLoop, FakePool, FakePools, FakeStream, FakeTransport, target


class Transport(FakeTransport):
    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def write_eof(self) -> None:
        pass


class Stream(FakeStream):
    """Notes each call as it came: ``start`` with what it carried, then each later piece."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []

    def start(self, user: StreamUser, head: RequestHead, body: list[bytes], end: bool,
              trailers: Trailers | None) -> None:
        self.user = user
        self.calls.append(("start", head.target, b"".join(body), end))

    def send_body(self, data: bytes) -> None:
        self.calls.append(("body", data))

    def send_end(self, trailers: Trailers | None) -> None:
        self.calls.append(("end",))


class Listener:
    """The H2Acceptor a connection reports to."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.protocol_errors = 0
        self.header_timeouts = 0
        self.h2_protections: dict[str, int] = {}
        self.connections: list[H2Downstream] = []

    def add_connection(self, conn: H2Downstream) -> None:
        self.connections.append(conn)

    def drop_connection(self, conn: H2Downstream) -> None:
        self.connections.remove(conn)


def connection() -> tuple[H2Downstream, FakePool, RawPeer]:
    pool = FakePool()
    stats: list[RequestStats] = []
    engine = Engine("test", lambda head, info: target(), ProxyLimits(), FakePools(pool), IdSource(),
                    edit_headers=False, on_request_done=stats.append)
    conn = H2Downstream(Listener(engine), FakeLoop(), Transport(),  # type: ignore[arg-type]
                        ConnectionInfo("test", ("127.0.0.1", 5555), None, None))
    peer = RawPeer()
    conn.data_received(peer.preface())
    return conn, pool, peer


def test_a_request_whose_body_and_end_came_with_its_headers_goes_upstream_in_one_piece() -> None:
    # a unary gRPC call: HEADERS, DATA with END_STREAM in one read. The upstream stream gets the head, the body
    # and the end at once (one write towards a peer sidecar), so the peer reads the request's end with its head
    # and never answers a request it has not read to its end (it would then close the connection)
    conn, pool, peer = connection()
    stream = Stream()
    pool.ready.append(stream)
    conn.data_received(peer.headers(1) + peer.data(1, b"\x00\x00\x00\x00\x05hello", end_stream=True))
    assert stream.calls == [("start", b"/pkg.Service/Method", b"\x00\x00\x00\x00\x05hello", True)]
    assert len(pool.acquired) == 1


def test_a_request_without_body_starts_ended_and_one_reset_in_the_same_read_never_starts() -> None:
    conn, pool, peer = connection()
    stream = Stream()
    pool.ready.append(stream)
    conn.data_received(peer.headers(1, end_stream=True) + peer.headers(3) + peer.rst(3))
    assert stream.calls == [("start", b"/pkg.Service/Method", b"", True)]
    assert len(pool.acquired) == 1   # stream 3, reset in the batch that opened it, was never routed


def test_a_body_that_comes_later_follows_the_head_as_it_arrives() -> None:
    conn, pool, peer = connection()
    stream = Stream()
    pool.ready.append(stream)
    conn.data_received(peer.headers(1))
    assert stream.calls == [("start", b"/pkg.Service/Method", b"", False)]
    conn.data_received(peer.data(1, b"more", end_stream=True))
    assert stream.calls == [("start", b"/pkg.Service/Method", b"", False), ("body", b"more"), ("end",)]


def test_streams_one_after_another_arm_no_timer_handle_of_their_own() -> None:
    # every call at one stream is a new stream: its exchange's deadline goes on the connection's one group handle,
    # and the connection's idle timer is moved rather than cancelled and armed again (about 5 µs each with uvloop)
    conn, pool, peer = connection()
    loop = conn.loop
    assert isinstance(loop, FakeLoop)
    made = len(loop.handles)
    for i in range(10):
        stream = Stream()
        pool.ready.append(stream)
        conn.data_received(peer.headers(1 + 2 * i, end_stream=True))
        assert stream.user is not None
        stream.user.on_response_head(ResponseHead(200, b"OK", b"", 0))
        stream.user.on_response_end(None)
        assert not conn.streams
    assert len(loop.handles) - made <= 1


def test_a_stream_whose_upstream_never_comes_still_ends_at_its_deadline() -> None:
    conn, pool, peer = connection()
    loop = conn.loop
    assert isinstance(loop, FakeLoop)
    conn.data_received(peer.headers(1, end_stream=True) + peer.headers(3, end_stream=True))
    assert len(pool.waiters) == 2 and len(conn.streams) == 2
    loop.advance(ProxyLimits().stream_idle_timeout - 1)
    assert len(conn.streams) == 2
    loop.advance(2)
    assert not conn.streams   # both answered with their error and forgotten
    assert len({id(user) for user in pool.cancelled}) == 2   # each waiter let go of
