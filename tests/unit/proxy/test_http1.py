"""The HTTP/1.1 head core: hygiene table, hop-by-hop handling, editing and re-emitting heads."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.proxy.http1 import (
    Headers,
    HeadLimits,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
    Trailers,
    decimal,
)
from sidecar.proxy.http1read import RequestReader, ResponseReader, split_fields


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_request_head(self, head: RequestHead) -> None:
        self.events.append(("head", head))

    def on_request_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_request_end(self, trailers: Trailers | None) -> None:
        self.events.append(("end", trailers))

    def on_response_interim(self, head: ResponseHead) -> None:
        self.events.append(("interim", head))

    def on_response_head(self, head: ResponseHead) -> None:
        self.events.append(("head", head))

    def on_response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_response_end(self, trailers: Trailers | None) -> None:
        self.events.append(("end", trailers))

    def head(self) -> RequestHead:
        head = self.events[0][1]
        assert isinstance(head, RequestHead)
        return head


DEFAULT_LIMITS = HeadLimits()


def parse(data: bytes, limits: HeadLimits = DEFAULT_LIMITS) -> Sink:
    sink = Sink()
    RequestReader(sink, limits).feed(data)
    return sink


H = b"GET / HTTP/1.1\r\nHost: svc\r\n"
CASES = [
    ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare LF inside", H + b"X: y\nZ: w\r\n\r\n", 400),
    ("obs-fold", H + b"X: y\r\n  z\r\n\r\n", 400),
    ("CL with TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("duplicate CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("conflicting CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ("CL with sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("TE xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    ("TE chunked then gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("TE gzip then chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    ("TE space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
    ("NUL in value", H + b"X: a\x00b\r\n\r\n", 400),
    ("CR in value", H + b"X: a\rb\r\n\r\n", 400),
    ("DEL in value", H + b"X: a\x7fb\r\n\r\n", 400),
    ("bad header name", H + b"X(y): a\r\n\r\n", 400),
    ("empty header name", H + b": a\r\n\r\n", 400),
    ("chunk size not hex", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n", 400),
    ("negative chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n", 400),
    ("space after chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n", 400),
    ("chunk line bare LF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n", 400),
    ("missing Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", H + b"Host: b\r\n\r\n", 400),
    ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("relative target", b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
    ("101 headers", H + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
    ("header block over 60 KiB", H + b"X: " + b"v" * (60 * 1024) + b"\r\n\r\n", 431),
    ("target over 60 KiB", b"GET /" + b"a" * (61 * 1024) + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
]


@pytest.mark.parametrize(("case", "data", "status"), CASES, ids=[c[0] for c in CASES])
def test_hygiene(case: str, data: bytes, status: int) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse(data)
    assert caught.value.status == status, case


def test_limits_at_the_edge_are_accepted() -> None:
    sink = parse(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"Host: a\r\n\r\n")
    assert len(sink.head().headers) == 99


def test_an_endless_header_line_is_cut_off_across_feeds() -> None:
    reader = RequestReader(Sink(), HeadLimits(max_head_bytes=1024))
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    with pytest.raises(RemoteProtocolError) as caught:
        for _ in range(100):
            reader.feed(b"v" * 100)
    assert caught.value.status == 431


def test_hop_by_hop_headers_are_removed_and_framing_rewritten() -> None:
    sink = parse(b"POST /p?q=1 HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
                 b"X-Secret: s\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n"
                 b"X-Keep: k\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    head = sink.head()
    assert [name for name, _ in head.headers] == ["X-Keep"]
    assert head.chunked and head.upgrade is None
    assert head.to_bytes() == (b"POST /p?q=1 HTTP/1.1\r\nHost: svc\r\nX-Keep: k\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert sink.events[1:] == [("body", b"abc"), ("end", [(b"X-T", b"1")])]  # the trailer section, with the end


def test_field_names_are_lowercased_alike_before_and_after_the_names_cache_fills() -> None:
    from sidecar.proxy import http1read

    spellings = [b"X-Trace-Me", b"x-trace-me", b"X-TRACE-ME", b"Content-Type", b"CONNECTION", b"Host"]
    http1read._LOWERED.clear()   # as at start (other tests' names are in it)

    def lowered(request: bytes) -> list[tuple[bytes, bytes]]:
        return [(item[0], item[1]) for item in parse(request).head().headers.items]

    request = (b"GET / HTTP/1.1\r\nHost: a\r\nX-Trace-Me: 1\r\nx-trace-me: 2\r\nX-TRACE-ME: 3\r\n"
               b"Content-Type: text/plain\r\nCONNECTION: keep-alive\r\n\r\n")
    want = [(b"x-trace-me", b"X-Trace-Me"), (b"x-trace-me", b"x-trace-me"), (b"x-trace-me", b"X-TRACE-ME"),
            (b"content-type", b"Content-Type")]
    assert lowered(request) == want          # the first time, lowered
    assert lowered(request) == want          # again, from the cache
    assert all(http1read._LOWERED.get(name) == name.lower() for name in spellings)
    flood = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-Flood-%d: v\r\n" % i for i in range(90)) + b"\r\n"
    for round_ in range(http1read._LOWERED_MAX // 90 + 2):
        parse(flood.replace(b"X-Flood-", b"X-Flood-%d-" % round_))
    assert len(http1read._LOWERED) == http1read._LOWERED_MAX   # bounded: new spellings are lowered each time
    late = b"GET / HTTP/1.1\r\nHost: a\r\nX-After-The-Flood: v\r\n\r\n"
    assert lowered(late) == [(b"x-after-the-flood", b"X-After-The-Flood")]
    assert b"X-After-The-Flood" not in http1read._LOWERED


@given(st.binary(max_size=24) | st.integers(0, 2**70).map(lambda n: b"%d" % n)
       | st.text("0123456789 +-_", max_size=8).map(str.encode))
def test_content_length_reads_a_value_as_int_does(value: bytes) -> None:
    from sidecar.proxy.http1read import content_length

    try:
        want: int | type[ValueError] = int(value)
    except ValueError:
        want = ValueError
    try:
        got: int | type[ValueError] = content_length(value)
    except ValueError:
        got = ValueError
    assert got == want


def test_upgrade_request_keeps_upgrade() -> None:
    reader = RequestReader(Sink())
    sink = reader._sink  # type: ignore[attr-defined]
    offset = reader.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME")
    head = sink.head()
    assert head.upgrade == b"websocket"
    assert head.to_bytes().endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert offset == len(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")


def test_absolute_form_becomes_origin_form_with_its_host() -> None:
    head = parse(b"GET http://payment-service:8080/pay?x=1 HTTP/1.1\r\nHost: ignored\r\n\r\n").head()
    assert head.host == "payment-service:8080"
    assert head.target == b"/pay?x=1"
    assert head.path == "/pay"
    assert parse(b"GET http://svc HTTP/1.1\r\nHost: svc\r\n\r\n").head().target == b"/"


def test_keep_alive_and_versions() -> None:
    assert parse(b"GET / HTTP/1.0\r\n\r\n").head().keep_alive is False
    assert parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").head().keep_alive is False
    assert parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").head().keep_alive is True


@pytest.mark.parametrize("connection", [None, b"keep-alive", b"close", b"Keep-Alive, x-trace", b"upgrade"])
@pytest.mark.parametrize(("version", "accepted"), [("1.1", True), ("1.0", True), ("2.0", False), ("0.9", False)])
def test_the_version_and_keep_alive_of_every_version_and_connection_field(version: str, accepted: bool,
                                                                          connection: bytes | None) -> None:
    # the reader tells 1.1 from should_keep_alive() when no Connection field came; every other case asks llhttp
    data = f"GET / HTTP/{version}\r\nHost: a\r\n".encode()
    if connection is not None:
        data += b"Connection: " + connection + b"\r\n"
    said: list[tuple[str, bool]] = []

    class Asker:   # what llhttp says while the head completes
        def on_headers_complete(self) -> None:
            said.append((parser.get_http_version(), parser.should_keep_alive()))

    parser = httptools.HttpRequestParser(Asker())
    parser.feed_data(data + b"\r\n")
    if not accepted:
        with pytest.raises(RemoteProtocolError, match="unsupported HTTP version"):
            parse(data + b"\r\n")
        return
    head = parse(data + b"\r\n").head()
    assert said == [(version, head.keep_alive)] and head.version == version
    asks_keep_alive = connection is not None and connection.lower().startswith(b"keep-alive")
    assert head.keep_alive is (connection != b"close" and (version == "1.1" or asks_keep_alive))


@pytest.mark.parametrize("version", ["1.2", "1.9", "2.1", "3.1", "0.1"])
def test_llhttp_parses_no_version_but_1_1_whose_minor_is_above_0(version: str) -> None:
    # what the reader's shortcut to "1.1" rests on (sidecar.proxy.http1read.RequestReader.on_headers_complete)
    with pytest.raises(httptools.HttpParserError, match="Invalid HTTP version"):
        httptools.HttpRequestParser(Sink()).feed_data(f"GET / HTTP/{version}\r\nHost: a\r\n\r\n".encode())


def test_pipelined_requests_come_out_in_order() -> None:
    sink = parse(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    kinds = [kind for kind, _ in sink.events]
    assert kinds == ["head", "end", "head", "body", "end"]


def test_header_editing_api() -> None:
    headers = Headers()
    headers.add("X-A", "1")
    headers.add("x-a", "2")
    assert headers.get_all("X-A") == ["1", "2"]
    headers.set("X-A", "3")
    assert headers.get("x-a") == "3"
    headers.setdefault("x-a", "4")
    headers.setdefault("x-b", "5")
    assert list(headers) == [("X-A", "3"), ("x-b", "5")]
    headers.remove("X-B")
    assert "x-b" not in headers
    for name, value in [("X Bad", "v"), ("X", "a\r\nInjected: 1"), ("Connection", "close"), ("Content-Length", "1")]:
        with pytest.raises(ValueError):
            headers.add(name, value)


def test_split_fields_cuts_hop_by_hop_and_named_fields() -> None:
    block = (b"HTTP/1.1 200 OK\r\nA: 1\r\nConnection: keep-alive, X-Foo\r\nContent-Length: 3\r\nX-Foo: bar\r\n"
             b"Keep-Alive: timeout=5\r\nTE-Like: kept\r\nB: 2\r\n\r\n")
    fields, special = split_fields(block)
    assert fields == b"A: 1\r\nTE-Like: kept\r\nB: 2\r\n"
    assert special[b"content-length"] == [b"3"]
    assert split_fields(b"HTTP/1.1 204 No Content\r\n\r\n") == (b"", {})


_NAMES = st.sampled_from([b"Connection", b"connection", b"KEEP-ALIVE", b"Proxy-Connection", b"TE", b"te-x", b"Trailer",
                          b"Transfer-Encoding", b"Upgrade", b"Content-Length", b"content-type", b"X-Foo", b"x-foo",
                          b"Cache", b"Keep", b"U", b"Server", b"Date", b"CONTENT-LENGTH", b"CoNNection", b"tE",
                          b"Connection-X", b"Content-Lengthy", b"Trailers", b"Upgrade-Insecure-Requests",
                          b"proxy-connection", b"Transfer-encoding", b"t", b"c:x", b"k"])
_VALUES = st.sampled_from([b"", b"1", b" 12 ", b"keep-alive", b"close", b"X-Foo", b"x-foo, Date", b"a\tb", b"chunked"])


def _reference_split(block: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """split_fields the obvious way: line by line."""
    lines = block.split(b"\r\n")[1:-2]
    special: dict[bytes, list[bytes]] = {}
    kept = []
    for line in lines:
        name, _, value = line.partition(b":")
        if name.lower() in {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                            b"transfer-encoding", b"upgrade", b"content-length"}:
            special.setdefault(name.lower(), []).append(value.strip(b" \t"))
        else:
            kept.append(line)
    named = {t.strip() for v in special.get(b"connection", []) for t in v.lower().split(b",")}
    named -= {b"", b"close", b"keep-alive", b"upgrade"}
    kept = [line for line in kept if line.partition(b":")[0].lower() not in named]
    return b"".join(line + b"\r\n" for line in kept), special


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
def test_split_fields_agrees_with_a_line_by_line_split(fields: list[tuple[bytes, bytes]]) -> None:
    block = b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
    kept, special = split_fields(block)
    expected_kept, expected_special = _reference_split(block)
    assert special == expected_special
    # the fast path joins the kept lines without a trailing CRLF when Connection named fields were cut
    assert kept.rstrip(b"\r\n") == expected_kept.rstrip(b"\r\n")


@pytest.mark.parametrize("n", [0, 7, 99, 200, 404, 599, 1023, 1024, 65_535, 10**12])
def test_decimal_is_percent_d(n: int) -> None:
    assert decimal(n) == b"%d" % n


def response_events(data: bytes, head_request: bool = False) -> list[tuple[str, object]]:
    sink = Sink()
    reader = ResponseReader(sink)
    reader.expect(head_request)
    reader.feed(data)
    return sink.events


def test_response_framing_and_re_emission() -> None:
    events = response_events(b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
    head = events[0][1]
    assert isinstance(head, ResponseHead)
    assert head.content_length == 2 and head.keep_alive
    assert head.to_bytes(chunked=False, close=False) == b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\n"
    assert head.to_bytes(chunked=False, close=True).endswith(b"Connection: close\r\n\r\n")
    assert events[1:] == [("body", b"ok"), ("end", None)]


@pytest.mark.parametrize(("connection", "keep_alive"), [
    (b"keep-alive", True), (b"Keep-Alive", True), (b"close", False), (b"CLOSE", False), (b"keep-alive, Close", False),
    (b"x-trace", True),
])
def test_a_response_connection_field_decides_whether_the_upstream_connection_is_kept(connection: bytes,
                                                                                     keep_alive: bool) -> None:
    events = response_events(b"HTTP/1.1 200 OK\r\nConnection: " + connection + b"\r\nContent-Length: 2\r\n\r\nok")
    head = events[0][1]
    assert isinstance(head, ResponseHead) and head.keep_alive is keep_alive


def test_response_to_head_has_no_body() -> None:
    events = response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", head_request=True)
    assert [kind for kind, _ in events] == ["head", "end"]


def test_interim_then_final_response() -> None:
    events = response_events(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx")
    assert [kind for kind, _ in events] == ["interim", "head", "body", "end"]
    final = events[1][1]
    assert isinstance(final, ResponseHead) and final.status == 201


FINAL = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
         b"Access-Control-Allow-Origin: *\r\nX-Custom: kept\r\n\r\n{\"ok\":true}")
INTERIMS = {
    "100 Continue": b"HTTP/1.1 100 Continue\r\n\r\n",
    "103 Early Hints": b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    "100 then 103": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n",
}


def feed_in_pieces(pieces: list[bytes]) -> list[tuple[str, object]]:
    sink = Sink()
    reader = ResponseReader(sink)
    reader.expect(False)
    for piece in pieces:
        reader.feed(piece)
    return sink.events


def assert_final_intact(events: list[tuple[str, object]], interims: int) -> None:
    kinds = [kind for kind, _ in events]
    assert kinds[:interims] == ["interim"] * interims and kinds[interims] == "head" and kinds[-1] == "end", kinds
    assert b"".join(data for kind, data in events if kind == "body" and isinstance(data, bytes)) == b'{"ok":true}'
    final = events[interims][1]
    assert isinstance(final, ResponseHead)
    assert final.status == 201 and final.content_length == 11 and not final.chunked and not final.close_delimited
    assert final.headers.get("content-type") == "application/json"
    assert final.headers.get("access-control-allow-origin") == "*" and final.headers.get("x-custom") == "kept"
    # what goes downstream: every end-to-end field as received, framed by the Content-Length (not re-chunked)
    assert final.to_bytes(chunked=False, close=False) == (
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nAccess-Control-Allow-Origin: *\r\n"
        b"X-Custom: kept\r\nContent-Length: 11\r\n\r\n")


@pytest.mark.parametrize("interim", INTERIMS.values(), ids=INTERIMS.keys())
def test_final_head_after_interim_keeps_every_header_however_the_bytes_are_split(interim: bytes) -> None:
    """An interim (1xx) response, then the final one: the final head is found whole whether it arrives in the
    same read as the interim, in a read of its own (an app that flushes ``100 Continue`` before answering, as
    every one that honours ``Expect: 100-continue`` does), or cut anywhere."""
    stream = interim + FINAL
    interims = interim.count(b"HTTP/1.1 1")
    assert_final_intact(feed_in_pieces([stream]), interims)
    assert_final_intact(feed_in_pieces([interim, FINAL]), interims)
    for cut in range(1, len(stream)):
        assert_final_intact(feed_in_pieces([stream[:cut], stream[cut:]]), interims)
    assert_final_intact(feed_in_pieces([stream[i:i + 1] for i in range(len(stream))]), interims)


def test_the_next_response_on_the_connection_parses_after_an_interim_one() -> None:
    sink = Sink()
    reader = ResponseReader(sink)
    reader.expect(False)
    reader.feed(INTERIMS["100 Continue"])
    reader.feed(FINAL)
    reader.expect(False)
    reader.feed(b"HTTP/1.1 200 OK\r\nX-Second: yes\r\nContent-Length: 2\r\n\r\nok")
    heads = [head for kind, head in sink.events if kind == "head" and isinstance(head, ResponseHead)]
    assert [head.status for head in heads] == [201, 200]
    assert heads[0].content_length == 11 and heads[0].headers.get("x-custom") == "kept"
    assert heads[1].headers.get("x-second") == "yes" and heads[1].content_length == 2


def test_response_until_close_and_chunked() -> None:
    events = response_events(b"HTTP/1.1 200 OK\r\n\r\nstream")
    head = events[0][1]
    assert isinstance(head, ResponseHead) and head.close_delimited
    events = response_events(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    head = events[0][1]
    assert isinstance(head, ResponseHead) and head.chunked
    assert head.to_bytes(chunked=True, close=False) == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_malformed_response_is_the_upstreams_fault() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert caught.value.status == 503
