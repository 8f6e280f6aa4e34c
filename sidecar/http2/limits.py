"""What one HTTP/2 connection advertises and tolerates, with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEFAULT_WINDOW: Final = 65535  # RFC 9113's initial window, stream and connection


@dataclass(frozen=True, slots=True)
class H2Limits:
    # streams the peer may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); 100 is RFC 9113's floor
    # recommendation and what Envoy, nginx and Go advertise
    max_concurrent_streams: int = 100
    # per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE): unacknowledged bytes one stream may hold;
    # never below the protocol's 65535, which the peer may use until it has read our SETTINGS
    initial_window: int = 256 * 1024
    # connection receive window: bounds what all streams together hold before the consumer passes it on
    connection_window: int = 1024 * 1024
    # SETTINGS_MAX_FRAME_SIZE: the protocol's minimum, so no frame we buffer exceeds 16 KiB
    max_frame_size: int = 16384
    # SETTINGS_MAX_HEADER_LIST_SIZE: the decoded header list (RFC 7541 sizes); the listener's head limit
    max_header_list_size: int = 64 * 1024
    # a header block (HEADERS + CONTINUATION) larger than this on the wire, or in more frames, is a flood
    # (CVE-2024-27316 class); a compressed block is never much larger than the list it decodes to
    max_header_block_bytes: int = 64 * 1024 + 4096
    max_continuation_frames: int = 16
    # streams the peer may reset per window before it is told to calm down (CVE-2023-44487, rapid reset)
    max_peer_resets: int = 1000
    # SETTINGS, PING, PRIORITY and empty DATA frames the peer may send per window (CVE-2019-9512/9513/9518)
    max_control_frames: int = 1000
    # DATA/HEADERS frames on streams the peer already ended or that were reset, per window: a few race a reset
    max_closed_stream_frames: int = 1000
    budget_window: float = 10.0
    # bytes queued on one stream before the producer is told to wait (its window may be closed)
    stream_buffer_high: int = 256 * 1024

    def __post_init__(self) -> None:
        if min(self.initial_window, self.connection_window) < DEFAULT_WINDOW:
            raise ValueError(f"HTTP/2 windows must be at least {DEFAULT_WINDOW} (got {self.initial_window}, "
                             f"{self.connection_window})")


@dataclass(slots=True)
class Budget:
    """At most ``limit`` hits per ``window`` seconds; the count restarts when a window ends."""

    limit: int
    window: float
    count: int = 0
    started: float = 0.0

    def hit(self, now: float) -> bool:
        """Count one hit; True when it is over the budget."""
        if now - self.started >= self.window:
            self.started, self.count = now, 0
        self.count += 1
        return self.count > self.limit
