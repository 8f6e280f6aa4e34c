"""Trailers of a chunked HTTP/1.1 response cross two real sidecars and reach HTTP/1.1 and h2c clients.

    client --HTTP/1.1 or h2c--> A (node-a, outbound) --HTTP/1.1 + mTLS--> B (node-b, inbound) --HTTP/1.1--> app

The app is a raw socket server: every request gets a chunked body followed by a trailer section
(``grpc-status: 0``, ``x-checksum``, and a hop-by-hop ``Keep-Alive`` that must not survive as a trailer); it
keeps the chunked requests it reads, so that their trailer sections can be checked too.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests.integration.http2.pair import run_pair

BODY = b"hello trailers"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: grpc-status, x-checksum\r\n\r\n"
            b"%x\r\n%s\r\n0\r\ngrpc-status: 0\r\nx-checksum: abc123\r\nKeep-Alive: timeout=5\r\n\r\n"
            % (len(BODY), BODY))


REQUESTS: list[bytes] = []   # the chunked requests the app read, head and body as received


def chunked_end(buf: bytes) -> int:
    """Where a chunked body that starts ``buf`` ends (after its trailer section), or -1 (not all read yet)."""
    last = buf.find(b"0\r\n") if buf.startswith(b"0\r\n") else buf.find(b"\r\n0\r\n")
    if last < 0:
        return -1
    end = buf.find(b"\r\n\r\n", last)
    return -1 if end < 0 else end + 4


class TrailerApp(socketserver.BaseRequestHandler):
    """Answers each request of a keep-alive connection with RESPONSE; keeps the chunked ones in REQUESTS
    (their bodies here are small and hold no "0" line of their own; other requests have no body)."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                if b"transfer-encoding: chunked" in head.lower():
                    while chunked_end(buf) < 0:
                        data = sock.recv(65536)
                        if not data:
                            return
                        buf += data
                    end = chunked_end(buf)
                    REQUESTS.append(head + b"\r\n\r\n" + buf[:end])
                    buf = buf[end:]
                sock.sendall(RESPONSE)
        except OSError:
            return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def outbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """node-a's outbound listener (host, port), with web behind node-b answering with trailers."""
    server = Server(("127.0.0.1", 0), TrailerApp)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        with run_pair(tmp_path_factory.mktemp("trailers"), server.server_address[1]) as pair:
            yield "127.0.0.1", pair.port
    finally:
        server.shutdown()
        server.server_close()


def read_until(sock: socket.socket, done: Any, timeout: float = 20.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while not done(buf):
        assert time.monotonic() < deadline, f"no complete answer within {timeout}s: {buf!r}"
        data = sock.recv(65536)
        assert data, f"closed before a complete answer: {buf!r}"
        buf += data
    return buf


def test_an_http1_client_gets_the_trailers_in_the_last_chunk(outbound: tuple[str, int]) -> None:
    with socket.create_connection(outbound, timeout=20) as sock:
        for _ in range(2):   # the second exchange on the same connections: nothing left over from the first
            sock.sendall(b"GET /t HTTP/1.1\r\nHost: web\r\nTE: trailers\r\n\r\n")
            answer = read_until(sock, lambda buf: b"\r\n0\r\n" in buf and buf.endswith(b"\r\n\r\n")
                                and buf.index(b"\r\n\r\n") < buf.index(b"\r\n0\r\n"))
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
            assert body == b"%x\r\n%s\r\n0\r\ngrpc-status: 0\r\nx-checksum: abc123\r\n\r\n" % (len(BODY), BODY)


def test_an_h2c_client_gets_the_trailers_as_a_trailing_headers_frame(outbound: tuple[str, int]) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    with socket.create_connection(outbound, timeout=20) as sock:
        events: list[h2.events.Event] = []
        for stream in (1, 3):
            conn.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/t"),
                                       (b":authority", b"web"), (b"te", b"trailers")], end_stream=True)
            sock.sendall(conn.data_to_send())
            deadline = time.monotonic() + 20
            while not any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in events):
                assert time.monotonic() < deadline, events
                data = sock.recv(65536)
                assert data, events
                events += conn.receive_data(data)
                sock.sendall(conn.data_to_send())
            mine = [e for e in events if getattr(e, "stream_id", None) == stream]
            kinds = [type(e).__name__ for e in mine if not isinstance(e, h2.events.StreamEnded)]
            assert kinds[0] == "ResponseReceived" and kinds[-1] == "TrailersReceived", kinds
            body = b"".join(e.data for e in mine if isinstance(e, h2.events.DataReceived))
            trailers = next(e for e in mine if isinstance(e, h2.events.TrailersReceived))
            assert body == BODY
            assert trailers.stream_ended is not None   # the trailers carry END_STREAM
            assert list(trailers.headers) == [(b"grpc-status", b"0"), (b"x-checksum", b"abc123")]


def test_request_trailers_from_an_http1_client_reach_the_app(outbound: tuple[str, int]) -> None:
    REQUESTS.clear()
    with socket.create_connection(outbound, timeout=20) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n"
                     b"4\r\ndata\r\n0\r\nx-sum: 42\r\nConnection: close\r\n\r\n")
        read_until(sock, lambda buf: buf.endswith(b"\r\n0\r\ngrpc-status: 0\r\nx-checksum: abc123\r\n\r\n"))
    assert len(REQUESTS) == 1
    head, _, body = REQUESTS[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /up HTTP/1.1")
    assert body == b"4\r\ndata\r\n0\r\nx-sum: 42\r\n\r\n"   # the trailer, without the hop-by-hop field


def test_request_trailers_from_an_h2c_client_reach_the_app(outbound: tuple[str, int]) -> None:
    REQUESTS.clear()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    with socket.create_connection(outbound, timeout=20) as sock:
        conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"),
                              (b":authority", b"web"), (b"te", b"trailers")])
        conn.send_data(1, b"data")
        conn.send_headers(1, [(b"x-sum", b"42")], end_stream=True)
        sock.sendall(conn.data_to_send())
        events: list[h2.events.Event] = []
        deadline = time.monotonic() + 20
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            assert time.monotonic() < deadline, events
            data = sock.recv(65536)
            assert data, events
            events += conn.receive_data(data)
            sock.sendall(conn.data_to_send())
    assert len(REQUESTS) == 1
    head, _, body = REQUESTS[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /up HTTP/1.1")
    assert body == b"4\r\ndata\r\n0\r\nx-sum: 42\r\n\r\n"
