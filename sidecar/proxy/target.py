"""What the engine asks of its user and tells it: the route callback's answer, per-connection facts, the
hooks a retry/breaker layer plugs in, and the record of each finished request."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext, SSLObject
from typing import Any, Protocol

from sidecar.proxy.failures import FailureKind, UpstreamFailure
from sidecar.proxy.http1 import RequestHead

# The three records below are made on every request, so each spells out its __init__: compiled, that is a native
# constructor, where the one dataclasses generates would run as interpreted Python. They are still dataclasses
# (fields, repr, equality, dataclasses.replace). Treat them as read-only once made.


@dataclass(slots=True, init=False, unsafe_hash=True)
class Target:
    """Where one attempt of a request goes. Build one per endpoint and reuse it: nothing in it is per request.

    ``pool_key`` says which connections are interchangeable; None means ``(address, server_hostname)``.
    ``timeout`` bounds the time from the request head's arrival to the response head, over all attempts
    (the SPEC's policy ``timeout``); ``try_timeout`` bounds one attempt to its response head. Both None: only
    the listener's stream idle timeout applies. ``tag`` is opaque to the engine (the router's endpoint) and
    comes back in :class:`AttemptRecord` and :class:`RequestStats`.

    ``verify`` checks who answered a TLS dial: it is called once per new connection, right after the handshake
    and before the connection carries anything or joins the pool, with the connection's ``ssl.SSLObject``
    (a resumed session still shows the peer certificate). It raises to refuse the peer: the connection is
    closed and the attempt fails as :class:`ConnectFailure` naming the reason. Per connection, never per
    request. Targets sharing a ``pool_key`` must verify alike (a pooled connection was checked once).
    """

    address: tuple[str, int]
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None
    pool_key: Hashable | None = None
    timeout: float | None = None
    try_timeout: float | None = None
    retry: RetryPolicy | None = None
    observer: Callable[[AttemptRecord], None] | None = None
    tag: Any = None
    verify: Callable[[SSLObject], object] | None = None
    # both derived from the fields above when not given (``derive`` passes the base's on)
    key: Hashable = field(default=None, repr=False, compare=False)
    # "host:port" ("[v6]:port"), made once: every finished request reports it
    authority: str = field(default="", repr=False, compare=False)

    def __init__(self, address: tuple[str, int], ssl: SSLContext | None = None, server_hostname: str | None = None,
                 pool_key: Hashable | None = None, timeout: float | None = None, try_timeout: float | None = None,
                 retry: RetryPolicy | None = None, observer: Callable[[AttemptRecord], None] | None = None,
                 tag: Any = None, verify: Callable[[SSLObject], object] | None = None, key: Hashable = None,
                 authority: str = "") -> None:
        self.address = address
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.pool_key = pool_key
        self.timeout = timeout
        self.try_timeout = try_timeout
        self.retry = retry
        self.observer = observer
        self.tag = tag
        self.verify = verify
        if key is None:
            key = pool_key if pool_key is not None else (address, server_hostname, id(ssl) if ssl else None)
        self.key = key
        if not authority:
            host, port = address
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.authority = authority

    def derive(self, timeout: float | None, try_timeout: float | None, retry: RetryPolicy | None,
               observer: Callable[[AttemptRecord], None] | None, tag: Any) -> Target:
        """This Target for one request: the same endpoint, pool and checks, with that request's deadlines,
        policy hooks and tag (once per attempt on the hot path)."""
        return Target(self.address, self.ssl, self.server_hostname, self.pool_key, timeout, try_timeout, retry,
                      observer, tag, self.verify, self.key, self.authority)




@dataclass(slots=True, init=False)
class AttemptRecord:
    """One upstream exchange of a request, as the retry and breaker layers see it when it ends.

    ``failure`` is None when a response head arrived (``status`` is then set); ``sent`` says whether any
    request byte reached the upstream; ``replayable`` whether the whole request body so far is in the
    replay buffer (no body, or one no larger than ``ProxyLimits.replay_buffer``). ``grpc_status``: a gRPC
    call's status when the attempt ended with one nothing of which reached the client (a trailers-only answer,
    or trailers after a held head and no message), else None.
    """

    number: int                       # 1 for the first attempt
    target: Target
    method: str
    failure: UpstreamFailure | None
    status: int | None
    sent: bool
    replayable: bool
    started: float                    # loop time the attempt began (connection requested)
    ended: float                      # loop time of the response head or the failure
    sent_at: float | None = None      # loop time the request was written to a connection (None: never was)
    grpc_status: int | None = None

    def __init__(self, number: int, target: Target, method: str, failure: UpstreamFailure | None, status: int | None,
                 sent: bool, replayable: bool, started: float, ended: float, sent_at: float | None = None,
                 grpc_status: int | None = None) -> None:
        self.number = number
        self.target = target
        self.method = method
        self.failure = failure
        self.status = status
        self.sent = sent
        self.replayable = replayable
        self.started = started
        self.ended = ended
        self.sent_at = sent_at
        self.grpc_status = grpc_status

    @property
    def latency(self) -> float:
        """Time to the response head from the request's sending (from the attempt's start when never sent):
        what a latency-aware balancer should see, without the time spent dialling."""
        return self.ended - (self.started if self.sent_at is None else self.sent_at)

    @property
    def kind(self) -> FailureKind | None:
        return None if self.failure is None else self.failure.kind


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again on ``target`` after ``delay`` seconds."""

    target: Target
    delay: float = 0.0


