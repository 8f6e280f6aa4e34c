"""Request paths in one canonical form: the form authorization rules are matched against and apps receive.

A rule such as ``deny /admin/*`` means nothing if ``/%61dmin/users``, ``//admin/users`` or
``/public/../admin/users`` reach the app as another spelling of the same resource. So the proxy rewrites every
origin-form request target once, where the request head is parsed, as Envoy does with ``normalize_path`` and
``merge_slashes`` (Istio's default):

* percent-encoded unreserved characters (RFC 3986 2.3: letters, digits, ``-._~``) are decoded, and other
  percent-encodings are kept with upper-case hex digits (RFC 3986 6.2.2.1);
* a backslash is a slash (as browsers and Envoy read it);
* runs of slashes become one;
* ``.`` and ``..`` segments are removed (RFC 3986 5.2.4); ``..`` at the root stays at the root.

Refused, since no canonical form can say what they mean to every app behind the proxy: a ``#`` (a fragment is
never sent by a client; some servers cut it, others do not), an encoded slash or backslash (``%2F``, ``%5C``:
some apps decode them into separators, some do not), and a ``%`` not followed by two hex digits.

The query string is passed on untouched. Pure: bytes in, bytes out or :class:`InvalidPath`.
"""

from __future__ import annotations

from typing import Final

# RFC 3986 2.3 unreserved characters: percent-encoding them changes nothing, so they are decoded
_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX: Final = b"0123456789ABCDEF"
_HEX_VALUES: Final = {c: i for i, c in enumerate(b"0123456789abcdef")} | {c: i for i, c in enumerate(b"ABCDEF", 10)}
_SLASH: Final = 0x2F
_BACKSLASH: Final = 0x5C


class InvalidPath(ValueError):
    """The request target cannot be put in canonical form; the message says why."""


def normalize_target(target: bytes) -> bytes:
    """``target`` (origin form: ``/path?query``) with its path in canonical form and its query as given.

    The common case, a target with no ``#``, ``%``, ``\\``, ``//`` or ``/.``, costs one scan and is returned as the
    same object.
    """
    if not _suspect(target):
        return target
    if b"#" in target:
        raise InvalidPath("a request target must not carry a fragment ('#')")
    query_at = target.find(b"?")
    path = target if query_at < 0 else target[:query_at]
    if query_at >= 0 and not _suspect(path):
        return target  # only the query has them: it is passed on as sent
    normal = normalize_path(path)
    return normal if query_at < 0 else normal + target[query_at:]


def _suspect(target: bytes) -> bool:
    """Whether ``target`` has what a path needs work for (or a target is refused for): ``#``, ``%``, ``\\``,
    ``//`` or ``/.``. One compiled pass over the bytes (a regular expression's search costs more on short paths)."""
    last = len(target) - 1
    for i in range(last + 1):
        c = target[i]
        if c == 0x23 or c == 0x25 or c == _BACKSLASH:   # '#', '%'
            return True
        if c == _SLASH and i < last:
            after = target[i + 1]
            if after == _SLASH or after == 0x2E:         # '/', '.'
                return True
    return False


def normalize_path(path: bytes) -> bytes:
    """A path starting with ``/`` in canonical form (see the module's doc)."""
    if b"%" in path:
        path = _decode_unreserved(path)
    if b"\\" in path:
        path = path.replace(b"\\", b"/")
    segments = path.split(b"/")
    kept: list[bytes] = []
    trailing = False
    last = len(segments) - 1
    for i in range(1, len(segments)):
        segment = segments[i]
        if segment == b"" or segment == b".":
            trailing = i == last
        elif segment == b"..":
            if kept:
                kept.pop()
            trailing = i == last
        else:
            kept.append(segment)
            trailing = False
    if not kept:
        return b"/"
    return b"/" + b"/".join(kept) + (b"/" if trailing else b"")


def _decode_unreserved(path: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c != 0x25:  # '%'
            out.append(c)
            i += 1
            continue
        high = _HEX_VALUES.get(path[i + 1]) if i + 1 < n else None
        low = _HEX_VALUES.get(path[i + 2]) if i + 2 < n else None
        if high is None or low is None:
            raise InvalidPath(f"invalid percent-encoding {path[i:i + 3].decode('latin-1')!r} in the path")
        value = high * 16 + low
        if value in (_SLASH, _BACKSLASH):
            raise InvalidPath("an encoded slash or backslash (%2F, %5C) in the path is refused: apps disagree on "
                              "whether it separates segments")
        if value in _UNRESERVED:
            out.append(value)
        else:
            out.append(0x25)
            out.append(_HEX[high])
            out.append(_HEX[low])
        i += 3
    return bytes(out)
