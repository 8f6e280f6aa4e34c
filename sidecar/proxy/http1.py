"""HTTP/1.1 message heads for the proxy: parse, check, edit, re-emit. No I/O.

Theory of operation
-------------------
Bytes go in through the readers of :mod:`sidecar.proxy.http1read` (``RequestReader``, ``ResponseReader``),
which call their sink with a parsed head, body pieces and the end of each message. Framing is done by llhttp (through
httptools), which is strict by default: it already refuses bare LF line endings, obs-fold, a
Content-Length together with Transfer-Encoding, duplicate Content-Lengths, a Transfer-Encoding whose last
coding is not ``chunked``, NUL/CR/DEL in values, invalid header names and invalid chunk sizes (all checked
by the table in ``tests/unit/proxy/test_http1.py``). On top of llhttp this module enforces what it leaves to
the application: the size and count of the header block (431), exactly one Host (RFC 9112 3.2), a
Transfer-Encoding of exactly ``chunked`` (anything else is refused rather than passed on), the HTTP
version, the request-target form, and no CONNECT. The path of the target is put in canonical form
(:mod:`sidecar.proxy.paths`: dot segments, merged slashes, decoded unreserved characters), so that what
authorization matches is what the app gets; a target that has none is refused (400).

Framing headers (Content-Length, Transfer-Encoding) and hop-by-hop headers (RFC 9110 7.6.1: Connection and
every header it names, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade) are taken out of the header list
while parsing; the serializers write the framing back from the parsed facts, so what leaves the proxy is
always framed exactly one way, whatever the peer sent. Upgrade survives only on upgrade requests and 101
responses. The trailer section of a chunked message is handed on with its end, within the head limits
(hop-by-hop and framing fields are left to the serializer to drop: :func:`last_chunk`).

Every refusal is a :class:`RemoteProtocolError` naming the status to answer; the caller replies and closes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from sidecar.errors import Code, SidecarError

# RFC 9110 7.6.1 and RFC 9112 7: headers that describe one connection, never forwarded. Framing headers
# are also taken out here; the serializer writes the framing of the outgoing message itself.
_HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"content-length",
})


# fields the serializers write themselves or never forward: framing, Host and the hop-by-hop ones
SPECIAL_FIELDS: Final = _HOP_BY_HOP | {b"host"}


@dataclass(frozen=True, slots=True)
class HeadLimits:
    # 60 KiB and 100 headers, Envoy's defaults (max_request_headers_kb 60, max_headers_count 100)
    max_head_bytes: int = 60 * 1024
    max_headers: int = 100
    # one request target, or one header field's name and value together; 0: only the block's limits apply (the
    # proxy's listeners). The admin port and the app API set nginx's 8 KiB (large_client_header_buffers).
    max_field_bytes: int = 0


DEFAULT_HEAD_LIMITS: Final = HeadLimits()

# RFC 9110 9.2.2: methods whose effect is the same sent once or twice. A request lost with a stale pooled
# connection is re-sent, and a retry after the request was sent is made, only for these.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class RemoteProtocolError(SidecarError):
    """The peer broke HTTP/1.1; the status to answer is ``code.http`` and the connection is closed after it."""

    code = Code.INVALID_ARGUMENT

    @property
    def status(self) -> int:
        return self.code.http


class MalformedRequest(RemoteProtocolError):
    """The client sent something that is not a valid HTTP/1.1 request (400)."""

    code = Code.INVALID_ARGUMENT


class RequestHeadTooLarge(RemoteProtocolError):
    """The client's header block is over the size or count limit (431)."""

    code = Code.HEADERS_TOO_LARGE


class MethodNotSupported(RemoteProtocolError):
    """CONNECT tunnels are not offered by this proxy (405)."""

    code = Code.METHOD_NOT_ALLOWED


class MalformedResponse(RemoteProtocolError):
    """The upstream sent something that is not a valid HTTP/1.1 response; the caller answers 503."""

    code = Code.UNAVAILABLE


# ------------------------------------------------------------------------------------------ heads


