"""HTTP/1.1 readers for the proxy: bytes in, heads, body pieces and ends out to a sink. No I/O.

Framing is done by llhttp (through httptools), strict by default; on top of it the readers enforce what llhttp leaves
to the application (the head limits, one Host, a Transfer-Encoding of exactly ``chunked``, the version, the
request-target form, no CONNECT) and keep the trailer section of a chunked message within the head limits. The
message heads they build, and the errors they raise, are :mod:`sidecar.proxy.http1`'s.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

import httptools

from sidecar.errors import SidecarError
from sidecar.proxy.http1 import (
    DEFAULT_HEAD_LIMITS,
    SPECIAL_FIELDS,
    Headers,
    HeadLimits,
    MalformedRequest,
    MalformedResponse,
    MethodNotSupported,
    RemoteProtocolError,
    RequestHead,
    RequestHeadTooLarge,
    ResponseHead,
    Trailers,
    decimal_value,
)
from sidecar.proxy.paths import InvalidPath, normalize_target


class RequestSink(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self, trailers: Trailers | None) -> None: ...


class ResponseSink(Protocol):
    def on_response_interim(self, head: ResponseHead) -> None: ...
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self, trailers: Trailers | None) -> None: ...


class _NoSink:
    """The sink of a closed reader: its connection is gone and nothing is parsed any more (the reader let go of
    its connection, so that the two no longer hold each other)."""

    def on_request_head(self, head: RequestHead) -> None:
        pass

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self, trailers: Trailers | None) -> None:
        pass

    def on_response_interim(self, head: ResponseHead) -> None:
        pass

    def on_response_head(self, head: ResponseHead) -> None:
        pass

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self, trailers: Trailers | None) -> None:
        pass


_NO_SINK: Final = _NoSink()


# RFC 9112 7.1: the last chunk of a chunked body: one or more zeros, then optional extensions
_LAST_CHUNK_LINE: Final = re.compile(rb"0+[ \t]*(;.*)?")


def content_length(value: bytes) -> int:
    """A Content-Length value llhttp accepted (digits only, one value): its number, without int()'s generic call.
    Anything else goes to int(), which says what it is."""
    n = decimal_value(value, 0, len(value))
    return n if n >= 0 else int(value)


# Field names lowercased, by their spelling: a client's names repeat from one request to the next, and a lookup
# (the name's hash and one compare) costs less than bytes.lower() making a new object, whose hash SPECIAL_FIELDS'
# lookup then computes again. Bounded: once full, a new spelling is lowered on every use.
_LOWERED: Final[dict[bytes, bytes]] = {}
_LOWERED_MAX: Final = 512


class _Fields:
    """What a header block says about framing and connection handling, gathered while parsing."""

    __slots__ = ("connection", "content_length", "count", "host", "hosts", "items", "size", "te", "upgrade")

    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes, bytes]] = []
        self.count = 0
        self.size = 0
        self.content_length: int | None = None
        self.te: bytes | None = None
        self.connection: bytes | None = None
        self.upgrade: bytes | None = None
        self.host: bytes | None = None
        self.hosts = 0

    def add(self, name: bytes, value: bytes) -> None:
        lname = _LOWERED.get(name)
        if lname is None:
            lname = name.lower()
            if len(_LOWERED) < _LOWERED_MAX:
                _LOWERED[name] = lname
        if lname not in SPECIAL_FIELDS:
            self.items.append((lname, name, value))
        else:
            self.add_special(lname, value)

    def add_special(self, lname: bytes, value: bytes) -> None:
        """A framing, hop-by-hop or Host field (``lname`` in ``SPECIAL_FIELDS``): noted, never forwarded as is."""
        if lname == b"content-length":
            self.content_length = content_length(value)  # llhttp allows only digits, and one Content-Length
        elif lname == b"transfer-encoding":
            self.te = value if self.te is None else self.te + b", " + value
        elif lname == b"host":
            self.host = value
            self.hosts += 1
        elif lname == b"connection":
            self.connection = value if self.connection is None else self.connection + b", " + value
        elif lname == b"upgrade":
            self.upgrade = value
        # keep-alive, proxy-connection, te, trailer: hop-by-hop, dropped

    def end_to_end(self) -> Headers:
        """The fields without hop-by-hop ones, including those the Connection header names."""
        if self.connection is not None:
            named = {token.strip().lower() for token in self.connection.split(b",")}
            named.discard(b"")
            if named - {b"close", b"keep-alive", b"upgrade"}:
                return Headers([item for item in self.items if item[0] not in named])
        return Headers(self.items)

    def connection_tokens(self) -> set[bytes]:
        if self.connection is None:
            return set()
        return {token.strip().lower() for token in self.connection.split(b",")}

    def chunked(self, error: type[RemoteProtocolError]) -> bool:
        if self.te is None:
            return False
        # llhttp checked that the last coding is chunked; other codings are not passed on (RFC 9112 6.1
        # allows refusing them), so that nothing downstream can read the framing differently from us
        if self.te.strip().lower() != b"chunked":
            raise error(f"unsupported Transfer-Encoding {self.te.decode('latin-1')!r}: only 'chunked' is accepted")
        return True




class _Reader:
    """Shared by the request and response readers: header accounting and limits."""

    _fields: _Fields
    _limits: HeadLimits
    _in_head: bool
    _too_large: type[RemoteProtocolError]

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        if not self._in_head:
            self._trailer(name, value)
            return
        fields.count += 1
        fields.size += len(name) + len(value) + 4
        limits = self._limits
        if limits.max_field_bytes and len(name) + len(value) > limits.max_field_bytes:
            raise self._too_large(f"a header field over {limits.max_field_bytes} bytes",
                                  {"limit": limits.max_field_bytes})
        if fields.count > limits.max_headers:
            raise self._too_large(f"more than {limits.max_headers} header fields", {"limit": limits.max_headers})
        if fields.size > limits.max_head_bytes:
            raise self._too_large(f"header block larger than {limits.max_head_bytes} bytes",
                                  {"limit": limits.max_head_bytes})
        fields.add(name, value)

    def _trailer(self, name: bytes, value: bytes) -> None:
        raise NotImplementedError


class RequestReader(_Reader):
    """Parses requests from a client connection, one after another, and hands them to ``sink``.

    The parser calls the reader back and the reader calls its sink, the connection that holds it: :meth:`close`,
    once the connection is lost, cuts those references, so that what the connection leaves is freed as soon as
    the last reference goes instead of waiting for the cyclic garbage collector.
    """

    __slots__ = ("_fields", "_head_started", "_in_head", "_limits", "_parser", "_sink", "_too_large", "_trailers",
                 "_trailers_size", "_url", "partial_head_bytes")

    def __init__(self, sink: RequestSink, limits: HeadLimits = DEFAULT_HEAD_LIMITS) -> None:
        self._sink = sink
        self._limits = limits
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._fields = _Fields()
        self._url = b""
        self._in_head = False
        self._too_large = RequestHeadTooLarge
        self._trailers: Trailers | None = None   # the trailer section of the request being read, once it starts
        self._trailers_size = 0
        # bytes of a head seen across feeds while it is incomplete: llhttp buffers a partial field itself,
        # so a client sending one endless header line is cut off here rather than by on_header
        self.partial_head_bytes = 0

    @property
    def in_head(self) -> bool:
        """True while a request head has started and is not complete."""
        return self._in_head

    def feed(self, data: bytes) -> int | None:
        """Parse ``data``; returns None, or the offset in ``data`` where an upgraded connection's bytes start.

        Raises :class:`RemoteProtocolError` subclasses for anything malformed. A closed reader drops ``data``.
        """
        parser = self._parser
        if parser is None:
            return None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return int(upgrade.args[0])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, SidecarError):
                raise cause from None
            raise
        except httptools.HttpParserError as e:
            raise MalformedRequest(f"malformed request: {e}") from None
        if self._in_head:
            self.partial_head_bytes += len(data)
            if self.partial_head_bytes > self._limits.max_head_bytes + 1024:
                raise RequestHeadTooLarge(f"header block larger than {self._limits.max_head_bytes} bytes",
                                          {"limit": self._limits.max_head_bytes})
        return None

    def close(self) -> None:
        """The connection is gone: the parser and the sink are let go (see the class)."""
        self._parser = None
        self._sink = _NO_SINK

    # llhttp callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._fields = _Fields()
        self._url = b""
        self._in_head = True
        self._trailers = None
        self.partial_head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        limits = self._limits
        if limits.max_field_bytes and len(self._url) > limits.max_field_bytes:
            raise RequestHeadTooLarge(f"request target longer than {limits.max_field_bytes} bytes",
                                      {"limit": limits.max_field_bytes})
        if len(self._url) > limits.max_head_bytes:
            raise RequestHeadTooLarge(f"request target longer than {limits.max_head_bytes} bytes",
                                      {"limit": limits.max_head_bytes})

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        assert parser is not None   # called back by it
        fields = self._fields
        method = parser.get_method().decode()
        keep_alive = parser.should_keep_alive()
        # llhttp parses HTTP/0.9, 1.0, 1.1 and 2.0 only, and keeps a request's connection alive without a Connection
        # field when the minor version is above 0: that is 1.1, known without get_http_version(), which formats the
        # string anew (~2,500 instructions a request)
        version = "1.1" if keep_alive and fields.connection is None else parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise MalformedRequest(f"unsupported HTTP version {version}")
        if version == "1.0" and fields.te is not None:
            # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (1.0 peers on the
            # path may frame it by Content-Length or by close); the admin port and the app API refuse it too
            raise MalformedRequest("Transfer-Encoding in an HTTP/1.0 request")
        if method == "CONNECT":
            raise MethodNotSupported("CONNECT is not supported by this proxy", {"allowed": ["GET", "POST", "PUT",
                                     "DELETE", "PATCH", "HEAD", "OPTIONS"]})
        if fields.hosts > 1:
            raise MalformedRequest("more than one Host header")
        target = self._url
        if target[:1] == b"/":
            host = fields.host
        elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            # absolute form (a client using us as HTTP_PROXY): its authority wins over Host (RFC 9112 3.2.2)
            rest = target.split(b"://", 1)[1]
            slash = rest.find(b"/")
            query = rest.find(b"?")
            cut = min(i for i in (slash, query, len(rest)) if i >= 0)
            host = rest[:cut]
            target = rest[cut:] or b"/"
            if target[:1] == b"?":
                target = b"/" + target
            if not host or b"@" in host:
                raise MalformedRequest("absolute-form target without a valid authority")
        elif target == b"*" and method == "OPTIONS":
            host = fields.host
        else:
            raise MalformedRequest(f"invalid request target {target[:100].decode('latin-1')!r}")
        if target[:1] == b"/":
            # one canonical path for authorization and for the app (sidecar.proxy.paths)
            try:
                target = normalize_target(target)
            except InvalidPath as e:
                raise MalformedRequest(str(e), {"target": target[:200].decode("latin-1")}) from None
        if host is None:
            if version == "1.1":
                raise MalformedRequest("missing Host header")
            host = b""
        upgrade = fields.upgrade
        if upgrade is not None and not parser.should_upgrade():
            upgrade = None
        head = RequestHead(
            method, target, version, fields.end_to_end(), host.decode("latin-1"), fields.content_length,
            fields.chunked(MalformedRequest), keep_alive, upgrade,
        )
        self._sink.on_request_head(head)

    def on_body(self, data: bytes) -> None:
        self._sink.on_request_body(data)

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A field of a chunked request's trailer section: kept, within the head limits."""
        trailers = self._trailers
        if trailers is None:
            trailers = self._trailers = []
            self._trailers_size = 0
        trailers.append((name, value))
        self._trailers_size += len(name) + len(value) + 4
        limits = self._limits
        if len(trailers) > limits.max_headers or self._trailers_size > limits.max_head_bytes:
            raise RequestHeadTooLarge("request trailer section over the limits",
                                      {"limit": limits.max_head_bytes, "fields": limits.max_headers})

    def on_message_complete(self) -> None:
        trailers = self._trailers
        self._trailers = None
        self._sink.on_request_end(trailers)


