"""The router alone: paths and parameters to handlers, 404, and 405 naming the allowed methods."""

from __future__ import annotations

import pytest

from sidecar.errors import MethodNotAllowed, NotFound
from sidecar.httpd import Request, Response, RouteTable
from sidecar.httpd.router import PathRouter


def router() -> PathRouter:
    table = RouteTable()

    @table.get("/v1/services")
    @table.put("/v1/services")
    @table.get("/v1/services/{id}")
    @table.delete("/v1/services/{id}")
    @table.put("/v1/services/{id}/heartbeat")
    @table.post("/drain")
    async def handler(request: Request) -> Response:
        return Response()

    r = PathRouter()
    r.add_routes(table)
    return r


@pytest.mark.parametrize(("method", "path", "params"), [
    ("GET", "/v1/services", {}),
    ("PUT", "/v1/services", {}),
    ("HEAD", "/v1/services", {}),                          # a GET route answers HEAD
    ("GET", "/v1/services/abc", {"id": "abc"}),
    ("DELETE", "/v1/services/a%20b", {"id": "a b"}),       # parameters are percent-decoded
    ("PUT", "/v1/services/x-1/heartbeat", {"id": "x-1"}),
    ("POST", "/drain", {}),
])
def test_routes_resolve_with_their_parameters(method: str, path: str, params: dict[str, str]) -> None:
    _, found = router().resolve(method, path)
    assert found == params


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/services/", "/v1/services/a/b", "/v1/services/a/heartbeat/x",
                                  "/drain/", "/DRAIN"])
def test_unknown_paths_are_not_found(path: str) -> None:
    with pytest.raises(NotFound, match="no such resource"):
        router().resolve("GET", path)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/drain", ["POST"]),
    ("HEAD", "/drain", ["POST"]),
    ("POST", "/v1/services", ["GET", "HEAD", "PUT"]),
    ("PATCH", "/v1/services/abc", ["DELETE", "GET", "HEAD"]),
    ("GET", "/v1/services/abc/heartbeat", ["PUT"]),
])
def test_a_known_path_with_another_method_is_405_naming_the_allowed(method: str, path: str,
                                                                     allowed: list[str]) -> None:
    with pytest.raises(MethodNotAllowed) as refused:
        router().resolve(method, path)
    assert refused.value.details == {"allowed": allowed}
    assert refused.value.message == f"{method} is not allowed on {path}; use {', '.join(allowed)}"


@pytest.mark.parametrize("pattern", ["v1/x", "/v1/x{id}", "/v1/{id}x", "/v1/{}", "/v1/{a-b}"])
def test_a_parameter_must_be_a_whole_segment(pattern: str) -> None:
    async def handler(request: Request) -> Response:
        return Response()

    with pytest.raises(ValueError):
        PathRouter().add("GET", pattern, handler)


def test_two_handlers_for_one_method_and_path_are_refused() -> None:
    async def handler(request: Request) -> Response:
        return Response()

    r = PathRouter()
    r.add("GET", "/a/{x}", handler)
    with pytest.raises(ValueError, match="two handlers"):
        r.add("GET", "/a/{x}", handler)


def test_routes_lists_method_and_pattern() -> None:
    assert ("PUT", "/v1/services/{id}/heartbeat") in router().routes()
    assert ("HEAD", "/v1/services") not in router().routes()
