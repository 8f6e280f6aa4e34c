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
Each try carries its own value: a retry says what is left when it starts (after the back-off), so that with no
per-try timeout, where a try may use the whole remaining time, the next hop is never promised time that the
tries before it already spent.

gRPC's ``grpc-timeout`` is bridged both ways: a call's ``grpc-timeout`` shortens the deadline as the header does,
and is rewritten per try with the same time left (so the app behind the next sidecar sees the smaller value);
a gRPC call reaching the app gets ``grpc-timeout`` from ``x-sidecar-deadline-ms`` when it carried none.
"""

from __future__ import annotations

from typing import Final

from sidecar.proxy.http1 import decimal_value

HEADER: Final = b"x-sidecar-deadline-ms"
GRPC_TIMEOUT: Final = b"grpc-timeout"
# longer than any sane timeout: a larger value is taken as this (a day)
MAX_MS: Final = 86_400_000


def parse(value: bytes | None) -> float | None:
    """Seconds from a header value, or None when absent or not a whole number of milliseconds."""
    if value is None:
        return None
    # what value.strip() leaves, then isdigit() and int(), read byte by byte: once a request at each sidecar, and
    # the three calls cost ~1,400 instructions
    start = 0
    end = len(value)
    while start < end and _is_space(value[start]):
        start += 1
    while end > start and _is_space(value[end - 1]):
        end -= 1
    if end - start > 12:
        return None
    n = decimal_value(value, start, end)
    return None if n < 0 else min(n, MAX_MS) / 1000.0


def _is_space(c: int) -> bool:
    """An ASCII whitespace byte, as bytes.strip() takes them: space, tab, LF, VT, FF, CR."""
    return c == 32 or 9 <= c <= 13


def to_header(seconds: float) -> bytes:
    """The header value for ``seconds`` left (rounded down to a millisecond, never negative)."""
    ms = int(seconds * 1000.0) if seconds > 0 else 0
    return str(min(ms, MAX_MS)).encode()   # the same digits as b"%d" %, without parsing a format


def effective(policy_timeout: float, caller_remaining: float | None) -> float:
    """How long this hop may wait: the local policy, shortened by what the caller has left."""
    if caller_remaining is None:
        return policy_timeout
    return min(policy_timeout, caller_remaining)


def try_timeout(per_try_timeout: float | None, retries: int, timeout: float) -> float | None:
    """What bounds one try, or None when only the request's ``timeout`` does. A per-try timeout applies when the
    request may be retried and it is shorter than the timeout (as Envoy's ``per_try_timeout``); unset, a try may
    use all that is left of the timeout, and a try that runs out of it ends the request."""
    if per_try_timeout is None or retries <= 0 or per_try_timeout >= timeout:
        return None
    return per_try_timeout


def per_try(remaining: float, try_timeout: float | None) -> float:
    """What one try may take, as sent to the next hop."""
    return remaining if try_timeout is None else min(remaining, try_timeout)


def to_grpc_timeout(seconds: float) -> bytes:
    """``grpc-timeout`` for ``seconds`` left, in the same whole milliseconds as :func:`to_header` (never more time
    than ``x-sidecar-deadline-ms`` says; a day is 8 digits of ``m``, gRPC's limit)."""
    ms = int(seconds * 1000.0) if seconds > 0 else 0
    return b"%dm" % min(ms, MAX_MS)


def set_field(items: list[tuple[bytes, bytes, bytes]], name: bytes, value: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """``items`` with every ``name`` field replaced by one ``(name, name, value)``, at the end: in place when the
    one field is already last, else a new list."""
    if items and items[-1][0] == name:
        items[-1] = (name, name, value)
        for item in items[:-1]:
            if item[0] == name:
                break
        else:
            return items
    out = [item for item in items if item[0] != name]
    out.append((name, name, value))
    return out
