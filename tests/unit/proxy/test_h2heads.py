"""HTTP/2 heads to the engine's heads and back: pseudo-headers, connection-specific fields, framing, errors."""

from __future__ import annotations

import json

import pytest

from sidecar.errors import Code, NotFound, PermissionDenied, rescue
from sidecar.proxy.h2heads import (
    error_response,
    relayed_error,
    relayed_trailers_only,
    request_head,
    response_headers,
)
from sidecar.proxy.http1 import MalformedRequest, MethodNotSupported, RequestHeadTooLarge, ResponseHead

BASE = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/./b//c?q=1"), (b":authority", b"payments")]


def test_pseudo_headers_become_method_target_and_host() -> None:
    head = request_head([*BASE, (b"x-one", b"1")], end_stream=False, max_headers=100)
    assert (head.method, head.target, head.host, head.version) == ("POST", b"/a/b/c?q=1", "payments", "2")
    assert head.headers.items == [(b"x-one", b"x-one", b"1")]
    assert head.chunked and head.content_length is None   # a body of unknown length goes chunked upstream


def test_content_length_frames_the_body_and_an_ended_stream_has_none() -> None:
    sized = request_head([*BASE, (b"content-length", b"5")], end_stream=False, max_headers=100)
    assert (sized.chunked, sized.content_length) == (False, 5)
    empty = request_head(BASE, end_stream=True, max_headers=100)
    assert (empty.chunked, empty.content_length, empty.has_body) == (False, None, False)


def test_connection_specific_fields_are_dropped_and_cookies_joined() -> None:
    head = request_head([*BASE, (b"connection", b"x"), (b"te", b"trailers"), (b"keep-alive", b"1"),
                         (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"host", b"other")], False, 100)
    assert head.headers.items == [(b"cookie", b"cookie", b"a=1; b=2")]
    assert head.host == "payments"   # :authority wins over host


def test_host_names_the_service_when_authority_is_absent() -> None:
    head = request_head([(b":method", b"GET"), (b":path", b"/"), (b"host", b"web")], True, 100)
    assert head.host == "web"


@pytest.mark.parametrize(("headers", "error"), [
    ([(b":method", b"GET"), (b":authority", b"a")], MalformedRequest),               # no :path
    ([(b":method", b"GET"), (b":path", b"/")], MalformedRequest),                    # no authority at all
    ([(b":method", b"GET"), (b":path", b"/%2F"), (b":authority", b"a")], MalformedRequest),
    ([(b":method", b"GET"), (b":path", b"x"), (b":authority", b"a")], MalformedRequest),
    ([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"), (b":bogus", b"1")], MalformedRequest),
    ([(b":method", b"CONNECT"), (b":path", b"/"), (b":authority", b"a")], MethodNotSupported),
    ([*BASE, *[(b"x-%d" % i, b"v") for i in range(10)]], RequestHeadTooLarge),
])
def test_unusable_requests_are_refused_with_the_http1_errors(headers: list[tuple[bytes, bytes]],
                                                             error: type[Exception]) -> None:
    with pytest.raises(error):
        request_head(headers, True, max_headers=10)


def test_response_headers_drop_connection_fields_and_keep_the_length() -> None:
    head = ResponseHead(200, b"OK", b"Content-Type: text/plain\r\nConnection: close\r\nX-A: b\r\n", content_length=3)
    assert response_headers(head) == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-a", b"b"),
                                      (b"content-length", b"3")]


def test_errors_are_json_for_http_and_trailers_only_for_grpc() -> None:
    plain = request_head(BASE, True, 100)
    headers, body = error_response(NotFound("no service payments"), plain)
    assert headers[0] == (b":status", b"404") and (b"x-sidecar-error", b"NOT_FOUND") in headers
    assert json.loads(body)["error"]["code"] == "NOT_FOUND"
    grpc = request_head([*BASE, (b"content-type", b"application/grpc+proto")], True, 100)
    headers, body = error_response(NotFound("no service payments"), grpc)
    assert body == b"" and headers[0] == (b":status", b"200")
    assert (b"grpc-status", b"5") in headers and dict(headers)[b"grpc-message"] == b"no service payments"


def test_another_sidecars_json_error_becomes_a_grpc_status_with_its_message() -> None:
    rescued = rescue(PermissionDenied("checkout may not call /test.Admin/Reset on web"))
    fields = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in rescued.headers.items())
    head = ResponseHead(rescued.status, b"Forbidden", fields, content_length=len(rescued.body))
    code = relayed_error(head)
    assert code is Code.PERMISSION_DENIED
    headers = dict(relayed_trailers_only(code, rescued.body))
    assert (headers[b":status"], headers[b"grpc-status"]) == (b"200", b"7")
    assert headers[b"grpc-message"] == b"checkout may not call /test.Admin/Reset on web"
    # an app's own answers, and gRPC answers, are relayed as they are
    assert relayed_error(ResponseHead(403, b"Forbidden", b"Content-Type: application/json\r\n")) is None
    grpc = ResponseHead(200, b"OK", b"Content-Type: application/grpc\r\nX-Sidecar-Error: NOT_FOUND\r\n")
    assert relayed_error(grpc) is None
