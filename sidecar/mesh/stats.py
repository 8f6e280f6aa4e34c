"""The data plane's counters since start: requests, errors, denials and tunnels per listener and service."""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from sidecar.proxy.relay import RelayStats
from sidecar.proxy.target import RequestStats

_STATUS_CLASS: Final[tuple[str, ...]] = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


class MeshStats:
    """Counters since start, for the metrics exporter (TLS refusals are in ``store.refusals.counts``).

    Label values are bounded: services are catalog or registry names (else ``"unknown"``), listeners are
    ``outbound``, ``inbound`` and ``upstream``, rules are ``authorization.rules[i]`` or ``authorization.default``.
    """

    def __init__(self) -> None:
        # plain dicts, counted a request at a time: a Counter's `+=` goes through its Python-level item slots (it
        # defines __delitem__), ~2,000 instructions where a dict's get and set take a few hundred
        self.requests: dict[tuple[str, str, str], int] = {}          # (listener, service, status class)
        self.errors: dict[tuple[str, str, str], int] = {}            # (listener, service, RequestStats.error)
        self.denials: Counter[tuple[str, str, str]] = Counter()      # (service, caller service, rule)
        self.tunnels: Counter[tuple[str, str, str]] = Counter()      # (listener, service, "ok" | "failed")
        self.tunnel_bytes: Counter[tuple[str, str, str]] = Counter()  # (listener, service, "up" | "down")
        self.no_tls = 0                                              # requests refused: no tls section

    def request(self, listener: str, service: str, stats: RequestStats) -> None:
        status = stats.status
        key = (listener, service, _STATUS_CLASS[status // 100] if 100 <= status < 600 else "none")
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if stats.error is not None:
            errors = self.errors
            failed = (listener, service, stats.error)
            errors[failed] = errors.get(failed, 0) + 1

    def tunnel(self, listener: str, service: str, stats: RelayStats) -> None:
        self.tunnels[listener, service, "failed" if stats.error else "ok"] += 1
        if stats.bytes_up:
            self.tunnel_bytes[listener, service, "up"] += stats.bytes_up
        if stats.bytes_down:
            self.tunnel_bytes[listener, service, "down"] += stats.bytes_down

    def denied(self, service: str, caller: str, rule: str) -> None:
        self.denials[service, caller, rule] += 1

    @property
    def denials_by_rule(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, _, rule), count in self.denials.items():
            out[rule] += count
        return out

    def snapshot(self) -> dict[str, Any]:
        """For the admin port and tests: every counter as nested JSON."""
        return {
            "requests": [{"listener": k[0], "service": k[1], "class": k[2], "count": v}
                         for k, v in sorted(self.requests.items())],
            "errors": [{"listener": k[0], "service": k[1], "error": k[2], "count": v}
                       for k, v in sorted(self.errors.items())],
            "denials": [{"service": k[0], "caller": k[1], "rule": k[2], "count": v}
                        for k, v in sorted(self.denials.items())],
            "tunnels": [{"listener": k[0], "service": k[1], "outcome": k[2], "count": v}
                        for k, v in sorted(self.tunnels.items())],
            "tunnel_bytes": [{"listener": k[0], "service": k[1], "direction": k[2], "bytes": v}
                             for k, v in sorted(self.tunnel_bytes.items())],
            "no_tls": self.no_tls,
        }