# the fields cut out of a response head (hop-by-hop and framing), by lowercase name
_SPECIAL_NAMES: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                                   b"transfer-encoding", b"upgrade", b"content-length"))
# their names as servers spell them (lowercase, and capitalized as nginx and most servers send them): found without
# a lowercased copy; any other spelling is lowercased first
_SPELLED: Final = {**{name: name for name in _SPECIAL_NAMES},
                   **{b"-".join(part.capitalize() for part in name.split(b"-")): name for name in _SPECIAL_NAMES},
                   b"TE": b"te"}
# Connection values that name no other field: nothing more to cut
_PLAIN_CONNECTION: Final = frozenset((b"keep-alive", b"close", b"upgrade", b"Keep-Alive", b"Close", b"Upgrade"))


def _special_length(line: bytes) -> int:
    """Where the colon is when ``line`` may be a cut field (its name's length, from the name's first letter and the
    colon after it), 0 when it cannot be: most fields of a head are told apart by two byte comparisons."""
    size = len(line)
    first = line[0] | 0x20 if size else 0
    if first == 99:      # c: connection, content-length
        if size > 10 and line[10] == 58:
            return 10
        if size > 14 and line[14] == 58:
            return 14
    elif first == 116:   # t: te, trailer, transfer-encoding
        if size > 2 and line[2] == 58:
            return 2
        if size > 7 and line[7] == 58:
            return 7
        if size > 17 and line[17] == 58:
            return 17
    elif first == 107:   # k: keep-alive
        if size > 10 and line[10] == 58:
            return 10
    elif first == 117:   # u: upgrade
        if size > 7 and line[7] == 58:
            return 7
    elif first == 112 and size > 16 and line[16] == 58:   # p: proxy-connection
        return 16
    return 0


