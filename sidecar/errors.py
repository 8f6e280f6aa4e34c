"""One error tree for everything the sidecar reports, and the one place it becomes a response.

Every error the sidecar itself produces reaches the caller as SPEC's shape::

    {"error": {"code": "UNAVAILABLE", "grpcCode": 14, "message": "...", "details": {...}}}

with an ``x-sidecar-error: CODE`` header. :func:`rescue` is the only function that builds it; for a gRPC
request, ``sidecar.http2.grpc.trailers_only`` says the same in gRPC's shape, from :func:`classify`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, ClassVar


class Code(enum.Enum):
    """SPEC's error codes: (gRPC code, HTTP status)."""

    INVALID_ARGUMENT = (3, 400)
    NOT_FOUND = (5, 404)
    PERMISSION_DENIED = (7, 403)
    UNAUTHENTICATED = (16, 401)
    RESOURCE_EXHAUSTED = (8, 429)
    UNAVAILABLE = (14, 503)
    DEADLINE_EXCEEDED = (4, 504)
    INTERNAL = (13, 500)
    # Not in SPEC's table, but a mesh still has to say it: a request header block that is too large.
    HEADERS_TOO_LARGE = (8, 431)
    METHOD_NOT_ALLOWED = (12, 405)
    # a well-formed request the sidecar's state refuses (a reload that needs a restart), as gRPC's code 9
    FAILED_PRECONDITION = (9, 400)

    @property
    def grpc(self) -> int:
        return self.value[0]

    @property
    def http(self) -> int:
        return self.value[1]


class SidecarError(Exception):
    """Base of every error the sidecar reports to a caller; the message says what happened."""

    code: ClassVar[Code] = Code.INTERNAL

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidArgument(SidecarError):
    """The request or its body is malformed."""

    code = Code.INVALID_ARGUMENT


class NotFound(SidecarError):
    """No such service or resource."""

    code = Code.NOT_FOUND


class PermissionDenied(SidecarError):
    """An authorization rule refused the caller."""

    code = Code.PERMISSION_DENIED


class Unauthenticated(SidecarError):
    """Missing or wrong credentials."""

    code = Code.UNAUTHENTICATED


class ResourceExhausted(SidecarError):
    """A limit was reached: a breaker cap, the retry budget, a full queue."""

    code = Code.RESOURCE_EXHAUSTED


class Unavailable(SidecarError):
    """No healthy endpoint, or the upstream refused or reset."""

    code = Code.UNAVAILABLE


class Overloaded(Unavailable):
    """The sidecar sheds new work to protect itself (memory or event-loop lag over its limit); the caller may
    retry after ``retry_after`` seconds, which the response says in a ``Retry-After`` header."""

    def __init__(self, message: str, retry_after: int, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class DeadlineExceeded(SidecarError):
    """The request ran out of time."""

    code = Code.DEADLINE_EXCEEDED


class MethodNotAllowed(SidecarError):
    """The resource exists, but not for this method."""

    code = Code.METHOD_NOT_ALLOWED


class FailedPrecondition(SidecarError):
    """The request is well formed, but the sidecar cannot do it in its present state."""

    code = Code.FAILED_PRECONDITION


class HeadersTooLarge(SidecarError):
    """The request's header block is over the limit."""

    code = Code.HEADERS_TOO_LARGE


class Internal(SidecarError):
    """A bug in the sidecar."""

    code = Code.INTERNAL


class UpstreamTimeout(DeadlineExceeded):
    def __init__(self, seconds: float, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"upstream timed out after {seconds:.3f}s", details)


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists every one as ``path: rule (got VALUE)``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Rescued:
    status: int
    headers: dict[str, str]
    body: bytes


def error_body(code: Code, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code.name, "grpcCode": code.grpc, "message": message, "details": details or {}}}


def classify(exc: BaseException) -> tuple[Code, str, dict[str, Any]]:
    """The code, message and details an exception is reported with; anything not a SidecarError is INTERNAL."""
    if isinstance(exc, SidecarError):
        return exc.code, exc.message, exc.details
    return Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", {}


def rescue(exc: BaseException) -> Rescued:
    """Turn any exception into SPEC's error response; anything not a SidecarError is INTERNAL."""
    code, message, details = classify(exc)
    body = json.dumps(error_body(code, message, details), separators=(",", ":")).encode()
    headers = {"content-type": "application/json", "x-sidecar-error": code.name}
    if code is Code.METHOD_NOT_ALLOWED and isinstance(details.get("allowed"), list):
        headers["allow"] = ", ".join(details["allowed"])
    if isinstance(exc, Overloaded):
        headers["retry-after"] = str(exc.retry_after)
    return Rescued(code.http, headers, body)