def _lower(name: str | bytes) -> bytes:
    return (name.encode("latin-1") if isinstance(name, str) else name).lower()


def _bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


class Headers:
    """End-to-end header fields in arrival order, names compared case-insensitively, names sent as received.

    Items are ``(lowercase name, name, value)``. Framing and hop-by-hop fields are never in here.
    """

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[bytes, bytes, bytes]] | None = None) -> None:
        self.items: list[tuple[bytes, bytes, bytes]] = items if items is not None else []

    def get(self, name: str | bytes) -> str | None:
        """The first value of ``name`` as text, or None."""
        raw = self.get_bytes(name)
        return None if raw is None else raw.decode("latin-1")

    def get_bytes(self, name: str | bytes) -> bytes | None:
        key = _lower(name)
        for lname, _, value in self.items:
            if lname == key:
                return value
        return None

    def get_all(self, name: str | bytes) -> list[str]:
        key = _lower(name)
        return [value.decode("latin-1") for lname, _, value in self.items if lname == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str | bytes) and self.get_bytes(name) is not None

    def add(self, name: str | bytes, value: str | bytes) -> None:
        raw = _bytes(name)
        _check_field(raw, _bytes(value))
        self.items.append((raw.lower(), raw, _bytes(value)))

    def set(self, name: str | bytes, value: str | bytes) -> None:
        """Replace every ``name`` field by one with ``value`` (added at the end when absent)."""
        self.remove(name)
        self.add(name, value)

    def setdefault(self, name: str | bytes, value: str | bytes) -> None:
        if self.get_bytes(name) is None:
            self.add(name, value)

    def remove(self, name: str | bytes) -> None:
        key = _lower(name)
        self.items = [item for item in self.items if item[0] != key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((n.decode("latin-1"), v.decode("latin-1")) for _, n, v in self.items)

    def __len__(self) -> int:
        return len(self.items)


_TOKEN_CHARS: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_field(name: bytes, value: bytes) -> None:
    """Edits by the router must not be able to inject lines: names are tokens, values have no CR/LF/NUL."""
    if not name or not _TOKEN_CHARS.issuperset(name):
        raise ValueError(f"invalid header name {name!r}")
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        raise ValueError(f"invalid header value {value!r}")
    if name.lower() in _HOP_BY_HOP:
        raise ValueError(f"{name.decode()} is set by the proxy itself (hop-by-hop or framing)")


class RequestHead:
    """A parsed request head; the router reads it and edits ``headers`` before it is sent upstream.

    ``target`` is the origin form (``/path?query``), its path in canonical form (:mod:`sidecar.proxy.paths`);
    a request in absolute form (``GET http://svc/path``) gives ``host`` from its authority.
    """

    __slots__ = ("chunked", "content_length", "headers", "host", "keep_alive", "method", "target", "upgrade",
                 "version")

    def __init__(self, method: str, target: bytes, version: str, headers: Headers, host: str,
                 content_length: int | None = None, chunked: bool = False, keep_alive: bool = True,
                 upgrade: bytes | None = None) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.upgrade = upgrade

    @property
    def path(self) -> str:
        """The path of the target without the query, as text."""
        return self.target.split(b"?", 1)[0].decode("latin-1")

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def to_bytes(self) -> bytes:
        """The head as sent upstream: HTTP/1.1, the Host, end-to-end headers, then the framing we chose."""
        items = self.headers.items
        # the list made at its full size and filled by index: appends would grow it (and reallocate) several times
        parts = [b""] * (6 + 4 * len(items))
        parts[0] = self.method.encode()
        parts[1] = b" "
        parts[2] = self.target
        parts[3] = b" HTTP/1.1\r\nHost: "
        parts[4] = self.host.encode("latin-1")
        parts[5] = b"\r\n"
        i = 6
        for _, name, value in items:
            parts[i] = name
            parts[i + 1] = b": "
            parts[i + 2] = value
            parts[i + 3] = b"\r\n"
            i += 4
        if self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length is not None:
            parts.append(b"Content-Length: ")
            parts.append(decimal(self.content_length))
            parts.append(b"\r\n")
        if self.upgrade is not None:
            parts.append(b"Connection: upgrade\r\nUpgrade: ")
            parts.append(self.upgrade)
            parts.append(b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.target!r} host={self.host!r}>"


class ResponseHead:
    """A parsed response head. ``content_length`` None and not ``chunked`` means the body runs to close,
    unless ``no_body`` (HEAD requests, 1xx, 204, 304).

    ``fields`` is the end-to-end part of the header block as received (``Name: value\r\n`` lines, hop-by-hop
    and framing lines cut out): responses are passed on by splicing, without parsing every field.
    """

    __slots__ = ("chunked", "content_length", "fields", "keep_alive", "no_body", "reason", "status", "upgrade")

    def __init__(self, status: int, reason: bytes, fields: bytes, content_length: int | None = None,
                 chunked: bool = False, keep_alive: bool = True, no_body: bool = False,
                 upgrade: bytes | None = None) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.no_body = no_body
        self.upgrade = upgrade

    @property
    def headers(self) -> Headers:
        """The end-to-end fields, parsed (a copy: edit ``fields`` to change what is sent)."""
        items = []
        for line in self.fields.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                items.append((name.lower(), name, value.strip(b" \t")))
        return Headers(items)

    @property
    def close_delimited(self) -> bool:
        return not (self.no_body or self.chunked or self.content_length is not None)

    def to_bytes(self, chunked: bool, close: bool) -> bytes:
        """The head as sent downstream; ``chunked`` re-frames a body that ran to close, ``close`` says
        the proxy closes the downstream connection after this response."""
        parts = [b"HTTP/1.1 ", decimal(self.status), b" ", self.reason, b"\r\n", self.fields]
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length is not None:
            parts.append(b"Content-Length: ")
            parts.append(decimal(self.content_length))
            parts.append(b"\r\n")
        if self.upgrade is not None:
            parts.append(b"Connection: upgrade\r\nUpgrade: ")
            parts.append(self.upgrade)
            parts.append(b"\r\n")
        elif close:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status}>"


