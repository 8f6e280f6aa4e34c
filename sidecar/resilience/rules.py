"""What may be retried and what a request asks for: ``retry_on`` and ``retries`` compiled from a policy, and the
deadline and retry headers of an outbound request read (and stripped) once. Pure: no state, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sidecar.config.model import RetryConfig
from sidecar.http2.grpc import GATEWAY_ERRORS as GRPC_GATEWAY
from sidecar.http2.grpc import RETRY_ON as GRPC_RETRY_ON
from sidecar.http2.grpc import parse_timeout
from sidecar.proxy import FailureKind, RequestHead
from sidecar.resilience import deadline
from sidecar.resilience.backoff import Backoff

GATEWAY_ERRORS: Final = frozenset({502, 503, 504})
# gRPC's UNAVAILABLE and DEADLINE_EXCEEDED: what the outlier detector counts against a host, as 502, 503 and 504
GRPC_GATEWAY_ERRORS: Final = frozenset(int(status) for status in GRPC_GATEWAY)
RETRIABLE_4XX: Final = frozenset({409})
_ALL_FAILURES: Final = frozenset(FailureKind)
# a request header may ask for more retries than the policy, but not for a storm
MAX_RETRIES_OVERRIDE: Final = 10

MAX_RETRIES_HEADERS: Final[tuple[bytes, ...]] = (b"x-sidecar-max-retries", b"x-envoy-max-retries")
RETRY_ON_HEADERS: Final[tuple[bytes, ...]] = (b"x-sidecar-retry-on", b"x-envoy-retry-on")
_STRIPPED: Final = frozenset((*MAX_RETRIES_HEADERS, *RETRY_ON_HEADERS, deadline.HEADER))
# read, kept, and rewritten per try with the time left (deadline.GRPC_TIMEOUT)
_READ: Final = _STRIPPED | {deadline.GRPC_TIMEOUT}


@dataclass(frozen=True, slots=True)
class RetryOn:
    """``retry_on`` compiled: the failure kinds and response statuses that may be retried.

    ``connect-failure``: the upstream could not be dialled. ``reset``: it closed or reset the connection, sent
    something that is not HTTP, or the try timed out (Envoy's disconnect/reset/read timeout). ``5xx``: any
    5xx and every local failure. ``gateway-error``: 502, 503, 504 and every local failure. ``retriable-4xx``:
    409. A number: that status. ``refused-stream`` is HTTP/2's and never happens over HTTP/1.1. gRPC's status
    names (``cancelled``, ``deadline-exceeded``, ``internal``, ``resource-exhausted``, ``unavailable``): a gRPC
    call answered with that status (``grpc``, the numeric codes), before any of its response reached the client.
    """

    failures: frozenset[FailureKind]
    statuses: frozenset[int]
    grpc: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, tokens: Iterable[str]) -> RetryOn:
        failures: set[FailureKind] = set()
        statuses: set[int] = set()
        grpc: set[int] = set()
        for raw in tokens:
            token = raw.strip().lower()
            if token == "connect-failure":
                failures.add(FailureKind.CONNECT_FAILURE)
            elif token == "reset":
                failures |= {FailureKind.RESET, FailureKind.PROTOCOL, FailureKind.TIMEOUT}
            elif token == "5xx":
                failures |= _ALL_FAILURES
                statuses |= set(range(500, 600))
            elif token == "gateway-error":
                failures |= _ALL_FAILURES
                statuses |= GATEWAY_ERRORS
            elif token == "retriable-4xx":
                statuses |= RETRIABLE_4XX
            elif token.isdigit() and 100 <= int(token) <= 599:
                statuses.add(int(token))
            elif token in GRPC_RETRY_ON:
                grpc.add(int(GRPC_RETRY_ON[token]))
            # else: refused-stream, or a token a request header got wrong: nothing to retry on
        return cls(frozenset(failures), frozenset(statuses), frozenset(grpc))


@dataclass(frozen=True, slots=True)
class RetryRules:
    attempts: int                 # retries after the first attempt
    per_try_timeout: float | None   # None: a try may use the whole timeout
    retry_on: RetryOn
    backoff: Backoff
    non_idempotent: bool

    @classmethod
    def from_config(cls, config: RetryConfig, jitter: float = 1.0) -> RetryRules:
        per_try = None if config.per_try_timeout is None else float(config.per_try_timeout)
        return cls(config.attempts, per_try, RetryOn.parse(config.retry_on),
                   Backoff(float(config.backoff.base), float(config.backoff.max), jitter),
                   config.retry_non_idempotent)


@dataclass(frozen=True, slots=True)
class Asked:
    """What a request's headers ask for (read once, then stripped)."""

    deadline: float | None = None
    max_retries: int | None = None
    retry_on: str | None = None
    grpc_timeout: bool = False    # the request carries grpc-timeout (counted in ``deadline``), to be rewritten


NOTHING_ASKED: Final = Asked()


def read_request_headers(head: RequestHead) -> Asked:
    """Read and remove the deadline and retry headers of an outbound request; ``grpc-timeout`` is read and kept
    (a malformed one is InvalidArgument naming it)."""
    items = head.headers.items
    found = False
    for lname, _, _ in items:
        if lname in _READ:
            found = True
            break
    if not found:
        return NOTHING_ASKED
    caller: float | None = None
    max_retries: int | None = None
    retry_on: str | None = None
    grpc_timeout = False
    keep = []
    for item in items:
        lname, _, value = item
        if lname not in _STRIPPED:
            keep.append(item)
            if lname == deadline.GRPC_TIMEOUT:
                seconds = parse_timeout(value)
                caller = seconds if caller is None else min(caller, seconds)
                grpc_timeout = True
        elif lname == deadline.HEADER:
            parsed = deadline.parse(value)
            if parsed is not None:
                caller = parsed if caller is None else min(caller, parsed)
        elif lname in MAX_RETRIES_HEADERS:
            text = value.strip()
            if text.isdigit() and max_retries is None:
                max_retries = min(int(text), MAX_RETRIES_OVERRIDE)
        elif retry_on is None:
            retry_on = value.decode("latin-1")
    head.headers.items = keep
    return Asked(caller, max_retries, retry_on, grpc_timeout)
