"""The overload guard on ``/metrics`` (a collector of its own, read at scrape time) and on the admin port
(``GET /overload``)."""

from __future__ import annotations

from collections.abc import Iterator

from sidecar.httpd import Request, Response, Route, get
from sidecar.overload.guard import OverloadGuard
from sidecar.telemetry.exposition import MetricFamily, counter, gauge
from sidecar.web import json_response


class OverloadCollector:
    """``sidecar_overload_active{reason}``, ``sidecar_overload_shed_total{listener,reason}``,
    ``sidecar_overload_refused_connections_total{listener,reason}``, ``sidecar_overload_transitions_total{reason}``."""

    def __init__(self, guard: OverloadGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[MetricFamily]:
        guard = self.guard
        active = gauge("sidecar_overload_active", "1 while the overload guard sheds new requests for this reason "
                       "(memory: resident memory over overload.max_memory_bytes; loop_lag: event-loop lag over "
                       "overload.max_loop_lag).", ["reason"])
        for reason, on in sorted(guard.active_by_reason().items()):
            active.add_metric([reason], 1.0 if on else 0.0)
        yield active
        shed = counter("sidecar_overload_shed", "Requests answered 503 by the overload guard, by listener and "
                       "reason.", ["listener", "reason"])
        for (listener, reason), n in sorted(guard.shed_counts.items()):
            shed.add_metric([listener, reason], n)
        yield shed
        refused = counter("sidecar_overload_refused_connections", "New connections refused by the overload guard "
                          "(memory over its limit), by listener and reason.", ["listener", "reason"])
        for (listener, reason), n in sorted(guard.refused_counts.items()):
            refused.add_metric([listener, reason], n)
        yield refused
        transitions = counter("sidecar_overload_transitions", "Times a reason became active or inactive.",
                              ["reason"])
        for reason, n in sorted(guard.transitions_by_reason().items()):
            transitions.add_metric([reason], n)
        yield transitions


def overload_routes(guard: OverloadGuard) -> list[Route]:
    """``GET /overload`` on the admin port (never shed): state, reasons with values and limits, counters."""

    async def status(request: Request) -> Response:
        return json_response(guard.status())

    return [get("/overload", status)]
