"""The admin port's ``GET /tls``: our identity, its expiry and rotations, handshake refusals, and renewal.

    extra_routes += tls_routes(store, renewer)     # store None: no tls; renewer None: no tls.issuer
"""

from __future__ import annotations

from sidecar.errors import NotFound
from sidecar.httpd import Request, Response, Route, get
from sidecar.tls.reloader import IdentityStore
from sidecar.tls.renewer import Renewer
from sidecar.web import json_response


def tls_routes(store: IdentityStore | None, renewer: Renewer | None) -> list[Route]:
    async def tls(request: Request) -> Response:
        if store is None:
            raise NotFound("tls is not configured: this sidecar has no certificate and carries no mTLS traffic")
        # renewal is null when another tool (cert-manager, a script) renews the files
        return json_response({**store.status(), "renewal": renewer.status() if renewer is not None else None})

    return [get("/tls", tls)]
