"""The access log: lines as the JSON/text log formatters print them, written in batches by a worker thread,
bounded, never blocking the request path on a slow or full disk, and all written on a clean shutdown."""

from __future__ import annotations

import errno
import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from sidecar.clock import FakeClock
from sidecar.config.model import AccessLogConfig, Config, NodeConfig, ServiceConfig, TelemetryConfig
from sidecar.log import JsonFormatter, TextFormatter
from sidecar.telemetry.access import AccessLog
from sidecar.telemetry.accessline import Timestamps, json_line, text_line
from sidecar.telemetry.hub import Telemetry
from tests.harness import wait_for
from tests.unit.telemetry.stats import CALLER_SPAN, HOP_SPAN, TRACE, bare_conn, caller_conn, local_app, stats

WALL = 1_764_931_672.125


def formatter_line(formatter: logging.Formatter, fields: dict[str, object]) -> str:
    record = logging.LogRecord("sidecar.access", logging.INFO, __file__, 1, "request", None, None)
    record.created = WALL
    record.msecs = (WALL - int(WALL)) * 1000.0
    record.fields = fields
    return formatter.format(record) + "\n"


def fields(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "direction": "inbound", "service": "payment-service", "method": "POST", "path": "/pay?x=1",
        "host": "payment-service", "status": 201, "outcome": "success", "error": None,
        "upstream": "127.0.0.1:15007", "attempts": 1, "durationMs": 25.0, "responseHeadMs": 10.0,
        "requestBytes": 11, "responseBytes": 22, "traceId": TRACE, "spanId": HOP_SPAN, "requestId": "req-1",
        "peer": "spiffe://mesh.local/service/checkout", "client": "127.0.0.9:40123"}
    base.update(overrides)
    return base


CASES = [
    # (stats, direction, peer, the fields the logging formatters would print)
    (stats(status=201, tag=local_app()), "inbound", caller_conn(), fields()),
    (stats(status=0, error="timeout", head=None, attempts=3), "outbound", None,
     {k: v for k, v in fields(direction="outbound", status=0, outcome="error", error="timeout", attempts=3,
                              responseHeadMs=None).items() if k not in ("peer", "client")}),
    # what a client sends is escaped as json.dumps escapes it: quotes, backslashes, control and non-ASCII bytes
    (stats(method="GET", host='ev"il\\host', target=b"/caf\xc3\xa9?q=\"x\"\t\x01", status=503, started=1.0,
           head=1.0004567, ended=1.0012345, elapsed=0.0012345), "outbound", None,
     {k: v for k, v in fields(direction="outbound", method="GET", host='ev"il\\host',
                              path='/caf\u00c3\u00a9?q="x"\t\x01', status=503, outcome="error",
                              durationMs=round(0.0012345 * 1000.0, 3), responseHeadMs=round(0.0004567 * 1000.0, 3),
                              ).items() if k not in ("peer", "client")}),
    # a caller the inbound could not name (no client certificate): peer null, the client still named
    (stats(status=401, tag=local_app(), error="local"), "inbound", bare_conn(),
     fields(status=401, outcome="error", error="local", peer=None)),
    # a connection without a peer address: no client field
    (stats(status=200, tag=local_app()), "inbound", caller_conn(peername=None),
     {k: v for k, v in fields(status=200).items() if k != "client"}),
    # no ids at all, no upstream; large numbers (past the table of small ones) and a long, escaped path
    (stats(method="PUT", target=b"/" + b"\xff\"x" * 300, status=502, error="connect-failure", upstream=None,
           attempts=1234, request_bytes=65536, response_bytes=1000, started=10.0, head=11.2345678, ended=12.5,
           elapsed=2.5, trace_id=None, span_id=None, request_id=None), "outbound", None,
     {k: v for k, v in fields(direction="outbound", method="PUT", path="/" + "\u00ff\"x" * 300, status=502,
                              outcome="error", error="connect-failure", upstream=None, attempts=1234,
                              requestBytes=65536, responseBytes=1000, durationMs=2500.0,
                              responseHeadMs=round(1.2345678 * 1000.0, 3), traceId=None, spanId=None,
                              requestId=None).items() if k not in ("peer", "client")}),
    # a request id from the client's header, escaped; a clock that went back (negative durations)
    (stats(status=201, request_id='id "\u00e9\x7f', started=5.0, head=4.9995, ended=4.999, elapsed=None),
     "outbound", None,
     {k: v for k, v in fields(direction="outbound", requestId='id "\u00e9\x7f', durationMs=-1.0,
                              responseHeadMs=-0.5).items() if k not in ("peer", "client")}),
]


