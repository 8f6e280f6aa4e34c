"""Routes of the admin port. Mutations are POST-only. Who may call what is ``sidecar.admin.auth``'s rule, applied
to every request before routing: with ``admin.token_file`` everything but the probes (``/ready``, ``/healthz``,
``/metrics``) needs the token; without it reads are open and mutations come from loopback only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from sidecar import log as logs
from sidecar.admin.auth import RELAYED_HEADER, check_request
from sidecar.catalog.model import group_json
from sidecar.config.load import config_to_raw
from sidecar.config.model import Config
from sidecar.errors import InvalidArgument
from sidecar.httpd import App, Request, Response, Route, RouteTable, StreamResponse
from sidecar.log import fields
from sidecar.ops.reload import parse_canary
from sidecar.web import Handler, errors_middleware, json_response, read_json_object

log = logging.getLogger("sidecar.admin")


class AdminBackend(Protocol):
    """What the admin port needs from the running sidecar (``sidecar.admin.facade.AdminFacade``)."""

    @property
    def config(self) -> Config: ...

    def readiness(self) -> tuple[bool, str]: ...
    def listener_addresses(self) -> dict[str, str]: ...
    def warnings(self) -> list[str]: ...
    def members_json(self) -> list[dict[str, Any]]: ...
    def catalog_json(self) -> dict[str, list[dict[str, Any]]]: ...
    def services_json(self) -> list[dict[str, Any]]: ...
    def gossip_json(self) -> dict[str, Any]: ...
    def clusters_json(self) -> dict[str, Any]: ...
    def keys_json(self) -> dict[str, Any]: ...
    def key_action(self, action: str, key: str) -> dict[str, Any]: ...
    async def drain(self) -> dict[str, Any]: ...
    async def leave(self) -> dict[str, Any]: ...
    async def reload(self, *, dry_run: bool = False, text: str | None = None,
                     canary: float | None = None) -> dict[str, Any]: ...
    async def rollback(self, version: int) -> dict[str, Any]: ...
    def config_history(self) -> dict[str, Any]: ...


def read_token(path: str | None) -> str | None:
    """admin.token_file's content without surrounding whitespace; ValueError if it is empty (an empty token
    would lock every mutation out, which is never what was meant)."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"the file {path} is empty; write the token into it (e.g. openssl rand -hex 32)")
    return token


def build_admin(process: AdminBackend, token: str | None, extra_routes: Iterable[Route] = (),
                extra_posts: Mapping[str, Handler] | None = None) -> App:
    """``extra_routes``: read-only routes other parts serve here (telemetry: /metrics, /v1/metrics..., the
    dashboard at /)."""
    routes = RouteTable()

    async def guard(request: Request, handler: Handler) -> StreamResponse:
        # every request, on any path, before its handler: see sidecar.admin.auth
        host = request.remote
        refusal = check_request(request.method, token, request.headers.get("Authorization"), host,
                                request.headers.get("Origin"), path=request.path,
                                relayed=RELAYED_HEADER in request.headers, host=request.host,
                                local_address=request.local_address)
        if refusal is not None:
            log.info("admin request refused", extra=fields(method=request.method, path=request.path,
                                                           peer=host or "unknown", code=refusal.code.name))
            raise refusal
        return await handler(request)

    def post_only(path: str, handler: Handler) -> None:
        routes.post(path)(handler)   # any other method: 405 naming POST (sidecar.httpd.router)

    @routes.get("/ready")
    async def ready(request: Request) -> Response:
        is_ready, reason = process.readiness()
        body: dict[str, Any] = {"status": "ready" if is_ready else "not ready", "reason": reason,
                                "listeners": process.listener_addresses()}
        warnings = process.warnings()
        if warnings:
            body["warnings"] = warnings  # exposures the operator should fix (gossip in plaintext beyond loopback)
        return json_response(body, 200 if is_ready else 503)

    def json_view(view: Callable[[], Any]) -> Handler:
        async def handle(request: Request) -> Response:
            return json_response(view())
        return handle

    views: dict[str, Callable[[], Any]] = {
        "/healthz": lambda: {"status": "ok"},
        "/config": lambda: config_to_raw(process.config, redact=True),
        "/config/history": process.config_history,
        "/members": process.members_json,
        "/catalog": process.catalog_json,
        "/v1/services": process.services_json,
        "/clusters": process.clusters_json,
        "/gossip": process.gossip_json,
        "/keys": process.keys_json,
    }
    for path, view in views.items():
        routes.get(path)(json_view(view))

    def key_handler(action: str) -> Handler:
        async def handle(request: Request) -> Response:
            body = await read_json_object(request)
            key = body.get("key")
            if not isinstance(key, str) or not key:
                raise InvalidArgument('the body must be {"key": "BASE64 KEY"}', {"field": "key"})
            return json_response(process.key_action(action, key))
        return handle

    async def drain(request: Request) -> Response:
        return json_response(await process.drain())

    async def leave(request: Request) -> Response:
        return json_response(await process.leave())

    async def reload(request: Request) -> Response:
        """``?dry_run=true``: the diff only (of the files, or of the YAML body); ``?canary=30s|off``."""
        dry_run = _flag(request.query.get("dry_run"), "dry_run")
        text = (await request.text()) if request.body_exists else None
        canary = parse_canary(request.query.get("canary"))
        return json_response(await process.reload(dry_run=dry_run, text=text or None, canary=canary))

    async def rollback(request: Request) -> Response:
        text = request.query.get("version", "")
        if not text.isdigit():
            raise InvalidArgument(f"the version query parameter must be a version number from GET /config/history"
                                  f" (got {text!r})", {"version": text})
        return json_response(await process.rollback(int(text)))

    async def logging_level(request: Request) -> Response:
        level = request.query.get("level")
        if level is None:
            raise InvalidArgument("the level query parameter is required, e.g. /logging?level=debug")
        try:
            logs.set_level(level)
        except ValueError as e:
            raise InvalidArgument(str(e), {"level": level}) from None
        return json_response({"level": logs.current_level()})

    for path, handler in (extra_posts or {}).items():  # messaging: /deadletters/replay, /deadletters/purge
        post_only(path, handler)
    post_only("/drain", drain)
    post_only("/leave", leave)
    post_only("/reload", reload)
    post_only("/config/rollback", rollback)
    post_only("/logging", logging_level)
    for action in ("install", "use", "remove"):
        post_only(f"/keys/{action}", key_handler(action))

    app = App(middlewares=[errors_middleware, guard])
    app.add_routes(routes)
    app.add_routes(extra_routes)
    return app


def _flag(text: str | None, name: str) -> bool:
    if text is None or text.lower() in ("false", "0", "no"):
        return False
    if text.lower() in ("true", "1", "yes", ""):
        return True
    raise InvalidArgument(f"{name} must be true or false (got {text!r})", {name: text})


__all__ = ["AdminBackend", "build_admin", "group_json", "read_token"]
