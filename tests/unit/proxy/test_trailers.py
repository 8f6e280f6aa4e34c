"""Trailer sections of chunked responses: parsed by the response reader, however the reads are cut, within the
head limits; written back in the last chunk without the fields that must not be trailers."""

from __future__ import annotations

import pytest

from sidecar.proxy.http1 import HeadLimits, MalformedResponse, last_chunk
from sidecar.proxy.http1read import ResponseReader
from tests.unit.proxy.test_http1 import Sink as EventSink

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: grpc-status\r\n\r\n")
BODY = b"5\r\nhello\r\n7\r\n\r\n0\r\nab\r\n"   # the data holds CRLF and a "0" line of its own
TRAILERS = b"grpc-status: 0\r\nX-Checksum:  abc123 \r\n"
RESPONSE = HEAD + BODY + b"0\r\n" + TRAILERS + b"\r\n"
EXPECTED = [(b"grpc-status", b"0"), (b"X-Checksum", b"abc123")]


class Sink(EventSink):
    def body(self) -> bytes:
        return b"".join(data for kind, data in self.events if kind == "body" and isinstance(data, bytes))

    def ends(self) -> list[object]:
        return [value for kind, value in self.events if kind == "end"]


def feed(pieces: list[bytes], limits: HeadLimits | None = None) -> Sink:
    sink = Sink()
    reader = ResponseReader(sink) if limits is None else ResponseReader(sink, limits)
    reader.expect(False)
    for piece in pieces:
        reader.feed(piece)
    return sink


def test_trailers_are_handed_on_with_the_end_however_the_reads_are_cut() -> None:
    assert feed([RESPONSE]).ends() == [EXPECTED]
    for cut in range(1, len(RESPONSE)):
        sink = feed([RESPONSE[:cut], RESPONSE[cut:]])
        assert sink.ends() == [EXPECTED], cut
        assert sink.body() == b"hello\r\n0\r\nab"
    assert feed([RESPONSE[i:i + 1] for i in range(len(RESPONSE))]).ends() == [EXPECTED]


@pytest.mark.parametrize("end", [b"0\r\n\r\n", b"000\r\n\r\n", b"0;name=value\r\n\r\n", b'0;n="a:b"\r\n\r\n'])
def test_a_chunked_response_without_a_trailer_section_ends_with_none(end: bytes) -> None:
    response = HEAD + BODY + end
    for cut in range(1, len(response)):
        assert feed([response[:cut], response[cut:]]).ends() == [None], cut


def test_trailers_after_a_long_body_in_many_reads() -> None:
    data = b"x" * 4096
    pieces = [HEAD] + [b"1000\r\n" + data + b"\r\n"] * 300 + [b"0\r\n" + TRAILERS, b"\r\n"]
    sink = feed(pieces)
    assert sink.ends() == [EXPECTED] and len(sink.body()) == 300 * 4096


def test_each_response_on_a_connection_has_its_own_trailers() -> None:
    sink = Sink()
    reader = ResponseReader(sink)
    reader.expect(False)
    reader.feed(RESPONSE)
    reader.expect(False)
    reader.feed(HEAD + b"2\r\nok\r\n0\r\n\r\n")
    reader.expect(False)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    reader.expect(False)
    reader.feed(HEAD + b"0\r\ngrpc-status: 13\r\n\r\n")
    assert sink.ends() == [EXPECTED, None, None, [(b"grpc-status", b"13")]]


def test_trailer_sections_are_bounded_by_the_head_limits() -> None:
    limits = HeadLimits(max_head_bytes=1024, max_headers=4)
    fields = b"".join(b"t%d: v\r\n" % i for i in range(4))
    assert len(feed([HEAD + b"0\r\n" + fields + b"\r\n"], limits).ends()[0]) == 4  # type: ignore[arg-type]
    with pytest.raises(MalformedResponse, match="trailer section over the limits"):
        feed([HEAD + b"0\r\n" + fields + b"t4: v\r\n\r\n"], limits)
    big = b"x-big: " + b"a" * 1100 + b"\r\n"
    with pytest.raises(MalformedResponse, match="trailer section over the limits"):
        feed([HEAD + b"0\r\n" + big + b"\r\n"], limits)
    # the same section sent in many small reads after a long body: still refused, never kept whole
    pieces = [HEAD, b"400\r\n" + b"y" * 1024 + b"\r\n", b"0\r\n"] + [big[i:i + 64] for i in range(0, len(big), 64)]
    with pytest.raises(MalformedResponse, match="trailer section over the limits"):
        feed([*pieces, b"\r\n"], limits)


@pytest.mark.parametrize("section", [b"bad name: x\r\n", b"no-colon\r\n", b"x: a\r\n b\r\n", b"x: a\nb\r\n",
                                     b"Content-Length: 3\r\n"],
                         ids=["space-in-name", "no-colon", "obs-fold", "bare-lf", "content-length"])
def test_a_malformed_trailer_section_is_the_upstreams_fault(section: bytes) -> None:
    with pytest.raises(MalformedResponse):
        feed([HEAD + b"0\r\n" + section + b"\r\n"])


def test_the_last_chunk_carries_trailers_but_not_fields_that_must_not_be_trailers() -> None:
    assert last_chunk(None) == b"0\r\n\r\n" and last_chunk([]) == b"0\r\n\r\n"
    trailers = [(b"grpc-status", b"0"), (b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked"),
                (b"Host", b"evil"), (b"Connection", b"close"), (b"TE", b"trailers"), (b"Trailer", b"x"),
                (b"Keep-Alive", b"1"), (b"Upgrade", b"h2c"), (b"X-Checksum", b"abc")]
    assert last_chunk(trailers) == b"0\r\ngrpc-status: 0\r\nX-Checksum: abc\r\n\r\n"
