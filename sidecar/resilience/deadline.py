"""The remaining deadline, carried from hop to hop in ``x-sidecar-deadline-ms``.

Envoy tells the upstream how long it will wait (``x-envoy-expected-rq-timeout-ms``) but does not act on it
at the next hop; gRPC carries ``grpc-timeout`` end to end. Here both ends act:

* outbound, the caller's sidecar sends the milliseconds it will wait for this try: the smaller of what is left of
  the request's deadline and the per-try timeout. If the local app sent the header itself (it forwards the
  one it was given, like ``traceparent``), the request's deadline is the smaller of it and the policy's
  ``timeout``;
* inbound, the destination's sidecar waits for its app no longer than the header says (nor longer than its
  own policy for the service) and hands the app the value it will honour, so the app can give up in time.

So a downstream hop never works on a request its caller has abandoned. A value that is already 0 fails at
once with 504. The value is in whole milliseconds, rounded down (never promises more time than there is).
The engine writes a request head once, so a retry carries the value computed for the first try; the per-try
timeout still bounds each try, and the caller's own deadline ends the request wherever it is.
"""

from __future__ import annotations

HEADER = b"x-sidecar-deadline-ms"
# longer than any sane timeout: a larger value is taken as this (a day)
MAX_MS = 86_400_000


def parse(value: bytes | None) -> float | None:
    """Seconds from a header value, or None when absent or not a whole number of milliseconds."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 12:
        return None
    return min(int(text), MAX_MS) / 1000.0


def to_header(seconds: float) -> bytes:
    """The header value for ``seconds`` left (rounded down to a millisecond, never negative)."""
    ms = int(seconds * 1000.0) if seconds > 0 else 0
    return b"%d" % min(ms, MAX_MS)


def effective(policy_timeout: float, caller_remaining: float | None) -> float:
    """How long this hop may wait: the local policy, shortened by what the caller has left."""
    if caller_remaining is None:
        return policy_timeout
    return min(policy_timeout, caller_remaining)


def per_try(remaining: float, try_timeout: float | None) -> float:
    """What one try may take, as sent to the next hop."""
    return remaining if try_timeout is None else min(remaining, try_timeout)
