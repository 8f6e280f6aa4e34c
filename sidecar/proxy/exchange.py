"""One request through the proxy: route it, carry it upstream (retrying when a policy says so), relay the
response back, and report what happened.

Theory of operation
-------------------
An :class:`Exchange` lives from a complete request head to the end of its response. It is driven only by
callbacks: its client side (body pieces, end, loss, write pressure), the pool (a stream, or the reason there
is none), the upstream stream (response head, body, end, loss) and one timer. Nothing per request creates a
task unless the route callback is asynchronous or a connection must be dialed. It knows no wire format: the
client side and the upstream stream (:mod:`sidecar.proxy.sides`) are the codec's, HTTP/1.1 today.

Its progress is one phase (``ROUTING`` ... ``DONE``, below) whose allowed transitions are written once in
``TRANSITIONS``; whether the request body has been read in full runs beside it (``request_done``), since a
response may start, and even end, before the request has.

An *attempt* is one upstream exchange. Before a response head is relayed, an attempt can fail
(:mod:`sidecar.proxy.failures`) and the target's :class:`~sidecar.proxy.target.RetryPolicy` may start
another on a (possibly different) target, sending the request again from the replay buffer; a stale
pooled connection (closed by the server while idle) gets one silent retry on a fresh connection. Once a
response head is relayed, the exchange is committed: any failure can only cut the client's response.

A gRPC call (``content-type: application/grpc*``, one field lookup per request) differs in three ways. Its
status is retriable (``RetryPolicy.grpc_statuses``) while nothing of the response reached the client: a
trailers-only answer carries it in the head; otherwise, when a retry is still possible, the head is held
(``HOLDING``) until the first message commits it or the end brings the status in its trailers. Its deadline
bounds the whole call, not only the wait for the head: when it passes after the head went out, the upstream
stream is reset and the client gets DEADLINE_EXCEEDED in the trailers. Its status is reported
(``RequestStats.grpc_status``).

Invariants: an upstream stream goes back to its pool only when its request was fully sent and its response
fully received, both framed (not delimited by close); a stream is unbound before it is dropped, so a dropped
stream never calls back into an exchange.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from time import perf_counter
from typing import Final

from sidecar.errors import DeadlineExceeded, SidecarError, classify
from sidecar.http2.grpc import is_grpc
from sidecar.proxy import tracecontext
from sidecar.proxy.engine import Engine
from sidecar.proxy.failures import AttemptTimeout, UpstreamFailure, UpstreamProtocolError, UpstreamReset
from sidecar.proxy.grpcheads import (
    deadline_trailers,
    from_sidecar,
    is_grpc_request,
    response_status,
    trailers_status,
)
from sidecar.proxy.http1 import IDEMPOTENT, RemoteProtocolError, RequestHead, ResponseHead, Trailers
from sidecar.proxy.limits import LazyTimer
from sidecar.proxy.sides import ClientSide, StreamPool, StreamUser, UpstreamStream
from sidecar.proxy.target import AttemptRecord, RequestStats, Target
from sidecar.proxy.tunnel import Tunnel

log = logging.getLogger(__name__)

# The exchange's phase, one at a time; the request body's end (``request_done``) runs beside it, since a response
# may start (and even end) before the request has.
ROUTING: Final = 0            # the route callback decides (possibly asynchronously)
CONNECTING: Final = 1         # an attempt waits for an upstream connection from the pool
BACKOFF: Final = 2            # between attempts: the retry policy's delay
AWAITING_RESPONSE: Final = 3  # the request head went upstream; no response head yet (retries still possible)
HOLDING: Final = 4            # a gRPC response head is held back: its status may still make it a retry
RESPONDING: Final = 5         # a response head went to the client: committed, a failure can only cut
UPGRADING: Final = 6          # a 101 went to the client; the upstream connection turns into a tunnel
TUNNEL: Final = 7             # bytes relayed as they are; the tunnel reports the exchange when it closes
DONE: Final = 8               # reported, the client connection told; late callbacks are ignored

PHASE_NAMES: Final = ("routing", "connecting", "backoff", "awaiting-response", "holding", "responding", "upgrading",
                      "tunnel", "done")


def _phases(*phases: int) -> int:
    mask = 0
    for phase in phases:
        mask |= 1 << phase
    return mask


# the allowed transitions, from each phase (index) to any phase of its bit set
TRANSITIONS: Final[tuple[int, ...]] = (
    _phases(CONNECTING, DONE),                                           # ROUTING
    _phases(CONNECTING, BACKOFF, AWAITING_RESPONSE, DONE),               # CONNECTING (a failed dial: retry)
    _phases(CONNECTING, DONE),                                           # BACKOFF
    _phases(CONNECTING, BACKOFF, HOLDING, RESPONDING, UPGRADING, DONE),  # AWAITING_RESPONSE (retry, stale)
    _phases(CONNECTING, BACKOFF, RESPONDING, DONE),                      # HOLDING (a gRPC status: retry)
    _phases(DONE),                                                       # RESPONDING
    _phases(TUNNEL, DONE),                                               # UPGRADING
    0,                                                                   # TUNNEL
    0,                                                                   # DONE
)


_TRACEPARENT: Final = b"traceparent"
_REQUEST_ID: Final = b"x-request-id"
_CONTENT_TYPE: Final = b"content-type"
_GRPC_PREFIX: Final = b"application/grpc"


class Exchange(StreamUser):
    __slots__ = (
        "_retry_handle",
        "_route_task",
        "attempt",
        "attempt_sent",
        "attempt_started",
        "client",
        "clock_start",
        "conn",
        "deadline",
        "engine",
        "error",
        "grpc",
        "grpc_status",
        "head",
        "held",
        "last_activity",
        "limits",
        "loop",
        "parent_span_id",
        "pending",
        "pending_size",
        "phase",
        "pool",
        "replay",
        "replay_size",
        "request_bytes",
        "request_done",
        "request_id",
        "request_trailers",
        "response",
        "response_bytes",
        "response_started",
        "span_id",
        "stale_retried",
        "started",
        "status",
        "target",
        "timer",
        "trace_flags",
        "trace_id",
        "try_deadline",
    )

    def __init__(self, engine: Engine, client: ClientSide, head: RequestHead, now: float,
                 loop: asyncio.AbstractEventLoop, timer: LazyTimer) -> None:
        self.engine = engine
        self.client = client
        self.loop = loop
        self.timer = timer            # the client side's: one per connection (HTTP/1.1) or stream
        self.limits = engine.limits
        self.head = head
        self.started = now
        self.clock_start = perf_counter()
        self.last_activity = now
        self.target: Target | None = None
        self.pool: StreamPool | None = None
        self.conn: UpstreamStream | None = None
        self.attempt = 0
        self.attempt_started = now
        self.attempt_sent: float | None = None
        self.phase = ROUTING
        self.stale_retried = False
        self.deadline: float | None = None
        self.try_deadline: float | None = None
        self.request_done = False
        self.request_trailers: Trailers | None = None   # kept with the body, for a retry
        self.request_bytes = 0
        # every body piece so far while the body is within the replay limit, else None
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        # body pieces received while no upstream connection is ready, once the replay buffer overflowed
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.response: ResponseHead | None = None
        self.response_bytes = 0
        self.response_started: float | None = None
        self.error: str | None = None
        self.status = 0
        self.grpc = False
        self.grpc_status: int | None = None     # a gRPC call's status, once known
        self.held: ResponseHead | None = None     # HOLDING: the gRPC response head not yet relayed
        self.request_id: str | None = None
        self.trace_id: str | None = None
        self.trace_flags: int | None = None
        self.span_id: str | None = None
        self.parent_span_id: str | None = None
        self._route_task: asyncio.Task[None] | None = None
        self._retry_handle: asyncio.TimerHandle | None = None

    def _to(self, phase: int) -> None:
        if not TRANSITIONS[self.phase] & (1 << phase):
            # a transition the table does not allow: a bug in the exchange
            raise RuntimeError(f"exchange {PHASE_NAMES[self.phase]} -> {PHASE_NAMES[phase]}")
        self.phase = phase

    @property
    def finished(self) -> bool:
        """Nothing more to do for the client connection: done, or handed over to a tunnel."""
        return self.phase >= TUNNEL

    # ------------------------------------------------------------------------------------ start

    def begin(self) -> None:
        engine = self.engine
        head = self.head
        overload = engine.overload
        if overload is not None and overload.shedding:
            self.fail_local(overload.shed(engine.name))   # not raised: the guard's error is shared
            return
        if engine.edit_headers:
            self._edit_headers(head)   # notes a gRPC content type on the way
        else:
            self.grpc = is_grpc_request(head)
        try:
            result = engine.route(head, self.client.connection_info())
        except Exception as e:
            self.fail_local(e)
            return
        if isinstance(result, Target):
            self._dispatch_at(result, self.started, False)   # the head was read in this same callback
        else:
            self.timer.set(self.started + self.limits.stream_idle_timeout)
            self._route_task = self.loop.create_task(self._await_route(result))

    def _edit_headers(self, head: RequestHead) -> None:
        # one pass over the fields, no TraceParent object: the ids are kept as text for RequestStats and the
        # header written as bytes (tracecontext.next_hop's rules: the caller's trace and flags, a new span id)
        ids = self.engine.ids
        items = head.headers.items
        incoming = None
        incoming_at = -1
        incoming_count = 0
        request_id = None
        b3 = False
        for i, item in enumerate(items):
            lname = item[0]
            if lname == _TRACEPARENT:
                incoming = item
                incoming_at = i
                incoming_count += 1
            elif lname == _REQUEST_ID:
                request_id = item[2]
            elif lname == _CONTENT_TYPE:
                value = item[2]
                # the common case (a JSON or form body) decided by a prefix compare, without a call
                if value[:16].lower() == _GRPC_PREFIX:
                    self.grpc = is_grpc(value)
            elif lname == b"b3" or lname.startswith(b"x-b3-"):
                b3 = True
        if request_id is None and incoming is None and not b3:
            # no ids at all (every request at the caller's sidecar): a request id and a new trace, one draw
            rid, trace_id, span_id, flags = ids.fresh()
            self.request_id = rid
            self.trace_id = trace_id
            self.span_id = span_id
            self.trace_flags = flags
            self.parent_span_id = None
            items.append((_REQUEST_ID, _REQUEST_ID, rid.encode()))
            items.append((_TRACEPARENT, _TRACEPARENT, tracecontext.header(trace_id, span_id, flags)))
            return
        if request_id is None:
            self.request_id = rid = ids.request_id()
            items.append((_REQUEST_ID, _REQUEST_ID, rid.encode()))
        else:
            self.request_id = request_id.decode("latin-1")
        fields = None if incoming is None else tracecontext.parse_fields(incoming[2])
        if fields is None and b3:
            # B3 from a Zipkin-instrumented caller continues the same trace (W3C wins when both are valid)
            parent = tracecontext.from_b3((lname, value) for lname, _, value in items)
            if parent is not None:
                fields = (parent.trace_id, parent.span_id, parent.flags)
        if fields is None:
            trace_id, flags = ids.new_trace()
            self.parent_span_id = None
        else:
            trace_id, self.parent_span_id, flags = fields
        self.trace_id = trace_id
        self.span_id = span_id = ids.span_id()
        self.trace_flags = flags
        if incoming is not None:
            if incoming_count == 1:
                del items[incoming_at]   # by place: remove() would compare the fields before it, tuple by tuple
            else:
                items = head.headers.items = [item for item in items if item[0] != _TRACEPARENT]
        items.append((_TRACEPARENT, _TRACEPARENT, tracecontext.header(trace_id, span_id, flags)))

    async def _await_route(self, pending: Awaitable[Target]) -> None:
        try:
            target = await pending
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if self.phase == ROUTING:
                self.fail_local(e)
            return
        if self.phase == ROUTING:
            self.dispatch(target)

    def dispatch(self, target: Target, fresh: bool = False) -> None:
        """Start an attempt on ``target``."""
        self._dispatch_at(target, self.loop.time(), fresh)

    def _dispatch_at(self, target: Target, now: float, fresh: bool) -> None:
        """:meth:`dispatch` at loop time ``now`` (read by the caller in the same callback: each read of the loop's
        clock is a method call and a clock_gettime)."""
        if not isinstance(target, Target):
            self.fail_local(TypeError(f"route returned {type(target).__name__}, not a Target"))
            return
        if self.target is None and target.timeout is not None:
            self.deadline = self.started + target.timeout
        self.target = target
        self.attempt += 1
        self.attempt_started = now
        self.attempt_sent = None
        self._to(CONNECTING)
        self.try_deadline = None if target.try_timeout is None else now + target.try_timeout
        self._arm_timer(now)
        pool = self.pool = self.engine.pools.get(target)
        try:
            conn = pool.acquire(target, self, fresh)
        except SidecarError as e:
            self.fail_local(e)
            return
        if conn is not None:
            self._start_on(conn, now)

    def _arm_timer(self, now: float) -> None:
        # waiting for a response head: the earliest of the overall and per-try deadlines, and in any case the
        # stream idle timeout, so that a request never waits forever
        deadline = now + self.limits.stream_idle_timeout
        if self.deadline is not None and self.deadline < deadline:
            deadline = self.deadline
        if self.try_deadline is not None and self.try_deadline < deadline:
            deadline = self.try_deadline
        self.timer.set(deadline)

    # ------------------------------------------------------------------------------------ pool callbacks

    def on_connection(self, stream: UpstreamStream) -> None:
        self._start_on(stream, self.loop.time())

    def _start_on(self, stream: UpstreamStream, now: float) -> None:
        if self.phase != CONNECTING or self.conn is not None:
            assert self.pool is not None
            self.pool.release(stream, now)
            return
        self.conn = stream
        client = self.client
        if client.write_paused():
            stream.pause_reading(True)
        # the head is encoded per attempt: the retry policy may have edited it (the deadline left to the next hop)
        body = self.replay if self.replay is not None else self.pending
        self.pending = []
        self.pending_size = 0
        self._to(AWAITING_RESPONSE)
        self.attempt_sent = now
        stream.start(self, self.head, body, self.request_done, self.request_trailers)
        client.pause_request("pending", False)

    def on_connect_failed(self, error: BaseException) -> None:
        if self.phase != CONNECTING:
            return   # a dial this exchange no longer waits for (its attempt timed out, or it ended)
        failure = error if isinstance(error, UpstreamFailure) else UpstreamReset("?", str(error))
        self._attempt_failed(failure)
        self.client.flush()

    # ------------------------------------------------------------------------------------ request body

    def on_request_body(self, data: bytes) -> None:
        size = len(data)
        self.request_bytes += size
        replay = self.replay
        conn = self.conn
        if replay is not None:
            if self.replay_size + size <= self.limits.replay_buffer:
                replay.append(data)
                self.replay_size += size
            else:
                self.replay = None
                if conn is None:
                    self.pending = [*replay, data]
                    self.pending_size = self.replay_size + size
        elif conn is None:
            self.pending.append(data)
            self.pending_size += size
        if conn is not None:
            conn.send_body(data)
        elif max(self.pending_size, self.replay_size) > self.limits.high_water:
            self.client.pause_request("pending", True)

    def on_request_end(self, trailers: Trailers | None = None) -> None:
        """The request body is complete; ``trailers``: its trailer section, if it had one."""
        self.request_done = True
        self.request_trailers = trailers
        conn = self.conn
        if conn is not None and not conn.is_closed():
            conn.send_end(trailers)

    @property
    def replayable(self) -> bool:
        return self.replay is not None and self.phase != TUNNEL

    # ------------------------------------------------------------------------------------ response

    def on_response_interim(self, head: ResponseHead) -> None:
        if self.phase == AWAITING_RESPONSE:
            self.client.send_interim(head)

    def on_response_head(self, head: ResponseHead) -> None:
        now = self.loop.time()
        target = self.target
        assert target is not None
        policy = target.retry
        if self.grpc:
            self._grpc_response_head(head, now)
            return
        if policy is not None and head.status in policy.statuses and self.replayable and self.request_done:
            record = self._record(None, head.status, now)
            decision = policy.next_attempt(record)
            self._observe(record)
            if decision is not None:
                self._drop_conn()
                self._retry_after(decision.target, decision.delay)
                return
        elif target.observer is not None:   # no record to build when nobody observes (the inbound's app)
            self._observe(self._record(None, head.status, now))
        self._relay_head(head, now)

    def _grpc_response_head(self, head: ResponseHead, now: float) -> None:
        """A gRPC call's response head: retried on its status (a trailers-only answer, another sidecar's error),
        held while its status may still come in the trailers and be retried, else relayed."""
        target = self.target
        assert target is not None
        policy = target.retry
        status = response_status(head)
        self.grpc_status = status
        if status is not None and head.status == 200 and head.content_length == 0:
            # a trailers-only answer that crossed an HTTP/1.1 hop (a head with grpc-status, an empty body): the head
            # is the whole answer, so an HTTP/2 client gets it as one HEADERS frame that ends the stream
            head.no_body = True
        retry = policy is not None and self.replayable and self.request_done and head.upgrade is None
        if retry and policy is not None and (head.status in policy.statuses or status in policy.grpc_statuses):
            if self._retry_response(head, status, now, False):
                return
        elif retry and policy is not None and status is None and policy.grpc_statuses:
            self.held = head
            self._to(HOLDING)
            return
        elif target.observer is not None:
            self._observe(self._record(None, head.status, now, status))
        if status is not None and self.error is None and from_sidecar(head):
            self.error = "upstream-sidecar"
        self._relay_head(head, now)

    def _retry_response(self, head: ResponseHead, grpc_status: int | None, now: float, complete: bool) -> bool:
        """A response nothing of which reached the client, with a status the policy retries on: True when a retry
        was started (the response discarded), False when the policy declined (the response goes on).
        ``complete``: the response was read to its end, so its connection may serve another request."""
        target = self.target
        assert target is not None and target.retry is not None
        record = self._record(None, head.status, now, grpc_status)
        decision = target.retry.next_attempt(record)
        self._observe(record)
        if decision is None:
            return False
        self.held = None
        self.grpc_status = None
        conn = self.conn
        if (complete and conn is not None and self.request_done and head.keep_alive and not head.close_delimited
                and not conn.is_closed()):
            self.conn = None
            assert self.pool is not None
            self.pool.release(conn, now)   # a whole answer read: the connection goes back, as after any response
        else:
            self._drop_conn()
        self._retry_after(decision.target, decision.delay)
        return True

    def _release_held(self, now: float) -> None:
        """HOLDING, and the first message arrived: the held head is committed and relayed."""
        head = self.held
        assert head is not None and self.target is not None
        self.held = None
        if self.target.observer is not None:
            self._observe(self._record(None, head.status, now))
        self._relay_head(head, now)

    def _relay_head(self, head: ResponseHead, now: float) -> None:
        target = self.target
        assert target is not None
        client = self.head
        if head.upgrade is not None and client.upgrade is None:
            self._drop_conn()
            failure = UpstreamProtocolError(target.authority, "101 to a request that did not ask to upgrade")
            self._attempt_failed(failure)
            return
        if (head.no_body and head.content_length is None and head.status >= 200 and head.status != 204
                and head.status != 304 and client.method != "HEAD"):
            # an HTTP/2 response that ended with its HEADERS (a gRPC trailers-only answer): its body is empty, and
            # an HTTP/1.1 hop after this one must say so, or its client would read to the connection's close
            head.content_length = 0
        self.response = head
        self.status = head.status
        self.response_started = now
        self.last_activity = now
        idle = now + self.limits.stream_idle_timeout
        if self.grpc and self.deadline is not None and self.deadline < idle:
            idle = self.deadline   # a gRPC deadline bounds the whole call
        self.timer.set(idle)
        self._to(RESPONDING if head.upgrade is None else UPGRADING)
        self.client.send_head(head, client)

    def on_response_body(self, data: bytes) -> None:
        now = self.loop.time()
        if self.phase == HOLDING:
            self._release_held(now)
        self.response_bytes += len(data)
        self.client.send_body(data)
        self.last_activity = now

    def on_response_end(self, trailers: Trailers | None) -> None:
        if self.phase == HOLDING:
            held = self.held
            assert held is not None and self.target is not None and self.target.retry is not None
            now = self.loop.time()
            status = trailers_status(trailers)
            if status in self.target.retry.grpc_statuses:
                if self._retry_response(held, status, now, True):
                    return
                self.held = None
                self._relay_head(held, now)
            else:
                self._release_held(now)
        response = self.response
        if self.phase != RESPONDING or response is None:
            return  # a 101: the upgrade follows
        if self.grpc and trailers:
            self.grpc_status = trailers_status(trailers)
        self.client.send_end(trailers)
        # the upstream may answer before the request is complete: then it will not read the rest; neither do we
        self._finish(reuse=self.request_done and response.keep_alive and not response.close_delimited)

    def on_upstream_upgraded(self, rest: bytes) -> None:
        conn = self.conn
        if self.phase != UPGRADING or conn is None:
            return
        server = conn.tunnel_transport()
        if server is None:
            return
        self.conn = None
        conn.unbind()
        assert self.pool is not None
        self.pool.detach(conn)
        self._to(TUNNEL)
        client = self.client
        client.flush()
        tunnel = client.open_tunnel(server, rest, self._tunnel_done)
        conn.attach_tunnel(tunnel)

    def _tunnel_done(self, tunnel: Tunnel) -> None:
        self.request_bytes += tunnel.bytes_up
        self.response_bytes += tunnel.bytes_down
        self._report(self.loop.time())

    def on_upstream_error(self, error: RemoteProtocolError) -> None:
        target = self.target
        assert target is not None
        self._drop_conn(abort=True)
        if self.phase == AWAITING_RESPONSE or self.phase == HOLDING:
            self.held = None
            self._attempt_failed(UpstreamProtocolError(target.authority, error.message))
        else:
            self.error = "protocol-error"
            self._cut()

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        conn = self.conn
        if conn is None or self.phase >= TUNNEL:
            return
        self.conn = None
        assert self.pool is not None and self.target is not None
        self.pool.forget(conn)
        response = self.response
        self.held = None
        if self.phase == AWAITING_RESPONSE or self.phase == HOLDING or response is None:
            if conn.was_reused() and not self.stale_retried and self.replayable and self.head.method in IDEMPOTENT:
                # the server closed a pooled connection as we reused it: once, on a fresh connection
                self.stale_retried = True
                self.attempt -= 1
                self.dispatch(self.target, fresh=True)
                return
            reason = "connection closed before the response" if exc is None else f"connection reset ({exc})"
            self._attempt_failed(UpstreamReset(self.target.authority, reason))
        elif response.close_delimited and exc is None and self.phase == RESPONDING:
            self.client.send_end(None)
            self._finish(reuse=False)
        else:
            self.error = "reset-after-response"
            self._cut()

    def on_upstream_paused(self, paused: bool) -> None:
        self.client.pause_request("upstream", paused)

    def on_client_paused(self, paused: bool) -> None:
        if self.conn is not None:
            self.conn.pause_reading(paused)

    def flush(self) -> None:
        self.client.flush()

    # ------------------------------------------------------------------------------------ failures

    def _record(self, failure: UpstreamFailure | None, status: int | None, now: float,
                grpc_status: int | None = None) -> AttemptRecord:
        assert self.target is not None
        return AttemptRecord(self.attempt, self.target, self.head.method, failure, status,
                             self.phase == AWAITING_RESPONSE or self.phase == HOLDING,
                             self.replayable, self.attempt_started, now, self.attempt_sent, grpc_status)

    def _observe(self, record: AttemptRecord) -> None:
        observer = record.target.observer
        if observer is not None:
            try:
                observer(record)
            except Exception:
                log.exception("attempt observer failed")

    def _attempt_failed(self, failure: UpstreamFailure) -> None:
        now = self.loop.time()
        record = self._record(failure, None, now)
        self._observe(record)
        target = self.target
        assert target is not None
        policy = target.retry
        if (policy is not None and self.replayable and self.phase <= HOLDING
                and (self.deadline is None or now < self.deadline)):
            try:
                decision = policy.next_attempt(record)
            except Exception as e:
                self.fail_local(e)
                return
            if decision is not None:
                self._retry_after(decision.target, decision.delay)
                return
        self.error = failure.kind.value
        self.fail_local(failure)

    def _retry_after(self, target: Target, delay: float) -> None:
        if delay <= 0:
            self.dispatch(target)
            return
        self._to(BACKOFF)
        self._retry_handle = self.loop.call_later(delay, self._retry, target)

    def _retry(self, target: Target) -> None:
        self._retry_handle = None
        if self.phase == BACKOFF:
            self.dispatch(target)
            self.client.flush()

    def on_timer(self) -> None:
        """The shared timer fired: a deadline before the response head, or the stream idle timeout after."""
        now = self.loop.time()
        limits = self.limits
        if self.phase >= TUNNEL:
            return
        if self.phase >= RESPONDING:
            idle_until = self.last_activity + limits.stream_idle_timeout
            if self.grpc and self.deadline is not None and self.phase == RESPONDING:
                if now >= self.deadline:
                    self._grpc_deadline()
                    return
                idle_until = min(idle_until, self.deadline)
            if now < idle_until:
                self.timer.set(idle_until)
                return
            self.error = "stream-idle-timeout"
            self._drop_conn(abort=True)
            self._cut()
            return
        target = self.target
        if self.phase == ROUTING or target is None:
            self.error = "timeout"
            self.fail_local(DeadlineExceeded("no route decided in time"))
            self.client.flush()
            return
        address = target.authority
        if self.deadline is not None and now >= self.deadline:
            timeout = self.deadline - self.started
            failure = AttemptTimeout(timeout, address, "request")
        elif self.try_deadline is not None and now >= self.try_deadline:
            failure = AttemptTimeout(self.try_deadline - self.attempt_started, address, "try")
        else:
            failure = AttemptTimeout(limits.stream_idle_timeout, address, "stream-idle")
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        self.held = None
        self._drop_conn(abort=True)
        if self.pool is not None:
            self.pool.cancel(self)
        if failure.which == "try":
            self._attempt_failed(failure)
        else:
            self._observe(self._record(failure, None, now))
            self.error = "timeout"
            self.fail_local(failure)
        self.client.flush()

    def _grpc_deadline(self) -> None:
        """A gRPC call's deadline passed after its response began: the upstream stream is reset (the server
        learns the call is over) and the client's response ends with DEADLINE_EXCEEDED in its trailers, or is
        cut when its framing has no place for trailers."""
        assert self.deadline is not None
        self.error = "timeout"
        self._drop_conn(abort=True)
        response = self.response
        if response is not None and response.content_length is not None and not response.chunked:
            self._cut()
            return
        self.grpc_status = 4
        self.client.send_end(deadline_trailers(self.deadline - self.started))
        self._finish(reuse=False)

    def _drop_conn(self, abort: bool = False) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.unbind()
            assert self.pool is not None
            self.pool.forget(conn)
            if abort:
                conn.abort()

    def fail_local(self, exc: BaseException) -> None:
        """Answer the client with SPEC's error for ``exc`` (nothing of a response was sent yet)."""
        if self.phase >= TUNNEL:
            return
        if self.phase >= RESPONDING:
            self._cut()
            return
        if not isinstance(exc, SidecarError):
            log.error("proxy error on %s %r", self.head.method, self.head.target, exc_info=exc)
        if self.error is None:
            self.error = "local"
        route = self._route_task
        if route is not None and not route.done() and route is not asyncio.current_task():
            route.cancel()   # an asynchronous route still deciding (waiting for a slot): it must let go of it
        self._drop_conn(abort=True)
        if self.pool is not None:
            self.pool.cancel(self)
        client = self.client
        self.held = None
        if self.grpc:
            self.grpc_status = classify(exc)[0].grpc
        self.status = client.send_error(exc, self.head, self.request_done)
        now = self.loop.time()
        self.response_started = now
        self._to(DONE)
        client.flush()
        self._report(now)
        client.exchange_done(self.request_done, now)

    def _cut(self) -> None:
        """A failure after the response started: the client's connection is closed mid-response."""
        if self.phase >= TUNNEL:
            return
        self._to(DONE)
        self._drop_conn(abort=True)
        self._report(self.loop.time())
        self.client.flush()
        self.client.cut()

    def on_client_lost(self) -> None:
        if self.phase >= TUNNEL:
            return
        self._to(DONE)
        if self.error is None:
            self.error = "client-reset"
            if self.grpc:
                self.grpc_status = 1   # CANCELLED: what the client's reset says to gRPC
        if self._route_task is not None:
            self._route_task.cancel()
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._drop_conn(abort=True)
        if self.pool is not None:
            self.pool.cancel(self)
        self._report(self.loop.time())

    # ------------------------------------------------------------------------------------ the end

    def _finish(self, reuse: bool) -> None:
        self._to(DONE)
        now = self.loop.time()
        conn = self.conn
        if conn is not None:
            self.conn = None
            assert self.pool is not None
            if reuse and not conn.is_closed():
                self.pool.release(conn, now)
            else:
                conn.unbind()
                self.pool.forget(conn)
        client = self.client
        client.flush()
        self._report(now)
        client.exchange_done(self.request_done, now)

    def _report(self, now: float) -> None:
        callback = self.engine.on_request_done
        if callback is None:
            return
        target = self.target
        head = self.head
        stats = RequestStats(
            head.method, head.host, head.target, self.status, self.error, self.request_bytes, self.response_bytes,
            self.started, self.response_started, now, self.attempt,
            None if target is None else target.authority, None if target is None else target.tag,
            self.request_id, self.trace_id, self.span_id, self.parent_span_id, self.phase == TUNNEL,
            perf_counter() - self.clock_start, self.client.connection_info(), self.trace_flags, self.grpc,
            self.grpc_status,
        )
        try:
            callback(stats)
        except Exception:
            log.exception("on_request_done failed")