class RetryPolicy(Protocol):
    """Decides, after an attempt failed, whether to try again (``sidecar.resilience.retry.Call`` implements it).

    It is asked only when the request can be replayed, and only for failures before any response byte
    was relayed: connect failures, resets, timeouts, protocol errors, a response head whose status is
    in ``statuses``, or a gRPC call's status in ``grpc_statuses`` (that response is then discarded, its
    connection closed). It may edit the request head's headers for the attempt it returns: each attempt sends
    the head as it is when the attempt starts.
    """

    statuses: frozenset[int]
    grpc_statuses: frozenset[int]

    def next_attempt(self, attempt: AttemptRecord) -> Retry | None: ...


class ConnectionInfo:
    """Facts about one client connection, handed to the route callback with every request.

    ``data`` is the caller's: e.g. the SPIFFE ID parsed once per connection from the peer certificate.
    """

    __slots__ = ("data", "listener", "peername", "sockname", "ssl_object")

    def __init__(self, listener: str, peername: Any, sockname: Any, ssl_object: ssl.SSLObject | None) -> None:
        self.listener = listener
        self.peername = peername
        self.sockname = sockname
        self.ssl_object = ssl_object
        self.data: dict[str, Any] = {}

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The verified peer certificate as ``ssl`` decodes it (subjectAltName...), or None."""
        if self.ssl_object is None:
            return None
        # a Mapping decoded when read (sidecar.tls.context.PeerCertificate) on the data plane's connections
        cert: Mapping[str, Any] | None = self.ssl_object.getpeercert()
        return dict(cert) if cert else None

    @property
    def peer_certificate_der(self) -> bytes | None:
        if self.ssl_object is None:
            return None
        return self.ssl_object.getpeercert(binary_form=True)


@dataclass(slots=True, init=False)
class RequestStats:
    """One finished request, for metrics and outlier detection (``on_request_done``).

    Made once per request and handed over: ``on_request_done`` owns it from then on and may set a field (the
    data plane puts the last endpoint in ``tag``) before passing it on, instead of copying it.

    ``status`` is what the client got (0 if nothing: the client went away or the connection was cut);
    ``error`` names why it did not end cleanly: a :class:`FailureKind` value ("connect-failure", "reset",
    "timeout", "protocol-error"), "local" (a route/limit error answered by the proxy), "client-reset",
    "reset-after-response" (upstream broke mid-body), "deadline", "upstream-sidecar" (a gRPC call another
    sidecar answered with its own error: it never reached the app) or None.
    """

    method: str
    host: str
    target: bytes                     # request target as received (origin form)
    status: int
    error: str | None
    request_bytes: int                # body bytes received from the client
    response_bytes: int               # body bytes sent to the client
    started: float                    # loop time the request head was complete
    response_started: float | None    # loop time the response head was sent to the client
    ended: float
    attempts: int
    upstream: str | None              # the last attempt's address, "host:port"
    tag: Any                          # the last attempt's Target.tag
    request_id: str | None
    trace_id: str | None
    span_id: str | None               # this hop's span (sent upstream as the traceparent parent-id)
    parent_span_id: str | None        # the caller's span, if it sent a traceparent
    upgraded: bool = False
    # wall-clock-precise time from the request head to the end: uvloop's loop time has millisecond steps,
    # too coarse for a hop that takes a few hundred microseconds
    elapsed: float | None = None
    conn: ConnectionInfo | None = None  # the client connection (peer identity on inbound)
    trace_flags: int | None = None      # the W3C flags this hop sent on (bit 0: sampled)
    grpc: bool = False                  # a gRPC call (content-type application/grpc*)
    # its status: from the trailers or a trailers-only answer, the sidecar's own error's code, 4 for a deadline
    # that passed mid-response, 1 (CANCELLED) when the client reset it; None when none was seen (a cut stream)
    grpc_status: int | None = None

    def __init__(self, method: str, host: str, target: bytes, status: int, error: str | None, request_bytes: int,
                 response_bytes: int, started: float, response_started: float | None, ended: float, attempts: int,
                 upstream: str | None, tag: Any, request_id: str | None, trace_id: str | None, span_id: str | None,
                 parent_span_id: str | None, upgraded: bool = False, elapsed: float | None = None,
                 conn: ConnectionInfo | None = None, trace_flags: int | None = None, grpc: bool = False,
                 grpc_status: int | None = None) -> None:
        self.method = method
        self.host = host
        self.target = target
        self.status = status
        self.error = error
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes
        self.started = started
        self.response_started = response_started
        self.ended = ended
        self.attempts = attempts
        self.upstream = upstream
        self.tag = tag
        self.request_id = request_id
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.upgraded = upgraded
        self.elapsed = elapsed
        self.conn = conn
        self.trace_flags = trace_flags
        self.grpc = grpc
        self.grpc_status = grpc_status

    @property
    def duration(self) -> float:
        return self.elapsed if self.elapsed is not None else self.ended - self.started


RouteResult = Target | Awaitable[Target]
RouteFn = Callable[[RequestHead, ConnectionInfo], RouteResult]
"""``route(head, conn) -> Target`` or an awaitable of one; raise a SidecarError to answer the client with it.
It may edit ``head.headers`` (and ``head.target``/``head.host``) before they are sent."""


class H2Key:
    """A Target's ``pool_key`` whose requests go over HTTP/2: the pools hand them to
    :class:`~sidecar.proxy.h2pool.H2UpstreamPool` (imported with the first such target: HTTP/2 costs memory only
    when used), one multiplexed connection carrying many streams."""

    __slots__ = ()


class H2cKey(H2Key):
    """An app reached over h2c (HTTP/2 with prior knowledge, no TLS)."""

    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __eq__(self, other: object) -> bool:
        return isinstance(other, H2cKey) and (self.host, self.port) == (other.host, other.port)

    def __hash__(self) -> int:
        return hash(("h2c", self.host, self.port))

    def __repr__(self) -> str:
        return f"h2c://{self.host}:{self.port}"


class H2PeerKey(H2Key):
    """A peer sidecar reached over HTTP/2 on mTLS (ALPN ``h2``), for one destination service (its SNI and identity)
    and one generation of our TLS context. ``fallback`` is the HTTP/1.1 Target of the same peer and service: the
    pool sends there when the peer's handshake does not select ``h2`` (a sidecar that does not speak it). It is
    not part of the key's identity."""

    __slots__ = ("address", "fallback", "generation", "service")

    def __init__(self, address: tuple[str, int], service: str, generation: int, fallback: Target | None) -> None:
        self.address = address
        self.service = service
        self.generation = generation
        self.fallback = fallback

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, H2PeerKey) and self.address == other.address and self.service == other.service
                and self.generation == other.generation)

    def __hash__(self) -> int:
        return hash(("h2", self.address, self.service, self.generation))

    def __repr__(self) -> str:
        host, port = self.address
        return f"h2://{host}:{port}/{self.service}#{self.generation}"