@pytest.mark.parametrize(("request_stats", "direction", "peer", "expected"), CASES)
def test_json_line_is_the_json_formatters_line_with_every_field(request_stats: object, direction: str,
                                                                peer: object, expected: dict[str, object]) -> None:
    ts = Timestamps().text(WALL)
    line = json_line(ts, direction, "payment-service", request_stats, peer)  # type: ignore[arg-type]
    assert line == formatter_line(JsonFormatter(), expected)
    assert json.loads(line)["ts"] == "2025-12-05T10:47:52.125Z"
    assert list(json.loads(line))[4:] == list(expected)      # every field, in the documented order


@pytest.mark.parametrize(("request_stats", "direction", "peer", "expected"), CASES)
def test_text_line_is_the_text_formatters_line(request_stats: object, direction: str, peer: object,
                                               expected: dict[str, object]) -> None:
    line = text_line(Timestamps().text(WALL), direction, "payment-service", request_stats, peer)  # type: ignore[arg-type]
    assert line == formatter_line(TextFormatter(), expected)


def test_timestamps_change_with_the_second() -> None:
    ts = Timestamps()
    assert ts.text(WALL) == "2025-12-05T10:47:52.125Z"
    assert ts.text(WALL + 0.5) == "2025-12-05T10:47:52.625Z"
    assert ts.text(WALL + 1.0) == "2025-12-05T10:47:53.125Z"


def test_lines_are_written_in_batches_and_all_of_them_on_close(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog("json", path=str(path), interval=60.0)
    for n in range(300):
        log.request("outbound", "pay", stats(attempts=n + 1, parent=CALLER_SPAN))
    assert path.read_text() == ""           # nothing written per request: the batch waits for its timer
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["attempts"] for line in lines] == list(range(1, 301))   # all, in order
    assert log.lines == 300 and log.batcher.dropped == 0


