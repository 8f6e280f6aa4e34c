"""The admin port's dashboard: ``GET /`` (one HTML page, CSS and JS inline, no external assets), fed by
``GET /dashboard/events`` (Server-Sent Events: a JSON snapshot every second) or, where EventSource fails,
by polling ``GET /dashboard/snapshot``.

A snapshot holds: members and their states, services with their instances' health, per destination (outbound:
services this node's app calls; inbound: our services called by peers) the request rate over the last 10s and
the error rate, p50 and p99 over the last minute, the resilience view of each destination (breaker caps,
ejections: ``/clusters``) and the dead-letter count. It is computed at most once per interval, whatever the
number of open pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from sidecar.httpd import Request, Response, Route, StreamResponse, get
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.records import percentile
from sidecar.web import json_response, sse_stream

RATE_WINDOW = 10.0      # seconds of records behind "requests per second"
LATENCY_WINDOW = 60.0   # seconds of records behind error rate and percentiles


@functools.cache
def _page() -> bytes:
    """The page, read with the first ``GET /``: importlib.resources and the zipfile module its readers import
    (~0.4 MiB resident) are not loaded by a sidecar whose dashboard nobody opens."""
    from importlib import resources
    return resources.files("sidecar.admin").joinpath("static/dashboard.html").read_bytes()


class Dashboard:
    """See the module's doc. Each source is a callable read once per snapshot; None leaves its panel out."""

    def __init__(self, telemetry: Telemetry, *, node: str, cluster: str,
                 members: Callable[[], list[dict[str, Any]]], catalog: Callable[[], dict[str, list[dict[str, Any]]]],
                 clusters: Callable[[], dict[str, Any]] | None = None,
                 dead_letters: Callable[[], int | None] | None = None, interval: float = 1.0) -> None:
        self.telemetry = telemetry
        self.node = node
        self.cluster = cluster
        self.members = members
        self.catalog = catalog
        self.clusters = clusters
        self.dead_letters = dead_letters
        self.interval = interval
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._closing = asyncio.Event()
        self._sequence = 0

    # ------------------------------------------------------------------------------------ snapshot

    def traffic(self, now: float) -> list[dict[str, Any]]:
        """Per (direction, destination service): rate, error rate, p50, p99 (ms)."""
        groups: dict[tuple[str, str], list[Any]] = {}
        for record in self.telemetry.records.window(LATENCY_WINDOW, now):
            groups.setdefault((record.direction, record.service), []).append(record)
        rows = []
        recent = now - RATE_WINDOW
        for (direction, service), group in sorted(groups.items()):
            latencies = sorted(r.latency for r in group)
            errors = sum(1 for r in group if not r.ok)
            rows.append({"direction": direction, "service": service,
                         "rate": round(sum(1 for r in group if r.at >= recent) / RATE_WINDOW, 2),
                         "count": len(group), "errors": errors, "errorRate": round(errors / len(group), 4),
                         "p50": round(percentile(latencies, 50) * 1000.0, 2),
                         "p99": round(percentile(latencies, 99) * 1000.0, 2)})
        return rows

    def snapshot(self) -> dict[str, Any]:
        now = self.telemetry.now()
        if self._cached is not None and now - self._cached[0] < self.interval / 2:
            return self._cached[1]
        self._sequence += 1
        out: dict[str, Any] = {
            "node": self.node, "cluster": self.cluster, "sequence": self._sequence,
            "timestamp": int((now + self.telemetry.wall_offset()) * 1000),
            "members": self.members(), "catalog": self.catalog(), "traffic": self.traffic(now),
            "clusters": None, "deadLetters": None, "telemetry": self.telemetry.status(),
        }
        if self.clusters is not None:
            with contextlib.suppress(Exception):   # a view that fails leaves its panel empty, not the page
                out["clusters"] = self.clusters()
        if self.dead_letters is not None:
            with contextlib.suppress(Exception):
                out["deadLetters"] = self.dead_letters()
        self._cached = (now, out)
        return out

    async def events(self) -> AsyncIterator[tuple[int, str, Any]]:
        while not self._closing.is_set():
            snapshot = self.snapshot()
            yield snapshot["sequence"], "snapshot", snapshot
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval)

    def close(self) -> None:
        """End every open event stream (the process is stopping)."""
        self._closing.set()

    # ------------------------------------------------------------------------------------ routes

    def routes(self) -> list[Route]:
        async def index(request: Request) -> Response:
            return Response(body=_page(), headers={"Content-Type": "text/html; charset=utf-8",
                                                    "Cache-Control": "no-cache"})

        async def snapshot(request: Request) -> Response:
            return json_response(self.snapshot())

        async def events(request: Request) -> StreamResponse:
            return await sse_stream(request, self.events())

        return [get("/", index), get("/dashboard/snapshot", snapshot), get("/dashboard/events", events)]
