"""What the DNS responder did since start (:class:`DnsCounters`), read by ``/metrics`` and the admin port."""

from __future__ import annotations

from typing import Any, Final

import dns.rcode

NOERROR: Final = 0
NXDOMAIN: Final = 3


class DnsCounters:
    """What the responder did since start, for the metrics endpoint."""

    __slots__ = (
        "by_rcode",
        "cache_hits",
        "cache_misses",
        "dropped",
        "forward_failed",
        "forward_limited",
        "forwarded",
        "internal_errors",
        "malformed",
        "noerror",
        "nxdomain",
        "rate_limited",
        "tcp_connections",
        "tcp_rejected",
    )

    def __init__(self) -> None:
        # NOERROR and NXDOMAIN, nearly every answer, as native counters: no integer object made per query
        self.noerror = 0
        self.nxdomain = 0
        self.by_rcode: dict[int, int] = {}   # the other rcodes
        self.cache_hits = 0
        self.cache_misses = 0
        self.rate_limited = 0
        self.malformed = 0
        self.dropped = 0
        self.forwarded = 0
        self.forward_failed = 0
        self.forward_limited = 0
        self.internal_errors = 0
        self.tcp_connections = 0
        self.tcp_rejected = 0

    def count_rcode(self, rcode: int) -> None:
        if rcode == NOERROR:
            self.noerror += 1
        elif rcode == NXDOMAIN:
            self.nxdomain += 1
        else:
            self.by_rcode[rcode] = self.by_rcode.get(rcode, 0) + 1

    def queries_by_rcode(self) -> dict[str, int]:
        """Answers sent by rcode name (``NOERROR``, ``NXDOMAIN``...), only those seen."""
        out: dict[str, int] = {}
        for value, count in ((NOERROR, self.noerror), (NXDOMAIN, self.nxdomain), *self.by_rcode.items()):
            if count:
                name = dns.rcode.to_text(dns.rcode.Rcode.make(value)) if value <= 4095 else str(value)
                out[name] = out.get(name, 0) + count
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "queries_by_rcode": self.queries_by_rcode(),
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "rate_limited": self.rate_limited,
            "malformed": self.malformed,
            "dropped": self.dropped,
            "forwarded": self.forwarded,
            "forward_failed": self.forward_failed,
            "forward_limited": self.forward_limited,
            "internal_errors": self.internal_errors,
            "tcp_connections": self.tcp_connections,
            "tcp_rejected": self.tcp_rejected,
        }
