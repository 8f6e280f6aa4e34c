"""gRPC's pure parts: status codes, ``grpc-timeout``, ``grpc-message`` encoding, the length-prefixed message
framing, a call's name, and the trailers-only response an error becomes (gRPC's PROTOCOL-HTTP2.md)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final

from sidecar.errors import Code, InvalidArgument, Overloaded, classify

Headers = list[tuple[bytes, bytes]]


class Status(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# the statuses `retry_on` may name (SPEC), in Envoy's spelling
RETRY_ON: dict[str, Status] = {
    "cancelled": Status.CANCELLED,
    "deadline-exceeded": Status.DEADLINE_EXCEEDED,
    "internal": Status.INTERNAL,
    "resource-exhausted": Status.RESOURCE_EXHAUSTED,
    "unavailable": Status.UNAVAILABLE,
}

# gRPC's statuses that say the server side failed (as an HTTP 5xx does); the others are the app's answers to a
# call it understood (as a 4xx is). Records and metrics count these as errors.
SERVER_ERRORS: Final = frozenset({Status.UNKNOWN, Status.DEADLINE_EXCEEDED, Status.UNIMPLEMENTED, Status.INTERNAL,
                           Status.UNAVAILABLE, Status.DATA_LOSS})
# the statuses the outlier detector counts as a failure of the host, as it counts 502, 503 and 504
GATEWAY_ERRORS: Final = frozenset({Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED})

CONTENT_TYPE: Final = b"application/grpc"


def from_http(status: int) -> Status:
    """The status a gRPC client takes from an HTTP response that carries no ``grpc-status`` (gRPC's
    http-grpc-status-mapping.md): what it sees when a proxy answers for the server."""
    if status in (429, 502, 503, 504):
        return Status.UNAVAILABLE
    return {400: Status.INTERNAL, 401: Status.UNAUTHENTICATED, 403: Status.PERMISSION_DENIED,
            404: Status.UNIMPLEMENTED}.get(status, Status.UNKNOWN)


def is_grpc(content_type: bytes | str) -> bool:
    """``application/grpc`` alone or with a ``+format`` or ``;params`` suffix."""
    value = content_type.encode("latin-1") if isinstance(content_type, str) else content_type
    value = value.strip().lower()
    return value.startswith(CONTENT_TYPE) and value[len(CONTENT_TYPE):len(CONTENT_TYPE) + 1] in (b"", b"+", b";")


def service_method(path: str) -> str | None:
    """``pkg.Service/Method`` of a call's path ``/pkg.Service/Method``; None for a path of another shape."""
    service, slash, method = path[1:].partition("/")
    if not path.startswith("/") or not slash or not service or not method or "/" in method or "?" in path:
        return None
    return f"{service}/{method}"


# -- grpc-timeout: TimeoutValue (1 to 8 digits) then TimeoutUnit ---------------------------------------

_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_MAX_VALUE: Final = 99_999_999


def parse_timeout(value: str | bytes) -> float:
    """Seconds of a ``grpc-timeout`` value; a malformed one is InvalidArgument naming the header."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    digits, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not 1 <= len(digits) <= 8 or not digits.isascii() or not digits.isdigit():
        raise InvalidArgument(f"grpc-timeout: want 1 to 8 digits and a unit of H M S m u n (got {text!r})")
    return int(digits) * _UNITS[unit]


def format_timeout(seconds: float) -> str:
    """The finest unit that holds ``seconds`` in 8 digits, rounded up so the callee never gets less time
    than is left; nothing left is ``0n``."""
    if seconds <= 0:
        return "0n"
    for unit in ("n", "u", "m", "S", "M", "H"):
        count = math.ceil(round(seconds / _UNITS[unit], 6))
        if count <= _MAX_VALUE:
            return f"{count}{unit}"
    return f"{_MAX_VALUE}H"


# -- grpc-message: percent-encoded UTF-8 ---------------------------------------------------------------

def encode_message(message: str) -> bytes:
    """Bytes outside %x20-%x7E, and ``%`` itself, as ``%XX`` of the UTF-8 (upper-case hex)."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def decode_message(value: bytes) -> str:
    """The inverse of :func:`encode_message`; a ``%`` not followed by two hex digits is kept as it is."""
    out = bytearray()
    i = 0
    while i < len(value):
        byte = value[i]
        if byte == 0x25 and _is_hex(value[i + 1:i + 3]):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode("utf-8", errors="replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


# -- errors --------------------------------------------------------------------------------------------

def trailers_only(exc: BaseException) -> Headers:
    """An error the sidecar produces for a gRPC call: HTTP 200, the status and message in the one header
    block that ends the stream, no body (SPEC: never the JSON of other requests)."""
    code, message, _ = classify(exc)
    headers = [(b":status", b"200"), (b"content-type", CONTENT_TYPE),
               (b"grpc-status", str(code.grpc).encode()), (b"grpc-message", encode_message(message)),
               (b"x-sidecar-error", code.name.encode())]
    if isinstance(exc, Overloaded):  # gRPC's retry pushback: when to try again, as Retry-After says elsewhere
        headers.append((b"grpc-retry-pushback-ms", str(exc.retry_after * 1000).encode()))
    return headers


def status_of(code: Code) -> Status:
    return Status(code.grpc)


def grpc_status(headers: Headers) -> int | None:
    """The ``grpc-status`` of a trailer (or trailers-only) block; None when absent or not a number."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() and len(value) <= 3 else None
    return None


# -- message framing: 1 byte compressed flag, 4 bytes big-endian length, the message ---------------------

def frame_message(message: bytes, compressed: bool = False) -> bytes:
    return bytes((1 if compressed else 0,)) + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True, slots=True)
class Message:
    compressed: bool
    data: bytes


class MessageTooLarge(InvalidArgument):
    """A length prefix over the reader's limit: the message is refused before it is buffered."""

    code = Code.RESOURCE_EXHAUSTED


class MessageReader:
    """Splits a stream's DATA into messages, whatever the chunking; holds at most one message's bytes."""

    def __init__(self, max_message: int = 16 * 1024 * 1024) -> None:
        self.max_message = max_message
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        while len(buf) >= 5:
            if buf[0] > 1:
                raise InvalidArgument(f"gRPC message: compressed flag must be 0 or 1 (got {buf[0]})")
            length = int.from_bytes(buf[1:5], "big")
            if length > self.max_message:
                raise MessageTooLarge(f"gRPC message of {length} bytes is over the limit of {self.max_message}")
            if len(buf) < 5 + length:
                break
            out.append(Message(buf[0] == 1, bytes(buf[5:5 + length])))
            del buf[:5 + length]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message: not zero at the end of a stream means it was cut."""
        return len(self._buf)
