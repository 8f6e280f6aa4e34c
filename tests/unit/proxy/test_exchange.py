"""The exchange against fakes: a client side, a pool of upstream streams and a clock, all driven by hand.

Each test plays one sequence of events (the request, what the pool and the upstream answer, time passing)
and checks what can be observed from outside: what the client side was sent, what went upstream and what
each stream was told, what the retry policy was asked, and the RequestStats reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.errors import rescue
from sidecar.proxy.engine import Engine
from sidecar.proxy.exchange import DONE, PHASE_NAMES, ROUTING, TRANSITIONS, TUNNEL, Exchange
from sidecar.proxy.failures import AttemptTimeout, ConnectFailure, FailureKind
from sidecar.proxy.http1 import Headers, RequestHead, ResponseHead, Trailers
from sidecar.proxy.limits import LazyTimer, ProxyLimits
from sidecar.proxy.sides import ClientSide, StreamPool, StreamPools, StreamUser, UpstreamStream
from sidecar.proxy.target import AttemptRecord, ConnectionInfo, RequestStats, Retry, Target
from sidecar.proxy.tracecontext import IdSource
from sidecar.proxy.tunnel import Tunnel

# ------------------------------------------------------------------------------------------------ fakes


class FakeLoop(asyncio.AbstractEventLoop):
    """A clock that moves only when told: ``advance`` runs the timers that fall due, in order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.handles: list[asyncio.TimerHandle] = []

    def time(self) -> float:
        return self.now

    def get_debug(self) -> bool:
        return False

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                context: Any = None) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self)
        self.handles.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                   context: Any = None) -> asyncio.TimerHandle:
        return self.call_at(self.now + delay, callback, *args)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while True:
            due = [h for h in self.handles if not h.cancelled() and h.when() <= until]
            if not due:
                break
            handle = min(due, key=lambda h: h.when())
            self.handles.remove(handle)
            self.now = max(self.now, handle.when())
            handle._run()
        self.now = until


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return False


