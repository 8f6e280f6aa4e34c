"""What the admin port, the app API and messaging's receiver share: the error middleware, JSON in and out, and
Server-Sent Events. The server itself (routing, connections, listeners' limits) is :mod:`sidecar.httpd`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from sidecar.errors import InvalidArgument, SidecarError
from sidecar.httpd import Handler, Request, Response, StreamResponse
from sidecar.httpd.app import MAX_BODY
from sidecar.httpd.response import error_response
from sidecar.jsonbody import json_body

log = logging.getLogger("sidecar.web")

__all__ = ["MAX_BODY", "Handler", "error_response", "errors_middleware", "json_response", "last_event_id",
           "read_json_object", "sse_pages", "sse_stream"]


async def errors_middleware(request: Request, handler: Handler) -> StreamResponse:
    """Every error leaves in SPEC's shape; this and ``errors.rescue`` are the only places that build it."""
    try:
        return await handler(request)
    except SidecarError as e:
        return error_response(e)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:
        log.exception("internal error handling %s %s", request.method, request.path)
        return error_response(e)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode(), content_type="application/json")


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidArgument saying what is wrong with it."""
    body = json_body(await request.read(), "a JSON object")
    if not isinstance(body, dict):
        raise InvalidArgument(f"request body must be a JSON object (got {type(body).__name__})")
    return body


async def sse_stream(request: Request, events: AsyncIterator[tuple[int, str, Any]],
                     heartbeat: float = 15.0) -> StreamResponse:
    """Send ``(id, event type, data)`` items as Server-Sent Events until the client goes or the source ends.

    A comment line every ``heartbeat`` seconds keeps proxies from closing an idle stream. A client that leaves
    has its connection cancel this handler (:mod:`sidecar.httpd.connection`), which ends the stream and what it
    holds at once.
    """
    async def encoded() -> AsyncIterator[bytes]:
        async for event_id, event_type, data in events:
            payload = json.dumps(data, separators=(",", ":"))
            yield f"id: {event_id}\nevent: {event_type}\ndata: {payload}\n\n".encode()
    return await _sse(request, encoded(), heartbeat)


async def sse_pages(request: Request, pages: AsyncIterator[list[tuple[int, bytes]]], event_type: str,
                    heartbeat: float = 15.0) -> StreamResponse:
    """:func:`sse_stream` for events whose data is JSON already encoded on one line (``(id, bytes)``), a page of
    them in one write. Data that holds a line break (not what the sidecar stores) is encoded again on one line."""
    kind = event_type.encode()

    async def encoded() -> AsyncIterator[bytes]:
        async for page in pages:
            yield b"".join(b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, kind, _one_line(data))
                           for event_id, data in page)
    return await _sse(request, encoded(), heartbeat)


def _one_line(data: bytes) -> bytes:
    if b"\n" not in data and b"\r" not in data:
        return data
    return json.dumps(json.loads(data), separators=(",", ":")).encode()


async def _sse(request: Request, chunks: AsyncIterator[bytes], heartbeat: float) -> StreamResponse:
    response = StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b": stream open\n\n")
    iterator = chunks.__aiter__()
    next_item: asyncio.Future[bytes] | None = None
    try:
        while True:
            if next_item is None:
                next_item = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({next_item}, timeout=heartbeat)
            if not done:
                await response.write(b": keep-alive\n\n")
                continue
            try:
                chunk = next_item.result()
            except StopAsyncIteration:
                break
            next_item = None
            await response.write(chunk)
    except ConnectionResetError:
        pass
    finally:
        if next_item is not None:
            next_item.cancel()
    await response.write_eof()
    return response


def last_event_id(request: Request) -> int | None:
    value = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"Last-Event-ID must be an event id number (got {value!r})") from None
