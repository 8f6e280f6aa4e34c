"""One request through the proxy: route it, carry it upstream (retrying when a policy says so), relay the
response back, and report what happened.

Theory of operation
-------------------
An :class:`Exchange` lives from a complete request head to the end of its response. It is driven only by
callbacks: the client connection (body pieces, end, loss, write pressure), the pool (a connection, or the
reason there is none), the upstream connection (response head, body, end, loss) and one timer. Nothing
per request creates a task unless the route callback is asynchronous or a connection must be dialed.

An *attempt* is one upstream exchange. Before a response head is relayed, an attempt can fail
(:mod:`sidecar.proxy.failures`) and the target's :class:`~sidecar.proxy.target.RetryPolicy` may start
another on a (possibly different) target, sending the request again from the replay buffer; a stale
pooled connection (closed by the server while idle) gets one silent retry on a fresh connection. Once a
response head is relayed, the exchange is committed: any failure can only cut the client connection.

Writes to the client are collected in the client connection's output list and flushed once per event
(one ``writev`` for a response head and body that arrive together).

Invariants: an upstream connection goes back to its pool only when its request was fully sent and its
response fully received, both framed (not delimited by close); ``conn.user`` is cleared before a
connection is dropped, so a dropped connection never calls back into an exchange.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from time import perf_counter
from typing import Final, Protocol

from sidecar.errors import DeadlineExceeded, SidecarError, rescue
from sidecar.proxy import tracecontext
from sidecar.proxy.engine import Engine
from sidecar.proxy.failures import AttemptTimeout, UpstreamFailure, UpstreamProtocolError, UpstreamReset
from sidecar.proxy.http1 import (
    IDEMPOTENT,
    LAST_CHUNK,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
    encode_chunk,
    simple_response,
)
from sidecar.proxy.limits import LazyTimer
from sidecar.proxy.pool import UpstreamPool
from sidecar.proxy.target import AttemptRecord, ConnectionInfo, RequestStats, Target
from sidecar.proxy.tunnel import Tunnel
from sidecar.proxy.upstream import UpstreamConnection

log = logging.getLogger(__name__)


class Downstream(Protocol):
    """What an exchange uses of its client connection (a :class:`~sidecar.proxy.downstream.DownstreamProtocol`)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    info: ConnectionInfo
    out: list[bytes]
    timer: LazyTimer
    client_paused: bool

    def flush(self) -> None: ...
    def pause_for(self, reason: str, paused: bool) -> None: ...
    def exchange_done(self, keep_alive: bool) -> None: ...
    def enter_tunnel(self, tunnel: Tunnel) -> None: ...
    def abort(self) -> None: ...

# The exchange's phase, one at a time; the request body's end (``request_done``) runs beside it, since a response
# may start (and even end) before the request has.
ROUTING: Final = 0            # the route callback decides (possibly asynchronously)
CONNECTING: Final = 1         # an attempt waits for an upstream connection from the pool
BACKOFF: Final = 2            # between attempts: the retry policy's delay
AWAITING_RESPONSE: Final = 3  # the request head went upstream; no response head yet (retries still possible)
RESPONDING: Final = 4         # a response head went to the client: committed, a failure can only cut
UPGRADING: Final = 5          # a 101 went to the client; the upstream connection turns into a tunnel
TUNNEL: Final = 6             # bytes relayed as they are; the tunnel reports the exchange when it closes
DONE: Final = 7               # reported, the client connection told; late callbacks are ignored

PHASE_NAMES: Final = ("routing", "connecting", "backoff", "awaiting-response", "responding", "upgrading", "tunnel",
                      "done")


def _phases(*phases: int) -> int:
    mask = 0
    for phase in phases:
        mask |= 1 << phase
    return mask


# the allowed transitions, from each phase (index) to any phase of its bit set
TRANSITIONS: Final = (
    _phases(CONNECTING, DONE),                                           # ROUTING
    _phases(CONNECTING, BACKOFF, AWAITING_RESPONSE, DONE),               # CONNECTING (a failed dial: retry)
    _phases(CONNECTING, DONE),                                           # BACKOFF
    _phases(CONNECTING, BACKOFF, RESPONDING, UPGRADING, DONE),           # AWAITING_RESPONSE (retry, stale)
    _phases(DONE),                                                       # RESPONDING
    _phases(TUNNEL, DONE),                                               # UPGRADING
    0,                                                                   # TUNNEL
    0,                                                                   # DONE
)