class FakeClient(ClientSide):
    """Records what the exchange does to its client, as ``(event, detail)`` pairs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.paused_for: set[str] = set()
        self.write_full = False
        self.transport = FakeTransport()
        self.tunnel: Tunnel | None = None

    def connection_info(self) -> ConnectionInfo:
        return ConnectionInfo("test", ("127.0.0.1", 5555), None, None)

    def write_paused(self) -> bool:
        return self.write_full

    def send_interim(self, head: ResponseHead) -> None:
        self.events.append(("interim", head.status))

    def send_head(self, head: ResponseHead, request: RequestHead) -> None:
        self.events.append(("head", head.status))

    def send_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def send_end(self, trailers: Trailers | None) -> None:
        self.events.append(("end", trailers))

    def send_error(self, error: BaseException, request: RequestHead, request_complete: bool) -> int:
        status = rescue(error).status
        self.events.append(("error", status))
        return status

    def cut(self) -> None:
        self.events.append(("cut", None))

    def pause_request(self, reason: str, paused: bool) -> None:
        if paused:
            self.paused_for.add(reason)
        else:
            self.paused_for.discard(reason)

    def flush(self) -> None:
        pass

    def exchange_done(self, request_complete: bool, now: float) -> None:
        self.events.append(("done", request_complete))

    def open_tunnel(self, server: asyncio.Transport, rest: bytes, on_done: Callable[[Tunnel], None]) -> Tunnel:
        tunnel = self.tunnel = Tunnel(self.transport, server, on_done)
        self.events.append(("tunnel", rest))
        if rest:
            tunnel.from_server(rest)
        return tunnel


class FakeStream(UpstreamStream):
    """One upstream stream: records what was sent on it; the test answers through ``user``."""

    def __init__(self, reused: bool = False) -> None:
        self.reused = reused
        self.user: StreamUser | None = None
        self.sent: list[Any] = []
        self.closed = False
        self.aborted = False
        self.reading_paused = False
        self.transport = FakeTransport()
        self.tunnel: Tunnel | None = None

    def start(self, user: StreamUser, head: RequestHead, body: list[bytes], end: bool,
              trailers: Trailers | None) -> None:
        self.user = user
        self.sent.append(("head", head.method, head.target))
        self.sent.extend(("body", piece) for piece in body)
        if end:
            self.send_end(trailers)

    def send_body(self, data: bytes) -> None:
        self.sent.append(("body", data))

    def send_end(self, trailers: Trailers | None) -> None:
        self.sent.append(("end",) if trailers is None else ("end", trailers))

    def pause_reading(self, paused: bool) -> None:
        self.reading_paused = paused

    def unbind(self) -> None:
        self.user = None

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closed(self) -> bool:
        return self.closed

    def was_reused(self) -> bool:
        return self.reused

    def tunnel_transport(self) -> asyncio.Transport | None:
        return self.transport

    def attach_tunnel(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    # the upstream answering
    def respond(self, status: int, body: bytes = b"", end: bool = True, trailers: Trailers | None = None,
                **head: Any) -> None:
        user = self.user
        assert user is not None, "the stream is not bound to an exchange"
        user.on_response_head(ResponseHead(status, b"", b"", content_length=len(body), **head))
        if body and self.user is not None:
            user.on_response_body(body)
        if end and self.user is not None:
            user.on_response_end(trailers)


class FakePool(StreamPool):
    """Hands out the streams in ``ready`` at once; with none ready, the waiter is kept for the test to answer."""

    def __init__(self) -> None:
        self.ready: list[FakeStream] = []
        self.acquired: list[tuple[Target, bool]] = []   # (target, fresh) per acquire
        self.waiters: list[StreamUser] = []
        self.released: list[UpstreamStream] = []
        self.forgotten: list[UpstreamStream] = []
        self.detached: list[UpstreamStream] = []
        self.cancelled: list[StreamUser] = []

    def acquire(self, target: Target, user: StreamUser, fresh: bool = False) -> UpstreamStream | None:
        self.acquired.append((target, fresh))
        if self.ready:
            return self.ready.pop(0)
        self.waiters.append(user)
        return None

    def cancel(self, user: StreamUser) -> None:
        self.cancelled.append(user)

    def release(self, stream: UpstreamStream, now: float) -> None:
        self.released.append(stream)

    def forget(self, stream: UpstreamStream) -> None:
        self.forgotten.append(stream)

    def detach(self, stream: UpstreamStream) -> None:
        self.detached.append(stream)


class FakePools(StreamPools):
    def __init__(self, pool: FakePool) -> None:
        self.pool = pool

    def get(self, target: Target) -> StreamPool:
        return self.pool


class Policy:
    """A retry policy that retries up to ``retries`` times after ``delay``, and keeps what it was asked; ``grpc``:
    the gRPC statuses it retries."""

    def __init__(self, retries: int = 1, delay: float = 0.0, statuses: frozenset[int] = frozenset({503}),
                 grpc: frozenset[int] = frozenset()) -> None:
        self.statuses = statuses
        self.grpc_statuses = grpc
        self.retries = retries
        self.delay = delay
        self.asked: list[AttemptRecord] = []

    def next_attempt(self, attempt: AttemptRecord) -> Retry | None:
        self.asked.append(attempt)
        if attempt.number > self.retries:
            return None
        return Retry(attempt.target, self.delay)


class Harness:
    def __init__(self, target: Target, method: str = "GET", upgrade: bytes | None = None,
                 content_length: int | None = None) -> None:
        self.loop = FakeLoop()
        self.client = FakeClient()
        self.pool = FakePool()
        self.stats: list[RequestStats] = []
        self.engine = Engine("test", lambda head, info: target, ProxyLimits(), FakePools(self.pool), IdSource(),
                             edit_headers=False, on_request_done=self.stats.append)
        self.timer = LazyTimer(self.loop, self._on_timer)
        self.head = RequestHead(method, b"/path", "1.1", Headers(), "svc", content_length=content_length,
                                upgrade=upgrade)
        self.exchange = Exchange(self.engine, self.client, self.head, self.loop.time(), self.loop, self.timer)

    def _on_timer(self) -> None:
        self.exchange.on_timer()

    def stream(self, reused: bool = False) -> FakeStream:
        stream = FakeStream(reused)
        self.pool.ready.append(stream)
        return stream

    def start(self, body: list[bytes] | None = None, end: bool = True) -> None:
        self.exchange.begin()
        for piece in body or []:
            self.exchange.on_request_body(piece)
        if end:
            self.exchange.on_request_end()

    @property
    def stat(self) -> RequestStats:
        assert len(self.stats) == 1, f"{len(self.stats)} reports"
        return self.stats[0]


def target(**kwargs: Any) -> Target:
    return Target(("10.0.0.1", 8080), **kwargs)


# ------------------------------------------------------------------------------------------------ tests


def test_a_503_is_retried_as_the_policy_decides_and_the_second_answer_reaches_the_client() -> None:
    policy = Policy(retries=1)
    h = Harness(target(retry=policy))
    first, second = h.stream(), h.stream()
    h.start()
    first.respond(503, b"busy")
    second.respond(200, b"hello")

    assert [(a.number, a.status, a.sent) for a in policy.asked] == [(1, 503, True)]
    assert first.sent == second.sent == [("head", "GET", b"/path"), ("end",)]
    assert h.pool.forgotten == [first] and h.pool.released == [second]   # the 503's connection is not reused
    assert h.client.events == [("head", 200), ("body", b"hello"), ("end", None), ("done", True)]
    assert (h.stat.status, h.stat.attempts, h.stat.error, h.stat.response_bytes) == (200, 2, None, 5)


def test_a_503_the_policy_declines_is_relayed_as_it_is() -> None:
    policy = Policy(retries=0)
    h = Harness(target(retry=policy))
    stream = h.stream()
    h.start()
    stream.respond(503, b"busy")
    assert len(policy.asked) == 1
    assert h.client.events == [("head", 503), ("body", b"busy"), ("end", None), ("done", True)]
    assert (h.stat.status, h.stat.attempts) == (503, 1)


def test_a_connect_failure_is_retried_after_the_policys_delay() -> None:
    policy = Policy(retries=1, delay=0.5)
    h = Harness(target(retry=policy))
    h.start()
    assert len(h.pool.waiters) == 1
    h.pool.waiters[0].on_connect_failed(ConnectFailure("10.0.0.1:8080", "refused"))
    assert [(a.kind, a.sent) for a in policy.asked] == [(FailureKind.CONNECT_FAILURE, False)]
    assert len(h.pool.acquired) == 1 and h.client.events == []        # backing off: no attempt yet

    stream = h.stream()
    h.loop.advance(0.49)
    assert len(h.pool.acquired) == 1
    h.loop.advance(0.02)
    assert len(h.pool.acquired) == 2
    stream.respond(204)
    assert h.client.events == [("head", 204), ("end", None), ("done", True)]
    assert (h.stat.status, h.stat.attempts) == (204, 2)


def test_a_connect_failure_without_a_policy_answers_503_with_the_failure_kind() -> None:
    h = Harness(target())
    h.start()
    h.pool.waiters[0].on_connect_failed(ConnectFailure("10.0.0.1:8080", "refused"))
    assert h.client.events == [("error", 503), ("done", True)]
    assert (h.stat.status, h.stat.error, h.stat.attempts) == (503, "connect-failure", 1)


def test_a_late_dial_failure_does_not_touch_a_response_in_progress() -> None:
    policy = Policy(retries=1)
    h = Harness(target(retry=policy, try_timeout=1.0))
    h.start()
    slow_dial = h.pool.waiters[0]
    stream = h.stream()
    h.loop.advance(1.0)                       # the try times out; the retry gets a ready stream
    stream.respond(200, b"partial", end=False)
    slow_dial.on_connect_failed(ConnectFailure("10.0.0.1:8080", "timed out"))
    assert h.client.events == [("head", 200), ("body", b"partial")]
    assert h.stats == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one(method: str) -> None:
    h = Harness(target(), method=method)      # no retry policy: the stale retry is the engine's own
    stale, fresh = h.stream(reused=True), h.stream()
    h.start()
    stale.user.on_upstream_lost(None)         # type: ignore[union-attr]
    assert [fresh_flag for _, fresh_flag in h.pool.acquired] == [False, True]
    assert h.pool.forgotten == [stale]
    fresh.respond(200, b"ok")
    assert h.client.events == [("head", 200), ("body", b"ok"), ("end", None), ("done", True)]
    assert (h.stat.status, h.stat.attempts, h.stat.error) == (200, 1, None)


def test_a_stale_connection_is_retried_only_once() -> None:
    h = Harness(target())
    first, second = h.stream(reused=True), h.stream(reused=True)
    h.start()
    first.user.on_upstream_lost(None)         # type: ignore[union-attr]
    second.user.on_upstream_lost(None)        # type: ignore[union-attr]
    assert len(h.pool.acquired) == 2
    assert h.client.events == [("error", 503), ("done", True)]
    assert (h.stat.status, h.stat.error) == (503, "reset")


def test_a_stale_connection_is_not_retried_for_a_non_idempotent_method() -> None:
    h = Harness(target(), method="POST", content_length=4)
    stale = h.stream(reused=True)
    h.start([b"data"])
    assert stale.sent == [("head", "POST", b"/path"), ("body", b"data"), ("end",)]
    stale.user.on_upstream_lost(None)         # type: ignore[union-attr]
    assert len(h.pool.acquired) == 1
    assert h.client.events == [("error", 503), ("done", True)]
    assert (h.stat.status, h.stat.error, h.stat.request_bytes) == (503, "reset", 4)


def test_the_request_timeout_answers_504_and_aborts_the_attempt() -> None:
    h = Harness(target(timeout=2.0))
    stream = h.stream()
    h.start()
    h.loop.advance(1.99)
    assert h.client.events == []
    h.loop.advance(0.02)
    assert stream.aborted and h.pool.forgotten == [stream]
    assert h.client.events == [("error", 504), ("done", True)]
    assert (h.stat.status, h.stat.error) == (504, "timeout")
    assert h.stat.ended - h.stat.started == pytest.approx(2.0, abs=0.02)


def test_a_per_try_timeout_fails_the_try_and_the_policy_retries_within_the_request_timeout() -> None:
    policy = Policy(retries=1)
    h = Harness(target(timeout=5.0, try_timeout=1.0, retry=policy))
    first, second = h.stream(), h.stream()
    h.start()
    h.loop.advance(1.0)
    assert first.aborted
    failure = policy.asked[0].failure
    assert isinstance(failure, AttemptTimeout) and failure.which == "try"
    second.respond(200, b"late")
    assert h.client.events[-1] == ("done", True) and ("head", 200) in h.client.events
    assert (h.stat.status, h.stat.attempts) == (200, 2)


def test_an_upgrade_answered_101_becomes_a_tunnel_and_is_reported_when_it_closes() -> None:
    h = Harness(target(), upgrade=b"websocket")
    stream = h.stream()
    h.start()
    stream.user.on_response_head(ResponseHead(101, b"", b"", upgrade=b"websocket"))   # type: ignore[union-attr]
    stream.user.on_upstream_upgraded(b"first frame")                                 # type: ignore[union-attr]
    assert h.client.events == [("head", 101), ("tunnel", b"first frame")]
    assert h.pool.detached == [stream] and stream.tunnel is h.client.tunnel
    assert h.exchange.finished and h.stats == []
    tunnel = h.client.tunnel
    assert tunnel is not None
    tunnel.from_client(b"hi")
    assert stream.transport.written == [b"hi"] and h.client.transport.written == [b"first frame"]
    tunnel.close()
    assert (h.stat.status, h.stat.upgraded, h.stat.request_bytes, h.stat.response_bytes) == (101, True, 2, 11)


def test_a_101_to_a_request_that_did_not_ask_to_upgrade_is_a_failed_attempt() -> None:
    h = Harness(target())
    stream = h.stream()
    h.start()
    stream.user.on_response_head(ResponseHead(101, b"", b"", upgrade=b"websocket"))   # type: ignore[union-attr]
    assert h.client.events == [("error", 503), ("done", True)]
    assert (h.stat.status, h.stat.error) == (503, "protocol-error")


def test_the_client_leaving_mid_request_lets_go_of_the_pool_and_the_stream() -> None:
    h = Harness(target(), method="POST", content_length=10)
    h.start([b"12345"], end=False)            # waiting for a connection, body half read
    h.exchange.on_client_lost()
    assert h.pool.cancelled == [h.exchange]
    h.pool.waiters[0].on_connection(late := FakeStream())
    assert h.pool.released == [late] and late.sent == []   # a connection arriving late goes back unused
    assert h.client.events == []
    assert (h.stat.error, h.stat.status, h.stat.request_bytes) == ("client-reset", 0, 5)


def test_the_client_leaving_mid_response_aborts_the_upstream_stream() -> None:
    h = Harness(target())
    stream = h.stream()
    h.start()
    stream.respond(200, b"part", end=False)
    h.exchange.on_client_lost()
    assert stream.aborted and h.pool.forgotten == [stream] and stream.user is None
    assert h.client.events == [("head", 200), ("body", b"part")]
    assert (h.stat.error, h.stat.status, h.stat.response_bytes) == ("client-reset", 200, 4)


def test_the_upstream_lost_mid_response_cuts_the_client() -> None:
    h = Harness(target(retry=Policy(retries=3)))
    stream = h.stream()
    h.start()
    stream.respond(200, b"part", end=False)
    stream.user.on_upstream_lost(ConnectionResetError())   # type: ignore[union-attr]
    assert h.client.events == [("head", 200), ("body", b"part"), ("cut", None)]
    assert len(h.pool.acquired) == 1                         # committed: never retried
    assert (h.stat.error, h.stat.status) == ("reset-after-response", 200)


def test_a_100_continue_goes_to_the_client_before_the_final_head() -> None:
    h = Harness(target(), method="POST", content_length=4)
    stream = h.stream()
    h.start(end=False)
    stream.user.on_response_interim(ResponseHead(100, b"", b"", no_body=True))   # type: ignore[union-attr]
    h.exchange.on_request_body(b"data")
    h.exchange.on_request_end()
    stream.respond(201, b"made")
    assert h.client.events == [("interim", 100), ("head", 201), ("body", b"made"), ("end", None), ("done", True)]
    assert stream.sent == [("head", "POST", b"/path"), ("body", b"data"), ("end",)]
    assert h.stat.status == 201


def test_the_upstreams_trailers_reach_the_client_side_with_the_end() -> None:
    h = Harness(target())
    stream = h.stream()
    h.start()
    stream.respond(200, b"msg", trailers=[(b"grpc-status", b"0"), (b"x-checksum", b"abc")])
    assert h.client.events == [("head", 200), ("body", b"msg"), ("end", [(b"grpc-status", b"0"),
                                                                         (b"x-checksum", b"abc")]), ("done", True)]
    assert h.pool.released == [stream]


def test_request_trailers_go_upstream_with_the_end_and_again_with_a_retry() -> None:
    policy = Policy(retries=1)
    h = Harness(target(retry=policy), method="PUT")
    first, second = h.stream(), h.stream()
    h.start([b"data"], end=False)
    h.exchange.on_request_end([(b"x-checksum", b"abc")])
    first.respond(503, b"busy")
    second.respond(200, b"ok")
    sent = [("head", "PUT", b"/path"), ("body", b"data"), ("end", [(b"x-checksum", b"abc")])]
    assert first.sent == sent                          # sent as the request ended
    assert second.sent == sent                         # replayed whole by start() on the retry
    assert h.client.events[-2:] == [("end", None), ("done", True)]


def test_a_response_before_the_request_ends_finishes_the_exchange_without_keeping_either_connection() -> None:
    h = Harness(target(), method="POST", content_length=1000)
    stream = h.stream()
    h.start([b"first piece"], end=False)
    stream.respond(413, b"too large")
    assert h.client.events == [("head", 413), ("body", b"too large"), ("end", None), ("done", False)]
    assert h.pool.forgotten == [stream] and h.pool.released == []
    assert (h.stat.status, h.stat.request_bytes) == (413, 11)
    assert h.exchange.phase == DONE


def test_body_pieces_wait_for_a_connection_and_the_client_pauses_past_high_water() -> None:
    h = Harness(target(), method="POST", content_length=300 * 1024)
    h.start([b"x" * 100 * 1024, b"y" * 100 * 1024, b"z" * 100 * 1024], end=False)
    assert h.client.paused_for == {"pending"}
    stream = FakeStream()
    h.pool.waiters[0].on_connection(stream)
    assert h.client.paused_for == set()
    assert [item[0] for item in stream.sent] == ["head", "body", "body", "body"]
    h.exchange.on_request_end()
    assert stream.sent[-1] == ("end",)


def test_the_phase_table_reaches_every_phase_and_every_phase_can_end() -> None:
    reachable = {ROUTING}
    frontier = [ROUTING]
    while frontier:
        phase = frontier.pop()
        for nxt in range(len(PHASE_NAMES)):
            if TRANSITIONS[phase] & (1 << nxt) and nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(range(len(PHASE_NAMES)))
    for phase in range(len(PHASE_NAMES)):
        if phase not in (TUNNEL, DONE):
            assert TRANSITIONS[phase] & (1 << DONE), f"{PHASE_NAMES[phase]} cannot end"
    assert TRANSITIONS[TUNNEL] == TRANSITIONS[DONE] == 0


def test_events_after_the_end_change_nothing() -> None:
    h = Harness(target())
    stream = h.stream()
    h.start()
    stream.respond(200, b"ok")
    h.exchange.on_client_lost()
    h.exchange.on_connect_failed(ConnectFailure("10.0.0.1:8080", "late"))
    h.exchange.on_timer()
    assert h.client.events == [("head", 200), ("body", b"ok"), ("end", None), ("done", True)]
    assert h.pool.released == [stream] and len(h.stats) == 1 and h.stat.error is None
