"""One write per HTTP/2 connection per read: a client's read of three requests reaches the upstream connection in
one write, and the upstream's read of their three responses reaches the client in one write (sans-IO: an
H2Downstream and an H2UpstreamConnection over fake transports, the exchanges between them real)."""

from __future__ import annotations

from sidecar.proxy.h2pool import H2UpstreamPool
from sidecar.proxy.h2up import H2UpstreamConnection, H2UpstreamStream
from sidecar.proxy.limits import DEFAULT_POOL_LIMITS
from sidecar.proxy.target import H2cKey
from sidecar.proxy.writebatch import WriteBatch
from tests.unit.http2.peer import RawPeer, frames
from tests.unit.proxy.test_exchange import FakeLoop, FakeTransport
from tests.unit.proxy.test_h2down import connection

RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain")]


def test_a_read_of_three_requests_is_one_write_upstream_and_a_read_of_their_responses_one_write_back() -> None:
    client_conn, pool, client = connection()
    upstream_pool = H2UpstreamPool(H2cKey("127.0.0.1", 50051), FakeLoop(), DEFAULT_POOL_LIMITS)
    upstream = H2UpstreamConnection(upstream_pool, "127.0.0.1:50051", None)
    to_app = FakeTransport()
    upstream.connection_made(to_app)
    del to_app.written[:]                   # the preface and SETTINGS
    pool.ready.extend(H2UpstreamStream(upstream) for _ in range(3))  # type: ignore[misc]
    to_client = client_conn.transport
    assert isinstance(to_client, FakeTransport)
    del to_client.written[:]

    client_conn.data_received(client.headers(1, end_stream=True) + client.headers(3, end_stream=True)
                              + client.headers(5, end_stream=True))
    assert len(to_app.written) == 1
    assert sum(1 for frame in frames(to_app.written[0]) if frame.type == 0x1) == 3   # three HEADERS

    app = RawPeer()
    upstream.data_received(app.settings() + app.headers(1, RESPONSE) + app.data(1, b"ok", end_stream=True)
                           + app.headers(3, RESPONSE) + app.data(3, b"ok", end_stream=True)
                           + app.headers(5, RESPONSE) + app.data(5, b"ok", end_stream=True))
    assert len(to_client.written) == 1
    answered = frames(to_client.written[0])
    ended = {frame.stream_id for frame in answered if "END_STREAM" in frame.flags}
    assert ended == {1, 3, 5}


class Writer:
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def write_out(self) -> None:
        self.log.append(self.name)


def test_a_flush_outside_a_read_writes_at_once_and_inside_one_once_at_its_end_in_order() -> None:
    batch = WriteBatch()
    log: list[str] = []
    a, b = Writer(log, "a"), Writer(log, "b")
    batch.flush(a)
    assert log == ["a"]
    batch.begin()
    batch.flush(b)
    batch.flush(a)
    batch.flush(b)
    batch.begin()     # a read handled inside another (a fake link delivering at once) ends with the outer one
    batch.flush(a)
    batch.end()
    assert log == ["a"]
    batch.end()
    assert log == ["a", "b", "a"]
