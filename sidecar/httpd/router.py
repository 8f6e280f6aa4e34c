"""Routes: a method and a path pattern (``/v1/services/{id}``: a ``{name}`` is one whole segment) to a handler.
Pure: :meth:`PathRouter.resolve` takes a method and a path and gives the handler with its path parameters, or raises
NotFound, or MethodNotAllowed naming the allowed methods (SPEC's 405 with ``Allow``). A GET route answers HEAD too.

    table = RouteTable()

    @table.get("/v1/catalog/{name}")
    async def one(request: Request) -> Response: ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from sidecar.errors import MethodNotAllowed, NotFound

if TYPE_CHECKING:
    from sidecar.httpd.request import Request
    from sidecar.httpd.response import StreamResponse

Handler = Callable[["Request"], Awaitable["StreamResponse"]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler


def route(method: str, path: str, handler: Handler) -> Route:
    return Route(method.upper(), path, handler)


def get(path: str, handler: Handler) -> Route:
    return Route("GET", path, handler)


def post(path: str, handler: Handler) -> Route:
    return Route("POST", path, handler)


def put(path: str, handler: Handler) -> Route:
    return Route("PUT", path, handler)


def delete(path: str, handler: Handler) -> Route:
    return Route("DELETE", path, handler)


class RouteTable:
    """Routes gathered by decorators, added to an app with ``app.add_routes(table)``."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            self._routes.append(route(method, path, handler))
            return handler
        return add

    def get(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("GET", path)

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("POST", path)

    def put(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("PUT", path)

    def delete(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)


def _segments(path: str) -> tuple[str, ...]:
    """A pattern's segments; ``{name}`` must be a whole segment."""
    if not path.startswith("/"):
        raise ValueError(f"a route's path starts with '/' (got {path!r})")
    segments = tuple(path.split("/")[1:])
    for segment in segments:
        inner = segment[1:-1]
        if ("{" in segment or "}" in segment) and not (segment.startswith("{") and segment.endswith("}")
                                                       and inner.isidentifier()):
            raise ValueError(f"a path parameter is a whole segment {{name}} (got {segment!r} in {path!r})")
    return segments


class _Pattern:
    __slots__ = ("handlers", "path", "segments")

    def __init__(self, path: str) -> None:
        self.path = path
        self.segments = _segments(path)
        self.handlers: dict[str, Handler] = {}

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for segment, part in zip(self.segments, parts, strict=True):
            if segment.startswith("{"):
                if not part:
                    return None
                params[segment[1:-1]] = unquote(part)
            elif segment != part:
                return None
        return params


def allowed_methods(handlers: Iterable[str]) -> list[str]:
    methods = set(handlers)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


class PathRouter:
    """Static paths by dictionary, patterns with parameters in the order they were added."""

    def __init__(self) -> None:
        self._static: dict[str, _Pattern] = {}
        self._dynamic: dict[int, list[_Pattern]] = {}   # by segment count: only those can match a path
        self._patterns: dict[str, _Pattern] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        pattern = self._patterns.get(path)
        if pattern is None:
            pattern = self._patterns[path] = _Pattern(path)
            if "{" in path:
                self._dynamic.setdefault(len(pattern.segments), []).append(pattern)
            else:
                self._static[path] = pattern
        method = method.upper()
        if method in pattern.handlers:
            raise ValueError(f"two handlers for {method} {path}")
        pattern.handlers[method] = handler

    def add_routes(self, routes: Iterable[Route]) -> None:
        for r in routes:
            self.add(r.method, r.path, r.handler)

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler of ``method`` on ``path`` (routed as received, parameters percent-decoded) and the path's
        parameters; NotFound or MethodNotAllowed (its details name the allowed methods) otherwise."""
        allowed: list[str] = []
        static = self._static.get(path)
        candidates: list[tuple[_Pattern, dict[str, str]]] = [(static, {})] if static is not None else []
        if self._dynamic:
            parts = path.split("/")[1:]
            for pattern in self._dynamic.get(len(parts), ()):
                params = pattern.match(parts)
                if params is not None:
                    candidates.append((pattern, params))
        for pattern, params in candidates:
            handlers = pattern.handlers
            handler = handlers.get(method)
            if handler is None and method == "HEAD":
                handler = handlers.get("GET")
            if handler is not None:
                return handler, params
            allowed += handlers
        if not candidates:
            raise NotFound(f"no such resource: {unquote(path)}")
        methods = allowed_methods(allowed)
        raise MethodNotAllowed(f"{method} is not allowed on {unquote(path)}; use {', '.join(methods)}",
                               {"allowed": methods})

    def routes(self) -> list[tuple[str, str]]:
        """(method, path pattern) of every route, HEAD left implicit."""
        return sorted((method, pattern.path) for pattern in self._patterns.values() for method in pattern.handlers)
