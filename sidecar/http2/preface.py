"""Recognize the HTTP/2 client connection preface, so one listener can serve HTTP/1.1 and h2c on one port.

A client speaking h2c with prior knowledge (RFC 9113 section 3.3) opens with :data:`PREFACE`; an HTTP/1.1
request line can never start with it (``PRI`` is no method an HTTP/1.1 client sends with ``HTTP/2.0``).
"""

from __future__ import annotations

import enum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Sniffed(enum.Enum):
    H2C = "h2c"
    HTTP1 = "http/1.1"
    NEED_MORE = "need-more"


def sniff(first: bytes) -> Sniffed:
    """What the connection's first bytes speak; NEED_MORE while they are a proper prefix of the preface."""
    n = min(len(first), len(PREFACE))
    if first[:n] != PREFACE[:n]:
        return Sniffed.HTTP1
    return Sniffed.H2C if n == len(PREFACE) else Sniffed.NEED_MORE