class PhaseError(RuntimeError):
    """A transition the table does not allow: a bug in the exchange."""


_TRACEPARENT = b"traceparent"
_REQUEST_ID = b"x-request-id"


class Exchange:
    __slots__ = (
        "_retry_handle",
        "_route_task",
        "attempt",
        "attempt_sent",
        "attempt_started",
        "clock_start",
        "close_after",
        "conn",
        "deadline",
        "down",
        "down_chunked",
        "early_tunnel",
        "engine",
        "error",
        "head",
        "head_bytes",
        "last_activity",
        "limits",
        "loop",
        "out",
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

    def __init__(self, engine: Engine, down: Downstream, head: RequestHead, now: float) -> None:
        self.engine = engine
        self.down = down
        # the connection's parts used on every request, held with their own types: through the Downstream
        # protocol each use would be a lookup by name, here the compiled engine reads them directly
        self.loop = down.loop
        self.out = down.out
        self.timer = down.timer
        self.limits = engine.limits
        self.head = head
        self.started = now
        self.clock_start = perf_counter()
        self.last_activity = now
        self.target: Target | None = None
        self.pool: UpstreamPool | None = None
        self.conn: UpstreamConnection | None = None
        self.head_bytes = b""
        self.attempt = 0
        self.attempt_started = now
        self.attempt_sent: float | None = None
        self.phase = ROUTING
        self.stale_retried = False
        self.deadline: float | None = None
        self.try_deadline: float | None = None
        self.request_done = False
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
        self.down_chunked = False
        self.close_after = False
        self.early_tunnel: list[bytes] = []
        self.error: str | None = None
        self.status = 0
        self.request_id: str | None = None
        self.trace_id: str | None = None
        self.trace_flags: int | None = None
        self.span_id: str | None = None
        self.parent_span_id: str | None = None
        self._route_task: asyncio.Task[None] | None = None
        self._retry_handle: asyncio.TimerHandle | None = None

    def _to(self, phase: int) -> None:
        if not TRANSITIONS[self.phase] & (1 << phase):
            raise PhaseError(f"exchange {PHASE_NAMES[self.phase]} -> {PHASE_NAMES[phase]}")
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
            self._edit_headers(head)
        try:
            result = engine.route(head, self.down.info)
        except Exception as e:
            self.fail_local(e)
            return
        if isinstance(result, Target):
            self.dispatch(result)
        else:
            self.timer.set(self.started + self.limits.stream_idle_timeout)
            self._route_task = asyncio.get_running_loop().create_task(self._await_route(result))

    def _edit_headers(self, head: RequestHead) -> None:
        # one pass over the fields, no TraceParent object: the ids are kept as text for RequestStats and the
        # header written as bytes (tracecontext.next_hop's rules: the caller's trace and flags, a new span id)
        ids = self.engine.ids
        items = head.headers.items
        incoming = None
        incoming_count = 0
        request_id = None
        b3 = False
        for item in items:
            lname = item[0]
            if lname == _TRACEPARENT:
                incoming = item
                incoming_count += 1
            elif lname == _REQUEST_ID:
                request_id = item[2]
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
                items.remove(incoming)
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
        if not isinstance(target, Target):
            self.fail_local(TypeError(f"route returned {type(target).__name__}, not a Target"))
            return
        loop = self.loop
        now = loop.time()
        if self.target is None and target.timeout is not None:
            self.deadline = self.started + target.timeout
        # per attempt: the retry policy may have edited the head for this one (the deadline left to the next hop)
        self.head_bytes = self.head.to_bytes()
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
            self.on_connection(conn)

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

    def on_connection(self, conn: UpstreamConnection) -> None:
        if self.phase != CONNECTING or self.conn is not None:
            assert self.pool is not None
            self.pool.release(conn, self.loop.time())
            return
        self.conn = conn
        conn.bind(self, self.head.method == "HEAD")
        if self.down.client_paused:
            conn.pause_reading(True)
        out = [self.head_bytes]
        body = self.replay if self.replay is not None else self.pending
        if body:
            if self.head.chunked:
                for piece in body:
                    out += encode_chunk(piece)
            else:
                out += body
        self.pending = []
        self.pending_size = 0
        if self.request_done and self.head.chunked:
            out.append(LAST_CHUNK)
        self._to(AWAITING_RESPONSE)
        self.attempt_sent = self.loop.time()
        conn.writelines(out)
        self.down.pause_for("pending", False)

    def on_connect_failed(self, error: BaseException) -> None:
        if self.phase != CONNECTING:
            return   # a dial this exchange no longer waits for (its attempt timed out, or it ended)
        failure = error if isinstance(error, UpstreamFailure) else UpstreamReset("?", str(error))
        self._attempt_failed(failure)
        self.down.flush()

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
            if self.head.chunked:
                conn.writelines(encode_chunk(data))
            else:
                conn.write(data)
        elif max(self.pending_size, self.replay_size) > self.limits.high_water:
            self.down.pause_for("pending", True)

    def on_request_end(self) -> None:
        self.request_done = True
        conn = self.conn
        if conn is not None and self.head.chunked and not conn.closed:
            conn.write(LAST_CHUNK)

    def on_early_tunnel_bytes(self, data: bytes) -> None:
        """Client bytes after an upgrade request head, held until the 101 arrives."""
        self.early_tunnel.append(data)

    @property
    def replayable(self) -> bool:
        return self.replay is not None and self.phase != TUNNEL

    # ------------------------------------------------------------------------------------ response

    def on_response_interim(self, head: ResponseHead) -> None:
        if self.phase == AWAITING_RESPONSE:
            self.out.append(head.to_bytes(chunked=False, close=False))

    def on_response_head(self, head: ResponseHead) -> None:
        now = self.loop.time()
        target = self.target
        assert target is not None
        policy = target.retry
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
        client = self.head
        if head.upgrade is not None and client.upgrade is None:
            self._drop_conn()
            failure = UpstreamProtocolError(target.authority, "101 to a request that did not ask to upgrade")
            self._attempt_failed(failure)
            return
        self.response = head
        self.status = head.status
        self.response_started = now
        self.last_activity = now
        self.timer.set(now + self.limits.stream_idle_timeout)
        if head.upgrade is not None:
            self._to(UPGRADING)
            self.out.append(head.to_bytes(chunked=False, close=False))
            return
        self._to(RESPONDING)
        close = not client.keep_alive or self.engine.draining
        chunked = False
        if head.chunked or head.close_delimited:
            if client.version == "1.1":
                chunked = True
            else:
                close = True
        if client.upgrade is not None:
            close = True  # a refused upgrade: the client may already have sent bytes of the new protocol
        self.down_chunked = chunked
        self.close_after = close
        self.out.append(head.to_bytes(chunked, close))

    def on_response_body(self, data: bytes) -> None:
        self.response_bytes += len(data)
        if self.down_chunked:
            self.out += encode_chunk(data)
        else:
            self.out.append(data)
        self.last_activity = self.loop.time()

    def on_response_end(self) -> None:
        response = self.response
        if self.phase != RESPONDING or response is None:
            return  # a 101: the upgrade follows
        if self.down_chunked:
            self.out.append(LAST_CHUNK)
        if self.request_done:
            self._finish(reuse=response.keep_alive and not response.close_delimited)
        else:
            # the upstream answered before the request was complete: it will not read the rest; neither do we
            self.close_after = True
            self._finish(reuse=False)

    def on_upstream_upgraded(self, rest: bytes) -> None:
        conn = self.conn
        response = self.response
        if self.phase != UPGRADING or conn is None or response is None or conn.transport is None:
            return
        down = self.down
        assert down.transport is not None
        self.conn = None
        conn.user = None
        assert self.pool is not None
        self.pool.detach(conn)
        self._to(TUNNEL)
        down.flush()
        stats_started = self

        def done(tunnel: Tunnel) -> None:
            stats_started.request_bytes += tunnel.bytes_up
            stats_started.response_bytes += tunnel.bytes_down
            stats_started._report(down.loop.time())

        tunnel = Tunnel(down.transport, conn.transport, done)
        conn.tunnel = tunnel
        down.enter_tunnel(tunnel)
        if conn.paused:
            conn.pause_reading(False)
        if rest:
            tunnel.from_server(rest)
        for data in self.early_tunnel:
            tunnel.from_client(data)
        self.early_tunnel = []

    def on_upstream_error(self, error: RemoteProtocolError) -> None:
        target = self.target
        assert target is not None
        self._drop_conn(abort=True)
        if self.phase == AWAITING_RESPONSE:
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
        if self.phase == AWAITING_RESPONSE or response is None:
            if conn.reused and not self.stale_retried and self.replayable and self.head.method in IDEMPOTENT:
                # the server closed a pooled connection as we reused it: once, on a fresh connection
                self.stale_retried = True
                self.attempt -= 1
                self.dispatch(self.target, fresh=True)
                return
            reason = "connection closed before the response" if exc is None else f"connection reset ({exc})"
            self._attempt_failed(UpstreamReset(self.target.authority, reason))
        elif response.close_delimited and exc is None and self.phase == RESPONDING:
            if self.down_chunked:
                self.out.append(LAST_CHUNK)
            self._finish(reuse=False)
        else:
            self.error = "reset-after-response"
            self._cut()

    def on_upstream_paused(self, paused: bool) -> None:
        self.down.pause_for("upstream", paused)

    def on_client_paused(self, paused: bool) -> None:
        if self.conn is not None:
            self.conn.pause_reading(paused)

    def flush(self) -> None:
        self.down.flush()

    # ------------------------------------------------------------------------------------ failures

    def _record(self, failure: UpstreamFailure | None, status: int | None, now: float) -> AttemptRecord:
        assert self.target is not None
        return AttemptRecord(self.attempt, self.target, self.head.method, failure, status,
                             self.phase == AWAITING_RESPONSE,
                             self.replayable, self.attempt_started, now, self.attempt_sent)

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
        if (policy is not None and self.replayable and self.phase <= AWAITING_RESPONSE
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
            self.down.flush()

    def on_timer(self) -> None:
        """The shared timer fired: a deadline before the response head, or the stream idle timeout after."""
        now = self.loop.time()
        limits = self.limits
        if self.phase >= TUNNEL:
            return
        if self.phase >= RESPONDING:
            idle_until = self.last_activity + limits.stream_idle_timeout
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
            self.down.flush()
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
        self._drop_conn(abort=True)
        if self.pool is not None:
            self.pool.cancel(self)
        if failure.which == "try":
            self._attempt_failed(failure)
        else:
            self._observe(self._record(failure, None, now))
            self.error = "timeout"
            self.fail_local(failure)
        self.down.flush()

    def _drop_conn(self, abort: bool = False) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.user = None
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
        rescued = rescue(exc)
        close = not self.request_done or not self.head.keep_alive or self.head.upgrade is not None
        self.status = rescued.status
        self.close_after = close
        now = self.loop.time()
        self.response_started = now
        self.out.append(simple_response(rescued.status, rescued.headers, rescued.body, close))
        self._to(DONE)
        self.down.flush()
        self._report(now)
        self.down.exchange_done(keep_alive=not close)

    def _cut(self) -> None:
        """A failure after the response started: the client's connection is closed mid-response."""
        if self.phase >= TUNNEL:
            return
        self._to(DONE)
        self._drop_conn(abort=True)
        self._report(self.loop.time())
        self.down.flush()
        self.down.abort()

    def on_client_lost(self) -> None:
        if self.phase >= TUNNEL:
            return
        self._to(DONE)
        if self.error is None:
            self.error = "client-reset"
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
        down = self.down
        now = down.loop.time()
        conn = self.conn
        if conn is not None:
            self.conn = None
            assert self.pool is not None
            if reuse and not conn.closed:
                self.pool.release(conn, now)
            else:
                conn.user = None
                self.pool.forget(conn)
        down.flush()
        self._report(now)
        down.exchange_done(keep_alive=not self.close_after)

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
            perf_counter() - self.clock_start, self.down.info, self.trace_flags,
        )
        try:
            callback(stats)
        except Exception:
            log.exception("on_request_done failed")
