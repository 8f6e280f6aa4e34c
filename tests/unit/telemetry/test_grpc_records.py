"""gRPC calls in the records and counters: named by their path (capped per service), with their status."""

from __future__ import annotations

from sidecar.clock import FakeClock
from sidecar.config.model import Config, NodeConfig, ServiceConfig
from sidecar.telemetry.grpcmethods import OTHER, MethodNames
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.records import GRPC_NO_STATUS, Query, Record, RecordStore, summarize
from tests.unit.telemetry.stats import endpoint, local_app, stats

WALL = 1_700_000_000.0


def telemetry() -> Telemetry:
    return Telemetry(Config(node=NodeConfig(name="node-a"), services=[ServiceConfig(name="checkout", port=3000)]),
                     FakeClock())


def test_a_grpc_record_is_named_by_its_path_with_its_service_and_status() -> None:
    record = Record("echo", "/test.Echo/Unary", 0.0123456, 100.0, True, "outbound", 0)
    assert record.to_json(WALL) == {"serviceMethod": "/test.Echo/Unary", "service": "echo", "grpcStatus": 0,
                                    "latency": 12.346, "timestamp": int((100.0 + WALL) * 1000),
                                    "status": "success", "direction": "outbound"}
    cut = Record("echo", "/test.Echo/Unary", 0.01, 100.0, False, "outbound", GRPC_NO_STATUS)
    assert cut.to_json(WALL)["grpcStatus"] is None
    http = Record("echo", "POST", 0.01, 100.0, True)
    assert "grpcStatus" not in http.to_json(WALL) and http.service_method == "echo.POST"


def test_on_request_names_the_method_counts_server_statuses_as_errors_and_keeps_http_as_it_was() -> None:
    t = telemetry()
    for status in (0, 5, 14, None):
        t.on_request("outbound", stats(host="echo", target=b"/test.Echo/Unary", tag=endpoint("echo"), grpc=True,
                                       grpc_status=status))
    t.on_request("inbound", stats(host="echo", target=b"/test.Echo/Unary", tag=local_app("echo"), grpc=True,
                                  grpc_status=13))
    t.on_request("outbound", stats(host="echo", target=b"/test.Echo/Unary", tag=endpoint("echo")))   # not gRPC
    found = [r.to_json(WALL) for r in t.records.query(Query(), now=200.0)]
    assert [(r["serviceMethod"], r.get("grpcStatus", "-"), r["status"], r["direction"]) for r in found] == [
        ("echo.POST", "-", "success", "outbound"),
        ("/test.Echo/Unary", 13, "error", "inbound"),
        ("/test.Echo/Unary", None, "success", "outbound"),   # a stream cut is an error by its RequestStats.error
        ("/test.Echo/Unary", 14, "error", "outbound"),       # UNAVAILABLE: gRPC's 5xx
        ("/test.Echo/Unary", 5, "success", "outbound"),      # NOT_FOUND: the app's answer, as a 404
        ("/test.Echo/Unary", 0, "success", "outbound")]
    # ?method= takes the path with or without its leading slash, in any case
    assert len(t.records.query(Query(service="echo", method="test.echo/unary"), now=200.0)) == 5
    assert len(t.records.query(Query(service="echo", method="/test.echo/unary"), now=200.0)) == 5


def test_summary_rows_per_method_and_service() -> None:
    records = [Record("echo", "/test.Echo/Unary", 0.01, 100.0, True, "outbound", 0),
               Record("echo", "/test.Echo/Unary", 0.03, 100.0, False, "outbound", 14),
               Record("flaky", "/test.Echo/Unary", 0.02, 100.0, True, "outbound", 0),
               Record("echo", "/test.Echo/Bidi", 0.02, 100.0, True, "outbound", 0),
               Record("echo", "POST", 0.02, 100.0, True, "outbound")]
    rows = [r.to_json(60.0) for r in summarize(records)]
    assert [(r["serviceMethod"], r.get("service"), r["count"], r["errors"]) for r in rows] == [
        ("/test.Echo/Bidi", "echo", 1, 0), ("/test.Echo/Unary", "echo", 2, 1), ("/test.Echo/Unary", "flaky", 1, 0),
        ("echo.POST", None, 1, 0)]


def test_the_ring_keeps_the_status_with_the_key() -> None:
    store = RecordStore(10, 300.0)
    store.append("echo", "/test.Echo/Unary", 0.01, 100.0, True, "outbound", 0)
    store.append("echo", "/test.Echo/Unary", 0.01, 101.0, False, "outbound", 14)
    assert [r.grpc_status for r in store.newest_first(102.0)] == [14, 0]


def test_method_names_are_capped_per_service() -> None:
    names = MethodNames(max_methods=3, max_services=2)
    assert names.name("echo", b"/test.Echo/Unary") == "/test.Echo/Unary"
    for i in range(2):
        assert names.name("echo", b"/test.Echo/M%d" % i) == f"/test.Echo/M{i}"
    assert names.name("echo", b"/test.Echo/Unary") == "/test.Echo/Unary"   # known: still named
    assert names.name("echo", b"/test.Echo/M9") == OTHER                   # the fourth distinct path
    assert names.count("echo") == 3
    assert names.name("other-service", b"/test.Echo/M9") == "/test.Echo/M9"   # each service its own cap
    assert names.name("third", b"/test.Echo/Unary") == OTHER                 # services capped too
    assert names.name("echo", b"/not/grpc/shaped") == OTHER
    assert names.name("echo", b"/test.Echo/Unary?x=1") == OTHER