def test_a_full_batch_is_written_before_the_timer(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog("json", path=str(path), interval=60.0)
    for _ in range(1024):                  # MAX_BATCH wakes the writer
        log.request("outbound", "pay", stats())
    wait_for(lambda: len(path.read_text().splitlines()) == 1024, 10, what="the full batch in the file")
    log.close()


class StuckDisk(io.StringIO):
    """A stream whose writes block until released (a slow or hung disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        assert self.release.wait(30)
        return super().write(s)


def test_a_stuck_disk_never_blocks_the_request_path_and_the_queue_is_bounded() -> None:
    disk = StuckDisk()
    log = AccessLog("json", disk, max_queue=100, interval=0.01)
    log.request("outbound", "pay", stats())
    assert disk.entered.wait(10)          # the writer is now stuck in write()
    # the requests run in a thread that must finish while the disk is still stuck: a request that waited for
    # the disk would hold it there until the join's deadline (and the disk is released only after)
    requests = threading.Thread(target=lambda: [log.request("outbound", "pay", stats()) for _ in range(1000)],
                                daemon=True)
    requests.start()
    requests.join(30)
    assert not requests.is_alive() and not disk.release.is_set()   # no request waited for the disk
    assert log.batcher.pending() == 100 and log.batcher.dropped == 900 and log.lines == 101
    disk.release.set()
    log.close()
    assert len(disk.getvalue().splitlines()) == 101


class FullDisk(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_costs_lines_not_the_process() -> None:
    log = AccessLog("json", FullDisk(), interval=0.01)
    for _ in range(10):
        log.request("outbound", "pay", stats())
    assert log.flush(5.0)
    assert log.batcher.failed == 10 and log.status()["failed"] == 10
    log.request("outbound", "pay", stats())   # still accepting
    log.close()


def test_the_config_path_gets_every_line_when_telemetry_stops(tmp_path: Path) -> None:
    import asyncio
    path = tmp_path / "a.log"
    config = Config(node=NodeConfig(name="node-a"), services=[ServiceConfig(name="checkout", port=3000)],
                    telemetry=TelemetryConfig(access_log=AccessLogConfig(True, "json", str(path))))
    clock = FakeClock()
    t = Telemetry(config, clock)
    for _ in range(5):
        t.on_request("outbound", stats())
    asyncio.run(t.stop())
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(entries) == 5 and all(e["service"] == "payment-service" for e in entries)
    assert entries[0]["ts"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(clock.wall())))


@pytest.mark.parametrize("create", [True, False], ids=["create", "nocreate"])
def test_a_rotated_file_is_reopened_at_the_configured_path(tmp_path: Path, create: bool) -> None:
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    log = AccessLog("json", path=str(path), interval=60.0)
    for n in range(3):
        log.request("outbound", "pay", stats(attempts=n + 1))
    assert log.flush()
    path.rename(rotated)                  # logrotate: rename, then (with `create`) a new empty file
    if create:
        path.touch()
    for n in range(3, 5):
        log.request("outbound", "pay", stats(attempts=n + 1))
    log.close()
    assert [json.loads(line)["attempts"] for line in rotated.read_text().splitlines()] == [1, 2, 3]
    assert [json.loads(line)["attempts"] for line in path.read_text().splitlines()] == [4, 5]


@pytest.mark.parametrize("seconds", [0.0, 0.025, 0.0012345, 0.0000125, 0.0000135, 0.0000005, 0.0000015, 2.5e-7,
                                     -0.0000005, -0.0012345, 1234.5678905, 0.0010005])
def test_durations_are_rounded_as_round_rounds_them(seconds: float) -> None:
    """Half to even at the microsecond, as ``round(seconds * 1e6)``; no ``-0.0``."""
    from sidecar.telemetry.accessline import _ms
    micros = round(seconds * 1_000_000.0)
    expected = ("-" if micros < 0 else "") + f"{abs(micros) // 1000}.{f'{abs(micros) % 1000:03d}'.rstrip('0') or '0'}"
    assert _ms(seconds) == expected


def test_repeated_values_beyond_the_cache_bound_are_escaped_the_same() -> None:
    """A cached JSON text is the one json.dumps gives, also after the cache started over."""
    line = ""
    for i in range(1500):
        host = f'h"{i % 700}\u00e9'
        line = json_line("ts", "outbound", "svc", stats(host=host), None)  # type: ignore[arg-type]
        assert json.loads(line)["host"] == host
    assert f'"host":{json.dumps(host)}' in line


def test_lines_of_one_route_differ_where_their_requests_do() -> None:
    """What a route's lines share is kept per route; what differs (status, outcome, error, upstream, numbers, ids)
    is each request's own, the second time round as the first."""
    variants = [stats(status=200), stats(status=503), stats(status=0, error="reset", head=None),
                stats(status=200, upstream="127.0.0.1:15008", attempts=2), stats(status=200, request_bytes=7),
                stats(status=200, request_id="req-2", trace_id="0af7651916cd43dd8448eb211c80319c")]
    ts = Timestamps().text(WALL)
    first = [json_line(ts, "outbound", "payment-service", s) for s in variants]
    second = [json_line(ts, "outbound", "payment-service", s) for s in reversed(variants)]
    assert second == first[::-1]
    decoded = [json.loads(line) for line in first]
    assert [(d["status"], d["outcome"], d["error"]) for d in decoded[:3]] == [
        (200, "success", None), (503, "error", None), (0, "error", "reset")]
    assert decoded[3]["upstream"] == "127.0.0.1:15008" and decoded[3]["attempts"] == 2
    assert decoded[4]["requestBytes"] == 7 and decoded[5]["requestId"] == "req-2"
    assert decoded[5]["traceId"] == "0af7651916cd43dd8448eb211c80319c"


def test_an_inbound_connection_names_its_caller_once_it_is_known() -> None:
    """The peer and client fields are the connection's: a caller verified after the first line shows from then
    on, and every connection has its own."""
    ts = Timestamps().text(WALL)
    conn = bare_conn()
    assert json.loads(json_line(ts, "inbound", "pay", stats(), conn))["peer"] is None
    conn.data.update(caller_conn().data)            # the inbound verified the client certificate
    for _ in range(2):
        line = json.loads(json_line(ts, "inbound", "pay", stats(), conn))
        assert (line["peer"], line["client"]) == ("spiffe://mesh.local/service/checkout", "127.0.0.9:40123")
    other = json.loads(json_line(ts, "inbound", "pay", stats(), caller_conn("audit", ("127.0.0.10", 50000))))
    assert (other["peer"], other["client"]) == ("spiffe://mesh.local/service/audit", "127.0.0.10:50000")


def test_a_timestamp_is_reused_only_within_its_millisecond() -> None:
    ts = Timestamps()
    assert ts.text(WALL) == "2025-12-05T10:47:52.125Z"
    assert ts.text(WALL + 0.0004) == "2025-12-05T10:47:52.125Z"
    assert ts.text(WALL + 1.0) == "2025-12-05T10:47:53.125Z"      # the same millisecond of the next second
    assert ts.text(WALL + 1.0015) == "2025-12-05T10:47:53.126Z"
    assert ts.text(WALL) == "2025-12-05T10:47:52.125Z"            # a wall clock stepped back
    assert ts.text(WALL + 8.0) == "2025-12-05T10:48:00.125Z"      # the next minute
    assert ts.text(WALL + 7.8745) == "2025-12-05T10:47:59.999Z"
    assert ts.text(WALL + 3600.0 * 14 + 8.0) == "2025-12-06T00:48:00.125Z"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_file_holds_the_lines_as_utf8(tmp_path: Path, fmt: str) -> None:
    """The file gets exactly the lines (JSON is ASCII; text lines may carry non-ASCII, written as UTF-8)."""
    path = tmp_path / "access.log"
    log = AccessLog(fmt, path=str(path), interval=60.0, wall=lambda: WALL)
    request = stats(target="/caf\u00e9 \u2603".encode(), host="h\u00f6st")
    log.request("inbound", "pay", request, caller_conn(), WALL)
    log.close()
    line = (json_line if fmt == "json" else text_line)(Timestamps().text(WALL), "inbound", "pay", request,
                                                        caller_conn())
    assert path.read_bytes() == line.encode("utf-8")


class ShortWrites:
    """The log's file, taking at most ``most`` bytes a write (a signal, a nearly full disk)."""

    def __init__(self, file: io.FileIO, most: int) -> None:
        self.file = file
        self.most = most

    def fileno(self) -> int:
        return self.file.fileno()

    def write(self, data: bytes | memoryview) -> int:
        return self.file.write(data[:self.most]) if self.most else 0

    def close(self) -> None:
        self.file.close()


def test_a_short_write_is_completed_and_a_file_that_takes_nothing_fails_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog("json", path=str(path), interval=60.0)
    assert log._file is not None
    short = ShortWrites(log._file, 7)
    log._file = short                            # type: ignore[assignment]
    for n in range(3):
        log.request("outbound", "pay", stats(attempts=n + 1))
    assert log.flush()
    assert [json.loads(line)["attempts"] for line in path.read_text().splitlines()] == [1, 2, 3]
    short.most = 0
    log.request("outbound", "pay", stats())
    assert log.flush() and log.batcher.failed == 1 and log.batcher.delivered == 3
    log.close()


def test_a_line_reaches_the_file_within_the_interval_and_a_flush_does_not_wait_for_it(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog("json", path=str(path), interval=0.05)
    log.request("outbound", "pay", stats())
    wait_for(lambda: path.read_text().count("\n") == 1, 10, what="the line, a batch of one")
    log.request("outbound", "pay", stats())
    wait_for(lambda: path.read_text().count("\n") == 2, 10, what="the next line, after the worker slept")
    log.close()
    slow = AccessLog("json", path=str(path), interval=3600.0)
    began = time.monotonic()
    slow.request("outbound", "pay", stats())
    assert slow.flush(10.0) and path.read_text().count("\n") == 3
    assert time.monotonic() - began < 5.0
    slow.close()


@pytest.mark.parametrize("request_id", ["8f14e45f-ceea-467f-a0b8-12c9d1e0a3b5", "", "a\\b", 'q"q', "tab\there",
                                        "nl\n", "del\x7f", "caf\u00e9", "\u2603", "~ !"])
def test_a_request_id_is_escaped_only_when_it_needs_it(request_id: str) -> None:
    line = json_line("ts", "outbound", "pay", stats(request_id=request_id))
    assert f'"requestId":{json.dumps(request_id)}' in line and line.isascii()
    assert json.loads(line)["requestId"] == request_id