# the decimal text of small numbers (status codes, short bodies' lengths), made once: formatting costs more
_DECIMALS: Final[tuple[bytes, ...]] = tuple(str(n).encode() for n in range(1024))


def decimal(n: int) -> bytes:
    """``n`` in decimal ASCII, as ``b"%d" % n`` writes it."""
    return _DECIMALS[n] if 0 <= n < 1024 else str(n).encode()


def decimal_value(value: bytes, start: int, end: int) -> int:
    """The number the ASCII digits ``value[start:end]`` write, or -1 when the range is empty or holds another byte.
    Read byte by byte: ``int()`` on bytes is a generic call (~1,000 instructions), and this runs in every head."""
    if start >= end:
        return -1
    n = 0
    for i in range(start, end):
        c = value[i]
        if c < 48 or c > 57:
            return -1
        n = n * 10 + (c - 48)
    return n


def encode_chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as pieces for ``writelines`` (the data is not copied)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK: Final = b"0\r\n\r\n"

# trailer fields as received, in order: (name, value)
Trailers = list[tuple[bytes, bytes]]


def last_chunk(trailers: Trailers | None) -> bytes:
    """The end of a chunked body with ``trailers`` in it (RFC 9112 7.1.2), less the fields that must not be
    trailers here: framing, Host and hop-by-hop fields, which describe a message or a connection, not its end."""
    if not trailers:
        return LAST_CHUNK
    lines = [b"0\r\n"]
    for name, value in trailers:
        if name.lower() not in SPECIAL_FIELDS:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def reason_phrase(status: int) -> str:
    """The status line's reason for ``status`` ("Unknown" for a code RFC 9110 does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def simple_response(status: int, headers: dict[str, str], body: bytes, close: bool) -> bytes:
    """A complete response the proxy itself sends (errors); ``close`` adds ``Connection: close``."""
    parts = [f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"]
    parts += [f"{name}: {value}\r\n" for name, value in headers.items()]
    parts.append(f"content-length: {len(body)}\r\n")
    if close:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1") + body
