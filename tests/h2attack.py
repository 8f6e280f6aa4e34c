"""A raw HTTP/2 client for the listeners' tests, as an attacker or as a well-behaved bystander.

Frames are built by :class:`tests.unit.http2.peer.RawPeer` (hyperframe and hpack, no h2 state machine), so a
test sends what a conforming client never would; what comes back is parsed frame by frame. The client speaks
h2c with prior knowledge, or h2 over TLS (ALPN ``h2``) with a member's certificate: the inbound listener's
attacker is a member of the mesh.

``FLOODS`` builds each abuse as bytes, with what the listener must answer (a GOAWAY's or RST_STREAM's code) and
the protection counter it must count. :class:`Bystander` keeps making normal requests on a connection of its
own while a test attacks another, and records how long each answer took.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpack import Decoder
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from tests.unit.http2.peer import RawPeer, frames

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x3, 0x7, 0xB

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


def member_tls(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """A client context with a member's certificate, offering only ALPN h2."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.check_hostname = False   # peers are named by SPIFFE URI, not DNS
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


class RawClient:
    """A raw HTTP/2 client on one socket: the preface and an empty SETTINGS at once, then frames both ways.

    ``tls``: h2 over TLS (the context offers ALPN ``h2``) instead of h2c; ``preface=False`` sends nothing
    first (a test of the preface itself)."""

    def __init__(self, address: tuple[str, int] | int, tls: ssl.SSLContext | None = None, server_name: str = "web",
                 preface: bool = True, timeout: float = 10.0) -> None:
        self.peer = RawPeer()
        raw = socket.create_connection(("127.0.0.1", address) if isinstance(address, int) else address, timeout)
        self.sock: socket.socket = tls.wrap_socket(raw, server_hostname=server_name) if tls is not None else raw
        self.alpn = self.sock.selected_alpn_protocol() if isinstance(self.sock, ssl.SSLSocket) else None
        self.buf = b""
        self.received: list[Frame] = []   # every frame read so far, in order
        self.statuses: dict[int, int] = {}  # each stream's final :status, from its decoded HEADERS
        self._decoder = Decoder()
        self._decoder.max_header_list_size = 1 << 20
        if preface:
            self.sock.sendall(self.peer.preface())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_quietly(self, data: bytes) -> None:
        """Send what the server may cut short: once it has closed, the rest is dropped."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.sock.sendall(data)

    def read_until(self, done: Done, timeout: float = 10.0) -> list[Frame]:
        """Frames until ``done(frames)`` holds (or the server closes: then what came)."""
        got: list[Frame] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            whole = self._complete()
            if whole:
                new = frames(whole)
                self._decode(new)
                got += new
                self.received += new
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
                self._decode(rest)
                self.received += rest
                return got + rest
            self.buf += chunk
        raise AssertionError(f"no end within {timeout}s: {got[-10:]}")

    def _decode(self, new: list[Frame]) -> None:
        """Decode every header block in order (they share one HPACK table); blocks in CONTINUATION frames are
        not expected from the sidecar's small answers."""
        for f in new:
            if isinstance(f, HeadersFrame) and "END_HEADERS" in f.flags:
                fields = dict(self._decoder.decode(f.data, raw=True))
                status = fields.get(b":status")
                if status is not None and int(status) >= 200:
                    self.statuses[f.stream_id] = int(status)

    def _complete(self) -> bytes:
        view, pos = self.buf, 0
        while len(view) - pos >= 9:
            length = int.from_bytes(view[pos:pos + 3], "big")
            if len(view) - pos < 9 + length:
                break
            pos += 9 + length
        whole, self.buf = view[:pos], view[pos:]
        return whole

    def request(self, stream: int, headers: Headers, timeout: float = 10.0) -> tuple[int, bytes]:
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

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------------------ the floods


@dataclass(frozen=True)
class Flood:
    """One abuse: the bytes after the preface, and what the listener must answer and count."""

    name: str
    build: Callable[[RawPeer, Headers], bytes]
    goaway: int | None          # the GOAWAY's error code; None: the connection lives on
    counter: str                # the core's protection counter (sidecar_http2_protections_total's label)


def rapid_reset(peer: RawPeer, request: Headers, count: int = 1500) -> bytes:
    """HEADERS then RST_STREAM, over and over (CVE-2023-44487)."""
    block = peer.block(request)
    return b"".join(peer.headers(s, block=block, end_stream=True) + peer.rst(s) for s in range(1, 2 * count, 2))


def continuation_flood(peer: RawPeer, request: Headers, count: int = 5000) -> bytes:
    """A header block that never ends: CONTINUATION frames without END_HEADERS (CVE-2024-27316 class)."""
    block = peer.block(request)
    return peer.headers(1, block=block[:1], end_headers=False) + b"".join(
        peer.continuation(1, b"\x40\x01a\x01b") for _ in range(count))


