"""Heads between an HTTP/2 client stream and the engine's HTTP/1.1-shaped heads, both ways. Pure.

A request's pseudo-headers become the head's method, target and host (``:authority`` names the service exactly
as ``Host`` does); its path takes the same canonical form as an HTTP/1.1 target (:mod:`sidecar.proxy.paths`).
Connection-specific fields (RFC 9113 8.2.2) are dropped both ways; split ``cookie`` fields are joined for the
HTTP/1.1 hop (RFC 9113 8.2.3). The body's framing towards an HTTP/1.1 upstream is chosen here: the
``content-length`` when the client sent one, none when the HEADERS ended the stream, chunked otherwise.
"""

from __future__ import annotations

import json
from typing import Final

from sidecar.errors import Code, rescue
from sidecar.http2.grpc import CONTENT_TYPE, encode_message, is_grpc, trailers_only
from sidecar.proxy.http1 import (
    Headers,
    MalformedRequest,
    MethodNotSupported,
    RequestHead,
    RequestHeadTooLarge,
    ResponseHead,
)
from sidecar.proxy.paths import InvalidPath, normalize_target

H2Headers = list[tuple[bytes, bytes]]

# RFC 9113 8.2.2: fields that describe one connection; ``te`` is allowed to say "trailers" on HTTP/2 only, and
# means nothing to the HTTP/1.1 hop; ``host`` is written from the head; framing is the codec's own
CONNECTION_SPECIFIC: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                        b"upgrade", b"te", b"trailer", b"content-length", b"host"})
_ALLOWED_METHODS: Final = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def request_head(headers: H2Headers, end_stream: bool, max_headers: int) -> RequestHead:
    """The engine's head of an HTTP/2 request; MalformedRequest (400), RequestHeadTooLarge (431, more than
    ``max_headers`` fields) or MethodNotSupported (405) if unusable."""
    if len(headers) > max_headers:
        raise RequestHeadTooLarge(f"more than {max_headers} header fields", {"limit": max_headers})
    method = path = authority = host = content_length = None
    items: list[tuple[bytes, bytes, bytes]] = []
    cookies: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name != b":scheme":
                raise MalformedRequest(f"unknown pseudo-header {name[:40].decode('latin-1')!r}")
        elif name == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise MalformedRequest("invalid content-length", {"value": value[:40].decode("latin-1")})
            content_length = int(value)
        elif name == b"host":
            host = value
        elif name == b"cookie":
            cookies.append(value)
        elif name not in CONNECTION_SPECIFIC:
            items.append((name, name, value))
    if method is None or path is None:
        raise MalformedRequest("an HTTP/2 request needs :method and :path")
    text_method = method.decode("latin-1")
    if text_method == "CONNECT":
        raise MethodNotSupported("CONNECT is not supported by this proxy", {"allowed": _ALLOWED_METHODS})
    authority = authority if authority is not None else host
    if not authority or b"@" in authority:
        raise MalformedRequest("an HTTP/2 request needs :authority (or host) naming the service")
    if path[:1] == b"/":
        try:
            path = normalize_target(path)
        except InvalidPath as e:
            raise MalformedRequest(str(e), {"target": path[:200].decode("latin-1")}) from None
    elif not (path == b"*" and text_method == "OPTIONS"):
        raise MalformedRequest(f"invalid :path {path[:100].decode('latin-1')!r}")
    if cookies:
        items.append((b"cookie", b"cookie", b"; ".join(cookies)))
    if end_stream:
        content_length = content_length if content_length == 0 else None
    chunked = not end_stream and content_length is None
    return RequestHead(text_method, path, "2", Headers(items), authority.decode("latin-1"), content_length, chunked)


def response_headers(head: ResponseHead) -> H2Headers:
    """The HTTP/2 header block of a response relayed from an HTTP/1.1 upstream."""
    out: H2Headers = [(b":status", b"%d" % head.status)]
    for line in head.fields.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname not in CONNECTION_SPECIFIC:
                out.append((lname, value.strip(b" \t")))
    if head.content_length is not None and not head.chunked:
        out.append((b"content-length", b"%d" % head.content_length))
    return out


def trailer_headers(trailers: list[tuple[bytes, bytes]]) -> H2Headers:
    """Trailers as an HTTP/2 header block: lower-case names, connection-specific ones dropped."""
    return [(name.lower(), value) for name, value in trailers if name.lower() not in CONNECTION_SPECIFIC]


def wants_grpc(request: RequestHead) -> bool:
    content_type = request.headers.get_bytes(b"content-type")
    return content_type is not None and is_grpc(content_type)


def error_response(error: BaseException, request: RequestHead | None) -> tuple[H2Headers, bytes]:
    """The sidecar's own answer to ``error``: a trailers-only response for a gRPC call, else SPEC's JSON."""
    if request is not None and wants_grpc(request):
        return trailers_only(error), b""
    rescued = rescue(error)
    headers: H2Headers = [(b":status", b"%d" % rescued.status)]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in rescued.headers.items()]
    headers.append((b"content-length", b"%d" % len(rescued.body)))
    return headers, rescued.body


# a relayed error body larger than this is not one of the sidecars' JSON answers
MAX_ERROR_BODY: Final = 16 * 1024


def relayed_error(head: ResponseHead) -> Code | None:
    """The code of a response that is another sidecar's own error (``x-sidecar-error`` on a non-gRPC
    response), which a gRPC caller must get as a status; None for any other response."""
    headers = head.headers
    name = headers.get("x-sidecar-error")
    content_type = headers.get_bytes(b"content-type")
    if name is None or (content_type is not None and is_grpc(content_type)):
        return None
    return Code.__members__.get(name)


def relayed_trailers_only(code: Code, body: bytes) -> H2Headers:
    """The trailers-only answer of another sidecar's error, with the message of its JSON body."""
    message = code.name
    try:
        error = json.loads(body)["error"]
        if isinstance(error.get("message"), str):
            message = error["message"]
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return [(b":status", b"200"), (b"content-type", CONTENT_TYPE), (b"grpc-status", str(code.grpc).encode()),
            (b"grpc-message", encode_message(message)), (b"x-sidecar-error", code.name.encode())]
