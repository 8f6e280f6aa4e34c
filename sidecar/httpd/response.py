"""Responses: :class:`Response` (status, headers, a whole body) and :class:`StreamResponse` (a head, then body
pieces as they come: Server-Sent Events), and :func:`encode_head`, their head as bytes. No I/O of their own: a
streaming response writes through its request's connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sidecar.proxy.http1 import reason_phrase


class ResponseWriter(Protocol):
    """What a streaming response writes through: the connection of its request."""

    def start(self, response: StreamResponse, request: Streamed) -> None: ...
    async def send(self, data: bytes) -> None: ...
    def finish(self) -> None: ...


class Streamed(Protocol):
    """What a streaming response needs of its request (:class:`~sidecar.httpd.request.Request`)."""

    @property
    def writer(self) -> ResponseWriter | None: ...
    @property
    def method(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def keep_alive(self) -> bool: ...

# written by the server from what it knows of the message and the connection; a handler's own are dropped
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
DEFAULT_CONTENT_TYPE = "application/octet-stream"


# heads already encoded: the same few answers (a publish's 202, the API's small JSON) come again and again; any
# other fills it and empties it, which costs no more than encoding
_HEADS: dict[tuple[int, tuple[tuple[str, str], ...], int | None, bool, bool], bytes] = {}
HEADS_KEPT = 256


def encode_head(status: int, headers: Mapping[str, str], content_length: int | None, chunked: bool,
                close: bool) -> bytes:
    """An HTTP/1.1 response head: the status line, ``headers`` (framing and connection fields left out: this
    writes them), then ``Content-Length`` or ``Transfer-Encoding: chunked`` and ``Connection: close``.

    A name that is not a token, or a value with CR, LF or NUL, is a ValueError: no handler can split a response.
    """
    key = (status, tuple(headers.items()), content_length, chunked, close)
    head = _HEADS.get(key)
    if head is None:
        head = _encode_head(status, headers, content_length, chunked, close)
        if len(_HEADS) >= HEADS_KEPT:
            _HEADS.clear()
        _HEADS[key] = head
    return head


def _encode_head(status: int, headers: Mapping[str, str], content_length: int | None, chunked: bool,
                 close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"]
    for name, value in headers.items():
        if not name or not _TOKEN.issuperset(name):
            raise ValueError(f"invalid response header name {name!r}")
        if "\r" in value or "\n" in value or "\x00" in value:
            raise ValueError(f"invalid value of the response header {name}")
        if name.lower() not in _FRAMING:
            lines.append(f"{name}: {value}\r\n")
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class StreamResponse:
    """A response whose body is written piece by piece after :meth:`prepare` has sent the head (chunked to an
    HTTP/1.1 client, to the close for HTTP/1.0). Each :meth:`write` goes out at once and waits while the client's
    side of the connection is full; a client that left makes it raise ConnectionResetError."""

    __slots__ = ("_writer", "closing", "ended", "headers", "status")

    def __init__(self, status: int = 200, headers: Mapping[str, str] | None = None,
                 content_type: str | None = None) -> None:
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        if content_type is not None:
            self.content_type = content_type
        self.closing = False     # the connection is closed after this response
        self.ended = False
        self._writer: ResponseWriter | None = None

    @property
    def content_type(self) -> str | None:
        for name, value in self.headers.items():
            if name.lower() == "content-type":
                return value
        return None

    @content_type.setter
    def content_type(self, value: str) -> None:
        for name in [n for n in self.headers if n.lower() == "content-type"]:
            del self.headers[name]
        self.headers["Content-Type"] = value

    @property
    def prepared(self) -> bool:
        return self._writer is not None

    def force_close(self) -> None:
        self.closing = True

    async def prepare(self, request: Streamed) -> None:
        if self._writer is not None:
            return
        writer = request.writer
        if writer is None:
            raise RuntimeError("the request has no connection to stream a response on")
        self._writer = writer
        writer.start(self, request)

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            raise RuntimeError("write() before prepare()")
        if self.ended:
            raise RuntimeError("write() after write_eof()")
        if data:
            await self._writer.send(data)

    async def write_eof(self) -> None:
        if self._writer is not None and not self.ended:
            self.ended = True
            self._writer.finish()


class Response(StreamResponse):
    """A whole response, written in one piece once the handler returns it; without a Content-Type, a body is
    ``application/octet-stream``."""

    __slots__ = ("body",)

    def __init__(self, status: int = 200, body: bytes = b"", headers: Mapping[str, str] | None = None,
                 content_type: str | None = None) -> None:
        super().__init__(status, headers, content_type)
        self.body = body

    def head_bytes(self, close: bool) -> bytes:
        headers = self.headers
        if self.body and self.content_type is None:
            headers = {**headers, "Content-Type": DEFAULT_CONTENT_TYPE}
        return encode_head(self.status, headers, len(self.body), False, close)


def error_response(exc: BaseException) -> Response:
    """SPEC's error shape for ``exc`` (:func:`sidecar.errors.rescue`: anything but a SidecarError is INTERNAL)."""
    from sidecar.errors import rescue

    rescued = rescue(exc)
    return Response(rescued.status, rescued.body, rescued.headers)
