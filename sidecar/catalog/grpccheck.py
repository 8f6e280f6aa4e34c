"""The gRPC health check: ``grpc.health.v1.Health/Check`` over h2c on the app's port, as Consul's gRPC check.

The request and response are two tiny protobuf messages, encoded here by hand (the sidecar does not depend
on grpcio)::

    message HealthCheckRequest  { string service = 1; }
    message HealthCheckResponse { ServingStatus status = 1; }   // UNKNOWN 0, SERVING 1, NOT_SERVING 2,
                                                                // SERVICE_UNKNOWN 3
SERVING is healthy; any other status, a grpc-status other than OK, a timeout or a refused connection is
unhealthy, with an output line that says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from sidecar.catalog.health import CheckResult
from sidecar.catalog.model import HealthStatus
from sidecar.http2.connection import H2Connection
from sidecar.http2.events import (
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    HeadersReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from sidecar.http2.grpc import (
    CONTENT_TYPE,
    MessageReader,
    Status,
    decode_message,
    format_timeout,
    frame_message,
    grpc_status,
)
from sidecar.http2.limits import H2Limits

CHECK_PATH = b"/grpc.health.v1.Health/Check"
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1
# a health answer is a few bytes: small windows and one stream are plenty
_LIMITS = H2Limits(max_concurrent_streams=1, initial_window=65535, connection_window=65535,
                   max_header_list_size=16 * 1024, max_header_block_bytes=20 * 1024)


class ProtobufError(ValueError):
    """The response is not a HealthCheckResponse."""


def encode_request(service: str) -> bytes:
    """HealthCheckRequest: field 1 (length-delimited) unless the service is "" (proto3 omits defaults)."""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def decode_response(data: bytes) -> int:
    """HealthCheckResponse's status (field 1, a varint); fields it does not know are skipped."""
    status, pos = 0, 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field == 1:
                status = value
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtobufError(f"wire type {wire} of field {field}")
        if pos > len(data):
            raise ProtobufError("truncated message")
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


async def grpc_check(host: str, port: int, service: str, timeout: float) -> CheckResult:
    what = f"gRPC Health/Check {host}:{port} service {service!r}"
    try:
        return await asyncio.wait_for(_call(host, port, service, timeout, what), timeout)
    except TimeoutError:
        return CheckResult(HealthStatus.UNHEALTHY, f"{what}: timed out after {timeout:.3f}s")
    except OSError as e:  # asyncio words a refused connect as "Connect call failed": say what errno says
        return CheckResult(HealthStatus.UNHEALTHY, f"{what}: {os.strerror(e.errno) if e.errno else e}")


async def _call(host: str, port: int, service: str, timeout: float, what: str) -> CheckResult:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        core = H2Connection(client_side=True, limits=_LIMITS)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stream = core.start_request([
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", CHECK_PATH),
            (b":authority", authority.encode()), (b"content-type", CONTENT_TYPE), (b"te", b"trailers"),
            (b"grpc-timeout", format_timeout(timeout).encode()), (b"user-agent", b"sidecar-health-check"),
        ])
        core.send_data(stream, frame_message(encode_request(service)), end_stream=True)
        writer.write(core.data_to_send())
        head: list[tuple[bytes, bytes]] = []
        trailers: list[tuple[bytes, bytes]] = []
        messages = MessageReader(max_message=4096)
        bodies: list[bytes] = []
        while True:
            data = await reader.read(65536)
            if not data:
                return _fail(f"{what}: connection closed before the answer")
            for event in core.receive_data(data, time.monotonic()):
                if isinstance(event, HeadersReceived) and event.stream_id == stream:
                    head = event.headers
                elif isinstance(event, DataReceived) and event.stream_id == stream:
                    bodies += [m.data for m in messages.feed(event.data)]
                    core.acknowledge(stream, event.flow_length)
                elif isinstance(event, TrailersReceived) and event.stream_id == stream:
                    trailers = event.headers
                elif isinstance(event, StreamEnded) and event.stream_id == stream:
                    return _verdict(what, head, trailers or head, bodies)
                elif isinstance(event, StreamReset) and event.stream_id == stream:
                    return _fail(f"{what}: stream reset by the server (error code {event.error_code})")
                elif isinstance(event, (ConnectionTerminated, GoAwayReceived)) and core.closed:
                    return _fail(f"{what}: connection ended: {getattr(event, 'reason', 'GOAWAY')}")
            writer.write(core.data_to_send())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _verdict(what: str, head: list[tuple[bytes, bytes]], trailers: list[tuple[bytes, bytes]],
             bodies: list[bytes]) -> CheckResult:
    fields = dict(head)
    if fields.get(b":status") != b"200":
        return _fail(f"{what}: HTTP status {fields.get(b':status', b'?').decode('latin-1')}")
    code = grpc_status(trailers)
    if code is None:
        return _fail(f"{what}: no grpc-status in the answer")
    if code != Status.OK:
        name = Status(code).name if code in Status._value2member_map_ else str(code)
        message = decode_message(dict(trailers).get(b"grpc-message", b""))
        return _fail(f"{what}: grpc-status {code} {name}" + (f": {message}" if message else ""))
    if len(bodies) != 1:
        return _fail(f"{what}: {len(bodies)} response messages, want 1")
    try:
        status = decode_response(bodies[0])
    except ProtobufError as e:
        return _fail(f"{what}: malformed HealthCheckResponse: {e}")
    name = SERVING_STATUS.get(status, str(status))
    return CheckResult(HealthStatus.HEALTHY if status == SERVING else HealthStatus.UNHEALTHY, f"{what}: {name}")


def _fail(output: str) -> CheckResult:
    return CheckResult(HealthStatus.UNHEALTHY, output)
