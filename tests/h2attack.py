"""HTTP/2 abuse for the listeners' tests: the attacks, and a well-behaved bystander beside them.

The client is :class:`tests.h2client.RawH2`: frames built by :class:`tests.unit.http2.peer.RawPeer` (no h2 state
machine), so a test sends what a conforming client never would; what comes back is parsed frame by frame. It
speaks h2c with prior knowledge, or h2 over TLS (ALPN ``h2``) with a member's certificate: the inbound listener's
attacker is a member of the mesh.

``FLOODS`` builds each abuse as bytes, with what the listener must answer (a GOAWAY's or RST_STREAM's code) and
the protection counter it must count. :class:`Bystander` keeps making normal requests on a connection of its
own while a test attacks another, and records how long each answer took.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.h2client import Headers, RawH2
from tests.unit.http2.peer import RawPeer

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x3, 0x7, 0xB

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

    def __init__(self, connect: Callable[[], RawH2], request: Headers, deadline: float = 5.0,
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
                    status, body = client.exchange(stream, self.request, timeout=self.deadline)
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
