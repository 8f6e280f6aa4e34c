"""The bytes of a delivery POST to a local app: the part of the head that is the same for every POST of a stream
(request line, ``Host``, content type, topic) encoded once; the attempt number, the message's trace context, the
bulk count and the length added to it for each POST. The app gets what :func:`~sidecar.proxy.clientwire.
encode_request` would write for the same fields, in the same order.
"""

from __future__ import annotations

MAX_HEADS = 4096   # streams whose head is kept


class AppRequests:
    def __init__(self) -> None:
        self._heads: dict[tuple[str, str, str], bytes] = {}

    def encode(self, path: str, authority: str, topic: str, attempt: int, trace: dict[str, str], bulk: int,
               body: bytes) -> bytes:
        """The POST of ``body`` to ``path`` (``bulk``: the count of messages of a bulk delivery, 0 for one);
        ValueError when a field would break the head."""
        key = (path, authority, topic)
        head = self._heads.get(key)
        if head is None:
            head = _head(path, authority, topic)
            if len(self._heads) >= MAX_HEADS:
                self._heads.clear()
            self._heads[key] = head
        extra = b""
        if trace:
            extra = "".join(f"{name}: {value}\r\n" for name, value in trace.items()).encode("latin-1")
            if extra.count(b"\n") + extra.count(b"\r") != 2 * len(trace):
                raise ValueError("a trace field holds a line break")
        if bulk:
            extra += b"x-sidecar-bulk: %d\r\n" % bulk
        return head + b"x-sidecar-delivery-attempt: %d\r\n%sContent-Length: %d\r\n\r\n%s" % (
            attempt, extra, len(body), body)


def _head(path: str, authority: str, topic: str) -> bytes:
    text = (f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n"
            f"x-sidecar-topic: {topic}\r\n")
    if text.count("\n") + text.count("\r") != 8:
        raise ValueError("a request line or field holds a line break")
    return text.encode("latin-1")
