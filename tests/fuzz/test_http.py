"""HTTP/1.1 request and response heads: only the protocol error (RemoteProtocolError) may come out, whole
or fed in pieces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import fuzz_settings, inputs
from tests.fuzz.targets import http_request, http_response

_TOKENS = st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT", b"OPTIONS", b"PRI", b"get", b"G\x00T"])
_TARGETS = st.sampled_from([b"/", b"/a?b", b"*", b"http://web/x", b"https://w@x/", b"http://", b"a", b"/%00", b"",
                            b"//a/./b/../../..", b"/%2e%2E/x?%2F", b"/a%2fb", b"/a%5C", b"/%zz", b"/a#b",
                            b"http://web//x/..", b"/\\a\\..\\b", b"/%41%7e"])
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.12", b"http/1.1", b"HTTP/9.9", b""])
_NAMES = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"TE",
                          b"Trailer", b"Keep-Alive", b"Expect", b"X-A", b"Host ", b" Host", b"H\x01st", b""])
_VALUES = st.sampled_from([b"web", b"0", b"5", b"-1", b"1,1", b"chunked", b"Chunked", b"gzip, chunked",
                           b"chunked, gzip", b"close", b"upgrade", b"websocket", b"100-continue", b"x-a",
                           b"99999999999999999999", b" chunked", b"\tchunked", b"a\x00b", b"a\rb", b"\xff"])
_EOLS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n "])
_BODIES = st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"zz\r\n",
                           b"1;a=b\r\nx\r\n0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: w\r\n\r\n"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    line = b" ".join([draw(_TOKENS), draw(_TARGETS), draw(_VERSIONS)])
    fields = draw(st.lists(st.tuples(_NAMES, _VALUES, _EOLS), max_size=8))
    head = line + b"\r\n" + b"".join(n + b": " + v + e for n, v, e in fields) + draw(_EOLS)
    return head + draw(_BODIES)


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"100", b"101", b"103", b"200", b"204", b"304", b"404", b"999", b"2000", b"abc"]))
    line = draw(_VERSIONS) + b" " + status + b" " + draw(st.sampled_from([b"OK", b"", b"\xff"]))
    fields = draw(st.lists(st.tuples(_NAMES, _VALUES, _EOLS), max_size=8))
    head = line + b"\r\n" + b"".join(n + b": " + v + e for n, v, e in fields) + draw(_EOLS)
    return head + draw(_BODIES)


@fuzz_settings(300)
@given(inputs("http_request"))
def test_request_bytes(data: bytes) -> None:
    http_request(data)


@fuzz_settings(400)
@given(request_heads())
def test_request_heads_built_from_hostile_parts(data: bytes) -> None:
    http_request(data)


@fuzz_settings(300)
@given(inputs("http_response"))
def test_response_bytes(data: bytes) -> None:
    http_response(data)


@fuzz_settings(400)
@given(response_heads())
def test_response_heads_built_from_hostile_parts(data: bytes) -> None:
    http_response(data)
