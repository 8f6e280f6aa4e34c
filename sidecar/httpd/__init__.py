"""The HTTP/1.1 server of the admin port, the app API and messaging's delivery receiver: requests read by the
proxy's compiled llhttp reader (:mod:`sidecar.proxy.http1read`), handlers routed by path with parameters, one
middleware chain, responses whole or streamed (Server-Sent Events).

    app = App(middlewares=[errors_middleware])
    app.add_routes([get("/ready", ready), post("/drain", drain)])
    site = Site("admin", app, HostPort("127.0.0.1", 9901))
    bound = await site.start()

``request``, ``response`` and ``router`` are pure (no I/O); ``connection`` is the asyncio protocol of one client
connection and ``site`` the listener with its limits.
"""

from sidecar.httpd.app import App, Middleware
from sidecar.httpd.request import Request
from sidecar.httpd.response import Response, StreamResponse
from sidecar.httpd.router import Handler, Route, RouteTable, delete, get, post, put, route
from sidecar.httpd.site import DEFAULT_WEB_LIMITS, Site, WebLimits, WebStats

__all__ = ["DEFAULT_WEB_LIMITS", "App", "Handler", "Middleware", "Request", "Response", "Route", "RouteTable", "Site",
           "StreamResponse", "WebLimits", "WebStats", "delete", "get", "post", "put", "route"]
