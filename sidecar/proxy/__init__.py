"""The data plane's HTTP/1.1 proxy engine: a generic, fast, strict HTTP/1.1 proxy with hooks.

One file per concern: ``http1`` (message heads, no I/O), ``tracecontext`` (W3C traceparent, request ids),
``target`` (what the route callback returns and the records the engine reports), ``failures`` (why an
upstream attempt failed), ``limits`` (limits, timeouts, the lazy timer), ``connector`` (the only place that
dials), ``pool`` (keep-alive upstream connections), ``upstream`` / ``downstream`` (the asyncio protocols, the
HTTP/1.1 codec's two sides), ``sides`` (what the exchange needs of a client side and an upstream stream, whatever
the codec), ``engine`` (what a listener's exchanges share), ``exchange`` (one request from head to end, as a
phase machine), ``tunnel`` (two transports spliced after an upgrade), ``relay`` (the TCP relay), ``server``
(the listener); ``client`` and ``clientwire`` (the sidecar's own keep-alive HTTP/1.1 client, for the requests it
makes itself: messages to apps and batches to other sidecars).
"""

from sidecar.proxy.failures import (
    AttemptTimeout,
    ConnectFailure,
    FailureKind,
    UpstreamFailure,
    UpstreamProtocolError,
    UpstreamReset,
)
from sidecar.proxy.http1 import (
    Headers,
    HeadLimits,
    MalformedRequest,
    MalformedResponse,
    RemoteProtocolError,
    RequestHead,
    RequestHeadTooLarge,
    ResponseHead,
)
from sidecar.proxy.limits import PoolLimits, ProxyLimits
from sidecar.proxy.pool import Pools, UpstreamPool
from sidecar.proxy.relay import RelayStats, TcpRelay
from sidecar.proxy.server import HttpProxy
from sidecar.proxy.target import (
    AttemptRecord,
    ConnectionInfo,
    RequestStats,
    Retry,
    RetryPolicy,
    RouteFn,
    Target,
)
from sidecar.proxy.tracecontext import IdSource, TraceParent
from sidecar.proxy.tunnel import Tunnel

__all__ = [
    "AttemptRecord", "AttemptTimeout", "ConnectFailure", "ConnectionInfo", "FailureKind", "HeadLimits", "Headers",
    "HttpProxy", "IdSource", "MalformedRequest", "MalformedResponse", "PoolLimits", "Pools", "ProxyLimits",
    "RelayStats", "RemoteProtocolError", "RequestHead", "RequestHeadTooLarge", "RequestStats", "ResponseHead", "Retry",
    "RetryPolicy", "RouteFn", "Target", "TcpRelay", "TraceParent", "Tunnel", "UpstreamFailure", "UpstreamPool",
    "UpstreamProtocolError", "UpstreamReset",
]
