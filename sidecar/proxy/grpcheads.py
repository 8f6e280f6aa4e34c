"""What the exchange reads of a gRPC call: whether a request is one, the status of its response from a head or
from trailers, and the trailers that end a call whose deadline passed after its response began. Pure.

gRPC's status travels in the trailers, or, for a call answered with an error before any message, in the one
header block that ends the stream (*trailers-only*). Between sidecars over HTTP/1.1 a trailers-only answer is a
head carrying ``grpc-status`` whose body is empty; over HTTP/2 it is HEADERS with END_STREAM; either way the
head holds the status. A sidecar's own error to a gRPC call may still cross an HTTP/1.1 hop as SPEC's JSON
(``x-sidecar-error``): its code is the status the caller gets.
"""

from __future__ import annotations

from typing import Final

from sidecar.errors import Code
from sidecar.http2.grpc import Status, encode_message, from_http, grpc_status, is_grpc
from sidecar.proxy.h2heads import relayed_error
from sidecar.proxy.http1 import RequestHead, ResponseHead, Trailers

_CONTENT_TYPE: Final = b"content-type"
_STATUS_FIELD: Final = b"grpc-status"


def is_grpc_request(head: RequestHead) -> bool:
    """``content-type: application/grpc*``: one pass over the fields, stopping at the content type."""
    for item in head.headers.items:
        if item[0] == _CONTENT_TYPE:
            return is_grpc(item[2])
    return False


def response_status(head: ResponseHead) -> int | None:
    """The status a gRPC client will take from this head alone: a trailers-only answer's ``grpc-status``, another
    sidecar's own error, or an HTTP status other than 200; None for a 200 whose status comes in the trailers."""
    headers = head.headers
    value = headers.get_bytes(_STATUS_FIELD)
    if value is not None:
        return grpc_status([(_STATUS_FIELD, value.strip())])
    code = relayed_error(head)
    if code is not None:
        return code.grpc
    if head.status != 200:
        return int(from_http(head.status))
    return None


def from_sidecar(head: ResponseHead) -> bool:
    """The head is a sidecar's own error (SPEC's ``x-sidecar-error``), not the app's answer."""
    return head.headers.get_bytes(b"x-sidecar-error") is not None


def trailers_status(trailers: Trailers | None) -> int | None:
    """The ``grpc-status`` of a trailer section (names in any case); None when there is none."""
    if not trailers:
        return None
    for name, value in trailers:
        if name.lower() == _STATUS_FIELD:
            return grpc_status([(_STATUS_FIELD, value.strip())])
    return None


def deadline_trailers(seconds: float) -> Trailers:
    """The trailers that end a call cut by its deadline after its response began: DEADLINE_EXCEEDED."""
    return [(b"grpc-status", b"%d" % Status.DEADLINE_EXCEEDED),
            (b"grpc-message", encode_message(f"deadline of {seconds:.3f}s exceeded")),
            (b"x-sidecar-error", Code.DEADLINE_EXCEEDED.name.encode())]
