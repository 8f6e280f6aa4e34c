"""Performance records (the data model's ServicePerformanceMetric), kept in memory, bounded twice.

Theory of operation
-------------------
Every proxied request (and, through :meth:`RecordStore.add`, every message) leaves one record: three numbers
written into a ring of arrays. That is all the hot path pays. :class:`Record` objects, filtering, percentiles and
the JSON shape are made when someone asks (``GET /v1/metrics``, ``/v1/metrics/summary``, the dashboard).

Two bounds hold at all times after :meth:`RecordStore.prune`: at most ``max_samples`` records (the ring drops
the oldest on append), and none older than ``retention`` seconds (pruned on append, at most once per
``prune_every`` appends, and before every query). Times are loop (monotonic) seconds, passed in;
``wall_offset`` (wall clock minus loop clock) turns them into the epoch milliseconds people read.

``serviceMethod`` is ``SERVICE.METHOD``: ``payment-service.POST`` for HTTP (the method, not the path: paths
carry ids and would make every request its own series), ``orders.publish`` / ``inventory.request`` for
messages. ``status`` is ``error`` when the caller did not get an answer from the app (connect failure, reset,
timeout, a refusal by the sidecar itself) or got a 5xx; 4xx are the app's answers and count as ``success``.

A gRPC call is named by its path, as SPEC says: ``serviceMethod`` is ``/pkg.Service/Method`` (leading slash
kept; ``other`` past the per-service cap of :mod:`.grpcmethods`), with ``service`` (the destination, which the
path does not name) and ``grpcStatus`` (the numeric code; null when the call ended without one, e.g. a stream cut
mid-response). Its ``status`` is ``error`` as for HTTP, and also for the statuses that say the server side
failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS: gRPC's 5xx).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from sidecar.config.values import Duration
from sidecar.errors import InvalidArgument

_N = TypeVar("_N", int, float)

DIRECTIONS: Final[tuple[str, ...]] = ("outbound", "inbound")
DEFAULT_LIMIT: Final = 1000
DEFAULT_WINDOW: Final = 300.0      # /v1/metrics/summary without ?window=: the last five minutes
PERCENTILES: Final = (50, 90, 99)
# records are appended when requests end, so ``at`` (their start) is only roughly ordered: scans that stop at
# a time go this much further (a request longer than this may be missed by a ``since`` or a window)
ORDER_SLACK: Final = 60.0
# Record.grpc_status of a gRPC call that ended without a status (None is "not a gRPC call")
GRPC_NO_STATUS: Final = -1


@dataclass(frozen=True, slots=True)
class Record:
    """One finished request or message. ``at`` is when it started (loop seconds), ``latency`` in seconds."""

    service: str
    method: str
    latency: float
    at: float
    ok: bool
    direction: str = "outbound"   # outbound: this node's app called ``service``; inbound: ``service`` is ours
    grpc_status: int | None = None   # a gRPC call's status (GRPC_NO_STATUS: none); None: not a gRPC call

    @property
    def service_method(self) -> str:
        return self.method if self.grpc_status is not None else f"{self.service}.{self.method}"

    def to_json(self, wall_offset: float) -> dict[str, Any]:
        """The data model's ServicePerformanceMetric, plus ``direction`` (and for a gRPC call ``service`` and
        ``grpcStatus``)."""
        out: dict[str, Any] = {"serviceMethod": self.service_method, "latency": round(self.latency * 1000.0, 3),
               "timestamp": int((self.at + wall_offset) * 1000), "status": "success" if self.ok else "error",
               "direction": self.direction}
        if self.grpc_status is not None:
            out["service"] = self.service
            out["grpcStatus"] = None if self.grpc_status == GRPC_NO_STATUS else self.grpc_status
        return out


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
                and (self.method is None or record.method.lower() == self.method
                     or (record.grpc_status is not None and record.method[1:].lower() == self.method))
                and (self.ok is None or record.ok == self.ok)
                and (self.direction is None or record.direction == self.direction)
                and (self.since is None or record.at >= self.since))


@dataclass(frozen=True, slots=True)
class Summary:
    """One row of ``/v1/metrics/summary``: a (direction, serviceMethod) over the window; a gRPC method's row names
    its ``service`` too (the same method may be served by several services)."""

    service_method: str
    direction: str
    count: int
    errors: int
    p50: float
    p90: float
    p99: float
    mean: float
    service: str | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def to_json(self, window: float) -> dict[str, Any]:
        out: dict[str, Any] = {"serviceMethod": self.service_method, "direction": self.direction, "count": self.count,
               "errors": self.errors, "errorRate": round(self.error_rate, 6),
               "ratePerSecond": round(self.count / window, 3) if window > 0 else 0.0,
               "p50": round(self.p50 * 1000.0, 3), "p90": round(self.p90 * 1000.0, 3),
               "p99": round(self.p99 * 1000.0, 3), "mean": round(self.mean * 1000.0, 3)}
        if self.service is not None:
            out["service"] = self.service
        return out


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list: the smallest value with at least p% of values at or below
    it. Exact on small sets (p50 of [1, 2, 3, 4] is 2), never interpolated; 0.0 for an empty list."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(records: Iterable[Record]) -> list[Summary]:
    """Rows per (direction, serviceMethod), and per service for gRPC methods; sorted by direction, serviceMethod,
    then service."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for record in records:
        service = "" if record.grpc_status is None else record.service
        groups.setdefault((record.direction, record.service_method, service), []).append(record)
    rows = []
    for (direction, service_method, service), group in sorted(groups.items()):
        latencies = sorted(r.latency for r in group)
        errors = sum(1 for r in group if not r.ok)
        p50, p90, p99 = (percentile(latencies, p) for p in PERCENTILES)
        rows.append(Summary(service_method, direction, len(group), errors, p50, p90, p99,
                            sum(latencies) / len(latencies), service or None))
    return rows


