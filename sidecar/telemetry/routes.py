"""The admin port's telemetry routes: ``GET /metrics``, ``/v1/metrics``, ``/v1/metrics/summary``.

    app.add_routes(telemetry_routes(telemetry, registry))
"""

from __future__ import annotations

from sidecar.httpd import Request, Response, Route, get
from sidecar.telemetry.exposition import Registry
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.prometheus import CONTENT_TYPE, exposition
from sidecar.telemetry.records import parse_query, parse_window
from sidecar.web import json_response


def telemetry_routes(telemetry: Telemetry, registry: Registry) -> list[Route]:
    async def metrics(request: Request) -> Response:
        # on the loop, like every update: the counters are read in one consistent pass
        return Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE})

    async def records(request: Request) -> Response:
        now = telemetry.now()
        offset = telemetry.wall_offset()
        query = parse_query(request.query, now, offset, telemetry.records.max_samples)
        return json_response([r.to_json(offset) for r in telemetry.records.query(query, now)])

    async def summary(request: Request) -> Response:
        window = parse_window(request.query)
        rows = telemetry.records.summary(window, telemetry.now())
        return json_response({"windowSeconds": window, "serviceMethods": [row.to_json(window) for row in rows]})

    return [get("/metrics", metrics), get("/v1/metrics", records), get("/v1/metrics/summary", summary)]
