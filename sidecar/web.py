"""What the aiohttp apps (admin port, app API) share: the error middleware, JSON in and out,
Server-Sent Events, and starting a site on a possibly-zero port."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from sidecar.config.values import HostPort
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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"request body must be a JSON object (got {type(body).__name__})")
    return body


async def sse_stream(request: web.Request, events: AsyncIterator[tuple[int, str, Any]],
                     heartbeat: float = 15.0) -> web.StreamResponse:
    """Send ``(id, event type, data)`` items as Server-Sent Events until the client goes or the source ends.

    A comment line every ``heartbeat`` seconds keeps proxies from closing an idle stream.
    """
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b": stream open\n\n")
    iterator = events.__aiter__()
    next_item: asyncio.Task[tuple[int, str, Any]] | None = None
    try:
        while True:
            if next_item is None:
                next_item = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({next_item}, timeout=heartbeat)
            if not done:
                await response.write(b": keep-alive\n\n")
                continue
            try:
                event_id, event_type, data = next_item.result()
            except StopAsyncIteration:
                break
            next_item = None
            payload = json.dumps(data, separators=(",", ":"))
            await response.write(f"id: {event_id}\nevent: {event_type}\ndata: {payload}\n\n".encode())
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


class Site:
    """An aiohttp app bound to one address; reports the bound address (port 0 picks one)."""

    def __init__(self, name: str, app: web.Application, listen: HostPort, shutdown_timeout: float = 5.0) -> None:
        self.name = name
        self.app = app
        self.listen = listen
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
        self.bound: HostPort | None = None

    async def start(self) -> HostPort:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.listen.host, self.listen.port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None)
        if not sockets:
            raise OSError(f"no socket bound for {self.listen}")
        host, port = sockets[0].getsockname()[:2]
        self.bound = HostPort(host, port)
        return self.bound

    async def stop(self) -> None:
        await self.runner.cleanup()
