"""Admission of inbound gossip TCP streams: how many at once, and how many bytes they may make us hold.

Anyone who can reach the gossip port can open a stream and declare a frame of any length before proving
anything (with gossip keys the frame is authenticated only once it has been read whole). So, before
reading a frame's body, the listener checks (memberlist caps concurrent push-pulls at 128 and a
push-pull state at 20 MB; these are the same ideas, per host as well):

* streams open at once, in total and per source host: over the cap, the connection is closed at once;
* the declared length, against what a push-pull of the members we know could need
  (:func:`frame_limit`): a header claiming more is refused without reading the body;
* the bytes being read by all streams together and by one host: a frame that does not fit the budget
  is refused, so buffered frames never hold more than the budget however many hosts take part.

Each refusal is counted by reason (``refused_stream_*`` in the gossip counters).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_FRAME = 32 * 1024 * 1024  # the largest frame read at all; replies to our own push-pulls may be this big
MAX_ACK_FRAME = 4096  # the reply to a TCP fallback probe: one sealed ack
FRAME_BASE = 1024 * 1024  # room for a small cluster's push-pull with its catalog state
# one member's push-pull entry is at most ~1 KiB; the rest is its share of the catalog state that rides along
FRAME_PER_MEMBER = 16 * 1024


def frame_limit(members: int) -> int:
    """The largest inbound frame we read while we know ``members`` members (dead ones included: a
    partition heals by a push-pull carrying the members we hold dead)."""
    return min(MAX_FRAME, FRAME_BASE + max(0, members) * FRAME_PER_MEMBER)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_streams: int = 128  # memberlist's maxPushPullRequests
    max_streams_per_host: int = 16  # a host runs several sidecars at most; each opens a stream or two at once
    max_buffered: int = 2 * MAX_FRAME  # bytes of frames being read, all streams together
    max_buffered_per_host: int = MAX_FRAME


class StreamRefusal(enum.StrEnum):
    STREAMS = "stream_count"  # too many streams open, in total or from this host
    FRAME_SIZE = "stream_frame_size"  # the declared frame is over ``frame_limit``
    BUFFER = "stream_buffer"  # the frame does not fit the bytes budget now


class StreamGate:
    """Counts of open streams and reserved bytes, in total and per host."""

    __slots__ = ("_buffered", "_buffered_total", "_streams", "_streams_total", "limits", "refused")

    def __init__(self, limits: StreamLimits | None = None) -> None:
        self.limits = limits if limits is not None else StreamLimits()
        self._streams: dict[str, int] = {}
        self._streams_total = 0
        self._buffered: dict[str, int] = {}
        self._buffered_total = 0
        self.refused: dict[str, int] = {r.value: 0 for r in StreamRefusal}

    @property
    def open_streams(self) -> int:
        return self._streams_total

    @property
    def buffered(self) -> int:
        return self._buffered_total

    def enter(self, host: str) -> bool:
        """A stream from ``host`` opened; False (counted) when it must be closed at once."""
        lim = self.limits
        n = self._streams.get(host, 0)
        if self._streams_total >= lim.max_streams or n >= lim.max_streams_per_host:
            self.refused[StreamRefusal.STREAMS] += 1
            return False
        self._streams[host] = n + 1
        self._streams_total += 1
        return True

    def leave(self, host: str) -> None:
        n = self._streams.get(host, 0) - 1
        if n > 0:
            self._streams[host] = n
        else:
            self._streams.pop(host, None)
        self._streams_total -= 1

    def reserve(self, host: str, length: int, limit: int) -> StreamRefusal | None:
        """Reserve ``length`` bytes for a frame from ``host``; the reason (counted) when it is refused."""
        lim = self.limits
        reason: StreamRefusal | None = None
        if length > limit:
            reason = StreamRefusal.FRAME_SIZE
        elif (self._buffered_total + length > lim.max_buffered
              or self._buffered.get(host, 0) + length > lim.max_buffered_per_host):
            reason = StreamRefusal.BUFFER
        if reason is not None:
            self.refused[reason] += 1
            return reason
        self._buffered[host] = self._buffered.get(host, 0) + length
        self._buffered_total += length
        return None

    def release(self, host: str, length: int) -> None:
        n = self._buffered.get(host, 0) - length
        if n > 0:
            self._buffered[host] = n
        else:
            self._buffered.pop(host, None)
        self._buffered_total -= length

    def snapshot(self) -> dict[str, int]:
        out = {f"refused_{reason}": n for reason, n in self.refused.items()}
        out["streams_open"] = self._streams_total
        out["stream_bytes_buffered"] = self._buffered_total
        return out