def oversized_header_list(peer: RawPeer, request: Headers) -> bytes:
    """One request whose header list is far over the listener's limit, in full CONTINUATION frames."""
    block = peer.block([*request, (b"x-big", b"v" * (62 * 1024))])
    pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    return peer.headers(1, block=pieces[0], end_stream=True, end_headers=False) + b"".join(
        peer.continuation(1, piece, end_headers=i == len(pieces) - 1) for i, piece in enumerate(pieces[1:], 1))


def hpack_bomb(peer: RawPeer, request: Headers) -> bytes:
    """A 3000-byte entry put in the dynamic table by one request, then a block of a few hundred bytes that
    refers to it 200 times: about 600 KB of header list."""
    first = peer.headers(1, [*request, (b"x-bomb", b"b" * 3000)], end_stream=True)
    block = peer.block(request)
    entries = [name for name, _ in peer.encoder.header_table.dynamic_entries]   # newest first, from index 62
    index = 62 + entries.index(b"x-bomb")
    return first + peer.headers(3, block=block + bytes([0x80 | index]) * 200, end_stream=True)


def window_overflow(peer: RawPeer, request: Headers) -> bytes:
    """WINDOW_UPDATE past 2**31 - 1 on the connection."""
    return peer.window_update(0, 2**31 - 1) + peer.window_update(0, 2**31 - 1)


def closed_stream_frames(peer: RawPeer, request: Headers, count: int = 3000) -> bytes:
    """A request whose stream is over, then DATA on it again and again."""
    return peer.headers(1, request, end_stream=True) + b"".join(peer.data(1, b"late") for _ in range(count))


def closed_stream_resets(peer: RawPeer, request: Headers, count: int = 3000) -> bytes:
    """A request whose stream is over, then RST_STREAM on it again and again (h2 ignores each one)."""
    return peer.headers(1, request, end_stream=True) + peer.rst(1) * count


def settings_flood(peer: RawPeer, request: Headers, count: int = 3000) -> bytes:
    return peer.settings() * count


def ping_flood(peer: RawPeer, request: Headers, count: int = 3000) -> bytes:
    return peer.ping() * count


FLOODS = [
    Flood("rapid-reset", rapid_reset, ENHANCE_YOUR_CALM, "rapid_reset"),
    Flood("continuation-flood", continuation_flood, ENHANCE_YOUR_CALM, "continuation_flood"),
    Flood("oversized-header-list", oversized_header_list, ENHANCE_YOUR_CALM, "header_list_too_large"),
    Flood("hpack-bomb", hpack_bomb, ENHANCE_YOUR_CALM, "header_list_too_large"),
    Flood("window-overflow", window_overflow, FLOW_CONTROL_ERROR, "flow_control"),
    Flood("closed-stream-frames", closed_stream_frames, ENHANCE_YOUR_CALM, "closed_stream_frames"),
    Flood("closed-stream-resets", closed_stream_resets, ENHANCE_YOUR_CALM, "rapid_reset"),
    Flood("settings-flood", settings_flood, ENHANCE_YOUR_CALM, "control_flood"),
    Flood("ping-flood", ping_flood, ENHANCE_YOUR_CALM, "control_flood"),
]


# ------------------------------------------------------------------------------------------ bystanders


class Bystander:
    """A well-behaved client on a connection of its own, asking ``path`` again and again (``pace`` apart) until
    stopped: every answer must be a 200 within ``deadline`` seconds. Bounded by ``max_seconds``."""

    def __init__(self, connect: Callable[[], RawClient], request: Headers, deadline: float = 5.0,
                 pace: float = 0.02, max_seconds: float = 120.0) -> None:
        self.connect = connect
        self.request = request
        self.deadline = deadline
        self.pace = pace
        self.max_seconds = max_seconds
        self.answers = 0
        self.slowest = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="h2-bystander", daemon=True)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.deadline + 5)
        assert not self._thread.is_alive(), "the bystander did not stop"

    def wait_answers(self, more: int, timeout: float = 10.0) -> None:
        """Block until ``more`` answers came after now (or fail)."""
        target = self.answers + more
        deadline = time.monotonic() + timeout
        while self.answers < target and time.monotonic() < deadline and not self.failures:
            time.sleep(0.01)
        assert not self.failures, self.failures
        assert self.answers >= target, f"the bystander got {self.answers} answers, wanted {target}"

    def check(self) -> None:
        assert not self.failures, self.failures
        assert self.slowest < self.deadline, self.slowest

    def _run(self) -> None:
        stop_at = time.monotonic() + self.max_seconds
        try:
            client = self.connect()
        except Exception as e:
            self.failures.append(f"connect: {e!r}")
            return
        stream = 1
        try:
            while not self._stop.is_set() and time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    status, body = client.request(stream, self.request, timeout=self.deadline)
                except Exception as e:
                    self.failures.append(f"stream {stream}: {e!r}")
                    return
                took = time.monotonic() - started
                self.slowest = max(self.slowest, took)
                if status != 200:
                    self.failures.append(f"stream {stream}: status {status}: {body[:200]!r}")
                    return
                self.answers += 1
                stream += 2
                self._stop.wait(self.pace)
        finally:
            client.close()


def rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")
