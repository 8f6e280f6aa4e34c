"""What the aiohttp apps (admin port, app API) share: the error middleware, JSON in and out, and Server-Sent
Events. Starting an app on a port, with the listeners' protocol hygiene, is :mod:`sidecar.site`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from sidecar.errors import InvalidArgument, MethodNotAllowed, NotFound, SidecarError, rescue

log = logging.getLogger("sidecar.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1 << 20  # the APIs take small JSON documents; 1 MiB is generous


def error_response(exc: BaseException) -> web.Response:
    rescued = rescue(exc)
    return web.Response(status=rescued.status, body=rescued.body, headers=rescued.headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves in SPEC's shape; this and ``errors.rescue`` are the only places that build it."""
    try:
        return await handler(request)
    except SidecarError as e:
        return error_response(e)
    except web.HTTPMethodNotAllowed as e:
        allowed = sorted(e.allowed_methods)
        return error_response(MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}", {"allowed": allowed}))
    except web.HTTPNotFound:
        return error_response(NotFound(f"no such resource: {request.path}"))
    except web.HTTPRequestEntityTooLarge:
        return error_response(InvalidArgument(f"request body is larger than {MAX_BODY} bytes"))
    except web.HTTPException as e:
        if e.status >= 400:
            return error_response(InvalidArgument(e.reason or str(e)))
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:
        log.exception("internal error handling %s %s", request.method, request.path)
        return error_response(e)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data, separators=(",", ":")).encode(),
                        content_type="application/json")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidArgument saying what is wrong with it."""
    raw = await request.read()
    if not raw:
        raise InvalidArgument("request body is empty; a JSON object is required")
    try:
        body = json.loads(raw)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer of more than 4300 digits
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"request body must be a JSON object (got {type(body).__name__})")
    return body


async def sse_stream(request: web.Request, events: AsyncIterator[tuple[int, str, Any]],
                     heartbeat: float = 15.0, watch: float = 1.0) -> web.StreamResponse:
    """Send ``(id, event type, data)`` items as Server-Sent Events until the client goes or the source ends.

    A comment line every ``heartbeat`` seconds keeps proxies from closing an idle stream. The connection is looked
    at every ``watch`` seconds, so that a client that left ends the stream (and what it holds) within that time,
    not at the next write.
    """
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b": stream open\n\n")
    loop = asyncio.get_running_loop()
    iterator = events.__aiter__()
    next_item: asyncio.Task[tuple[int, str, Any]] | None = None
    written = loop.time()
    try:
        while True:
            if next_item is None:
                next_item = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({next_item}, timeout=min(heartbeat, watch))
            if not done:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the client left
                if loop.time() - written >= heartbeat:
                    await response.write(b": keep-alive\n\n")
                    written = loop.time()
                continue
            try:
                event_id, event_type, data = next_item.result()
            except StopAsyncIteration:
                break
            next_item = None
            payload = json.dumps(data, separators=(",", ":"))
            await response.write(f"id: {event_id}\nevent: {event_type}\ndata: {payload}\n\n".encode())
            written = loop.time()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        if next_item is not None:
            next_item.cancel()
    return response


def last_event_id(request: web.Request) -> int | None:
    value = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"Last-Event-ID must be an event id number (got {value!r})") from None
