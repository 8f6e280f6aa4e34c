"""Performance records (the data model's ServicePerformanceMetric), kept in memory, bounded twice.

Theory of operation
-------------------
Every proxied request (and, through :meth:`RecordStore.add`, every message) leaves one :class:`Record`:
a tuple-sized object appended to a ring buffer. That is all the hot path pays. Filtering, percentiles and
the JSON shape are computed when someone asks (``GET /v1/metrics``, ``/v1/metrics/summary``, the dashboard).

Two bounds hold at all times after :meth:`RecordStore.prune`: at most ``max_samples`` records (the ring drops
the oldest on append), and none older than ``retention`` seconds (pruned on append, at most once per
``prune_every`` appends, and before every query). Times are loop (monotonic) seconds, passed in;
``wall_offset`` (wall clock minus loop clock) turns them into the epoch milliseconds people read.

``serviceMethod`` is ``SERVICE.METHOD``: ``payment-service.POST`` for HTTP (the method, not the path: paths
carry ids and would make every request its own series), ``orders.publish`` / ``inventory.request`` for
messages. ``status`` is ``error`` when the caller did not get an answer from the app (connect failure, reset,
timeout, a refusal by the sidecar itself) or got a 5xx; 4xx are the app's answers and count as ``success``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config.values import Duration
from sidecar.errors import InvalidArgument

DIRECTIONS = ("outbound", "inbound")
DEFAULT_LIMIT = 1000
DEFAULT_WINDOW = 300.0      # /v1/metrics/summary without ?window=: the last five minutes
PERCENTILES = (50, 90, 99)
# records are appended when requests end, so ``at`` (their start) is only roughly ordered: scans that stop at
# a time go this much further (a request longer than this may be missed by a ``since`` or a window)
ORDER_SLACK = 60.0


@dataclass(frozen=True, slots=True)
class Record:
    """One finished request or message. ``at`` is when it started (loop seconds), ``latency`` in seconds."""

    service: str
    method: str
    latency: float
    at: float
    ok: bool
    direction: str = "outbound"   # outbound: this node's app called ``service``; inbound: ``service`` is ours

    @property
    def service_method(self) -> str:
        return f"{self.service}.{self.method}"

    def to_json(self, wall_offset: float) -> dict[str, Any]:
        """The data model's ServicePerformanceMetric, plus ``direction``."""
        return {"serviceMethod": self.service_method, "latency": round(self.latency * 1000.0, 3),
                "timestamp": int((self.at + wall_offset) * 1000), "status": "success" if self.ok else "error",
                "direction": self.direction}


@dataclass(frozen=True, slots=True)
class Query:
    """``GET /v1/metrics`` filters; None matches anything. ``since`` is loop seconds (converted from epoch ms
    or from a duration back from now by :func:`parse_query`)."""

    service: str | None = None
    method: str | None = None
    ok: bool | None = None
    direction: str | None = None
    since: float | None = None
    limit: int = DEFAULT_LIMIT

    def matches(self, record: Record) -> bool:
        return ((self.service is None or record.service == self.service)
                and (self.method is None or record.method.lower() == self.method)
                and (self.ok is None or record.ok == self.ok)
                and (self.direction is None or record.direction == self.direction)
                and (self.since is None or record.at >= self.since))


