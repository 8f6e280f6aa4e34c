"""Why one upstream exchange failed before any of its response reached the client.

These are the facts a retry policy decides on (``retry_on: [connect-failure, reset, ...]``), and what the
client gets when nothing retries them: 503 UNAVAILABLE, or 504 DEADLINE_EXCEEDED for timeouts.
Once response bytes have been relayed, a failure can no longer be reported; the proxy closes the
client's connection instead.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from sidecar.errors import Unavailable, UpstreamTimeout


class FailureKind(enum.Enum):
    """Failure classes, named as Envoy's and the SPEC's ``retry_on`` values name them."""

    CONNECT_FAILURE = "connect-failure"
    RESET = "reset"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol-error"


class ConnectFailure(Unavailable):
    """The upstream could not be dialed: refused, unreachable, TLS handshake failed, or too slow to connect."""

    kind: ClassVar[FailureKind] = FailureKind.CONNECT_FAILURE

    def __init__(self, address: str, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"cannot connect to upstream {address}: {reason}", {"upstream": address, **(details or {})})
        self.address = address
        self.reason = reason


class UpstreamReset(Unavailable):
    """The upstream closed or reset the connection before its response head was complete."""

    kind: ClassVar[FailureKind] = FailureKind.RESET

    def __init__(self, address: str, reason: str = "connection closed before the response") -> None:
        super().__init__(f"upstream {address} reset: {reason}", {"upstream": address})
        self.address = address


class UpstreamProtocolError(Unavailable):
    """The upstream answered with something that is not HTTP/1.1."""

    kind: ClassVar[FailureKind] = FailureKind.PROTOCOL

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"upstream {address} sent an invalid response: {reason}", {"upstream": address})
        self.address = address


class AttemptTimeout(UpstreamTimeout):
    """No response head within the per-try or overall deadline."""

    kind: ClassVar[FailureKind] = FailureKind.TIMEOUT

    def __init__(self, seconds: float, address: str, which: str) -> None:
        super().__init__(seconds, {"upstream": address, "timeout": which})
        self.address = address
        self.which = which


UpstreamFailure = ConnectFailure | UpstreamReset | UpstreamProtocolError | AttemptTimeout
