"""`sidecar clusters` renders the resilience view's JSON (GET /clusters) as a table."""

from __future__ import annotations

import io

from rich.console import Console

from sidecar.cli.views import breaker_text, clusters_table


def cap(state: str = "closed") -> dict[str, object]:
    return {"active": 0, "max": 1024, "state": state, "rejected": 0}


CLUSTERS = {
    "payment-service": {
        "service": "payment-service", "loadBalancer": "ewma",
        "endpoints": [{"address": "10.0.0.2:15006", "instance": "p1", "node": "node-b", "health": "healthy",
                       "ejected": True, "inFlight": 3, "latencyEwmaMs": 12.345, "requests": 40, "failures": 5}],
        "breaker": {"connections": cap(), "pendingRequests": cap(), "requests": cap("open"), "retries": cap()},
        "counters": {"requests": 40, "retries": 2},
    },
    "idle-service": {"endpoints": [], "breaker": {"connections": cap()}},
}


def test_breaker_text() -> None:
    assert breaker_text(CLUSTERS["payment-service"]["breaker"]) == "open: requests"
    assert breaker_text({"connections": cap()}) == "closed"
    assert breaker_text(None) == "-"
    assert breaker_text({"state": "half_open"}) == "state=half_open"


def test_clusters_table() -> None:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(clusters_table(CLUSTERS))
    text = out.getvalue()
    row = next(line for line in text.splitlines() if "10.0.0.2:15006" in line)
    for cell in ("payment-service", "node-b", "healthy", "yes", "12.3", "40", "5", "open: requests", "2"):
        assert cell in row, (cell, row)
    assert "idle-service" in text and "closed" in text
