"""Response heads as bytes, refusals in SPEC's shape, and what a request exposes: pure parts of sidecar.httpd."""

from __future__ import annotations

import pytest

from sidecar.errors import Code
from sidecar.httpd import Request, Response
from sidecar.httpd.limits import refusal
from sidecar.httpd.response import encode_head
from sidecar.proxy.http1 import Headers, MalformedRequest, RequestHead, RequestHeadTooLarge


def test_a_whole_response_is_framed_by_content_length() -> None:
    head = Response(201, b'{"a":1}', content_type="application/json").head_bytes(close=False)
    assert head == (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n")


def test_a_body_without_a_type_is_octet_stream_and_close_is_said() -> None:
    head = Response(200, b"x").head_bytes(close=True)
    assert b"Content-Type: application/octet-stream\r\n" in head
    assert head.endswith(b"Content-Length: 1\r\nConnection: close\r\n\r\n")


def test_a_handlers_framing_fields_are_replaced_by_the_servers() -> None:
    head = encode_head(200, {"content-length": "99", "Transfer-Encoding": "gzip", "Connection": "keep-alive",
                             "X-A": "b"}, None, True, False)
    assert head == b"HTTP/1.1 200 OK\r\nX-A: b\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(("name", "value"), [("X-A", "b\r\nSet-Cookie: x"), ("X-A", "b\nc"), ("X A", "b"),
                                             ("", "b"), ("X-A", "a\x00")])
def test_a_response_header_cannot_split_the_response(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        encode_head(200, {name: value}, 0, False, False)


def test_refusals_say_whose_fault_in_specs_codes() -> None:
    large = refusal(RequestHeadTooLarge("more than 100 header fields", {"limit": 100}))
    assert large.code is Code.HEADERS_TOO_LARGE
    assert large.message == "request head too large: more than 100 header fields"
    bad = refusal(MalformedRequest("malformed request: Invalid method encountered"))
    assert bad.code is Code.INVALID_ARGUMENT
    assert bad.message == "malformed HTTP request: Invalid method encountered"
    assert bad.details["reason"] == "Invalid method encountered"


def test_a_request_exposes_path_query_and_headers() -> None:
    head = RequestHead("GET", b"/v1/catalog/a%20b?limit=5&limit=6&flag", "1.1",
                       Headers([(b"origin", b"Origin", b"http://x")]), "127.0.0.1:3500")
    request = Request(head, b"", "127.0.0.1", "127.0.0.1")
    assert request.raw_path == "/v1/catalog/a%20b"
    assert request.path == "/v1/catalog/a b"
    assert request.query == {"limit": "5", "flag": ""}      # the first value of each, blanks kept
    assert request.headers.get("ORIGIN") == "http://x"
    assert request.host == "127.0.0.1:3500"
    assert not request.body_exists


def test_a_head_encoded_before_is_the_same_bytes_and_a_bad_one_is_never_kept() -> None:
    headers = {"Content-Type": "application/json"}
    first = encode_head(202, headers, 45, False, False)
    assert encode_head(202, dict(headers), 45, False, False) is first   # the same bytes object: from the cache
    assert encode_head(202, headers, 46, False, False).endswith(b"Content-Length: 46\r\n\r\n")
    assert encode_head(202, headers, 45, False, True).endswith(b"Connection: close\r\n\r\n")
    assert encode_head(200, {"X-A": "1"}, 0, False, False) != encode_head(200, {"X-A": "2"}, 0, False, False)
    for _ in range(2):   # refused every time: a refusal is not cached as a head
        with pytest.raises(ValueError):
            encode_head(202, {"X-Bad": "a\r\nInjected: yes"}, 45, False, False)
    for n in range(600):   # past the cache's bound: still right
        assert encode_head(200, {"X-N": str(n)}, 0, False, False).startswith(b"HTTP/1.1 200 OK\r\nX-N: %d\r\n" % n)
