"""HTTP handlers of messaging: app API routes (mounted on the API app) and admin handlers (dead letters).

    app.add_routes(api_routes(messaging))                       # sidecar.api.server.build_api
    for method, path, handler in admin_handlers(messaging): ... # sidecar.admin.server.build_admin
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sidecar.config.model import MAX_BULK_MESSAGES, BulkDeliveryConfig
from sidecar.errors import InvalidArgument
from sidecar.httpd import Request, Response, Route, RouteTable, StreamResponse, get
from sidecar.messaging.envelope import BulkEntry, MessageBody, bulk_from_bytes
from sidecar.messaging.service import SENDER_HEADER, Messaging
from sidecar.web import Handler, json_response, last_event_id, read_json_object, sse_pages

DEFAULT_BULK = BulkDeliveryConfig().max_messages
ACCEPTED_HEADERS = {"Content-Type": "application/json"}   # a publish's 202 {"id": UUID}
TRACE_HEADERS = frozenset((b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid",
                           b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags"))


def trace_headers(request: Request) -> dict[str, str]:
    """The caller's trace context, to be continued by the message's hops."""
    return {name.decode("latin-1"): value.decode("latin-1") for lower, name, value in request.headers.items
            if lower in TRACE_HEADERS}


def with_trace(body: MessageBody, trace: dict[str, str]) -> MessageBody:
    """A published message keeps its publisher's trace context in ``metadata`` (as CloudEvents' traceparent
    extension does), so every delivery, however much later, continues that trace."""
    parent = {k.lower(): v for k, v in trace.items() if k.lower() in ("traceparent", "tracestate")}
    if not parent or (body.metadata and "traceparent" in body.metadata):
        return body
    return replace(body, metadata={**(body.metadata or {}), **parent})


def _traced(entry: BulkEntry, trace: dict[str, str]) -> BulkEntry:
    """A bulk publish's entry :func:`with_trace`; the app's own bytes are kept only when that changed nothing."""
    body, raw = entry
    traced = with_trace(body, trace)
    return traced, raw if traced is body else None


def api_routes(messaging: Messaging) -> RouteTable:
    routes = RouteTable()

    @routes.post("/v1/messages/{service}")
    async def send_message(request: Request) -> Response:
        body = MessageBody.from_json(await read_json_object(request))
        status, headers, raw = await messaging.send(request.match_info["service"], body,
                                                    request.headers.get(SENDER_HEADER), trace_headers(request))
        return Response(status=status, body=raw, headers=headers)

    @routes.post("/v1/publish/{topic}")
    async def publish(request: Request) -> Response:
        sent = MessageBody.from_json(await read_json_object(request))
        body = with_trace(sent, trace_headers(request))
        # the app's own bytes go into the stored message unless the trace context was added to them
        message_id = await messaging.publish(request.match_info["topic"], body, request.headers.get(SENDER_HEADER),
                                             request.body if body is sent else None)
        return Response(202, b'{"id":"%s"}' % message_id.encode(), ACCEPTED_HEADERS)

    @routes.post("/v1/publish/bulk/{topic}")
    async def publish_bulk(request: Request) -> Response:
        # every entry is validated before anything is queued; then one commit stores them all, or none
        entries = bulk_from_bytes(await request.read())
        trace = trace_headers(request)
        if trace:
            entries = [_traced(entry, trace) for entry in entries]
        ids = await messaging.publish_many(request.match_info["topic"], entries, request.headers.get(SENDER_HEADER))
        return Response(202, b'{"ids":["%s"]}' % '","'.join(ids).encode(), ACCEPTED_HEADERS)

    @routes.post("/v1/subscriptions")
    async def subscribe(request: Request) -> Response:
        body = await read_json_object(request)
        unknown = sorted(set(body) - {"topic", "path", "service", "bulk"})
        if unknown:
            raise InvalidArgument(f"unknown field {unknown[0]!r}; a subscription has topic, path, service and bulk",
                                  {"field": unknown[0]})
        topic, path, service = body.get("topic"), body.get("path"), body.get("service")
        if not isinstance(topic, str) or not isinstance(path, str):
            raise InvalidArgument("topic and path are required strings", {"fields": ["topic", "path"]})
        if service is not None and not isinstance(service, str):
            raise InvalidArgument("service must be a string", {"field": "service"})
        subscription = await messaging.subscribe(topic, path, service, _bulk_size(body.get("bulk")))
        answer: dict[str, Any] = {"service": subscription.service, "topic": subscription.topic,
                                  "path": subscription.path}
        if subscription.bulk:
            answer["bulk"] = {"enabled": True, "maxMessages": subscription.bulk}
        return json_response(answer, 201)

    @routes.get("/v1/subscriptions")
    async def subscriptions(request: Request) -> Response:
        return json_response(messaging.subscriptions_json())

    @routes.get("/v1/subscribe/{topic}")
    async def subscribe_stream(request: Request) -> StreamResponse:
        async with messaging.stream(request.match_info["topic"], last_event_id(request),
                                    request.headers.get(SENDER_HEADER)) as events:
            return await sse_pages(request, events, "message")

    return routes


def _bulk_size(bulk: Any) -> int:
    """``{"enabled": true, "maxMessages": 100}`` (as the config's ``subscriptions[].bulk``) → messages per POST;
    absent or not enabled → 0."""
    if bulk is None:
        return 0
    if not isinstance(bulk, dict) or set(bulk) - {"enabled", "maxMessages"}:
        raise InvalidArgument('bulk must be {"enabled": true, "maxMessages": N}', {"field": "bulk"})
    enabled, size = bulk.get("enabled", False), bulk.get("maxMessages", DEFAULT_BULK)
    if not isinstance(enabled, bool):
        raise InvalidArgument(f"bulk.enabled must be true or false (got {enabled!r})", {"field": "bulk.enabled"})
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BULK_MESSAGES:
        raise InvalidArgument(f"bulk.maxMessages must be in [1, {MAX_BULK_MESSAGES}] (got {size!r})",
                              {"field": "bulk.maxMessages"})
    return size if enabled else 0


def _ids(body: dict[str, Any]) -> list[int] | None:
    """``{"ids": [1, 2]}`` or ``{"all": true}``; anything else is InvalidArgument (no accidental purge-all)."""
    if body.get("all") is True and "ids" not in body:
        return None
    ids = body.get("ids")
    if isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return ids
    raise InvalidArgument('the body must be {"ids": [ID, ...]} or {"all": true}', {"field": "ids"})


def admin_handlers(messaging: Messaging) -> dict[str, Handler]:
    """``GET /deadletters?limit=&after=&topic=``; ``POST /deadletters/replay`` and ``/deadletters/purge`` with
    ``{"ids": [...]}`` or ``{"all": true}``; ``GET /messaging`` (streams, counters)."""

    async def list_dead_letters(request: Request) -> Response:
        try:
            limit = int(request.query.get("limit", "100"))
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise InvalidArgument("limit and after must be integers") from None
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be in [1, 10000] (got {limit})", {"field": "limit"})
        return json_response(await messaging.dead_letters(limit, after, request.query.get("topic")))

    async def replay(request: Request) -> Response:
        return json_response(await messaging.replay(_ids(await read_json_object(request))))

    async def purge(request: Request) -> Response:
        return json_response(await messaging.purge(_ids(await read_json_object(request))))

    async def status(request: Request) -> Response:
        return json_response(messaging.status())

    return {"GET /deadletters": list_dead_letters, "POST /deadletters/replay": replay,
            "POST /deadletters/purge": purge, "GET /messaging": status}


def admin_read_routes(messaging: Messaging) -> list[Route]:
    """The admin port's read-only messaging routes, for ``build_admin(..., extra_routes)``."""
    handlers = admin_handlers(messaging)
    return [get("/deadletters", handlers["GET /deadletters"]), get("/messaging", handlers["GET /messaging"])]


def admin_post_handlers(messaging: Messaging) -> dict[str, Handler]:
    """The admin port's mutating messaging routes (path → handler), for its token-checking ``post_only``."""
    handlers = admin_handlers(messaging)
    return {"/deadletters/replay": handlers["POST /deadletters/replay"],
            "/deadletters/purge": handlers["POST /deadletters/purge"]}
