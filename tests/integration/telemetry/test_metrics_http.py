"""The admin port's /metrics, /v1/metrics and /v1/metrics/summary on live traffic through two sidecars; promtool
accepts the exposition, and a real Prometheus server scrapes it and answers PromQL about the requests."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.common import stop
from tests.harness import free_port, http, wait_for
from tests.integration.telemetry.conftest import Pair


def send(pair: Pair, path: str, host: str = "inventory", count: int = 1) -> list[int]:
    return [http("GET", f"http://127.0.0.1:{pair.a.node.outbound}{path}", headers={"Host": host}).status
            for _ in range(count)]


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_metrics_count_requests_both_ways(pair: Pair) -> None:
    before_a = pair.a.get("/metrics").decode()
    assert send(pair, "/headers/m", count=3) == [200, 200, 200]
    assert send(pair, "/x", host="nowhere") == [404]

    def grew() -> bool:
        text = pair.a.get("/metrics").decode()
        return counter(text, "sidecar_requests_total", direction="outbound", destination="inventory", code="200") \
            >= counter(before_a, "sidecar_requests_total", direction="outbound", destination="inventory",
                       code="200") + 3
    wait_for(grew, 5, what="node-a's outbound counter")
    a = pair.a.get("/metrics").decode()
    b = pair.b.get("/metrics").decode()
    assert counter(a, "sidecar_requests_total", direction="outbound", source="checkout", destination="unknown",
                   code="404") >= 1
    assert counter(a, "sidecar_requests_failed_total", destination="unknown") >= 1
    assert counter(b, "sidecar_requests_total", direction="inbound", destination="inventory", code="200") >= 3
    assert counter(a, "sidecar_request_duration_seconds_count", direction="outbound", destination="inventory") >= 3
    assert counter(a, "sidecar_tls_handshakes_total") == 0 and counter(b, "sidecar_tls_handshakes_total") >= 1
    assert counter(a, "sidecar_upstream_requests_total", service="inventory") >= 3
    assert counter(a, "sidecar_process_resident_memory_bytes") > 1e6
    assert counter(a, "sidecar_process_open_sockets") >= 3
    wait_for(lambda: counter(pair.a.get("/metrics").decode(), "sidecar_event_loop_lag_seconds_count") >= 1, 5,
             what="a loop-lag sample (every 250ms)")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is absent (Debian package prometheus)")
def test_promtool_accepts_live_metrics(pair: Pair) -> None:
    send(pair, "/headers/p", count=2)
    for observed in (pair.a, pair.b):
        result = subprocess.run(["promtool", "check", "metrics"], input=observed.get("/metrics"),
                                capture_output=True, timeout=30)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_performance_records_filters_and_summary(pair: Pair) -> None:
    send(pair, "/headers/r", count=4)
    send(pair, "/x", host="nowhere", count=2)
    records = wait_for(lambda: len(json.loads(pair.a.get("/v1/metrics?service=nowhere"))) >= 2
                       and json.loads(pair.a.get("/v1/metrics?service=nowhere")), 5, what="records")
    assert {r["serviceMethod"] for r in records} == {"nowhere.GET"}
    assert {r["status"] for r in records} == {"error"}
    assert all(set(r) == {"serviceMethod", "latency", "timestamp", "status", "direction"} for r in records)
    ok = json.loads(pair.a.get("/v1/metrics?service=inventory&method=get&status=success&limit=3"))
    assert len(ok) == 3 and all(r["serviceMethod"] == "inventory.GET" and r["status"] == "success" for r in ok)
    assert ok[0]["timestamp"] >= ok[-1]["timestamp"]                      # newest first
    newest = ok[0]["timestamp"]
    assert all(r["timestamp"] >= newest for r in json.loads(pair.a.get(f"/v1/metrics?since={newest}")))
    inbound = json.loads(pair.b.get("/v1/metrics?direction=inbound&service=inventory"))
    assert len(inbound) >= 4 and all(r["direction"] == "inbound" for r in inbound)
    summary = json.loads(pair.a.get("/v1/metrics/summary?window=5m"))
    rows = {(r["direction"], r["serviceMethod"]): r for r in summary["serviceMethods"]}
    assert summary["windowSeconds"] == 300.0
    inv = rows["outbound", "inventory.GET"]
    assert inv["count"] >= 4 and inv["errors"] == 0 and 0 < inv["p50"] <= inv["p90"] <= inv["p99"]
    assert rows["outbound", "nowhere.GET"]["errorRate"] == 1.0
    bad = http("GET", pair.a.admin + "/v1/metrics?status=maybe")
    assert bad.status == 400 and bad.headers["x-sidecar-error"] == "INVALID_ARGUMENT"
    assert "status must be success or error" in bad.json()["error"]["message"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is absent (Debian package prometheus)")
def test_a_real_prometheus_scrapes_and_answers_promql(pair: Pair, tmp_path: Path) -> None:
    admin = urllib.parse.urlsplit(pair.a.admin).netloc
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: sidecar, static_configs: [{{targets: ['{admin}']}}]}}\n")
    process = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        send(pair, "/headers/prom", count=5)
        query = urllib.parse.quote('sum(sidecar_requests_total{job="sidecar",direction="outbound",'
                                   'destination="inventory",code="200"})')

        def answer() -> float | None:
            reply = http("GET", f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=2)
            result = reply.json()["data"]["result"] if reply.status == 200 else []
            return float(result[0]["value"][1]) if result else None

        value = wait_for(lambda: (v := answer()) is not None and v >= 5 and v, 30,
                         what="Prometheus's answer about the sidecar's requests")
        assert value >= 5
        up = http("GET", f"http://127.0.0.1:{port}/api/v1/query?query=up").json()["data"]["result"]
        assert [(r["metric"]["instance"], r["value"][1]) for r in up] == [(admin, "1")]
        # the scrape itself was clean: Prometheus found no sample it refused
        targets = http("GET", f"http://127.0.0.1:{port}/api/v1/targets").json()["data"]["activeTargets"]
        assert targets[0]["health"] == "up" and targets[0]["lastError"] == ""
    finally:
        stop(process, 10)
