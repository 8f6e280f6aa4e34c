"""Received header lists against RFC 9113 sections 8.2 and 8.3: what is well-formed and why the rest is not."""

from __future__ import annotations

import pytest

from sidecar.http2.headercheck import REQUEST, RESPONSE, TRAILERS, check, content_length, is_informational

GOOD = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.S/M"), (b":authority", b"svc"),
        (b"te", b"trailers"), (b"content-type", b"application/grpc")]


@pytest.mark.parametrize(("headers", "kind"), [
    (GOOD, REQUEST),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"svc")], REQUEST),
    ([(b":method", b"CONNECT"), (b":authority", b"svc:443")], REQUEST),
    ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/chat"),
      (b":authority", b"svc")], REQUEST),
    ([(b":status", b"200"), (b"x-empty", b"")], RESPONSE),
    ([(b"grpc-status", b"0")], TRAILERS),
])
def test_well_formed(headers: list[tuple[bytes, bytes]], kind: int) -> None:
    assert check(headers, kind) is None


@pytest.mark.parametrize(("headers", "kind", "why"), [
    ([*GOOD, (b"X-Upper", b"v")], REQUEST, "upper case"),
    ([*GOOD, (b"", b"v")], REQUEST, "empty field name"),
    ([*GOOD, (b"x y", b"v")], REQUEST, "space"),
    ([*GOOD, (b"x:y", b"v")], REQUEST, "colon"),
    ([*GOOD, (b"x", b"a\r\nb")], REQUEST, "CR, LF or NUL"),
    ([*GOOD, (b"x", b"a\x00")], REQUEST, "CR, LF or NUL"),
    ([*GOOD, (b"x", b" padded")], REQUEST, "whitespace"),
    ([*GOOD, (b"connection", b"close")], REQUEST, "connection-specific"),
    ([*GOOD, (b"transfer-encoding", b"chunked")], REQUEST, "connection-specific"),
    ([*GOOD[:4], (b"te", b"gzip")], REQUEST, "te other than trailers"),
    ([(b"x", b"1"), *GOOD], REQUEST, "after a regular field"),
    ([*GOOD[:1], *GOOD], REQUEST, "twice"),
    ([(b":status", b"200"), *GOOD], REQUEST, "is not one of a request"),
    ([(b":method", b"POST"), (b":path", b"/"), (b":authority", b"svc")], REQUEST, "without :scheme or :path"),
    (GOOD[1:], REQUEST, "without :method"),
    ([*GOOD[:3]], REQUEST, "without :authority or host"),
    ([*GOOD, (b"host", b"other")], REQUEST, ":authority and host differ"),
    ([*GOOD[:2], (b":path", b""), GOOD[3]], REQUEST, "an empty :path"),
    ([(b":method", b"CONNECT"), (b":path", b"/"), (b":authority", b"svc")], REQUEST, "CONNECT with"),
    ([*GOOD[:4], (b":protocol", b"websocket")], REQUEST, ":protocol outside CONNECT"),
    ([(b"content-type", b"text/plain")], RESPONSE, "without :status"),
    ([(b":status", b"200"), (b":path", b"/")], RESPONSE, "is not one of a response"),
    ([(b":status", b"200")], TRAILERS, "in trailers"),
])
def test_malformed(headers: list[tuple[bytes, bytes]], kind: int, why: str) -> None:
    problem = check(headers, kind)
    assert problem is not None and why in problem


@pytest.mark.parametrize(("headers", "length"), [
    ([], None),
    ([(b"content-length", b"12")], 12),
    ([(b"content-length", b"12"), (b"content-length", b"12")], 12),
    ([(b"content-length", b"12"), (b"content-length", b"13")], -1),
    ([(b"content-length", b"-1")], -1),
    ([(b"content-length", b"1 2")], -1),
])
def test_content_length(headers: list[tuple[bytes, bytes]], length: int | None) -> None:
    assert content_length(headers) == length


def test_informational() -> None:
    assert is_informational([(b":status", b"100")])
    assert not is_informational([(b":status", b"200")])


def test_fields_found_good_are_remembered_within_bounds_and_bad_ones_never() -> None:
    from sidecar.http2 import headercheck
    long_name = b"x-" + b"a" * headercheck.GOOD_LENGTH
    for _ in range(2):   # the second pass answers from what the first remembered
        assert check([*GOOD, (b"x-trace", b"1"), (long_name, b"v" * 100)], REQUEST) is None
        assert check([*GOOD, (b"X-Trace", b"1")], REQUEST) is not None
        assert check([*GOOD, (b"x-trace", b" 1")], REQUEST) is not None
        assert check([*GOOD, (b"x-trace", b"1\r\n")], REQUEST) is not None
    for i in range(3 * headercheck.GOOD_MAX):   # a peer inventing fields: memory stays bounded
        assert check([*GOOD, (b"x-%d" % i, b"v%d" % i)], REQUEST) is None
    for remembered in (headercheck._GOOD_NAMES, headercheck._GOOD_VALUES):
        assert 0 < len(remembered) <= headercheck.GOOD_MAX
        assert all(len(octets) <= headercheck.GOOD_LENGTH for octets in remembered)