def _moved(old: array[_N], start: int, count: int, size: int) -> array[_N]:
    """A new array of ``size`` items: ``count`` of ``old``'s from ``start`` on (wrapping around its end) first,
    zeros after. Copied by slices: C copies, not one Python object an item."""
    new = old[start:start + count]
    if len(new) < count:
        new.extend(old[:count - len(new)])
    new.extend(array(old.typecode, bytes(new.itemsize * (size - len(new)))))
    return new


# (service, method, direction, gRPC status or None): what a row shares with many others
_Key = tuple[str, str, str, int | None]


class RecordStore:
    """The ring buffer; see the module's doc. Not thread-safe: one event loop owns it.

    A full ring is the largest thing an idle sidecar holds after a burst of traffic, so a row is 20 bytes in
    three parallel arrays (latency, start time, and its key id with the outcome in the low bit) rather than a
    tuple of Python objects (about 150 bytes with its two floats). The keys are interned in a table and counted,
    so a key no row uses any more is dropped and its id reused: the table stays as small as the distinct
    (service, method, direction) in the ring. Arrays hold no Python objects, so the garbage collector never
    scans them. The ring grows by doubling up to ``max_samples``; rows live at ``[_start, _start + _count)``
    modulo its current size, oldest first."""

    __slots__ = ("_appends", "_at", "_count", "_free", "_ids", "_keys", "_latency", "_refs", "_slot",
                 "_start", "max_samples", "prune_every", "retention")

    def __init__(self, max_samples: int, retention: float, prune_every: int = 256) -> None:
        self.max_samples = max_samples
        self.retention = retention
        self.prune_every = prune_every
        self._latency = array("d")
        self._at = array("d")
        self._slot = array("l")      # key id << 1 | ok
        self._start = 0
        self._count = 0
        self._ids: dict[_Key, int] = {}
        self._keys: list[_Key] = []  # by id
        self._refs: list[int] = []   # rows per key id; 0: the id is on the free list
        self._free: list[int] = []
        self._appends = 0

    def __len__(self) -> int:
        return self._count

    def add(self, record: Record) -> None:
        self.append(record.service, record.method, record.latency, record.at, record.ok, record.direction,
                    record.grpc_status)

    def append(self, service: str, method: str, latency: float, at: float, ok: bool,
               direction: str = "outbound", grpc_status: int | None = None) -> None:
        """The hot path's form of :meth:`add`: three numbers written into the arrays, no object kept."""
        key = (service, method, direction, grpc_status)
        kid = self._ids.get(key)
        if kid is None:
            kid = self._intern(key)
        else:
            self._refs[kid] += 1
        size = len(self._at)
        if self._count == self.max_samples:     # full: the newest replaces the oldest
            index = self._start
            self._release(self._slot[index] >> 1)
            self._start = (index + 1) % size
        else:
            if self._count == size:
                size = self._grow()
            index = (self._start + self._count) % size
            self._count += 1
        self._latency[index] = latency
        self._at[index] = at
        self._slot[index] = (kid << 1) | (1 if ok else 0)
        self._appends += 1
        if self._appends >= self.prune_every:
            self.prune(at)

    def _intern(self, key: _Key) -> int:
        if self._free:
            kid = self._free.pop()
            self._keys[kid] = key
            self._refs[kid] = 1
        else:
            kid = len(self._keys)
            self._keys.append(key)
            self._refs.append(1)
        self._ids[key] = kid
        return kid

    def _release(self, kid: int) -> None:
        self._refs[kid] -= 1
        if self._refs[kid] == 0:
            del self._ids[self._keys[kid]]
            self._free.append(kid)

    def _grow(self) -> int:
        """Double the arrays (at most to ``max_samples``), the rows moved to the front, oldest first."""
        size = len(self._at)
        grown = min(self.max_samples, max(16, size * 2))
        start, count = self._start, self._count
        self._latency = _moved(self._latency, start, count, grown)
        self._at = _moved(self._at, start, count, grown)
        self._slot = _moved(self._slot, start, count, grown)
        self._start = 0
        return grown

    def prune(self, now: float) -> int:
        """Drop records older than the retention; returns how many went. Records arrive roughly in ``at``
        order (a long request is appended late with an early start), so the scan stops at the first young
        one: a late old record lives until it reaches the front, never longer than ``max_samples`` allow."""
        self._appends = 0
        oldest = now - self.retention
        size = len(self._at)
        dropped = 0
        while self._count and self._at[self._start] < oldest:
            self._release(self._slot[self._start] >> 1)
            self._start = (self._start + 1) % size
            self._count -= 1
            dropped += 1
        return dropped

    def _record(self, index: int) -> Record:
        slot = self._slot[index]
        service, method, direction, grpc_status = self._keys[slot >> 1]
        return Record(service, method, self._latency[index], self._at[index], bool(slot & 1), direction,
                      grpc_status)

    def newest_first(self, now: float) -> Iterator[Record]:
        self.prune(now)
        oldest = now - self.retention
        size = len(self._at)
        for i in range(self._count - 1, -1, -1):
            index = (self._start + i) % size
            if self._at[index] >= oldest:
                yield self._record(index)

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
