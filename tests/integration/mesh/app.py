"""A destination app for the mesh tests, run as its own process (``python -m tests.integration.mesh.app``) so
the sidecars under test get a CPU of their own. It prints ``PORT <n>`` once listening.

    /headers...      JSON: method, path, headers as received, body size
    POST /count      the number of body bytes received (streams, never buffers)
    GET  /big?size=  that many bytes, streamed in 1 MiB writes
    GET  /sse?n=     n events; each after the previous was acknowledged with GET /sse-ack
    GET  /ws         WebSocket echo
    GET  /slow?ms=   answers after a pause
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import WSMsgType, web

ACKS = web.AppKey("acks", asyncio.Queue)


async def headers(request: web.Request) -> web.Response:
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
    return web.json_response({"method": request.method, "path": request.path_qs, "body": size,
                              "headers": [[k, v] for k, v in request.headers.items()]})


async def count(request: web.Request) -> web.Response:
    total = 0
    async for chunk in request.content.iter_chunked(1 << 20):
        total += len(chunk)
    return web.Response(text=str(total))


async def big(request: web.Request) -> web.StreamResponse:
    size = int(request.query["size"])
    response = web.StreamResponse()
    response.content_length = size
    await response.prepare(request)
    block = b"z" * (1 << 20)
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    acks = request.app[ACKS]
    while not acks.empty():
        acks.get_nowait()
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    for i in range(int(request.query.get("n", "3"))):
        await response.write(f"id: {i}\ndata: event{i}\n\n".encode())
        # the next event only once the client has seen this one: proves nothing on the way buffers events
        await asyncio.wait_for(acks.get(), 10)
    await response.write_eof()
    return response


async def sse_ack(request: web.Request) -> web.Response:
    request.app[ACKS].put_nowait(None)
    return web.Response(text="ok")


async def ws(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type == WSMsgType.TEXT:
            await socket.send_str("echo:" + message.data)
        elif message.type == WSMsgType.BINARY:
            await socket.send_bytes(message.data)
    return socket


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.query.get("ms", "100")) / 1000)
    return web.Response(text="slow done")


async def main() -> None:
    app = web.Application(client_max_size=1 << 30)
    app[ACKS] = asyncio.Queue()
    app.router.add_route("*", "/headers", headers)
    app.router.add_route("*", "/headers/{tail:.*}", headers)
    app.router.add_route("*", "/admin/{tail:.*}", headers)
    app.router.add_post("/count", count)
    app.router.add_get("/big", big)
    app.router.add_get("/sse", sse)
    app.router.add_get("/sse-ack", sse_ack)
    app.router.add_get("/ws", ws)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    uvloop.run(main()) if hasattr(uvloop, "run") else asyncio.run(main())
    sys.exit(0)
