"""A listener of this server: an :class:`~sidecar.httpd.app.App` bound to one address (port 0 picks one), each
connection an :class:`~sidecar.httpd.connection.HttpConnection` with the listener's limits. ``stats`` counts
connections and refusals. With ``overload`` (the app API; never the admin port), requests are shed with 503 while
the guard sheds, and new connections refused while it refuses.

Stopping closes the listening socket, closes waiting connections and ends streams at once, lets the requests in
the app's hands finish within ``shutdown_timeout`` (their answers say ``Connection: close``), then cuts what is left.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sidecar.config.values import HostPort
from sidecar.httpd.app import App
from sidecar.httpd.connection import HttpConnection, Listener, WebStats
from sidecar.httpd.limits import DEFAULT_WEB_LIMITS, WebLimits

if TYPE_CHECKING:
    from sidecar.overload.guard import OverloadGuard

__all__ = ["DEFAULT_WEB_LIMITS", "Site", "WebLimits", "WebStats"]


class Site:
    def __init__(self, name: str, app: App, listen: HostPort, shutdown_timeout: float = 5.0,
                 limits: WebLimits = DEFAULT_WEB_LIMITS, overload: OverloadGuard | None = None) -> None:
        self.name = name
        self.app = app
        self.listen = listen
        self.shutdown_timeout = shutdown_timeout
        self.limits = limits
        self.overload = overload
        self.stats = WebStats()
        self.bound: HostPort | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> HostPort:
        loop = asyncio.get_running_loop()
        listener = Listener(self.name, self.app, self.limits, self.limits.head_limits(), self.stats, loop,
                            self.overload)
        self._server = server = await loop.create_server(
            lambda: HttpConnection(listener), self.listen.host, self.listen.port,
            backlog=min(1024, self.limits.max_connections * 2), reuse_address=True)
        listening: Any = server   # typeshed says Server.sockets is a tuple; uvloop's is a list (compiled code checks)
        sockets = listening.sockets
        if not sockets:
            raise OSError(f"no socket bound for {self.listen}")
        host, port = sockets[0].getsockname()[:2]
        self.bound = HostPort(host, port)
        return self.bound

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        connections = list(self.stats.live)
        for connection in connections:
            connection.shutdown()
        pending = [c.closed for c in connections if not c.closed.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.shutdown_timeout)
            if late:
                for connection in connections:
                    if not connection.closed.done():
                        connection.abort()
