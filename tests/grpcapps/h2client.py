"""A raw h2c client for tests that must see frames a client library hides or refuses: a GOAWAY arriving
while a stream is still open, then that stream's end (h2's connection state machine closes on GOAWAY and
rejects the frames after it). Frames by hyperframe, headers by hpack (both come with h2)."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from hpack import Decoder, Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Received:
    """One frame that matters to a test: kind GOAWAY (stream = last stream id, code), HEADERS, DATA,
    RST_STREAM (code)."""
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


def member_context(tls: dict[str, str], alpn: list[str]) -> ssl.SSLContext:
    """A peer sidecar's client context: the member certificate, the mesh CA, the SPIFFE ID instead of a host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(tls["ca"])
    context.load_cert_chain(tls["cert"], tls["key"])
    context.set_alpn_protocols(alpn)
    return context


class RawH2:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.buffer = b""
        self.received: list[Received] = []
        self.next_stream = 1

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 5.0) -> RawH2:
        sock = socket.create_connection((host, port), timeout=timeout)
        client = cls(sock)
        settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 24})
        sock.sendall(PREFACE + settings.serialize() + WindowUpdateFrame(0, window_increment=1 << 24).serialize())
        return client

    @classmethod
    def over_tls(cls, address: str, tls: dict[str, str], server_name: str, timeout: float = 5.0) -> RawH2:
        """h2 to a sidecar's inbound (``host:port``) as a peer sidecar: a member certificate, ALPN ``h2``."""
        host, port = address.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        sock = member_context(tls, ["h2"]).wrap_socket(raw, server_hostname=server_name)
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        client = cls(sock)
        sock.sendall(PREFACE + SettingsFrame(0).serialize())
        return client

    def request(self, headers: list[tuple[str, str]], body: bytes) -> int:
        stream = self.next_stream
        self.next_stream += 2
        head = HeadersFrame(stream, self.encoder.encode(headers), flags=["END_HEADERS"] + ([] if body else
                                                                                           ["END_STREAM"]))
        out = head.serialize()
        if body:
            out += DataFrame(stream, body, flags=["END_STREAM"]).serialize()
        self.sock.sendall(out)
        return stream

    def read_until_end(self, stream: int, timeout: float) -> list[Received]:
        """Frames until ``stream`` ends (END_STREAM or RST_STREAM) or the connection closes; at most
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not any(r.stream == stream and (r.end_stream or r.kind == "RST_STREAM") and r.kind != "GOAWAY"
                      for r in self.received):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"stream {stream} did not end within {timeout}s; got {self.received}")
            frame = self._read_frame(left)
            if frame is None:
                break
            self._handle(frame)
        return self.received

    def read_until_goaway(self, timeout: float) -> list[Received]:
        """Frames until a GOAWAY arrives; at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not any(r.kind == "GOAWAY" for r in self.received):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no GOAWAY within {timeout}s; got {self.received}")
            frame = self._read_frame(left)
            if frame is None:
                raise ConnectionError(f"connection closed without a GOAWAY; got {self.received}")
            self._handle(frame)
        return self.received

    def _handle(self, frame: Frame) -> None:
        end = "END_STREAM" in frame.flags
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self.sock.sendall(PingFrame(0, frame.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(frame, GoAwayFrame):
            self.received.append(Received("GOAWAY", frame.last_stream_id, code=frame.error_code))
        elif isinstance(frame, HeadersFrame):
            headers = tuple((str(k), str(v)) for k, v in self.decoder.decode(frame.data, raw=False))
            self.received.append(Received("HEADERS", frame.stream_id, headers=headers, end_stream=end))
        elif isinstance(frame, DataFrame):
            self.received.append(Received("DATA", frame.stream_id, data=bytes(frame.data), end_stream=end))
        elif isinstance(frame, RstStreamFrame):
            self.received.append(Received("RST_STREAM", frame.stream_id, code=frame.error_code))

    def _read_frame(self, timeout: float) -> Frame | None:
        header = self._read(9, timeout)
        if header is None:
            return None
        frame, length = Frame.parse_frame_header(memoryview(header))
        body = self._read(length, timeout) if length else b""
        if body is None:
            return None
        frame.parse_body(memoryview(body))
        return frame

    def _read(self, size: int, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        while len(self.buffer) < size:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def close(self) -> None:
        self.sock.close()
