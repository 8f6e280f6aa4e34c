"""What the admin port and the metrics exporter show of the clusters' state: ``/clusters`` JSON and the
``sidecar_upstream_*`` samples. Read-only, except what any reader moves: an ejection whose time is up is seen
as over (the outlier detector's lazy clock)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sidecar.mesh.router import EndpointSet
from sidecar.resilience.breaker import Cap
from sidecar.resilience.cluster import Cluster
from sidecar.resilience.outlier import EndpointState


def cluster_json(dest: Cluster, now: float, wall_offset: float) -> dict[str, Any]:
    """For /clusters: hosts, caps, budget, counters. ``wall_offset`` turns loop times into epoch seconds."""
    endpoints = []
    for host in sorted(dest.hosts.values(), key=lambda h: (h.endpoint.status.rank, h.endpoint.authority)):
        rec = dest.outlier.record(host.key, now)
        ejected = rec.state is EndpointState.EJECTED
        e = host.endpoint
        endpoints.append({
            "address": e.authority, "instance": e.instance, "node": e.node, "health": e.status.value,
            "ejected": ejected,
            "ejection": {"state": rec.state.value, "times": rec.times, "ejections": rec.ejections,
                         "consecutiveFailures": rec.consecutive,
                         "until": int((rec.until + wall_offset) * 1000) if ejected else None,
                         "remainingMs": int((rec.until - now) * 1000) if ejected else 0},
            "connectHold": {"failures": host.readiness.failures,
                            "remainingMs": max(0, int((host.readiness.until - now) * 1000))},
            "inFlight": host.load.in_flight, "latencyEwmaMs": round(host.load.latency(now) * 1000.0, 3),
            "requests": host.requests, "failures": host.failures,
        })
    budget = dest.budget.state(now)
    return {
        "service": dest.service,
        "loadBalancer": dest.balancer.name,
        "endpoints": endpoints,
        "breaker": dest.breaker.snapshot(),
        "retryBudget": {"ratio": dest.budget.ratio, "minPerSecond": dest.budget.min_per_second,
                        "windowSeconds": dest.budget.window, "requests": budget.requests,
                        "retries": budget.retries, "available": round(budget.available, 3)},
        "counters": {"requests": dest.requests, "retries": dest.retries,
                     "retriesDenied": dict(sorted(dest.retries_denied.items())),
                     "rejected": {cap.value: n for cap, n in sorted(dest.breaker.rejected.items())},
                     "ejections": dest.outlier.ejections, "ejectionsRefused": dest.outlier.refusals,
                     "panics": dest.panics},
    }


def clusters_json(clusters: Mapping[str, Cluster], now: float, wall_offset: float,
                  endpoints_of: Callable[[str], EndpointSet] | None = None) -> dict[str, Any]:
    """Per destination service used so far: hosts (refreshed from ``endpoints_of`` when given), caps,
    budget and counters. ``wall_offset`` = wall clock - loop clock, for ejection end times."""
    out: dict[str, Any] = {}
    for service in sorted(clusters):
        dest = clusters[service]
        if endpoints_of is not None:
            dest.hosts_of(endpoints_of(service), now)
        out[service] = cluster_json(dest, now, wall_offset)
    return out


def samples(clusters: Mapping[str, Cluster], now: float) -> list[tuple[str, dict[str, str], float]]:
    """Counters and gauges for the metrics exporter: ``(name, labels, value)``; names end in ``_total``
    for counters."""
    out: list[tuple[str, dict[str, str], float]] = []
    for service in sorted(clusters):
        dest = clusters[service]
        labels = {"service": service}
        out.append(("sidecar_upstream_requests_total", labels, float(dest.requests)))
        out.append(("sidecar_upstream_retries_total", labels, float(dest.retries)))
        for reason, n in sorted(dest.retries_denied.items()):
            out.append(("sidecar_upstream_retries_denied_total", {**labels, "reason": reason}, float(n)))
        for cap in Cap:
            out.append(("sidecar_upstream_overflow_total", {**labels, "cap": cap.value},
                        float(dest.breaker.rejected[cap])))
        out.append(("sidecar_upstream_ejections_total", labels, float(dest.outlier.ejections)))
        out.append(("sidecar_upstream_ejections_refused_total", labels, float(dest.outlier.refusals)))
        out.append(("sidecar_upstream_panic_total", labels, float(dest.panics)))
        out.append(("sidecar_upstream_ejected_hosts", labels, float(dest.outlier.ejected_count(now))))
        breaker = dest.breaker
        for resource, value in (("connections", breaker.connections), ("pending", breaker.pending),
                                ("requests", breaker.requests), ("retries", breaker.retries)):
            out.append(("sidecar_upstream_active", {**labels, "resource": resource}, float(value)))
        out.append(("sidecar_upstream_retry_budget_available", labels, dest.budget.state(now).available))
    return out
