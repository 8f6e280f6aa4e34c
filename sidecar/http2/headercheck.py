"""Whether a received header list is well-formed HTTP/2 (RFC 9113 sections 8.2 and 8.3), and the declared
content-length to hold the body to (section 8.1.1).

:func:`check` returns ``None`` for a good list or the reason it is malformed; the core resets the stream with
PROTOCOL_ERROR (a malformed message is a stream error, section 8.1.1). Checked: field names (no upper case, no
controls, spaces or DEL, no colon past the first octet, not empty), values (no NUL, CR or LF, no leading or
trailing whitespace), connection-specific fields (section 8.2.2; ``te`` only as ``trailers``), pseudo-header
fields (only the defined ones, each once, all before the regular fields, none in trailers, the required set
for a request or a response), ``:authority`` against ``host``, and an empty ``:path``.
"""

from __future__ import annotations

from typing import Final

Headers = list[tuple[bytes, bytes]]

REQUEST: Final = 0
RESPONSE: Final = 1
TRAILERS: Final = 2

_CONNECTION_SPECIFIC: Final = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                         b"upgrade"})
_REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})
_RESPONSE_PSEUDO: Final = frozenset({b":status"})
_NAME_OK: Final = bytes(0 if c <= 0x20 or 0x41 <= c <= 0x5A or c >= 0x7F else 1 for c in range(256))
# names and values already found good: a connection's lists repeat a few dozen names and most values, each
# checked octet by octet once (HPACK hands the same objects back from its tables, whose hashes are kept).
# Bounded in count and in length, emptied when full: a peer sending ever new fields costs the octet checks,
# never memory.
_GOOD_NAMES: Final[set[bytes]] = set()
_GOOD_VALUES: Final[set[bytes]] = set()
GOOD_MAX: Final = 1024
GOOD_LENGTH: Final = 32   # random ids (36 octets and more) are never seen again


def _field_problem(name: bytes, value: bytes) -> str | None:
    if name not in _GOOD_NAMES:
        problem = _name_problem(name)
        if problem is not None:
            return problem
        _remember(_GOOD_NAMES, name)
    if value and (len(value) > GOOD_LENGTH or value not in _GOOD_VALUES):
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            return f"field {name!r} has CR, LF or NUL in its value"
        if value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09):
            return f"field {name!r} has whitespace around its value"
        _remember(_GOOD_VALUES, value)
    return None


def _remember(good: set[bytes], octets: bytes) -> None:
    if len(octets) <= GOOD_LENGTH:
        if len(good) >= GOOD_MAX:
            good.clear()
        good.add(octets)


def _name_problem(name: bytes) -> str | None:
    if not name:
        return "an empty field name"
    for c in name:
        if not _NAME_OK[c]:
            return f"field name {name!r} has upper case, a control, space or non-ASCII octet"
    if name.find(b":", 1) >= 0:
        return f"field name {name!r} has a colon"
    return None


def check(headers: Headers, kind: int) -> str | None:
    """``None`` when ``headers`` is a well-formed request, response or trailer list; else why it is not."""
    pseudo: set[bytes] = set()
    regular = False
    method = b""
    authority: bytes | None = None
    host: bytes | None = None
    path: bytes | None = None
    for name, value in headers:
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
        if name[0] == 0x3A:  # ':'
            if regular:
                return f"pseudo-header field {name!r} after a regular field"
            if name in pseudo:
                return f"pseudo-header field {name!r} twice"
            if kind == TRAILERS:
                return f"pseudo-header field {name!r} in trailers"
            if name not in (_RESPONSE_PSEUDO if kind == RESPONSE else _REQUEST_PSEUDO):
                return f"pseudo-header field {name!r} is not one of a {'response' if kind else 'request'}"
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path":
                path = value
            continue
        regular = True
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific field {name!r}"
        if name == b"te" and value.lower() != b"trailers":
            return f"te other than trailers ({value!r})"
        if name == b"host" and kind == REQUEST:
            if host is not None:
                return "two host fields"
            host = value
    if kind == RESPONSE:
        return None if b":status" in pseudo else "a response without :status"
    if kind == TRAILERS:
        return None
    return _request_problem(pseudo, method, authority, host, path)


def _request_problem(pseudo: set[bytes], method: bytes, authority: bytes | None, host: bytes | None,
                     path: bytes | None) -> str | None:
    if b":method" not in pseudo:
        return "a request without :method"
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path"
    else:
        if b":scheme" not in pseudo or b":path" not in pseudo:
            return "a request without :scheme or :path"
        if not connect and b":protocol" in pseudo:
            return ":protocol outside CONNECT"
    if authority is None and host is None:
        return "a request without :authority or host"
    if authority is not None and host is not None and authority != host:
        return ":authority and host differ"
    if path is not None and not path:
        return "an empty :path"
    return None


def content_length(headers: Headers) -> int | None:
    """The declared content-length (-1 when malformed or conflicting), None when there is none."""
    found = -2
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                return -1
            n = int(value)
            if found >= 0 and n != found:
                return -1
            found = n
    return None if found == -2 else found


def is_informational(headers: Headers) -> bool:
    """A 1xx response (interim: the real response follows)."""
    for name, value in headers:
        if name == b":status":
            return value[:1] == b"1"
        if name[:1] != b":":
            break
    return False
