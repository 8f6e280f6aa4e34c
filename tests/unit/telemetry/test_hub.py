"""The per-request path: records, counters, histograms, access log; the event-loop lag timer."""

from __future__ import annotations

import asyncio
import io
import json
import time
from bisect import bisect_left

from sidecar.clock import FakeClock
from sidecar.config.model import AccessLogConfig, Config, NodeConfig, ServiceConfig, TelemetryConfig
from sidecar.config.values import Duration
from sidecar.telemetry.access import AccessLog
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.looplag import LoopLag
from sidecar.telemetry.records import Query
from sidecar.telemetry.requests import BUCKETS, RequestMetrics, bucket_of
from tests.unit.telemetry.stats import TRACE, caller_conn, local_app, stats


def config(**telemetry: object) -> Config:
    return Config(node=NodeConfig(name="node-a"), services=[ServiceConfig(name="checkout", port=3000)],
                  telemetry=TelemetryConfig(**telemetry))  # type: ignore[arg-type]


def test_histogram_buckets_are_le_and_cumulative() -> None:
    m = RequestMetrics()
    for seconds in (0.0005, 0.001, 0.0011, 0.3, 99.0):
        m.record("outbound", "checkout", "pay", "GET", 200, False, seconds, 1, 2)
    m.record("outbound", "checkout", "pay", "BREW", 700, True, 0.002, 0, 0)
    views = {v.key: v for v in m.views()}
    ok = views["outbound", "checkout", "pay", "GET", "200"]
    buckets = dict(ok.buckets)
    assert buckets["0.001"] == 2 and buckets["0.0025"] == 3 and buckets["0.5"] == 4 and buckets["10.0"] == 4
    assert buckets["+Inf"] == 5 == ok.requests
    assert [b for b, _ in ok.buckets][:-1] == [repr(b) for b in BUCKETS]
    assert (ok.request_bytes, ok.response_bytes, ok.errors) == (5, 10, 0)
    other = views["outbound", "checkout", "pay", "other", "0"]
    assert (other.requests, other.errors) == (1, 1)
    assert m.totals_by_destination("outbound") == {"pay": (6, 1)}


def test_on_request_records_counts_and_names_the_caller() -> None:
    clock = FakeClock()
    t = Telemetry(config(), clock)
    t.on_request("outbound", stats(status=200))
    t.on_request("upstream", stats(status=503, error="connect-failure"))
    t.on_request("inbound", stats(status=200, tag=local_app(), conn=caller_conn("checkout")))
    t.on_request("outbound", stats(status=404, host="nosuch.service.mesh", tag=object()))
    records = t.records.query(Query(), now=200.0)
    assert [(r.direction, r.service, r.ok) for r in records] == [
        ("outbound", "nosuch", True), ("inbound", "payment-service", True),
        ("outbound", "payment-service", False), ("outbound", "payment-service", True)]
    views = {v.key: v.requests for v in t.requests.views()}
    assert views == {("outbound", "checkout", "payment-service", "POST", "200"): 1,
                     ("outbound", "checkout", "payment-service", "POST", "503"): 1,
                     ("inbound", "checkout", "payment-service", "POST", "200"): 1,
                     ("outbound", "checkout", "unknown", "POST", "404"): 1}
    assert t.tracer is None and t.access is None   # exporter none, access log off: nothing else per request


def test_message_records() -> None:
    t = Telemetry(config(), FakeClock())
    t.on_message("orders", "publish", 10.0, 10.004, True)
    t.on_message("inventory", "request", 11.0, 11.5, False)
    assert [(r.service_method, r.ok) for r in t.records.query(Query(), now=12.0)] == [
        ("inventory.request", False), ("orders.publish", True)]


def test_access_log_json_line() -> None:
    out = io.StringIO()
    t = Telemetry(config(access_log=AccessLogConfig(True, "json")), FakeClock(), access_log=AccessLog("json", out))
    t.on_request("inbound", stats(status=201, tag=local_app(), conn=caller_conn("checkout")))
    assert t.access is not None and t.access.flush(5.0)
    entry = json.loads(out.getvalue())
    assert entry["logger"] == "sidecar.access" and entry["msg"] == "request"
    assert entry["traceId"] == TRACE and entry["requestId"] == "req-1"
    assert entry["peer"] == "spiffe://mesh.local/service/checkout" and entry["client"] == "127.0.0.9:40123"
    assert (entry["method"], entry["path"], entry["status"], entry["outcome"]) == ("POST", "/pay?x=1", 201, "success")
    assert (entry["durationMs"], entry["responseHeadMs"]) == (25.0, 10.0)
    assert (entry["requestBytes"], entry["responseBytes"], entry["attempts"]) == (11, 22, 1)
    t.access.close()  # type: ignore[union-attr]


def test_access_log_text_and_errors() -> None:
    out = io.StringIO()
    log = AccessLog("text", out)
    log.request("outbound", "pay", stats(status=0, error="timeout", head=None))
    log.close()
    line = out.getvalue()
    assert "sidecar.access request" in line and "outcome=error" in line and "error=timeout" in line
    assert "responseHeadMs=None" in line


def test_access_log_is_configured_from_the_config() -> None:
    t = Telemetry(config(access_log=AccessLogConfig(True, "text"), retention=Duration(60), max_samples=5),
                  FakeClock())
    assert t.access is not None and t.records.max_samples == 5 and t.records.retention == 60.0
    t.access.close()


def block(seconds: float) -> None:
    """A callback that holds the loop, whose effect the lag timer must see."""
    time.sleep(seconds)


def test_loop_lag_sees_a_blocked_loop() -> None:
    async def main() -> LoopLag:
        lag = LoopLag(interval=0.01)
        lag.start()
        seen = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, block, 0.06)

        def check() -> None:
            if lag.max >= 0.03:
                seen.set()
            else:
                loop.call_later(0.01, check)
        check()
        await asyncio.wait_for(seen.wait(), 2)
        lag.stop()
        return lag

    lag = asyncio.run(main())
    assert lag.max >= 0.03 and lag.count >= 2
    assert lag.cumulative()[-1] == ("+Inf", lag.count)


def test_bucket_of_is_bisect_left_over_the_bounds() -> None:
    # every bound, just below and above it, and the ends
    values = [-1.0, 0.0, 1e-9, 20.0, float("inf")]
    for bound in BUCKETS:
        values += [bound, bound * 0.999, bound * 1.001]
    for seconds in values:
        assert bucket_of(seconds) == bisect_left(BUCKETS, seconds), seconds
