"""The admin port's ``/debug`` routes over a running data plane: ``GET /debug/explain`` and
``GET /debug/failures``; and the hook that fills the ring of failed requests.

    failed = FailedRequests()
    watch_failures(dataplane, failed, clock)                           # after the DataPlane is built
    extra_routes += debug_routes(dataplane, failed)                    # admin port

``GET /debug/explain?service=NAME&path=/x&method=GET[&caller=SERVICE][&grpc=true]``: the decision a request would
meet (:mod:`sidecar.ops.explain`); a path ``/pkg.Service/Method`` asked about without a method is a gRPC call.
``GET /debug/explain?request_id=ID``: what happened on each try of a recent failed request.
``GET /debug/failures?limit=N``: the recent failed requests, newest first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sidecar.clock import Clock
from sidecar.errors import InvalidArgument, NotFound
from sidecar.httpd import Request, Response, Route, get
from sidecar.mesh.dataplane import DataPlane
from sidecar.ops.failures import Attempt, FailedRequests
from sidecar.proxy import RequestStats
from sidecar.web import json_response

if TYPE_CHECKING:
    from sidecar.ops.explain import Explanation, Facts, Question


def facts_from(dataplane: DataPlane, service: str) -> Facts:
    """What the data plane knows now about requests to ``service`` (a Host value)."""
    from sidecar.ops.explain import Facts  # loaded by the first question: see explain_route

    name = dataplane.names.parse(service)
    snapshot = dataplane.catalog.snapshot()
    endpoints = dataplane.router.endpoints(snapshot, name) if name is not None else None
    destination = dataplane.resilience.clusters.get(name.service) if name is not None else None
    store = dataplane.store
    identity = store.identity if store is not None else None
    issued = store.material.not_before.timestamp() if store is not None else None
    return Facts(dataplane.config, snapshot, name, endpoints, destination, identity,
                 dataplane.catalog.local_node.name, issued)


def explain_now(dataplane: DataPlane, question: Question) -> Explanation:
    """Explain on the running loop's clock (the data plane's own time base) and the wall clock."""
    from sidecar.ops.explain import explain  # loaded by the first question: see explain_route

    now = asyncio.get_running_loop().time()
    return explain(question, facts_from(dataplane, question.service), now, dataplane.clock.wall())


def watch_failures(dataplane: DataPlane, ring: FailedRequests, clock: Clock) -> None:
    """Keep failed and retried requests of the outbound and upstream listeners in ``ring``."""

    def on_failed(listener: str, service: str, stats: RequestStats, attempts: Sequence[Attempt]) -> None:
        ring.record(listener, service, stats, attempts, clock.wall())

    dataplane.failure_listeners.append(on_failed)


def debug_routes(dataplane: DataPlane, ring: FailedRequests) -> list[Route]:
    async def explain_route(request: Request) -> Response:
        query = request.query
        request_id = query.get("request_id")
        if request_id:
            found = ring.get(request_id)
            if found is None:
                raise NotFound(f"no failed request {request_id!r} among the last {ring.capacity} "
                               f"({len(ring)} held): only failed or retried requests are kept",
                               {"request_id": request_id})
            return json_response(found.to_json())
        service = query.get("service")
        if not service:
            raise InvalidArgument("the service query parameter is required, e.g. "
                                  "/debug/explain?service=echo&path=/x&method=GET, or request_id=ID")
        # the explainer is an operator's tool, rarely asked (its module holds ~140 KiB of objects once imported):
        # it loads with the first question rather than at start (tests/integration/memory checks an idle sidecar
        # goes without)
        from sidecar.ops.explain import Question, looks_like_grpc

        path = query.get("path", "/")
        if not path.startswith("/"):
            raise InvalidArgument("path must start with '/'", {"path": path})
        # a gRPC call: grpc=true, or a path /pkg.Service/Method asked about without a method
        grpc_asked = query.get("grpc", "").lower()
        grpc = grpc_asked in ("1", "true") or (not grpc_asked and "method" not in query and looks_like_grpc(path))
        method = query.get("method", "POST" if grpc else "GET").upper()
        question = Question(service, method, path, query.get("caller") or None, grpc)
        return json_response(explain_now(dataplane, question).to_json())

    async def failures_route(request: Request) -> Response:
        raw = request.query.get("limit", "50")
        if not raw.isdigit():
            raise InvalidArgument("limit must be a whole number", {"limit": raw})
        return json_response({"held": len(ring), "capacity": ring.capacity,
                              "failures": [f.to_json() for f in ring.recent(int(raw))]})

    return [get("/debug/explain", explain_route), get("/debug/failures", failures_route)]
