"""Request counters and latency histograms in plain Python, updated per request in O(1) and exported by the
Prometheus collector at scrape time (``prometheus_client`` is never called on the hot path).

A series is one (direction, source, destination, method class, status code). Every label is bounded:
destinations and sources are service names the catalog or a certificate named (else ``unknown``), methods are
the standard ones (else ``other``), codes are 100-599 (``0`` when the client got no status), so the number of
series is bounded by the mesh's services, not by what clients send.

gRPC calls are counted again by method and gRPC status (:class:`GrpcCalls`): the method is the call's path,
capped per service by :mod:`.grpcmethods` (``other`` past the cap), the status 0-16 (``none`` when the call
ended without one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# seconds; Linkerd's and Envoy's default latency buckets cover the same 1ms-10s span
BUCKETS: Final[tuple[float, ...]] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_CODES: Final = tuple(str(code) for code in range(600))
_GRPC_CODES: Final = tuple(str(code) for code in range(17))

SeriesKey = tuple[str, str, str, str, str]   # direction, source, destination, method, code


def bucket_of(seconds: float) -> int:
    """``bisect_left(BUCKETS, seconds)``: the first bucket whose bound is at least ``seconds`` (``len(BUCKETS)``,
    +Inf, past the last). A compiled scan from the smallest bound, where most requests' latencies fall; the
    module function costs a lookup and a call per request."""
    i = 0
    for bound in BUCKETS:
        if seconds <= bound:
            return i
        i += 1
    return i


def method_class(method: str) -> str:
    return method if method in METHODS else "other"


def code_label(status: int) -> str:
    return _CODES[status] if 100 <= status < 600 else "0"


class Series:
    """One label set's counts: requests, failed requests, bytes, and the latency histogram (per bucket, not
    cumulative; the collector accumulates)."""

    __slots__ = ("buckets", "errors", "request_bytes", "requests", "response_bytes", "sum")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.request_bytes = 0
        self.response_bytes = 0
        self.sum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)   # the last one is +Inf

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        total = 0
        for bound, count in zip(BUCKETS, self.buckets, strict=False):
            total += count
            out.append((_bound_text(bound), total))
        out.append(("+Inf", total + self.buckets[-1]))
        return out


def _bound_text(bound: float) -> str:
    return repr(bound)


@dataclass(frozen=True, slots=True)
class SeriesView:
    key: SeriesKey
    requests: int
    errors: int
    request_bytes: int
    response_bytes: int
    sum: float
    buckets: list[tuple[str, int]]


class RequestMetrics:
    """Everything the ``sidecar_requests_*`` families show; see the module's doc."""

    __slots__ = ("_series",)

    def __init__(self) -> None:
        self._series: dict[SeriesKey, Series] = {}

    def record(self, direction: str, source: str, destination: str, method: str, status: int, failed: bool,
               seconds: float, request_bytes: int, response_bytes: int) -> None:
        key = (direction, source, destination, method if method in METHODS else "other",
               _CODES[status] if 100 <= status < 600 else "0")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series()
        series.requests += 1
        if failed:
            series.errors += 1
        series.request_bytes += request_bytes
        series.response_bytes += response_bytes
        series.sum += seconds
        series.buckets[bucket_of(seconds)] += 1

    def views(self) -> list[SeriesView]:
        """A consistent copy for the collector (the loop thread updates, the scrape may read from another)."""
        out = []
        for key, s in list(self._series.items()):
            out.append(SeriesView(key, s.requests, s.errors, s.request_bytes, s.response_bytes, s.sum, s.cumulative()))
        return out

    def totals(self) -> tuple[int, int]:
        """(requests, failed) over every series: what a reload's canary compares before and after."""
        requests = errors = 0
        for s in list(self._series.values()):
            requests += s.requests
            errors += s.errors
        return requests, errors

    def totals_by_destination(self, direction: str) -> dict[str, tuple[int, int]]:
        """(requests, failed) per destination, for the dashboard's rates."""
        out: dict[str, tuple[int, int]] = {}
        for key, s in list(self._series.items()):
            if key[0] == direction:
                requests, errors = out.get(key[2], (0, 0))
                out[key[2]] = (requests + s.requests, errors + s.errors)
        return out


GrpcKey = tuple[str, str, str, str, str]   # direction, source, destination, method, gRPC status


def grpc_status_label(status: int | None) -> str:
    return _GRPC_CODES[status] if status is not None and 0 <= status < 17 else "none"


class GrpcCalls:
    """What ``sidecar_grpc_requests_total`` shows: calls per (direction, source, destination, method, status)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[GrpcKey, int] = {}

    def record(self, direction: str, source: str, destination: str, method: str, status: int | None) -> None:
        key = (direction, source, destination, method, grpc_status_label(status))
        self._counts[key] = self._counts.get(key, 0) + 1

    def views(self) -> list[tuple[GrpcKey, int]]:
        return sorted(list(self._counts.items()))
