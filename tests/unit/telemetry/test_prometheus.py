"""/metrics from the parts' plain counters: names, HELP/TYPE, labels, values; promtool accepts it."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.catalog.model import HealthStatus, ServiceMetadata
from sidecar.clock import FakeClock
from sidecar.config.model import Config, NodeConfig, ServiceConfig
from sidecar.dns.counters import DnsCounters
from sidecar.mesh.stats import MeshStats
from sidecar.resilience import Resilience
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.prometheus import Sources, build_registry, exposition
from sidecar.tls.handshake import RefusalLog
from sidecar.tls.reasons import Refusal, RefusalReason
from tests.unit.telemetry.stats import caller_conn, endpoint, local_app, stats


class FakeGossip:
    def counters(self) -> dict[str, int]:
        return {"packets_in": 10, "packets_out": 12, "bytes_in": 1000, "bytes_out": 1200, "probes": 5,
                "suspicions": 1, "refutations": 2, "refused_cluster": 3, "health_score": 0}

    def members(self) -> list[Any]:
        return [SimpleNamespace(state="alive"), SimpleNamespace(state="alive"), SimpleNamespace(state="suspect")]


def build() -> tuple[Telemetry, Sources]:
    config = Config(node=NodeConfig(name="node-a"), services=[ServiceConfig(name="checkout", port=3000)])
    telemetry = Telemetry(config, FakeClock())
    telemetry.on_request("outbound", stats(status=200, ended=100.003))
    telemetry.on_request("outbound", stats(status=503, error="connect-failure", ended=100.2))
    telemetry.on_request("inbound", stats(method="GET", status=200, tag=local_app("checkout"),
                                          conn=caller_conn("frontend")))
    for status in (0, 14, None):   # gRPC calls: OK, UNAVAILABLE, a stream cut without a status
        telemetry.on_request("outbound", stats(host="ledger", target=b"/pkg.Ledger/Post", tag=endpoint("ledger"),
                                               grpc=True, grpc_status=status))
    mesh = MeshStats()
    mesh.errors["outbound", "payment-service", "connect-failure"] = 1
    mesh.denials["checkout", "evil", "authorization.default"] += 2
    resilience = Resilience(config)
    dest = resilience.cluster("payment-service", 100.0)
    dest.retries = 4
    dest.retries_denied["budget"] = 3
    refusals = RefusalLog()
    refusals.record("127.0.0.1:1", RefusalReason(Refusal.UNKNOWN_CA, "not our CA"), 1.0)
    inbound = SimpleNamespace(handshakes=Counter({"spiffe://mesh.local/service/frontend": 2}), refused=1, shed=0,
                              tunnel_refused=0)
    dataplane = SimpleNamespace(stats=mesh, resilience=resilience, inbound=inbound, store=SimpleNamespace(
        refusals=refusals, rotations=1), pools=[SimpleNamespace(idle=2, busy=1, dialed=3)],
        h2_connections=lambda: {"idle": 1, "busy": 4},
        h2_protections=lambda: {("outbound", "rapid_reset"): 2, ("inbound", "refused_streams"): 5},
        h2_peer_counts=lambda: {("10.0.0.2:15006", "payment-service"): {"connections": 1, "streams": 7, "dialed": 2,
                                                                      "pings_sent": 3, "ping_timeouts": 1}})
    dns = SimpleNamespace(counters=DnsCounters())
    dns.counters.count_rcode(0)
    dns.counters.count_rcode(3)
    dns.counters.count_rcode(3)
    messaging = SimpleNamespace(counters=Counter({"published": 5, "delivered": 4, "redelivered": 1,
                                                  "dead_lettered:max-attempts": 1}),
                                status=lambda: {"pending": 7, "deadLetters": 1})
    catalog = SimpleNamespace(snapshot=lambda: SimpleNamespace(instances=(
        ServiceMetadata("p1", "payment-service", "1", "h", 1), ServiceMetadata(
            "p2", "payment-service", "1", "h", 1, status=HealthStatus.UNHEALTHY))))
    return telemetry, Sources(dataplane=dataplane, gossip=FakeGossip(), dns=dns, messaging=messaging,
                              catalog=catalog)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[name, frozenset(labels.items())]


def test_exposition_values() -> None:
    telemetry, sources = build()
    text = exposition(build_registry(telemetry, sources)).decode()
    found = samples(text)
    out = {"direction": "outbound", "source": "checkout", "destination": "payment-service", "method": "POST"}
    assert value(found, "sidecar_requests_total", **out, code="200") == 1
    assert value(found, "sidecar_requests_failed_total", **out, code="503") == 1
    assert value(found, "sidecar_request_duration_seconds_bucket", **out, code="503", le="0.1") == 0
    assert value(found, "sidecar_request_duration_seconds_bucket", **out, code="503", le="0.25") == 1
    assert value(found, "sidecar_request_duration_seconds_count", **out, code="200") == 1
    assert value(found, "sidecar_requests_total", direction="inbound", source="frontend", destination="checkout",
                 method="GET", code="200") == 1
    assert value(found, "sidecar_request_errors_total", listener="outbound", service="payment-service",
                 error="connect-failure") == 1
    assert value(found, "sidecar_authorization_denied_total", service="checkout", caller="evil",
                 rule="authorization.default") == 2
    assert value(found, "sidecar_upstream_retries_total", service="payment-service") == 4
    assert value(found, "sidecar_upstream_retries_denied_total", service="payment-service", reason="budget") == 3
    assert value(found, "sidecar_upstream_overflow_total", service="payment-service", cap="max_requests") == 0
    assert value(found, "sidecar_tls_handshake_failures_total", reason="unknown-ca") == 1
    assert value(found, "sidecar_tls_handshakes_total", peer="spiffe://mesh.local/service/frontend") == 2
    assert value(found, "sidecar_upstream_connections", state="idle") == 2 + 1   # HTTP/1.1 pools and HTTP/2 ones
    assert value(found, "sidecar_upstream_connections", state="busy") == 1 + 4
    assert value(found, "sidecar_http2_protections_total", listener="outbound", protection="rapid_reset") == 2
    assert value(found, "sidecar_http2_protections_total", listener="inbound", protection="refused_streams") == 5
    peer = {"peer": "10.0.0.2:15006", "service": "payment-service"}
    assert value(found, "sidecar_upstream_h2_connections", **peer) == 1
    assert value(found, "sidecar_upstream_h2_streams", **peer) == 7
    assert value(found, "sidecar_upstream_h2_connections_opened_total", **peer) == 2
    assert value(found, "sidecar_upstream_h2_pings_total", **peer) == 3
    assert value(found, "sidecar_upstream_h2_ping_timeouts_total", **peer) == 1
    assert value(found, "sidecar_upstream_h2_goaways_total", **peer) == 0
    assert value(found, "sidecar_gossip_members", state="alive") == 2
    assert value(found, "sidecar_gossip_members", state="dead") == 0
    assert value(found, "sidecar_gossip_refutations_total") == 2
    assert value(found, "sidecar_gossip_sent_bytes_total") == 1200
    assert value(found, "sidecar_gossip_refused_total", reason="cluster") == 3
    assert value(found, "sidecar_dns_responses_total", rcode="NXDOMAIN") == 2
    assert value(found, "sidecar_messages_published_total") == 5
    assert value(found, "sidecar_messages_dead_lettered_total", reason="max-attempts") == 1
    assert value(found, "sidecar_messages_backlog") == 7
    assert value(found, "sidecar_catalog_instances", service="payment-service", status="unhealthy") == 1
    assert value(found, "sidecar_performance_records") == 6
    calls = {"direction": "outbound", "source": "checkout", "destination": "ledger", "method": "/pkg.Ledger/Post"}
    assert value(found, "sidecar_grpc_requests_total", **calls, grpc_status="0") == 1
    assert value(found, "sidecar_grpc_requests_total", **calls, grpc_status="14") == 1
    assert value(found, "sidecar_grpc_requests_total", **calls, grpc_status="none") == 1
    # UNAVAILABLE is a failure of the call although its HTTP status is 200
    assert value(found, "sidecar_requests_failed_total", direction="outbound", source="checkout",
                 destination="ledger", method="POST", code="200") == 1
    assert value(found, "sidecar_process_resident_memory_bytes") > 0
    assert value(found, "sidecar_process_open_sockets") >= 0
    assert value(found, "sidecar_event_loop_lag_seconds_count") == 0
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert names == helps and all(n.startswith("sidecar_") for n in names)


def test_absent_parts_contribute_nothing() -> None:
    telemetry, _ = build()
    text = exposition(build_registry(telemetry, Sources())).decode()
    assert "sidecar_requests_total" in text and "sidecar_gossip" not in text and "sidecar_dns" not in text


def test_a_failing_part_does_not_fail_the_scrape() -> None:
    telemetry, sources = build()
    sources.gossip = SimpleNamespace(counters=lambda: 1 / 0)
    text = exposition(build_registry(telemetry, sources)).decode()
    assert "sidecar_dns_responses_total" in text and "sidecar_gossip" not in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is absent (Debian package prometheus)")
def test_promtool_accepts_the_exposition() -> None:
    telemetry, sources = build()
    text = exposition(build_registry(telemetry, sources))
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
