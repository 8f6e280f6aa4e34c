"""The tests' HTTP/2 clients, h2c or h2 over mTLS as a member of the mesh.

:class:`RawH2` reads frame by frame and sends what it is given: frames built by
:class:`tests.unit.http2.peer.RawPeer` (hyperframe and hpack, no h2 state machine), so a test sees what a client
library hides or refuses (a GOAWAY arriving while a stream is still open, then that stream's end: h2's connection
state machine closes on GOAWAY and rejects the frames after it) and sends what a conforming client never would
(the attacker's floods in tests/h2attack.py). :class:`H2Client` is python-hyper's h2, a conforming client, for
tests that want one: every stream's answer is kept until asked for, so many streams at once read in any order.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
from hpack import Decoder
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from sidecar.http2.preface import PREFACE
from tests.unit.http2.peer import RawPeer, frames

Headers = list[tuple[bytes, bytes]]
Done = Callable[[list[Frame]], bool]


def get(path: bytes, host: bytes = b"svc") -> Headers:
    return [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path), (b":authority", host)]


def post(path: bytes, host: bytes = b"svc") -> Headers:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", host)]


def ended(stream: int) -> Done:
    """Done once the stream's response ended (END_STREAM on its HEADERS or DATA) or it was reset."""
    return lambda got: any(f.stream_id == stream and ("END_STREAM" in f.flags if isinstance(f, HeadersFrame | DataFrame)
                                                      else isinstance(f, RstStreamFrame)) for f in got)


def goaway(got: list[Frame]) -> bool:
    return any(isinstance(f, GoAwayFrame) for f in got)


def goaway_codes(got: list[Frame]) -> list[int]:
    return [int(f.error_code) for f in got if isinstance(f, GoAwayFrame)]


def resets(got: list[Frame]) -> dict[int, int]:
    """RST_STREAM frames received: stream id -> error code."""
    return {f.stream_id: int(f.error_code) for f in got if isinstance(f, RstStreamFrame)}


def body_of(got: list[Frame], stream: int) -> bytes:
    return b"".join(f.data for f in got if isinstance(f, DataFrame) and f.stream_id == stream)


