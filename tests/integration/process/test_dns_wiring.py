"""The DNS responder inside a real `sidecar run`, queried with dig: local services appear and disappear
with their health."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.harness import http, wait_for

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian bind9-dnsutils)")


def dig(address: str, *args: str) -> str:
    host, port = address.rsplit(":", 1)
    result = subprocess.run(["dig", f"@{host}", "-p", port, "+tries=1", "+time=2", *args],
                            capture_output=True, text=True, timeout=10)
    return result.stdout


def test_services_resolve_and_vanish_when_unhealthy(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    dns = wait_for(lambda: http("GET", sidecar.admin + "/ready").json()["listeners"].get("dns"))
    sid = http("PUT", sidecar.api + "/v1/services", {"name": "payment-service", "port": 3000, "tags": ["v2"],
                                                     "check": {"ttl": "30s"}}).json()["id"]
    # registered but unhealthy (no heartbeat yet): a known name without records is NODATA, not NXDOMAIN
    nodata = dig(dns, "payment-service.service.mesh", "A")
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata and "SOA" in nodata
    http("PUT", f"{sidecar.api}/v1/services/{sid}/heartbeat", {"status": "healthy"})
    answer = dig(dns, "+short", "payment-service.service.mesh", "A")
    assert answer.strip() == "127.0.0.1"
    assert dig(dns, "+short", "V2.Payment-Service.service.mesh", "A").strip() == "127.0.0.1"
    assert dig(dns, "+short", "node-a.node.mesh", "A").strip() == "127.0.0.1"
    srv = dig(dns, "_payment-service._tcp.service.mesh", "SRV")
    assert "node-a.node.mesh." in srv and "ADDITIONAL SECTION" in srv
    assert "status: NXDOMAIN" in dig(dns, "nothing.service.mesh", "A")
    assert "status: REFUSED" in dig(dns, "example.com", "A")
    http("PUT", f"{sidecar.api}/v1/services/{sid}/heartbeat", {"status": "unhealthy"})
    wait_for(lambda: dig(dns, "+short", "payment-service.service.mesh", "A").strip() == "",
             what="unhealthy instance gone from DNS")