@dataclass(frozen=True, slots=True)
class Summary:
    """One row of ``/v1/metrics/summary``: a (direction, serviceMethod) over the window."""

    service_method: str
    direction: str
    count: int
    errors: int
    p50: float
    p90: float
    p99: float
    mean: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def to_json(self, window: float) -> dict[str, Any]:
        return {"serviceMethod": self.service_method, "direction": self.direction, "count": self.count,
                "errors": self.errors, "errorRate": round(self.error_rate, 6),
                "ratePerSecond": round(self.count / window, 3) if window > 0 else 0.0,
                "p50": round(self.p50 * 1000.0, 3), "p90": round(self.p90 * 1000.0, 3),
                "p99": round(self.p99 * 1000.0, 3), "mean": round(self.mean * 1000.0, 3)}


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list: the smallest value with at least p% of values at or below
    it. Exact on small sets (p50 of [1, 2, 3, 4] is 2), never interpolated; 0.0 for an empty list."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(records: Iterable[Record]) -> list[Summary]:
    """Rows per (direction, serviceMethod), sorted by direction then serviceMethod."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for record in records:
        groups.setdefault((record.direction, record.service_method), []).append(record)
    rows = []
    for (direction, service_method), group in sorted(groups.items()):
        latencies = sorted(r.latency for r in group)
        errors = sum(1 for r in group if not r.ok)
        p50, p90, p99 = (percentile(latencies, p) for p in PERCENTILES)
        rows.append(Summary(service_method, direction, len(group), errors, p50, p90, p99,
                            sum(latencies) / len(latencies)))
    return rows


_Row = tuple[str, str, float, float, bool, str]   # Record's fields, in order


class RecordStore:
    """The ring buffer; see the module's doc. Not thread-safe: one event loop owns it."""

    __slots__ = ("_appends", "_records", "max_samples", "prune_every", "retention")

    def __init__(self, max_samples: int, retention: float, prune_every: int = 256) -> None:
        self.max_samples = max_samples
        self.retention = retention
        self.prune_every = prune_every
        self._records: deque[_Row] = deque(maxlen=max_samples)
        self._appends = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: Record) -> None:
        self.append(record.service, record.method, record.latency, record.at, record.ok, record.direction)

    def append(self, service: str, method: str, latency: float, at: float, ok: bool,
               direction: str = "outbound") -> None:
        """The hot path's form of :meth:`add`: the ring holds plain tuples of strings and numbers, which the
        garbage collector stops tracking, so a full ring adds nothing to the cost of a full collection (a
        hundred thousand tracked objects would add milliseconds to every one, and show in the p99)."""
        self._records.append((service, method, latency, at, ok, direction))
        self._appends += 1
        if self._appends >= self.prune_every:
            self.prune(at)

    def prune(self, now: float) -> int:
        """Drop records older than the retention; returns how many went. Records arrive roughly in ``at``
        order (a long request is appended late with an early start), so the scan stops at the first young
        one: a late old record lives until it reaches the front, never longer than ``max_samples`` allow."""
        self._appends = 0
        oldest = now - self.retention
        records = self._records
        dropped = 0
        while records and records[0][3] < oldest:
            records.popleft()
            dropped += 1
        return dropped

    def newest_first(self, now: float) -> Iterator[Record]:
        self.prune(now)
        oldest = now - self.retention
        return (Record(*row) for row in reversed(self._records) if row[3] >= oldest)

    def query(self, query: Query, now: float) -> list[Record]:
        """Matching records, newest first, at most ``query.limit``."""
        out: list[Record] = []
        if query.limit <= 0:
            return out
        for record in self.newest_first(now):
            if query.since is not None and record.at < query.since - ORDER_SLACK:
                break
            if query.matches(record):
                out.append(record)
                if len(out) >= query.limit:
                    break
        return out

    def window(self, seconds: float, now: float) -> list[Record]:
        """Records that started in the last ``seconds``. The ring is in arrival order, so the scan from the
        newest end stops ``ORDER_SLACK`` past the window."""
        since = now - seconds
        slack = since - ORDER_SLACK
        out = []
        for record in self.newest_first(now):
            if record.at >= since:
                out.append(record)
            elif record.at < slack:
                break
        return out

    def summary(self, seconds: float, now: float) -> list[Summary]:
        return summarize(self.window(seconds, now))


# ------------------------------------------------------------------------------------------ query strings


def _duration(name: str, text: str) -> float:
    try:
        value = float(Duration.from_text(text))
    except (ValueError, TypeError):
        raise InvalidArgument(f"{name} must be a duration like 30s, 5m or 1h (got {text!r})", {name: text}) from None
    if value <= 0:
        raise InvalidArgument(f"{name} must be greater than 0 (got {text!r})", {name: text})
    return value


def parse_query(params: Mapping[str, str], now: float, wall_offset: float, max_limit: int) -> Query:
    """``service``, ``method`` (any case), ``status`` (success|error), ``direction`` (outbound|inbound),
    ``since`` (epoch milliseconds, or a duration back from now: ``since=5m``), ``limit`` (default 1000).
    Raises InvalidArgument naming the parameter."""
    unknown = sorted(set(params) - {"service", "method", "status", "direction", "since", "limit"})
    if unknown:
        raise InvalidArgument(f"unknown query parameter {unknown[0]!r}; use service, method, status, direction, "
                              "since or limit", {"parameter": unknown[0]})
    status = params.get("status")
    ok: bool | None = None
    if status is not None:
        if status not in ("success", "error"):
            raise InvalidArgument(f"status must be success or error (got {status!r})", {"status": status})
        ok = status == "success"
    direction = params.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise InvalidArgument(f"direction must be outbound or inbound (got {direction!r})", {"direction": direction})
    since: float | None = None
    text = params.get("since")
    if text is not None:
        since = int(text) / 1000.0 - wall_offset if text.isdigit() else now - _duration("since", text)
    limit = DEFAULT_LIMIT
    text = params.get("limit")
    if text is not None:
        if not text.isdigit():
            raise InvalidArgument(f"limit must be a whole number (got {text!r})", {"limit": text})
        limit = int(text)
    method = params.get("method")
    return Query(params.get("service") or None, method.lower() if method else None, ok, direction, since,
                 min(limit, max_limit))


def parse_window(params: Mapping[str, str]) -> float:
    text = params.get("window")
    return DEFAULT_WINDOW if text is None else _duration("window", text)