def member_context(tls: dict[str, str], alpn: list[str]) -> ssl.SSLContext:
    """A peer sidecar's client context: the member certificate, the mesh CA, the SPIFFE ID instead of a host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(tls["ca"])
    context.load_cert_chain(tls["cert"], tls["key"])
    context.set_alpn_protocols(alpn)
    return context


@dataclass(frozen=True, slots=True)
class Received:
    """One frame that matters to a test, its header block decoded: kind GOAWAY (stream = last stream id, code),
    HEADERS, DATA, RST_STREAM (code)."""
    kind: str
    stream: int
    headers: tuple[tuple[str, str], ...] = ()
    data: bytes = b""
    end_stream: bool = False
    code: int = 0


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message, uncompressed."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_request(path: str, authority: str, message: bytes) -> tuple[list[tuple[str, str]], bytes]:
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
               ("content-type", "application/grpc"), ("te", "trailers")]
    return headers, grpc_frame(message)


def slow_call(authority: str, seconds: float) -> tuple[list[tuple[str, str]], bytes]:
    return grpc_request("/test.Echo/Slow", authority, json.dumps({"seconds": seconds}).encode())


class RawH2:
    """A raw HTTP/2 client on one socket: the preface and a SETTINGS at once (``window``: with that initial
    window, and as much more on the connection), then frames both ways.

    ``tls``: h2 over TLS (the context offers ALPN ``h2``) instead of h2c; ``preface=False`` sends nothing first
    (a test of the preface itself); ``ack``: answer the server's SETTINGS and PINGs as they are read (a
    well-behaved client; an attacker's test sends what it means to, and nothing else)."""

    def __init__(self, address: tuple[str, int] | int, tls: ssl.SSLContext | None = None, server_name: str = "web",
                 preface: bool = True, timeout: float = 10.0, *, ack: bool = False, window: int | None = None) -> None:
        self.peer = RawPeer()
        self.ack = ack
        raw = socket.create_connection(("127.0.0.1", address) if isinstance(address, int) else address, timeout)
        self.sock: socket.socket = tls.wrap_socket(raw, server_hostname=server_name) if tls is not None else raw
        self.alpn = self.sock.selected_alpn_protocol() if isinstance(self.sock, ssl.SSLSocket) else None
        self.buf = b""
        self.received: list[Frame] = []   # every frame read so far, in order
        self.events: list[Received] = []  # the same, header blocks decoded (SETTINGS, PING, WINDOW_UPDATE left out)
        self.statuses: dict[int, int] = {}  # each stream's final :status, from its decoded HEADERS
        self.next_stream = 1
        self._decoder = Decoder()
        self._decoder.max_header_list_size = 1 << 20
        if preface:
            if window is None:
                self.sock.sendall(self.peer.preface())
            else:
                settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window})
                self.sock.sendall(PREFACE + settings.serialize() + self.peer.window_update(0, window))

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 5.0) -> RawH2:
        """h2c with prior knowledge as a well-behaved client whose windows a test never has to open."""
        return cls((host, port), timeout=timeout, ack=True, window=1 << 24)

    @classmethod
    def over_tls(cls, address: str, tls: dict[str, str], server_name: str, timeout: float = 5.0) -> RawH2:
        """h2 to a sidecar's inbound (``host:port``) as a peer sidecar: a member certificate, ALPN ``h2``."""
        host, port = address.rsplit(":", 1)
        client = cls((host, int(port)), member_context(tls, ["h2"]), server_name, timeout=timeout, ack=True)
        assert client.alpn == "h2", client.alpn
        return client

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_quietly(self, data: bytes) -> None:
        """Send what the server may cut short: once it has closed, the rest is dropped."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.sock.sendall(data)

    def request(self, headers: list[tuple[str, str]], body: bytes) -> int:
        """A request on the next stream (END_STREAM on its HEADERS, or on its one DATA frame): the stream id."""
        stream = self.next_stream
        self.next_stream += 2
        encoded = [(k.encode(), v.encode()) for k, v in headers]
        out = self.peer.headers(stream, encoded, end_stream=not body)
        if body:
            out += self.peer.data(stream, body, end_stream=True)
        self.send(out)
        return stream

    def exchange(self, stream: int, headers: Headers, timeout: float = 10.0) -> tuple[int, bytes]:
        """A well-behaved request without a body: the status and the body; the windows are given back."""
        self.send(self.peer.headers(stream, headers, end_stream=True))
        got = self.read_until(ended(stream), timeout)
        self.ack_settings(got)
        body = body_of(got, stream)
        if body:
            self.send(self.peer.window_update(0, len(body)))
        return self.statuses.get(stream, 0), body

    def ack_settings(self, got: list[Frame]) -> None:
        for f in got:
            if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                self.send(SettingsFrame(0, flags={"ACK"}).serialize())

    def read_until(self, done: Done, timeout: float = 10.0) -> list[Frame]:
        """Frames until ``done(frames)`` holds (or the server closes: then what came)."""
        got: list[Frame] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            whole = self._complete()
            if whole:
                new = frames(whole)
                self._note(new)
                got += new
                if done(got):
                    return got
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            except TimeoutError:
                continue
            if not chunk:
                rest = frames(self._complete())
                self._note(rest)
                return got + rest
            self.buf += chunk
        raise AssertionError(f"no end within {timeout}s: {got[-10:]}")

    def read_until_end(self, stream: int, timeout: float) -> list[Received]:
        """Every frame so far, decoded, once ``stream`` ended (END_STREAM or RST_STREAM) or the connection closed;
        at most ``timeout`` seconds."""
        self.read_until(lambda _: ended(stream)(self.received), timeout)
        return self.events

    def read_until_goaway(self, timeout: float) -> list[Received]:
        """Every frame so far, decoded, once a GOAWAY arrived; at most ``timeout`` seconds."""
        self.read_until(lambda _: goaway(self.received), timeout)
        if not goaway(self.received):
            raise ConnectionError(f"connection closed without a GOAWAY; got {self.events}")
        return self.events

    def _note(self, new: list[Frame]) -> None:
        """Keep and decode what came, in order (header blocks share one HPACK table; blocks in CONTINUATION frames
        are not expected from the sidecar's small answers), and answer SETTINGS and PING when ``ack``."""
        self.received += new
        for f in new:
            end = "END_STREAM" in f.flags
            if isinstance(f, HeadersFrame) and "END_HEADERS" in f.flags:
                headers = tuple((str(k), str(v)) for k, v in self._decoder.decode(f.data, raw=False))
                status = dict(headers).get(":status")
                if status is not None and int(status) >= 200:
                    self.statuses[f.stream_id] = int(status)
                self.events.append(Received("HEADERS", f.stream_id, headers=headers, end_stream=end))
            elif isinstance(f, DataFrame):
                self.events.append(Received("DATA", f.stream_id, data=bytes(f.data), end_stream=end))
            elif isinstance(f, RstStreamFrame):
                self.events.append(Received("RST_STREAM", f.stream_id, code=int(f.error_code)))
            elif isinstance(f, GoAwayFrame):
                self.events.append(Received("GOAWAY", f.last_stream_id, code=int(f.error_code)))
            elif self.ack and isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                self.send_quietly(SettingsFrame(0, flags={"ACK"}).serialize())
            elif self.ack and isinstance(f, PingFrame) and "ACK" not in f.flags:
                self.send_quietly(PingFrame(0, f.opaque_data, flags={"ACK"}).serialize())

    def _complete(self) -> bytes:
        view, pos = self.buf, 0
        while len(view) - pos >= 9:
            length = int.from_bytes(view[pos:pos + 3], "big")
            if len(view) - pos < 9 + length:
                break
            pos += 9 + length
        whole, self.buf = view[:pos], view[pos:]
        return whole

    def close(self) -> None:
        self.sock.close()


class H2Client:
    """python-hyper h2 over a TLS socket as a member of the mesh: requests on one connection, one after another or
    many at once. Each stream's events are kept in its own buffer (head, body, end or reset) whichever stream
    they arrived while waiting for, so the order streams are read in does not depend on the order they end."""

    def __init__(self, port: int, tls: dict[str, str], server_name: str | None = "web") -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = member_context(tls, ["h2"]).wrap_socket(raw, server_hostname=server_name)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}   # stream -> RST_STREAM error code

    def start(self, method: str, path: str, authority: str = "web") -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":scheme", "https"), (":path", path),
                                     (":authority", authority)], end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def response(self, sid: int, timeout: float = 10.0) -> tuple[dict[str, str], bytes]:
        """The response of stream ``sid``; what other streams receive meanwhile is kept for them."""
        deadline = time.monotonic() + timeout
        while sid not in self.ended:
            if sid in self.resets:
                raise ConnectionError(f"stream {sid} reset with code {self.resets.pop(sid)}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection closed before stream {sid} ended")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.heads[event.stream_id] = {str(k): str(v) for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    self.resets[event.stream_id] = int(event.error_code)
            self.sock.sendall(self.conn.data_to_send())
        return self.heads.pop(sid, {}), self.bodies.pop(sid, b"")

    def request(self, method: str, path: str, authority: str = "web") -> tuple[dict[str, str], bytes]:
        return self.response(self.start(method, path, authority))

    def close(self) -> None:
        self.sock.close()
