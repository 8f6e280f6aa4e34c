"""A gRPC test service on grpcio's generic handlers (no generated stubs): every call shape, big messages, and
knobs a test turns to make an instance fail, stall or tell what it saw.

Methods of ``test.Echo`` (requests and responses are raw bytes; JSON where a method takes parameters):
    Unary         the request echoed; every Nth call answers UNAVAILABLE when ``unavailable_every`` = N
    ServerStream  request {"count": N, "size": S}: N messages of S bytes
    ClientStream  reads every message, answers {"count": N, "bytes": B}
    Bidi          each message echoed as it arrives
    Slow          request {"seconds": S}: waits S seconds unless the call ends first (client cancel or deadline);
                  records the deadline it saw and whether the call ended early
    Observed      answers what this instance saw, as JSON (see ``EchoService.observed``)
    SetHealth     request b"SERVING" or b"NOT_SERVING": the health service's answer for "" and "test.Echo"
Every answer carries the instance id in its initial and trailing metadata (``x-instance``), so a test counts
which instance answered. The standard health service (grpc.health.v1.Health) runs beside it.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "test.Echo"
INSTANCE_KEY = "x-instance"
MAX_MESSAGE = 64 << 20  # grpcio's default receive limit is 4 MiB; the tests send 16 MiB and more
NO_DEADLINE = 1e9
MESSAGE_OPTIONS: list[tuple[str, int | str]] = [("grpc.max_receive_message_length", MAX_MESSAGE),
                                                ("grpc.max_send_message_length", MAX_MESSAGE)]


def method(name: str) -> str:
    """The call's path, as a client and a sidecar's rules name it: ``/test.Echo/Unary``."""
    return f"/{SERVICE}/{name}"


@dataclass(frozen=True, slots=True)
class Knobs:
    instance: str = "echo"
    # every Nth Unary call of this instance answers UNAVAILABLE (0: never); deterministic, so a third of the
    # calls fail with N = 3
    unavailable_every: int = 0


# context.time_remaining() is grpcio's deadline (grpc core's monotonic clock, converted to wall-clock time) less
# time.time(): the conversion can move it by some microseconds, so a handler that starts at once may read a hair more
# than the grpc-timeout it was sent. Bounds on time_remaining allow this much (a millisecond: grpc-timeout's unit).
CLOCK_SLACK = 0.001


@dataclass(frozen=True, slots=True)
class SlowCall:
    # context.time_remaining() when the handler started: the deadline that reached this server (None: none)
    time_remaining: float | None
    # the call ended before the handler finished: the client cancelled or its deadline passed
    ended_early: bool


@dataclass
class _Seen:
    calls: Counter[str] = field(default_factory=Counter)
    received_bytes: Counter[str] = field(default_factory=Counter)
    sent_bytes: Counter[str] = field(default_factory=Counter)
    cancelled: Counter[str] = field(default_factory=Counter)
    slow: list[SlowCall] = field(default_factory=list)
    # the request metadata of the last call, by method (what a proxy added or changed)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)


class EchoService:
    def __init__(self, knobs: Knobs, health_servicer: health.HealthServicer) -> None:
        self.knobs = knobs
        self.health = health_servicer
        self._lock = threading.Lock()
        self._seen = _Seen()
        self._unary_number = 0

    # ------------------------------------------------------------------------------------------ handlers

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._start("Unary", context, len(request))
        with self._lock:
            self._unary_number += 1
            number = self._unary_number
        every = self.knobs.unavailable_every
        if every and number % every == 0:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"instance {self.knobs.instance} refuses call {number} (one in {every})")
        return self._answer("Unary", request)

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._start("ServerStream", context, len(request))
        done = self._watch("ServerStream", context)
        params = json.loads(request)
        block = b"s" * int(params["size"])
        for _ in range(int(params["count"])):
            if not context.is_active():
                return
            yield self._answer("ServerStream", block)
        done.set()

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._start("ClientStream", context, 0)
        done = self._watch("ClientStream", context)
        count = size = 0
        for message in requests:
            count += 1
            size += len(message)
            self._received("ClientStream", len(message))
        done.set()
        return self._answer("ClientStream", json.dumps({"count": count, "bytes": size}).encode())

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._start("Bidi", context, 0)
        done = self._watch("Bidi", context)
        for message in requests:
            self._received("Bidi", len(message))
            yield self._answer("Bidi", message)
        done.set()

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._start("Slow", context, len(request))
        remaining = context.time_remaining()
        if remaining is not None and remaining > NO_DEADLINE:
            remaining = None  # grpcio reports "no deadline" as about 2**63 seconds
        ended = threading.Event()
        context.add_callback(ended.set)  # runs when the call ends, early or not
        ended.wait(float(json.loads(request)["seconds"]))
        early = not context.is_active()
        with self._lock:
            self._seen.slow.append(SlowCall(remaining, early))
        return self._answer("Slow", b"slept")

    def observed_call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata(((INSTANCE_KEY, self.knobs.instance),))
        return json.dumps(self.observed()).encode()

    def set_health(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(request.decode())
        for name in ("", SERVICE):
            self.health.set(name, status)
        context.set_trailing_metadata(((INSTANCE_KEY, self.knobs.instance),))
        return request

    # ------------------------------------------------------------------------------------------ records

    def observed(self) -> dict[str, Any]:
        """What this instance saw: calls, bytes in and out, streams ended early and the last call's request
        metadata, by method; slow calls."""
        with self._lock:
            seen = self._seen
            return {"instance": self.knobs.instance, "calls": dict(seen.calls),
                    "received_bytes": dict(seen.received_bytes), "sent_bytes": dict(seen.sent_bytes),
                    "cancelled": dict(seen.cancelled), "metadata": dict(seen.metadata),
                    "slow": [{"time_remaining": s.time_remaining, "ended_early": s.ended_early} for s in seen.slow]}

    def _start(self, name: str, context: grpc.ServicerContext, size: int) -> None:
        context.send_initial_metadata(((INSTANCE_KEY, self.knobs.instance),))
        context.set_trailing_metadata(((INSTANCE_KEY, self.knobs.instance),))
        received = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        with self._lock:
            self._seen.calls[name] += 1
            self._seen.received_bytes[name] += size
            self._seen.metadata[name] = received

    def _received(self, name: str, size: int) -> None:
        with self._lock:
            self._seen.received_bytes[name] += size

    def _answer(self, name: str, data: bytes) -> bytes:
        with self._lock:
            self._seen.sent_bytes[name] += len(data)
        return data

    def _watch(self, name: str, context: grpc.ServicerContext) -> threading.Event:
        """An event the handler sets when it finishes; a call that ends before that counts as cancelled."""
        done = threading.Event()

        def ended() -> None:
            if not done.is_set():
                with self._lock:
                    self._seen.cancelled[name] += 1

        context.add_callback(ended)
        return done

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Observed": grpc.unary_unary_rpc_method_handler(self.observed_call),
            "SetHealth": grpc.unary_unary_rpc_method_handler(self.set_health),
        })


@dataclass
class Running:
    server: grpc.Server
    port: int
    service: EchoService

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(grace).wait(10)


def serve(knobs: Knobs = Knobs(), host: str = "127.0.0.1", port: int = 0, workers: int = 64) -> Running:
    """Start the service (and the health service, SERVING) in this process; ``port`` 0 takes a free one.

    ``workers`` bounds the calls in progress at once: each open stream or slow call holds one."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=MESSAGE_OPTIONS,
                         maximum_concurrent_rpcs=None)
    health_servicer = health.HealthServicer()
    service = EchoService(knobs, health_servicer)
    server.add_generic_rpc_handlers((service.handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot bind the gRPC test service to {host}:{port}")
    server.start()
    return Running(server, bound, service)


def channel(target: str, authority: str | None = None) -> grpc.Channel:
    """An insecure channel that takes and sends big messages; ``authority``: the :authority to send (a
    sidecar routes by it, as by Host)."""
    options = list(MESSAGE_OPTIONS)
    if authority:
        options.append(("grpc.default_authority", authority))
    return grpc.insecure_channel(target, options=options)
