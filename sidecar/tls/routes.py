"""The admin port's ``GET /tls``: our identity, its expiry and rotations, handshake refusals, and renewal.

    extra_routes += tls_routes(lambda: sidecar.store, lambda: sidecar.renewer)
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from sidecar.errors import NotFound
from sidecar.tls.reloader import IdentityStore
from sidecar.tls.renewal import Renewer
from sidecar.web import json_response


def tls_routes(store: Callable[[], IdentityStore | None], renewer: Callable[[], Renewer | None]) -> list[web.RouteDef]:
    async def tls(request: web.Request) -> web.Response:
        current = store()
        if current is None:
            raise NotFound("tls is not configured: this sidecar has no certificate and carries no mTLS traffic")
        running = renewer()
        # renewal is null when another tool (cert-manager, a script) renews the files
        return json_response({**current.status(), "renewal": running.status() if running is not None else None})

    return [web.get("/tls", tls)]
