"""The performance-record ring: percentiles, filters, retention, max_samples, query strings."""

from __future__ import annotations

import random
import tracemalloc
from collections import deque

import pytest

from sidecar.errors import InvalidArgument
from sidecar.telemetry.records import (
    DEFAULT_LIMIT,
    DIRECTIONS,
    Query,
    Record,
    RecordStore,
    parse_query,
    parse_window,
    percentile,
)

WALL = 1_700_000_000.0   # wall clock minus loop clock in these tests


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([], 50, 0.0),
    ([7.0], 50, 7.0),
    ([7.0], 99, 7.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([1.0, 2.0, 3.0, 4.0], 90, 4.0),
    ([1.0, 2.0, 3.0, 4.0], 25, 1.0),
    ([float(i) for i in range(1, 101)], 50, 50.0),
    ([float(i) for i in range(1, 101)], 90, 90.0),
    ([float(i) for i in range(1, 101)], 99, 99.0),
    ([float(i) for i in range(1, 101)], 100, 100.0),
    ([float(i) for i in range(1, 11)], 99, 10.0),
    ([float(i) for i in range(1, 11)], 0, 1.0),
])
def test_nearest_rank_percentiles(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == expected


def rec(service: str, method: str, ms: float, at: float, ok: bool = True, direction: str = "outbound") -> Record:
    return Record(service, method, ms / 1000.0, at, ok, direction)


def test_record_json_is_the_data_model() -> None:
    r = rec("payment-service", "POST", 12.3456, 100.0, ok=False)
    assert r.to_json(WALL) == {"serviceMethod": "payment-service.POST", "latency": 12.346,
                               "timestamp": int((100.0 + WALL) * 1000), "status": "error", "direction": "outbound"}


def test_summary_exact_on_known_latencies() -> None:
    store = RecordStore(max_samples=1000, retention=900)
    for i in range(1, 11):                      # 1..10 ms, the 10 ms one an error
        store.add(rec("pay", "POST", float(i), 100.0 + i, ok=i != 10))
    store.add(rec("pay", "GET", 5.0, 105.0))
    store.add(rec("pay", "POST", 3.0, 106.0, direction="inbound"))
    rows = {(r.direction, r.service_method): r for r in store.summary(60.0, now=120.0)}
    post = rows["outbound", "pay.POST"]
    assert (post.count, post.errors, post.error_rate) == (10, 1, 0.1)
    assert (post.p50, post.p90, post.p99) == (0.005, 0.009, 0.010)
    assert post.to_json(60.0) == {"serviceMethod": "pay.POST", "direction": "outbound", "count": 10, "errors": 1,
                                  "errorRate": 0.1, "ratePerSecond": 0.167, "p50": 5.0, "p90": 9.0, "p99": 10.0,
                                  "mean": 5.5}
    assert rows["outbound", "pay.GET"].count == 1
    assert rows["inbound", "pay.POST"].p99 == 0.003
    assert list(rows) == sorted(rows)


def test_summary_window_leaves_older_records_out() -> None:
    store = RecordStore(max_samples=1000, retention=900)
    store.add(rec("a", "GET", 100.0, 10.0))
    store.add(rec("a", "GET", 1.0, 95.0))
    [row] = store.summary(10.0, now=100.0)
    assert (row.count, row.p99) == (1, 0.001)


def test_filters_by_service_method_status_direction_and_since() -> None:
    store = RecordStore(max_samples=1000, retention=900)
    store.add(rec("pay", "POST", 1, 10.0))
    store.add(rec("pay", "GET", 2, 11.0, ok=False))
    store.add(rec("ship", "POST", 3, 12.0))
    store.add(rec("pay", "POST", 4, 13.0, direction="inbound"))
    store.add(rec("pay", "POST", 5, 14.0, ok=False))

    def latencies(**kw: object) -> list[float]:
        return [r.latency * 1000 for r in store.query(Query(**kw), now=20.0)]  # type: ignore[arg-type]

    assert latencies() == [5, 4, 3, 2, 1]                     # newest first
    assert latencies(service="pay") == [5, 4, 2, 1]
    assert latencies(service="pay", method="post") == [5, 4, 1]
    assert latencies(ok=False) == [5, 2]
    assert latencies(direction="inbound") == [4]
    assert latencies(since=12.0) == [5, 4, 3]
    assert latencies(limit=2) == [5, 4]
    assert latencies(limit=0) == []
    assert latencies(service="nope") == []


def test_max_samples_keeps_the_newest() -> None:
    store = RecordStore(max_samples=3, retention=900)
    for i in range(10):
        store.add(rec("s", "GET", float(i), 100.0 + i))
    assert len(store) == 3
    assert [r.latency * 1000 for r in store.query(Query(), now=110.0)] == [9, 8, 7]


def test_retention_drops_old_records_on_query_and_on_append() -> None:
    store = RecordStore(max_samples=100, retention=60, prune_every=4)
    for i in range(4):
        store.add(rec("s", "GET", 1, float(i)))          # t = 0..3
    assert len(store) == 4                               # pruned at t=3: nothing older than -57
    assert [r.at for r in store.query(Query(), now=62.5)] == [3.0]
    assert len(store) == 1                               # the query pruned 0, 1, 2
    for i in range(4):
        store.add(rec("s", "GET", 1, 200.0 + i))         # the fourth append prunes at t=203
    assert [r.at for r in store.newest_first(203.0)] == [203.0, 202.0, 201.0, 200.0]
    assert len(store) == 4


def test_parse_query() -> None:
    q = parse_query({"service": "pay", "method": "POST", "status": "error", "direction": "inbound",
                     "since": str(int((50.0 + WALL) * 1000)), "limit": "5"}, now=100.0, wall_offset=WALL,
                    max_limit=1000)
    assert (q.service, q.method, q.ok, q.direction, q.limit) == ("pay", "post", False, "inbound", 5)
    assert q.since == pytest.approx(50.0, abs=1e-3)
    assert parse_query({"since": "30s"}, now=100.0, wall_offset=WALL, max_limit=10).since == 70.0
    assert parse_query({"limit": "50000"}, now=100.0, wall_offset=WALL, max_limit=10).limit == 10
    assert parse_query({}, now=100.0, wall_offset=WALL, max_limit=100_000).limit == DEFAULT_LIMIT
    assert parse_query({"status": "success"}, now=0, wall_offset=0, max_limit=1).ok is True


@pytest.mark.parametrize(("params", "needle"), [
    ({"status": "ok"}, "status must be success or error"),
    ({"direction": "sideways"}, "direction must be outbound or inbound"),
    ({"since": "yesterday"}, "since must be a duration"),
    ({"limit": "-1"}, "limit must be a whole number"),
    ({"servcie": "x"}, "unknown query parameter 'servcie'"),
])
def test_parse_query_errors_name_the_parameter(params: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        parse_query(params, now=0, wall_offset=0, max_limit=10)


def test_parse_window() -> None:
    assert parse_window({}) == 300.0
    assert parse_window({"window": "5m"}) == 300.0
    assert parse_window({"window": "1h"}) == 3600.0
    with pytest.raises(InvalidArgument, match="window must be greater than 0"):
        parse_window({"window": "0s"})


class ReferenceRing:
    """The ring as the obvious deque of records, to hold the compact one to."""

    def __init__(self, max_samples: int, retention: float) -> None:
        self.rows: deque[Record] = deque(maxlen=max_samples)
        self.retention = retention

    def append(self, record: Record) -> None:
        self.rows.append(record)

    def prune(self, now: float) -> None:
        while self.rows and self.rows[0].at < now - self.retention:
            self.rows.popleft()

    def newest_first(self, now: float) -> list[Record]:
        self.prune(now)
        return [r for r in reversed(self.rows) if r.at >= now - self.retention]


@pytest.mark.parametrize("seed", range(20))
def test_the_compact_ring_keeps_what_a_deque_of_records_keeps(seed: int) -> None:
    rng = random.Random(seed)
    max_samples = rng.choice([1, 2, 5, 17, 40])
    store, reference = RecordStore(max_samples, retention=30.0, prune_every=7), ReferenceRing(max_samples, 30.0)
    now = 0.0
    for _ in range(600):
        now += rng.choice([0.0, 0.1, 1.0, 5.0, 20.0])
        if rng.random() < 0.8:
            r = Record(rng.choice(["a", "b", "c"]), rng.choice(["GET", "POST"]), rng.random(),
                       now - rng.choice([0.0, 0.0, 0.5, 40.0]), rng.random() < 0.7, rng.choice(DIRECTIONS))
            store.add(r)
            reference.append(r)
            if store._appends == 0:          # the store pruned on this append, as it does every prune_every
                reference.prune(r.at)
        else:
            assert list(store.newest_first(now)) == reference.newest_first(now)
            assert len(store) == len(reference.rows)
    assert list(store.newest_first(now)) == reference.newest_first(now)


def test_keys_no_row_uses_are_dropped_and_their_ids_reused() -> None:
    store = RecordStore(max_samples=4, retention=900)
    for i in range(1000):                       # a new service name per request: only four live at a time
        store.add(rec(f"svc-{i}", "GET", 1.0, 100.0 + i * 0.001))
    assert len(store._ids) == len(store) == 4
    assert len(store._keys) <= 5
    assert [r.service for r in store.query(Query(), now=101.0)] == ["svc-999", "svc-998", "svc-997", "svc-996"]
    store.prune(2000.0)
    assert len(store) == 0 and not store._ids


def test_a_full_ring_of_a_hundred_thousand_records_fits_in_a_few_megabytes() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = RecordStore(max_samples=100_000, retention=900)
        for i in range(120_000):
            store.append("web", "GET", 0.001 + i * 1e-9, 1000.0 + i * 1e-3, i % 50 != 0, "outbound")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == 100_000
    assert held < 4_000_000, f"{held / 1e6:.1f} MB for 100k records"       # 20 bytes a row, with growth slack
