"""An app: a router and a middleware chain. ``await app.handle(request)`` runs the middlewares, outermost first,
around the routed handler; routing happens innermost, so a middleware (the error shape, the admin port's access
rule) sees requests for unknown paths and methods too, and their NotFound and MethodNotAllowed come out through it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from sidecar.httpd.request import Request
from sidecar.httpd.response import StreamResponse
from sidecar.httpd.router import Handler, PathRouter, Route

Middleware = Callable[[Request, Handler], Awaitable[StreamResponse]]

MAX_BODY = 1 << 20  # the APIs take small JSON documents; 1 MiB is generous


class App:
    """``max_body``: the largest request body taken (larger ones are refused before the handler, 400)."""

    def __init__(self, middlewares: Sequence[Middleware] = (), max_body: int = MAX_BODY) -> None:
        self.router = PathRouter()
        self.middlewares = tuple(middlewares)
        self.max_body = max_body
        self._chain: Handler | None = None

    def add_routes(self, routes: Iterable[Route]) -> None:
        self.router.add_routes(routes)

    async def _dispatch(self, request: Request) -> StreamResponse:
        handler, request.match_info = self.router.resolve(request.method, request.raw_path)
        return await handler(request)

    async def handle(self, request: Request) -> StreamResponse:
        chain = self._chain
        if chain is None:
            chain = self._dispatch
            for middleware in reversed(self.middlewares):
                chain = _wrap(middleware, chain)
            self._chain = chain
        return await chain(request)


def _wrap(middleware: Middleware, inner: Handler) -> Handler:
    async def call(request: Request) -> StreamResponse:
        return await middleware(request, inner)
    return call
