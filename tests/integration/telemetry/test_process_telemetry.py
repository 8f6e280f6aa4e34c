"""Telemetry as `sidecar run` serves it: two processes joined by gossip, traffic from node-a to node-b, then
/metrics (promtool), /v1/metrics, /v1/metrics/summary, the dashboard page and its snapshot, the access log, and
console spans on the process's stdout."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.harness import FakeApp, SidecarProcess, http, make_certs, members_by_state, wait_for


def test_telemetry_of_a_running_sidecar(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["checkout", "payment-service"])
    with FakeApp("payment") as app:
        telemetry: dict[str, Any] = {"access_log": {"enabled": True, "format": "json"},
                                     "tracing": {"exporter": "console"}}
        a: SidecarProcess = start_sidecar({"node": {"name": "node-a", "cluster": "test"}, "tls": certs["checkout"],
                                           "services": [{"name": "checkout", "port": app.port}],
                                           "telemetry": telemetry}, name="node-a")
        b: SidecarProcess = start_sidecar({"node": {"name": "node-b", "cluster": "test"},
                                           "tls": certs["payment-service"],
                                           "services": [{"name": "payment-service", "port": app.port}],
                                           "gossip": {"join": [a.listeners["gossip"]]}}, name="node-b")
        wait_for(lambda: members_by_state(a) == {"node-a": "alive", "node-b": "alive"}, 20, what="two members")
        wait_for(lambda: "payment-service" in http("GET", a.admin + "/catalog").json(), 15, what="catalog")
        for _ in range(5):
            reply = http("POST", f"http://{a.listeners['outbound']}/pay", body={"amount": 1},
                         headers={"Host": "payment-service"})
            assert reply.status == 200, reply

        metrics = http("GET", a.admin + "/metrics")
        assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = metrics.body.decode()
        assert 'sidecar_requests_total{code="200",destination="payment-service",direction="outbound",method="POST",' \
               'source="checkout"} 5.0' in text
        assert 'sidecar_gossip_members{state="alive"} 2.0' in text
        assert "sidecar_dns_responses_total" in text or "sidecar_dns_cache_hits_total" in text
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=metrics.body, capture_output=True,
                                   timeout=30)
            assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()

        records = http("GET", a.admin + "/v1/metrics?service=payment-service&method=POST").json()
        assert len(records) == 5 and {r["serviceMethod"] for r in records} == {"payment-service.POST"}
        summary = http("GET", a.admin + "/v1/metrics/summary?window=1m").json()
        [row] = [r for r in summary["serviceMethods"] if r["serviceMethod"] == "payment-service.POST"]
        assert row["count"] == 5 and row["errors"] == 0
        inbound = http("GET", b.admin + "/v1/metrics?direction=inbound").json()
        assert len(inbound) == 5

        page = http("GET", a.admin + "/")
        assert page.status == 200 and b"/dashboard/events" in page.body
        snapshot = http("GET", a.admin + "/dashboard/snapshot").json()
        assert snapshot["node"] == "node-a"
        assert any(t["service"] == "payment-service" and t["count"] == 5 for t in snapshot["traffic"])

        # one access-log line per request on node-a (JSON), and a CLIENT span per request on its stdout
        access = wait_for(lambda: [json.loads(line) for line in a.lines
                                   if line.startswith("{") and '"sidecar.access"' in line] or None, 5,
                          what="access log lines")
        assert len(access) == 5 and all(e["status"] == 200 and e["service"] == "payment-service" for e in access)
        assert all(len(e["traceId"]) == 32 for e in access)
        assert a.terminate() == 0          # the span processor flushes at stop
        spans = "\n".join(a.lines)
        assert spans.count('"kind": "SpanKind.CLIENT"') == 5
        assert access[0]["traceId"] in spans
