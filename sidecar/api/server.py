"""Routes of the app API. Handlers only translate HTTP to calls on the process's parts; who may call them is
``sidecar.api.guard``'s rule, applied to every request before routing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from sidecar.api.guard import check_api_request
from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import HealthStatus, group_json
from sidecar.catalog.own import OwnListeners
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import Clock
from sidecar.config.load import build_section
from sidecar.config.model import ServiceConfig
from sidecar.errors import ConfigError, InvalidArgument, NotFound
from sidecar.events import EventBus
from sidecar.httpd import App, Request, Response, Route, RouteTable, StreamResponse
from sidecar.log import fields
from sidecar.web import (
    MAX_BODY,
    Handler,
    errors_middleware,
    json_response,
    last_event_id,
    read_json_object,
    sse_stream,
)

log = logging.getLogger("sidecar.api")

# the data model's camelCase names accepted beside the YAML's snake_case
_ALIASES = {"messagesPath": "messages_path"}


def service_from_json(body: dict[str, Any]) -> ServiceConfig:
    raw = {_ALIASES.get(k, k): v for k, v in body.items()}
    try:
        return build_section(ServiceConfig, raw)
    except ConfigError as e:
        raise InvalidArgument(f"invalid service registration: {'; '.join(e.problems)}",
                              {"problems": e.problems}) from None


def build_api(registry: LocalRegistry, catalog: MeshCatalog, bus: EventBus, clock: Clock,
              extra_routes: Sequence[Iterable[Route]] = (), token: str | None = None,
              own: OwnListeners | None = None) -> App:
    """``token``: api.token_file's content; ``own``: this sidecar's listeners, where no service may be registered."""

    async def guard(request: Request, handler: Handler) -> StreamResponse:
        refusal = check_api_request(request.host, request.headers.get("Origin"),
                                    request.headers.get("Sec-Fetch-Site"), request.headers.get("Authorization"),
                                    token, request.local_address)
        if refusal is not None:
            log.info("app API request refused", extra=fields(method=request.method, path=request.path,
                                                             code=refusal.code.name, reason=refusal.message))
            raise refusal
        return await handler(request)

    app = App(middlewares=[errors_middleware, guard], max_body=MAX_BODY)
    routes = RouteTable()

    def now() -> tuple[float, int]:
        return clock.monotonic(), int(clock.wall() * 1000)

    @routes.put("/v1/services")
    async def register(request: Request) -> Response:
        spec = service_from_json(await read_json_object(request))
        if own is not None:
            await own.check(spec)
        entry = registry.register(spec, "api", *now())
        return json_response({"id": entry.metadata.id})

    @routes.get("/v1/services")
    async def list_services(request: Request) -> Response:
        return json_response([i.to_json() for i in registry.instances()])

    @routes.get("/v1/services/{id}")
    async def get_service(request: Request) -> Response:
        return json_response(registry.get(request.match_info["id"]).metadata.to_json())

    @routes.delete("/v1/services/{id}")
    async def deregister(request: Request) -> Response:
        metadata = registry.deregister(request.match_info["id"], "deregistered through the API", now()[1])
        return json_response({"id": metadata.id})

    @routes.put("/v1/services/{id}/heartbeat")
    async def heartbeat(request: Request) -> Response:
        body: dict[str, Any] = await read_json_object(request) if request.body_exists else {}
        status_text = body.get("status", "healthy")
        note = body.get("note", "")
        try:
            status = HealthStatus(status_text)
        except ValueError:
            raise InvalidArgument(f"status must be one of healthy, degraded, unhealthy (got {status_text!r})",
                                  {"field": "status"}) from None
        if not isinstance(note, str):
            raise InvalidArgument(f"note must be a string (got {type(note).__name__})", {"field": "note"})
        unknown = sorted(set(body) - {"status", "note"})
        if unknown:
            raise InvalidArgument(f"unknown field {unknown[0]!r}; a heartbeat has status and note",
                                  {"field": unknown[0]})
        entry = registry.heartbeat(request.match_info["id"], status, note, *now())
        return json_response(entry.metadata.to_json())

    @routes.get("/v1/catalog")
    async def whole_catalog(request: Request) -> Response:
        return json_response(group_json(catalog.snapshot().instances))

    @routes.get("/v1/catalog/{name}")
    async def one_service(request: Request) -> Response:
        name = request.match_info["name"]
        instances = catalog.snapshot().service(name)
        if not instances:
            raise NotFound(f"no service named {name!r} in the catalog", {"service": name})
        return json_response([i.to_json() for i in sorted(instances, key=lambda i: (i.node, i.id))])

    @routes.get("/v1/events")
    async def events(request: Request) -> StreamResponse:
        subscription = bus.subscribe(last_event_id(request))

        async def items() -> AsyncIterator[tuple[int, str, Any]]:
            async for event in subscription:
                yield event.id, event.type, event.to_json()

        try:
            return await sse_stream(request, items())
        finally:
            subscription.close()

    app.add_routes(routes)
    for extra in extra_routes:  # messaging's /v1/messages, /v1/publish, /v1/subscribe, /v1/subscriptions
        app.add_routes(extra)
    return app
