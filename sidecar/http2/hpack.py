"""HPACK (RFC 7541): the header compression of HTTP/2, encoder and decoder, compiled with mypyc.

Drop-in for python-hyper's ``hpack.Encoder``/``hpack.Decoder`` where ``h2`` uses them (``encode(headers)``,
``decode(data, raw=True)``, ``header_table_size``, ``max_header_list_size``, ``max_allowed_table_size``), so an
``h2.connection.H2Connection`` takes them as its ``encoder``/``decoder``. Every malformed block or broken limit
raises :class:`~sidecar.http2.hpack_errors.HeaderBlockError` (``HeaderListTooLarge`` for an oversized list).

Fast paths: a field of the static table (``:method: POST``, ``:status: 200``...) is one precomputed byte; string
literals are encoded once and kept (they do not depend on the table); the decoder reads the block as ``bytes``
with table-driven Huffman. The encoder indexes everything except fields that change on every request (trace
ids, timeouts, lengths), which would only push useful entries out of the table (the first of a name no table
holds is indexed, for its name), and sensitive fields (never indexed, RFC 7541 section 7.1.3).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple

from sidecar.http2.hpack_errors import HeaderBlockError, HeaderListTooLarge
from sidecar.http2.huffman import encoded_length, huffman_decode, huffman_encode

DEFAULT_TABLE_SIZE: Final = 4096  # SETTINGS_HEADER_TABLE_SIZE's initial value
DEFAULT_MAX_HEADER_LIST_SIZE: Final = 65536
ENTRY_OVERHEAD: Final = 32  # RFC 7541 section 4.1
MAX_INT_BYTES: Final = 5  # continuation octets of an integer: enough for 2**32 (section 5.1 lets us bound it)
STRING_CACHE_SIZE: Final = 512

STATIC: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"", b""),  # index 0 is not a field
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"), (b":status", b"200"),
    (b":status", b"204"), (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""), (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""), (b"accept-ranges", b""), (b"accept", b""), (b"access-control-allow-origin", b""),
    (b"age", b""), (b"allow", b""), (b"authorization", b""), (b"cache-control", b""),
    (b"content-disposition", b""), (b"content-encoding", b""), (b"content-language", b""),
    (b"content-length", b""), (b"content-location", b""), (b"content-range", b""), (b"content-type", b""),
    (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""), (b"from", b""),
    (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""), (b"if-none-match", b""),
    (b"if-range", b""), (b"if-unmodified-since", b""), (b"last-modified", b""), (b"link", b""),
    (b"location", b""), (b"max-forwards", b""), (b"proxy-authenticate", b""), (b"proxy-authorization", b""),
    (b"range", b""), (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
)
STATIC_LEN: Final = len(STATIC) - 1  # 61


def _static_fields() -> dict[tuple[bytes, bytes], bytes]:
    fields: dict[tuple[bytes, bytes], bytes] = {}
    for i in range(STATIC_LEN, 0, -1):
        if STATIC[i][1]:
            fields[STATIC[i]] = bytes([0x80 | i])
    return fields


def _static_names() -> dict[bytes, int]:
    names: dict[bytes, int] = {}
    for i in range(STATIC_LEN, 0, -1):
        names[STATIC[i][0]] = i  # the lowest index wins
    return names


_STATIC_FIELDS: Final = _static_fields()
_STATIC_NAMES: Final = _static_names()
# fields that differ on every request: indexing them evicts entries that would be reused
NOT_INDEXED: Final = frozenset({b"traceparent", b"tracestate", b"grpc-timeout", b"content-length", b"date",
                                b"x-request-id", b":path", b"x-sidecar-deadline-ms"})
# fields whose values are new on every request (random ids, a deadline counting down): sent as plain literals,
# neither Huffman-coded (a fifth smaller for hex digits, for CPU per octet) nor kept in the literal cache, where
# each would push out a string that does come again
FRESH_VALUES: Final = frozenset({b"traceparent", b"tracestate", b"grpc-timeout", b"x-request-id",
                                 b"x-sidecar-deadline-ms"})
# fields whose values must not enter a table (RFC 7541 section 7.1.3); short cookies are guessable as well
_SENSITIVE: Final = frozenset({b"authorization", b"proxy-authorization"})


def entry_size(name: bytes, value: bytes) -> int:
    return len(name) + len(value) + ENTRY_OVERHEAD


_OCTETS: Final = tuple(bytes([i]) for i in range(256))


def encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """``value`` in an ``prefix_bits`` prefix, the first octet's other bits from ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return _OCTETS[first | value]
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Encoder:
    """Encodes header lists into blocks, keeping the dynamic table the peer's decoder mirrors."""

    def __init__(self, table_size: int = DEFAULT_TABLE_SIZE, not_indexed: frozenset[bytes] = NOT_INDEXED) -> None:
        """``table_size``: the peer's table size when known up front; ``not_indexed``: names sent as literals
        without indexing."""
        self._max_size = table_size
        self._not_indexed = not_indexed
        self._size = 0
        self._entries: list[tuple[bytes, bytes]] = []  # oldest first
        self._first = 0  # insertion number of _entries[0]
        self._fields: dict[tuple[bytes, bytes], int] = {}  # field -> insertion number of its newest copy
        self._names: dict[bytes, int] = {}
        self._pending_min = -1  # smallest size set since the last block, -1: none pending
        self._strings: dict[bytes, bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: used as is, signalled at the start of the next block."""
        if value == self._max_size:
            return
        self._pending_min = value if self._pending_min < 0 else min(self._pending_min, value)
        self._max_size = value
        self._evict(0)

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """``headers``: (name, value) pairs of bytes or str, or (name, value, sensitive) triples; an
        ``hpack.NeverIndexedHeaderTuple`` is sensitive."""
        out = bytearray()
        if self._pending_min >= 0:
            if self._pending_min < self._max_size:
                out += encode_integer(self._pending_min, 5, 0x20)
            out += encode_integer(self._max_size, 5, 0x20)
            self._pending_min = -1
        for header in headers:
            h: tuple[Any, ...] = header
            name = h[0]
            value = h[1]
            if isinstance(name, str):
                name = name.encode("utf-8")
            if isinstance(value, str):
                value = value.encode("utf-8")
            fast = _STATIC_FIELDS.get((name, value))
            if fast is not None:
                out += fast
                continue
            sensitive = (len(h) > 2 and bool(h[2])) or isinstance(header, NeverIndexedHeaderTuple) \
                or name in _SENSITIVE
            self._field(out, name, value, sensitive, huffman)
        return bytes(out)

    def _field(self, out: bytearray, name: bytes, value: bytes, sensitive: bool, huffman: bool) -> None:
        newest = self._first + len(self._entries) - 1
        if not sensitive:
            n = self._fields.get((name, value), -1)
            if n >= 0:
                out += encode_integer(STATIC_LEN + 1 + newest - n, 7, 0x80)
                return
        index = _STATIC_NAMES.get(name, 0)
        if index == 0:
            n = self._names.get(name, -1)
            if n >= 0:
                index = STATIC_LEN + 1 + newest - n
        # a not-indexed field whose name no table holds yet is indexed this once: later ones refer to the name
        # (a trace id's name would otherwise go as a literal, and be Huffman-decoded, on every request)
        indexing = not sensitive and (index == 0 or name not in self._not_indexed)
        if sensitive:
            out += encode_integer(index, 4, 0x10)
        elif indexing:
            out += encode_integer(index, 6, 0x40)
        else:
            out += encode_integer(index, 4, 0x00)
        if index == 0:
            out += self._string(name, huffman)
        if name in FRESH_VALUES:
            out += encode_integer(len(value), 7, 0)
            out += value
        else:
            out += self._string(value, huffman)
        if indexing:
            self._add(name, value)

    def _string(self, data: bytes, huffman: bool) -> bytes:
        if not huffman:
            return encode_integer(len(data), 7, 0) + data
        cached = self._strings.get(data)
        if cached is not None:
            return cached
        coded = encoded_length(data)
        if coded <= len(data):
            encoded = encode_integer(coded, 7, 0x80) + huffman_encode(data)
        else:
            encoded = encode_integer(len(data), 7, 0) + data
        if len(self._strings) >= STRING_CACHE_SIZE:
            self._strings.clear()
        self._strings[data] = encoded
        return encoded

    def _add(self, name: bytes, value: bytes) -> None:
        size = entry_size(name, value)
        if size > self._max_size:  # a field larger than the table empties it (section 4.4)
            self._evict(self._max_size)
            return
        self._evict(size)
        number = self._first + len(self._entries)
        self._entries.append((name, value))
        self._size += size
        self._fields[(name, value)] = number
        self._names[name] = number

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until ``room`` more bytes fit."""
        dropped = 0
        while self._entries[dropped:] and self._size + room > self._max_size:
            name, value = self._entries[dropped]
            self._size -= entry_size(name, value)
            if self._fields.get((name, value)) == self._first + dropped:
                del self._fields[(name, value)]
            if self._names.get(name) == self._first + dropped:
                del self._names[name]
            dropped += 1
        if dropped:
            del self._entries[:dropped]
            self._first += dropped


class Decoder:
    """Decodes header blocks into (name, value) lists, keeping the dynamic table the peer's encoder drives."""

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        self.max_header_list_size = max_header_list_size
        # the table size our SETTINGS allow the peer (h2 sets it when the peer acknowledges them)
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self._max_size = DEFAULT_TABLE_SIZE
        self._size = 0
        self._entries: list[tuple[bytes, bytes]] = []  # oldest first

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._max_size = value
        self._shrink(0)

    def decode(self, data: bytes, raw: bool = False) -> list[Any]:
        """The header list of one complete block; ``raw``: bytes pairs (else str). Never-indexed fields come
        as ``hpack.NeverIndexedHeaderTuple`` so that a proxy forwards them never-indexed too."""
        if not isinstance(data, bytes):
            data = bytes(data)
        headers: list[Any] = []
        size = 0
        pos = 0
        end = len(data)
        limit = self.max_header_list_size
        while pos < end:
            first = data[pos]
            if first & 0x80:  # indexed field
                index, pos = self._integer(data, pos, 7)
                field = self._get(index)
                name, value = field[0], field[1]
                header: tuple[Any, ...] = field
            elif first & 0x40 or not first & 0x20:  # a literal: incremental indexing, without, never indexed
                indexing = bool(first & 0x40)
                index, pos = self._integer(data, pos, 6 if indexing else 4)
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = self._literal(data, pos)
                value, pos = self._literal(data, pos)
                if indexing:
                    self._add(name, value)
                    header = (name, value)
                elif first & 0x10:
                    header = NeverIndexedHeaderTuple(name, value)
                else:
                    header = (name, value)
            else:  # dynamic table size update: only before the first field (section 4.2)
                if headers:
                    raise HeaderBlockError("table size update after a header field")
                new_size, pos = self._integer(data, pos, 5)
                if new_size > self.max_allowed_table_size:
                    raise HeaderBlockError(f"table size update to {new_size}, over the {self.max_allowed_table_size}"
                                           " allowed")
                self.header_table_size = new_size
                continue
            size += len(name) + len(value) + ENTRY_OVERHEAD
            if size > limit:
                raise HeaderListTooLarge(f"a header list larger than {limit} bytes")
            headers.append(header if raw else _text(name, value, header))
        if self._max_size > self.max_allowed_table_size:
            raise HeaderBlockError("the peer did not shrink its table to the size allowed")
        return headers

    def _integer(self, data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        """The integer at ``pos`` and the position after it."""
        limit = (1 << prefix_bits) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        end = len(data)
        for _ in range(MAX_INT_BYTES):
            if pos >= end:
                raise HeaderBlockError("truncated integer")
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
        raise HeaderBlockError("integer longer than 5 octets")

    def _literal(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise HeaderBlockError("truncated header block")
        coded = bool(data[pos] & 0x80)
        length, pos = self._integer(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HeaderBlockError("string literal longer than the header block")
        raw = data[pos:end]
        return (huffman_decode(raw) if coded else raw), end

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= STATIC_LEN:
            return STATIC[index]
        i = len(self._entries) - 1 - (index - STATIC_LEN - 1)
        if index == 0 or i < 0:
            raise HeaderBlockError(f"invalid table index {index}")
        return self._entries[i]

    def _add(self, name: bytes, value: bytes) -> None:
        size = entry_size(name, value)
        if size > self._max_size:
            self._entries.clear()
            self._size = 0
            return
        self._shrink(size)
        self._entries.append((name, value))
        self._size += size

    def _shrink(self, room: int) -> None:
        dropped = 0
        while dropped < len(self._entries) and self._size + room > self._max_size:
            name, value = self._entries[dropped]
            self._size -= entry_size(name, value)
            dropped += 1
        if dropped:
            del self._entries[:dropped]


def _text(name: bytes, value: bytes, header: tuple[Any, ...]) -> Any:
    try:
        if isinstance(header, NeverIndexedHeaderTuple):
            return NeverIndexedHeaderTuple(name.decode("utf-8"), value.decode("utf-8"))
        return HeaderTuple(name.decode("utf-8"), value.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise HeaderBlockError("header field not UTF-8") from e