def split_fields(block: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """Cut hop-by-hop and framing lines out of a header block (a first line, ``Name: value\r\n`` lines and
    the empty line); returns the other lines and the values of what was cut, by lowercase name.

    llhttp has already checked the syntax (no space before a colon, CRLF only), so a field line starts with its
    name and a colon. One split gives the lines; a line's first letter and the place of its colon tell most
    fields from the cut ones without a copy, and only a cut field's name and value are sliced out.
    """
    lines = block.split(b"\r\n")
    special: dict[bytes, list[bytes]] = {}
    kept: list[bytes] | None = None   # None until a line is cut: then the lines before it, and the kept ones after
    last = len(lines) - 2             # lines[0] is the first line; the block ends with the empty line: b"", b""
    for i in range(1, last):
        line = lines[i]
        colon = _special_length(line)
        name: bytes | None = None
        if colon:
            spelled = line[:colon]
            name = _SPELLED.get(spelled)
            if name is None:
                lowered = spelled.lower()
                if lowered in _SPECIAL_NAMES:
                    name = lowered
        if name is None:
            if kept is not None:
                kept.append(line)
            continue
        start = colon + 1
        end = len(line)
        while start < end and (line[start] == 32 or line[start] == 9):       # space, tab
            start += 1
        while end > start and (line[end - 1] == 32 or line[end - 1] == 9):
            end -= 1
        value = line[start:end]
        found = special.get(name)
        if found is None:
            special[name] = [value]
        else:
            found.append(value)
        if kept is None:
            kept = lines[1:i]
    if kept is None:
        fields = block[len(lines[0]) + 2:-2]
    else:
        kept.append(b"")
        fields = b"\r\n".join(kept)
    connection = special.get(b"connection")
    if connection is not None and (len(connection) != 1 or (connection[0] not in _PLAIN_CONNECTION
                                                            and connection[0].lower() not in _PLAIN_CONNECTION)):
        fields = _cut_named(fields, connection)
    return fields, special


def _cut_named(fields: bytes, connection: list[bytes]) -> bytes:
    """Cut the fields that Connection names (RFC 9110 7.6.1)."""
    named = {token.strip() for value in connection for token in value.lower().split(b",")}
    named -= {b"", b"close", b"keep-alive", b"upgrade"}
    if not named:
        return fields
    lines = [line for line in fields.split(b"\r\n") if line.partition(b":")[0].lower() not in named]
    return b"\r\n".join(lines)


# A response connection's phase (module constants rather than an Enum: compiled, they are plain ints).
# Every message's end brings _HEAD again, so a head that arrives in a read of its own is collected whole.
_HEAD: Final = 0  # a head is expected or arriving: the bytes fed are kept until it is complete
_INTERIM: Final = 1  # an interim (1xx) head was handed on; the final head follows once llhttp ends the interim message
_MESSAGE: Final = 2  # a final head was handed on; its body flows until the message ends
_HEAD_DONE: Final = 3  # the answer to a HEAD request ended with its head; nothing is expected until the next expect()


class ResponseReader:
    """Parses the responses of one upstream connection; call :meth:`expect` before each request is sent.

    Unlike requests, responses are not parsed field by field: llhttp validates and frames them (no
    per-field callbacks), and the head's bytes are kept and spliced (:func:`split_fields`). A response head
    always starts at the beginning of the bytes received after a request was sent, or right after an
    interim (1xx) head, so its bytes are found without llhttp telling offsets.

    The trailer section of a chunked response is found the same way, without per-field callbacks: the bytes
    fed during a chunked body are kept by reference (as many as the head limits allow a trailer section, plus
    the last read), and when the message ends the section is read backwards from the end of the last read
    up to the last-chunk line. llhttp has already checked its syntax. Its end is handed on once the read is
    parsed, when it is known to be the end of the message (an upstream sends nothing more before the next
    request; if it does anyway, the response ends without its trailers).

    As with :class:`RequestReader`, :meth:`close` lets go of the parser and the sink once the connection is lost.
    """

    __slots__ = ("_chunked", "_ended", "_feeding", "_head_buf", "_head_request", "_limits", "_parser", "_phase",
                 "_reason", "_sink", "_tail", "_tail_size")

    def __init__(self, sink: ResponseSink, limits: HeadLimits = DEFAULT_HEAD_LIMITS) -> None:
        self._sink = sink
        self._limits = limits
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._reason = b""
        self._phase = _HEAD
        self._head_buf = b""
        self._head_request = False
        self._chunked = False     # the message being read has a chunked body: its reads are kept in _tail
        self._ended = False       # a chunked message ended in the read being parsed: its end is handed on after
        self._feeding = b""       # the read being parsed, while a head is expected
        self._tail: list[bytes] = []
        self._tail_size = 0

    def expect(self, head_request: bool) -> None:
        """The next response answers a HEAD request (no body, whatever Content-Length says) or not."""
        self._head_request = head_request
        if self._phase == _HEAD_DONE:
            self._phase = _HEAD

    def feed(self, data: bytes) -> int | None:
        """Parse ``data``; returns None, or the offset where bytes after a 101 response start. A closed reader drops
        ``data``."""
        parser = self._parser
        if parser is None:
            return None
        phase = self._phase
        if phase == _MESSAGE:
            if self._chunked:
                self._keep(data)
        elif phase == _HEAD_DONE:
            return None  # bytes after a HEAD response: none are expected
        else:
            self._feeding = data
            if phase == _HEAD:
                self._head_buf = self._head_buf + data if self._head_buf else data
                if len(self._head_buf) > self._limits.max_head_bytes and b"\r\n\r\n" not in self._head_buf:
                    raise MalformedResponse(
                        f"response header block larger than {self._limits.max_head_bytes} bytes")
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return int(upgrade.args[0])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, SidecarError):
                raise cause from None
            raise
        except httptools.HttpParserError as e:
            raise MalformedResponse(f"upstream sent a malformed response: {e}") from None
        if phase != _MESSAGE:
            self._feeding = b""   # not kept by an idle pooled connection (a chunked body's _tail has it now)
        if self._ended:
            self._ended = False
            self._sink.on_response_end(self._trailers())
        return None

    def close(self) -> None:
        """The connection is gone: the parser and the sink are let go (see the class)."""
        self._parser = None
        self._sink = _NO_SINK

    def _keep(self, data: bytes) -> None:
        """Keep a read of a chunked body: the last ones, as many as a trailer section may need."""
        tail = self._tail
        tail.append(data)
        size = self._tail_size + len(data)
        cap = self._limits.max_head_bytes + 1024   # the section, its last-chunk line and the CRLF before it
        while len(tail) > 1 and size - len(tail[0]) >= cap:
            size -= len(tail.pop(0))
        self._tail_size = size

    def _trailers(self) -> Trailers | None:
        """The trailer fields of the chunked message that ended at the end of the kept reads, or None."""
        tail = self._tail
        self._tail = []
        self._tail_size = 0
        last = tail[-1]
        if last.endswith(b"\n0\r\n\r\n"):
            return None   # the common case: a last chunk and no trailer section
        raw = (last if len(tail) == 1 else b"".join(tail)).rstrip(b"\r\n")
        limits = self._limits
        fields: Trailers = []
        end = len(raw)
        while True:
            start = raw.rfind(b"\r\n", 0, end)
            line = raw[start + 2:end] if start >= 0 else raw[:end]
            if _LAST_CHUNK_LINE.fullmatch(line) is not None:
                break
            name, colon, value = line.partition(b":")
            if start < 0 or not colon or not name:
                # what was kept holds no last-chunk line: the section is longer than the limits allow
                raise MalformedResponse("response trailer section over the limits")
            fields.append((name, value.strip(b" \t")))
            if len(fields) > limits.max_headers or len(raw) - start > limits.max_head_bytes:
                raise MalformedResponse("response trailer section over the limits")
            end = start
        if not fields:
            return None
        fields.reverse()
        return fields

    def on_message_begin(self) -> None:
        self._reason = b""   # the phase is already _HEAD: every message's end (or expect) brought it back
        if self._ended:
            # bytes after a chunked response in the same read: its end cannot be placed, so it has no trailers
            self._ended = False
            self._tail = []
            self._tail_size = 0
            self._sink.on_response_end(None)

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        buf = self._head_buf
        if buf and (buf[0] == 13 or buf[0] == 10):   # CRLFs after a previous message: lstrip is a method call
            buf = buf.lstrip(b"\r\n")
        end = buf.find(b"\r\n\r\n") + 4
        block = buf[:end]
        self._head_buf = b""
        limits = self._limits
        # a field line takes at least 4 bytes ("a:" CRLF): a short block cannot hold too many of them
        if end > limits.max_head_bytes or (end > 4 * limits.max_headers
                                           and block.count(b"\r\n") - 2 > limits.max_headers):
            raise MalformedResponse("response header block over the limits")
        fields, special = split_fields(block)
        parser = self._parser
        assert parser is not None   # called back by it
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: passed on; the final head follows on this connection, in these bytes
            # or in later ones
            self._phase = _INTERIM
            self._head_buf = buf[end:]
            self._sink.on_response_interim(ResponseHead(status, self._reason, fields, no_body=True))
            return
        no_body = self._head_request or status < 200 or status == 204 or status == 304
        lengths = special.get(b"content-length")
        length = None if lengths is None else content_length(lengths[0])
        chunked = False
        codings = special.get(b"transfer-encoding")
        if codings is not None:
            # llhttp checked that the last coding is chunked; others are not passed on (see the request side)
            if b", ".join(codings).lower() != b"chunked":
                raise MalformedResponse("unsupported Transfer-Encoding: only 'chunked' is accepted")
            chunked = not no_body
        keep_alive = parser.should_keep_alive()
        connection = special.get(b"connection")
        if keep_alive and connection is not None:
            for value in connection:
                # find, not `in`: CPython's bytes `in` first tries the operand as an integer and raises and clears
                # a TypeError before it searches (~2,500 instructions where find takes ~100); the common value
                # told by a compare, without lowering a copy
                if value != b"keep-alive" and value != b"Keep-Alive" and value.lower().find(b"close") >= 0:
                    keep_alive = False
        upgrade = special[b"upgrade"][0] if status == 101 and b"upgrade" in special else None
        head = ResponseHead(status, self._reason, fields, length, chunked, keep_alive, no_body, upgrade)
        if no_body and self._head_request:
            # llhttp cannot be told that a response answers HEAD; it would wait for Content-Length bytes.
            # The message ends here, and a fresh parser takes the next response.
            self._phase = _HEAD_DONE
            self._parser = httptools.HttpResponseParser(self)
            self._sink.on_response_head(head)
            self._sink.on_response_end(None)
            return
        self._phase = _MESSAGE
        if chunked:
            self._chunked = True
            self._tail = [self._feeding]
            self._tail_size = len(self._feeding)
        self._sink.on_response_head(head)

    def on_body(self, data: bytes) -> None:
        if self._phase == _MESSAGE:
            self._sink.on_response_body(data)

    def on_message_complete(self) -> None:
        phase = self._phase
        if phase == _HEAD_DONE:
            return   # the replaced parser ending the HEAD response its own way
        self._phase = _HEAD
        if phase == _MESSAGE:
            if self._chunked:
                self._chunked = False
                self._ended = True    # handed on once the read is parsed, with the trailer section
            else:
                self._sink.on_response_end(None)
