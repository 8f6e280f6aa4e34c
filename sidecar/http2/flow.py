"""HTTP/2 flow-control windows (RFC 9113 section 5.2 and 6.9), both directions, compiled with mypyc.

Receiving: :class:`InboundWindow` counts what the peer may still send, and what the consumer has passed on
(``processed``). Credit goes back in batches, not per frame: a WINDOW_UPDATE once half the window has been
passed on, or sooner when the window is shut (python-hyper h2's rule, kept so both cores answer alike).
Sending: a plain int per stream and one for the connection, changed by :func:`opened`.
"""

from __future__ import annotations

from typing import Final

MAX_WINDOW: Final = 2**31 - 1


class FlowControlOverflow(Exception):
    """A window went below zero (the peer sent more than allowed) or above 2**31-1 (it opened too much)."""


def opened(window: int, increment: int) -> int:
    """``window`` after a WINDOW_UPDATE or a SETTINGS_INITIAL_WINDOW_SIZE change of ``increment``."""
    window += increment
    if window > MAX_WINDOW:
        raise FlowControlOverflow(f"flow-control window of {window}, over 2**31-1")
    return window


class InboundWindow:
    """What the peer may still send on a stream or the connection, and the credit we owe it back."""

    def __init__(self, size: int) -> None:
        self.max_size = size  # the size we advertise: the credit owed brings the window back up to it
        self.current = size
        self.processed = 0  # bytes passed on by the consumer and not yet credited

    def consumed(self, size: int) -> None:
        """The peer sent ``size`` flow-controlled bytes."""
        self.current -= size
        if self.current < 0:
            raise FlowControlOverflow(f"the peer sent {-self.current} bytes more than the window")

    def grow(self, size: int) -> None:
        """We opened the window by ``size`` ourselves (a WINDOW_UPDATE we send outside the batching)."""
        self.current = opened(self.current, size)
        if self.current > self.max_size:
            self.max_size = self.current

    def credit(self, size: int) -> int:
        """The consumer passed on ``size`` bytes: the WINDOW_UPDATE increment to send now (0: not yet)."""
        self.processed += size
        room = self.max_size - self.current
        if (self.current == 0 and self.processed > min(1024, self.max_size // 4)) \
                or self.processed >= self.max_size // 2:
            increment = min(self.processed, room)
            self.processed = 0
            self.current += increment
            return increment
        return 0
