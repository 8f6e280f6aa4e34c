"""The :class:`Engine`: what every exchange of one listener shares, handed to each exchange it starts.

The listener (:class:`~sidecar.proxy.server.HttpProxy`) owns one and keeps it current (its public
attributes write through to it); a codec's client connection passes it to the exchanges it starts, so an
exchange depends on this object, not on the listener or the connection it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.proxy.limits import ProxyLimits
from sidecar.proxy.sides import StreamPools
from sidecar.proxy.target import RequestStats, RouteFn
from sidecar.proxy.tracecontext import IdSource

if TYPE_CHECKING:
    from sidecar.overload.guard import OverloadGuard


class Engine:
    """One listener's shared parts: limits, upstream pools, the route, id source, hooks and state.

    ``draining`` is set when the listener closes (responses then end their connection); ``overload`` is the
    process's guard (new requests get its 503 while it sheds); ``on_request_done`` gets each request's
    :class:`RequestStats` on the hot path.
    """

    __slots__ = ("draining", "edit_headers", "ids", "limits", "name", "on_request_done", "overload", "pools", "route")

    def __init__(self, name: str, route: RouteFn, limits: ProxyLimits, pools: StreamPools, ids: IdSource,
                 edit_headers: bool = True, on_request_done: Callable[[RequestStats], None] | None = None) -> None:
        self.name = name
        self.route = route
        self.limits = limits
        self.pools = pools
        self.ids = ids
        self.edit_headers = edit_headers
        self.on_request_done = on_request_done
        self.overload: OverloadGuard | None = None
        self.draining = False
