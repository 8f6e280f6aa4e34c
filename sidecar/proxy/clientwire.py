"""The wire side of the sidecar's own HTTP/1.1 client (:mod:`sidecar.proxy.client`): a request's bytes, and a
response read into one :class:`HttpAnswer` by the proxy's compiled reader. No I/O.

A request is written whole, head and body in one buffer (``Content-Length`` framing, never chunked): the client
sends small documents it already holds. A response is read by :class:`~sidecar.proxy.http1read.ResponseReader`
(llhttp, with the proxy's head limits); its body, whatever its framing (``Content-Length``, chunked, or to the
close), is kept up to ``limit`` bytes. A body longer than that is cut there and the answer ends at once: the rest is
never read, so the connection is not reused (:attr:`AnswerCollector.reusable`).
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.proxy.http1 import Headers, ResponseHead, Trailers


def encode_request(method: str, target: str, authority: str, headers: Iterable[tuple[str, str]],
                   body: bytes) -> bytes:
    """The request's bytes: request line, ``Host``, the given fields, ``Content-Length`` (left out for a GET or
    HEAD without a body), then the body.

    Names and values are the caller's (never the peer's); a CR or LF in one would split the head, so it is refused.
    """
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n")
    line_breaks = sum(part.count("\n") + part.count("\r") for part in parts)
    if line_breaks != 2 * len(parts) + 2:
        raise ValueError("a request line or field holds a line break")
    parts.append(f"Content-Length: {len(body)}\r\n\r\n" if body or method not in ("GET", "HEAD") else "\r\n")
    return "".join(parts).encode("latin-1") + body


class HttpAnswer:
    """A whole response: status, end-to-end fields, and the body up to the limit (``truncated`` if it was longer)."""

    __slots__ = ("body", "head", "truncated")

    def __init__(self, head: ResponseHead, body: bytes, truncated: bool) -> None:
        self.head = head
        self.body = body
        self.truncated = truncated

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def headers(self) -> Headers:
        return self.head.headers

    def header(self, name: str) -> str | None:
        """One field's value (the first, by case-insensitive name), or None."""
        fields = self.head.fields
        if name.encode("latin-1").lower() not in fields.lower():
            return None   # the usual case: not there, no parsing
        return self.head.headers.get(name)


class AnswerCollector:
    """A :class:`~sidecar.proxy.http1read.ResponseSink` that gathers one response: its final head and up to
    ``limit`` bytes of body. ``answer`` is set once the response ended or reached the limit."""

    __slots__ = ("_body", "_head", "_size", "answer", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head: ResponseHead | None = None
        self._body: list[bytes] = []
        self._size = 0
        self.answer: HttpAnswer | None = None

    @property
    def started(self) -> bool:
        """Whether a final head has arrived."""
        return self._head is not None

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request: the response ended whole and asked for no close."""
        answer = self.answer
        return answer is not None and not answer.truncated and answer.head.keep_alive and \
            not answer.head.close_delimited

    def on_response_interim(self, head: ResponseHead) -> None:
        """1xx before the answer (100 Continue, 103 Early Hints): nothing to keep."""

    def on_response_head(self, head: ResponseHead) -> None:
        self._head = head

    def on_response_body(self, data: bytes) -> None:
        if self.answer is not None:
            return
        room = self.limit - self._size
        if len(data) > room:
            self._body.append(data[:room])
            self._size = self.limit
            self._finish(truncated=True)
            return
        self._body.append(data)
        self._size += len(data)

    def on_response_end(self, trailers: Trailers | None) -> None:
        if self.answer is None:
            self._finish(truncated=False)

    def on_eof(self) -> bool:
        """The server closed the connection: the end of a body that runs to the close (True), else no answer."""
        head = self._head
        if self.answer is None and head is not None and head.close_delimited:
            self._finish(truncated=False)
            return True
        return self.answer is not None

    def _finish(self, truncated: bool) -> None:
        assert self._head is not None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self.answer = HttpAnswer(self._head, body, truncated)
