"""gRPC's pure parts, against the values gRPC's PROTOCOL-HTTP2.md and its implementations fix."""

from __future__ import annotations

import pytest

from sidecar.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from sidecar.http2.grpc import (
    RETRY_ON,
    Message,
    MessageReader,
    MessageTooLarge,
    Status,
    decode_message,
    encode_message,
    format_timeout,
    frame_message,
    grpc_status,
    is_grpc,
    parse_timeout,
    service_method,
    trailers_only,
)


@pytest.mark.parametrize(("status", "number"), [
    (Status.OK, 0), (Status.CANCELLED, 1), (Status.UNKNOWN, 2), (Status.INVALID_ARGUMENT, 3),
    (Status.DEADLINE_EXCEEDED, 4), (Status.NOT_FOUND, 5), (Status.ALREADY_EXISTS, 6), (Status.PERMISSION_DENIED, 7),
    (Status.RESOURCE_EXHAUSTED, 8), (Status.FAILED_PRECONDITION, 9), (Status.ABORTED, 10), (Status.OUT_OF_RANGE, 11),
    (Status.UNIMPLEMENTED, 12), (Status.INTERNAL, 13), (Status.UNAVAILABLE, 14), (Status.DATA_LOSS, 15),
    (Status.UNAUTHENTICATED, 16),
])
def test_status_codes_are_grpcs(status: Status, number: int) -> None:
    assert status == number


def test_retry_on_names() -> None:
    assert RETRY_ON == {"cancelled": 1, "deadline-exceeded": 4, "internal": 13, "resource-exhausted": 8,
                        "unavailable": 14}


@pytest.mark.parametrize(("value", "seconds"), [
    ("1S", 1.0), ("100m", 0.1), ("5H", 18000.0), ("2M", 120.0), ("250u", 250e-6), ("7n", 7e-9),
    ("99999999S", 99999999.0), ("0m", 0.0), (b"200m", 0.2), ("00000001S", 1.0),
])
def test_parse_timeout(value: str | bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "S", "1", "123456789S", "1s", "1h", "-1S", "1.5S", " 1S", "1 S",
                                   "\u0661S", "1SS"])
def test_malformed_timeout_is_a_clear_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^grpc-timeout: want 1 to 8 digits and a unit of H M S m u n \(got "):
        parse_timeout(value)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0n"), (-1.0, "0n"), (1e-9, "1n"), (0.05, "50000000n"), (0.2, "200000u"), (1.0, "1000000u"),
    (15.0, "15000000u"), (150.0, "150000m"), (99999.999, "99999999m"), (100000.0, "100000S"),
    (1e8, "1666667M"), (1e10, "2777778H"), (1e20, "99999999H"),
])
def test_format_timeout_finest_unit_in_eight_digits(seconds: float, text: str) -> None:
    assert format_timeout(seconds) == text
    assert parse_timeout(text) >= seconds * (1 - 1e-12) or seconds > 99999999 * 3600  # never less time


@pytest.mark.parametrize(("message", "encoded"), [
    ("", b""),
    ("my favorite character is \x00", b"my favorite character is %00"),
    ("my favorite character is %", b"my favorite character is %25"),
    ("\xff", b"%C3%BF"),
    ("Hello, world!", b"Hello, world!"),
    ("no such service 'x' ~", b"no such service 'x' ~"),
    ("line\nbreak", b"line%0Abreak"),
    ("\u4e16\u754c", b"%E4%B8%96%E7%95%8C"),
])
def test_grpc_message_percent_encoding(message: str, encoded: bytes) -> None:
    assert encode_message(message) == encoded
    assert decode_message(encoded) == message


def test_grpc_message_decoding_is_lenient() -> None:
    assert decode_message(b"100% sure %zz %4") == "100% sure %zz %4"


@pytest.mark.parametrize(("error", "status", "name"), [
    (NotFound("no such service: payment"), 5, "NOT_FOUND"),
    (Unavailable("no healthy instance of payment"), 14, "UNAVAILABLE"),
    (PermissionDenied("checkout may not call /pkg.Pay/Refund"), 7, "PERMISSION_DENIED"),
    (DeadlineExceeded("upstream timed out after 0.200s"), 4, "DEADLINE_EXCEEDED"),
    (ResourceExhausted("max_requests 1024 reached"), 8, "RESOURCE_EXHAUSTED"),
    (ValueError("boom"), 13, "INTERNAL"),
])
def test_errors_become_trailers_only_responses(error: Exception, status: int, name: str) -> None:
    headers = trailers_only(error)
    assert headers[:3] == [(b":status", b"200"), (b"content-type", b"application/grpc"),
                           (b"grpc-status", str(status).encode())]
    assert headers[4] == (b"x-sidecar-error", name.encode())
    message = str(error) if status != 13 else "internal error: ValueError: boom"
    assert headers[3] == (b"grpc-message", encode_message(message))
    assert grpc_status(headers) == status


def test_overload_says_when_to_retry() -> None:
    headers = trailers_only(Overloaded("shedding load: event loop lag", retry_after=2))
    assert (b"grpc-status", b"14") in headers and (b"grpc-retry-pushback-ms", b"2000") in headers
    assert headers[3] == (b"grpc-message", b"shedding load: event loop lag")


@pytest.mark.parametrize(("path", "name"), [
    ("/grpc.health.v1.Health/Check", "grpc.health.v1.Health/Check"),
    ("/pkg.Service/Method", "pkg.Service/Method"),
    ("/", None), ("/pkg.Service", None), ("/pkg.Service/", None), ("//Method", None),
    ("/a/b/c", None), ("pkg.Service/Method", None), ("/a/b?x=1", None),
])
def test_service_method(path: str, name: str | None) -> None:
    assert service_method(path) == name


@pytest.mark.parametrize(("content_type", "grpc"), [
    ("application/grpc", True), ("application/grpc+proto", True), ("application/grpc;charset=utf-8", True),
    ("Application/GRPC", True), ("application/grpc-web", False), ("application/json", False), ("", False),
    (b"application/grpc+json", True),
])
def test_is_grpc(content_type: str | bytes, grpc: bool) -> None:
    assert is_grpc(content_type) is grpc


def test_message_framing_exact_bytes() -> None:
    assert frame_message(b"\x08\x01") == b"\x00\x00\x00\x00\x02\x08\x01"
    assert frame_message(b"", compressed=True) == b"\x01\x00\x00\x00\x00"
    assert frame_message(b"x" * 300)[:5] == b"\x00\x00\x00\x01\x2c"


def test_message_reader_whatever_the_chunking() -> None:
    stream = frame_message(b"first") + frame_message(b"") + frame_message(b"z" * 70000, compressed=True)
    for step in (1, 3, 5, 4096, len(stream)):
        reader = MessageReader()
        got = [m for i in range(0, len(stream), step) for m in reader.feed(stream[i:i + step])]
        assert got == [Message(False, b"first"), Message(False, b""), Message(True, b"z" * 70000)]
        assert reader.pending == 0
    reader = MessageReader()
    assert reader.feed(stream[:8]) == [] and reader.pending == 8


def test_message_reader_refuses_oversized_and_bad_flags_before_buffering() -> None:
    with pytest.raises(MessageTooLarge, match="over the limit of 1024"):
        MessageReader(max_message=1024).feed(b"\x00\x00\x00\x04\x01")
    with pytest.raises(InvalidArgument, match=r"compressed flag must be 0 or 1 \(got 2\)"):
        MessageReader().feed(b"\x02\x00\x00\x00\x00")
