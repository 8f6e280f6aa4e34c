"""One request as the handlers see it: method, path, query, headers, path parameters and the whole body (read
before the handler runs, within the listener's limits). No I/O of its own: a streaming response writes through
the connection the request came in on (:class:`~sidecar.httpd.response.ResponseWriter`)."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote

from sidecar.errors import InvalidArgument
from sidecar.httpd.response import ResponseWriter
from sidecar.proxy.http1 import Headers, RequestHead


class Request:
    """``path`` is the canonical path (:mod:`sidecar.proxy.paths`) percent-decoded; ``raw_path`` as routed;
    ``query`` the first value of each parameter; ``headers`` the end-to-end fields (``Host`` is ``host``)."""

    __slots__ = ("_query", "body", "head", "local_address", "match_info", "remote", "writer")

    def __init__(self, head: RequestHead, body: bytes = b"", remote: str | None = None,
                 local_address: str | None = None, writer: ResponseWriter | None = None) -> None:
        self.head = head
        self.body = body
        self.remote = remote                  # the client's IP address, as the socket reports it
        self.local_address = local_address    # the IP address the connection was accepted on
        self.writer = writer
        self.match_info: dict[str, str] = {}
        self._query: dict[str, str] | None = None

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def raw_path(self) -> str:
        return self.head.path

    @property
    def path(self) -> str:
        return unquote(self.head.path)

    @property
    def query_string(self) -> str:
        _, _, query = self.head.target.partition(b"?")
        return query.decode("latin-1")

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            query: dict[str, str] = {}
            for name, value in parse_qsl(self.query_string, keep_blank_values=True):
                query.setdefault(name, value)
            self._query = query
        return self._query

    @property
    def headers(self) -> Headers:
        return self.head.headers

    @property
    def host(self) -> str | None:
        """The Host header (or the authority of an absolute-form target); None when the request had none."""
        return self.head.host or None

    @property
    def version(self) -> str:
        return self.head.version

    @property
    def keep_alive(self) -> bool:
        return self.head.keep_alive

    @property
    def body_exists(self) -> bool:
        return self.head.has_body

    async def read(self) -> bytes:
        return self.body

    async def text(self) -> str:
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidArgument(f"request body is not UTF-8 text: {e}") from None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.raw_path}>"
