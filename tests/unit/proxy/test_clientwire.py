"""The client's wire side: a request's bytes, and responses read whole by the compiled reader into an HttpAnswer."""

from __future__ import annotations

import pytest

from sidecar.proxy.clientwire import AnswerCollector, encode_request
from sidecar.proxy.http1 import MalformedResponse
from sidecar.proxy.http1read import ResponseReader


def read(raw: bytes | list[bytes], limit: int = 1024, eof: bool = False) -> AnswerCollector:
    collector = AnswerCollector(limit)
    reader = ResponseReader(collector)
    reader.expect(False)
    for piece in [raw] if isinstance(raw, bytes) else raw:
        reader.feed(piece)
        if collector.answer is not None:
            break
    if eof:
        collector.on_eof()
    return collector


def test_a_request_is_one_buffer_framed_by_content_length() -> None:
    data = encode_request("POST", "/in/sub", "sub", [("Content-Type", "application/json"), ("x-a", "1")], b'{"k":1}')
    assert data == (b"POST /in/sub HTTP/1.1\r\nHost: sub\r\nContent-Type: application/json\r\nx-a: 1\r\n"
                    b"Content-Length: 7\r\n\r\n{\"k\":1}")


def test_a_get_without_a_body_has_no_content_length() -> None:
    assert encode_request("GET", "/health", "app", [], b"") == b"GET /health HTTP/1.1\r\nHost: app\r\n\r\n"


@pytest.mark.parametrize("field", [("x-a", "1\r\nx-injected: 2"), ("x-a\nb", "1"), ("x-a", "1\r")])
def test_a_line_break_in_a_field_is_refused(field: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_request("POST", "/", "h", [field], b"")


def test_a_line_break_in_the_target_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_request("POST", "/a HTTP/1.1\r\nx: y", "h", [], b"")


def test_content_length_body_in_pieces_and_the_fields() -> None:
    c = read([b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nx-sidecar-error: NOT_FOUND\r\n\r\nhello", b" wor", b"ld"])
    assert c.answer is not None
    assert (c.answer.status, c.answer.body, c.answer.truncated) == (200, b"hello world", False)
    assert c.answer.header("X-Sidecar-Error") == "NOT_FOUND"
    assert c.answer.header("x-other") is None
    assert c.reusable


def test_chunked_body() -> None:
    c = read(b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert c.answer is not None and c.answer.body == b"abcde" and c.reusable


def test_connection_close_is_not_reused() -> None:
    c = read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert c.answer is not None and c.answer.body == b"{}" and not c.reusable


def test_a_body_past_the_limit_is_cut_there_and_ends_the_answer_at_once() -> None:
    c = read(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100, limit=10)
    assert c.answer is not None and c.answer.body == b"x" * 10 and c.answer.truncated and not c.reusable
    chunked = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"y" * 100 + b"\r\n", limit=10)
    assert chunked.answer is not None and chunked.answer.body == b"y" * 10 and chunked.answer.truncated


def test_a_body_that_runs_to_the_close_ends_with_it() -> None:
    c = read(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert c.answer is None
    assert c.on_eof()
    assert c.answer is not None and c.answer.body == b"until close" and not c.reusable


def test_a_close_before_the_head_or_inside_a_framed_body_is_no_answer() -> None:
    assert not read(b"HTTP/1.1 200 OK\r\nContent-Le", eof=True).on_eof()
    c = read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", eof=True)
    assert c.answer is None and c.started


def test_interim_heads_are_skipped() -> None:
    c = read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert c.answer is not None and c.answer.status == 204 and c.answer.body == b""


@pytest.mark.parametrize("raw", [b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b"SMTP ready\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\n" + b"x-a: b\r\n" * 200 + b"\r\n"])
def test_a_malformed_or_oversized_head_is_refused(raw: bytes) -> None:
    with pytest.raises(MalformedResponse):
        read(raw)
