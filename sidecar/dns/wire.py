"""Just enough of the DNS wire format to answer from the cache without building dnspython objects.

Parsing every query with dnspython costs ~100 µs; the hot path instead slices the header and the question
out of the raw bytes (RFC 1035 4.1), checks that the query is the plain shape a cached answer was made
for, and looks the answer up by :func:`question_key`. Anything unusual (compression pointers in the
question, more than one record in the additional section, an EDNS version above 0, trailing bytes)
returns ``None`` here and takes the slow path through the answerer, which judges it properly.
"""

from __future__ import annotations

from typing import Final

HEADER_SIZE: Final = 12
MAX_NAME: Final = 255

# byte 2 of the header: QR(0x80) OPCODE(0x78) AA(0x04) TC(0x02) RD(0x01); a plain query has only RD
_FLAGS_BUT_RD: Final = 0xFE
_QR: Final = 0x80
_OPCODE_AND_RD: Final = 0x79
# QDCOUNT=1, ANCOUNT=0, NSCOUNT=0
_PLAIN_COUNTS: Final = b"\x00\x01\x00\x00\x00\x00"
_NO_ADDITIONAL: Final = b"\x00\x00"
_ONE_ADDITIONAL: Final = b"\x00\x01"
_OPT_TYPE: Final = b"\x00\x29"

NO_EDNS: Final = b"\x00"


def question_key(data: bytes) -> tuple[bytes, int] | None:
    """The cache key of a plain query and the offset where its question name ends; None if not plain.

    The key is everything the answer depends on: the RD bit, the EDNS payload, version and DO bit, the
    question name lower-cased, its type and class. The query ID, the case of the name and EDNS options
    (cookies, padding: the answerer ignores them) are not part of it.
    """
    size = len(data)
    if size < HEADER_SIZE + 5 or data[2] & _FLAGS_BUT_RD or data[4:10] != _PLAIN_COUNTS:
        return None
    i = HEADER_SIZE
    # labels are at most 63 bytes; 64 and above are compression pointers or reserved, never plain
    while True:
        n = data[i] if i < size else 0xFF
        if n == 0:
            break
        if n > 63:
            return None
        i += n + 1
        if i - HEADER_SIZE >= MAX_NAME:
            return None
    name_end = i + 1
    question_end = name_end + 4
    additional = data[10:12]
    if additional == _NO_ADDITIONAL:
        if question_end != size:
            return None
        edns = NO_EDNS
    elif additional == _ONE_ADDITIONAL:
        opt = _opt_key(data, question_end, size)
        if opt is None:
            return None
        edns = opt
    else:
        return None
    if question_end > size:
        return None
    # length bytes are below 64, so lower() changes only the letters A-Z of the labels
    return data[2:3] + edns + data[HEADER_SIZE:name_end].lower() + data[name_end:question_end], name_end


def _opt_key(data: bytes, at: int, size: int) -> bytes | None:
    """The key part of an OPT record (RFC 6891 6.1.2) starting at ``at``, which must end the message."""
    # owner name root (1), type (2), payload (2), extended rcode (1), version (1), flags (2), rdlength (2)
    if at + 11 > size or data[at] != 0 or data[at + 1 : at + 3] != _OPT_TYPE or data[at + 6] != 0:
        return None
    rdlength = int.from_bytes(data[at + 9 : at + 11])
    end = at + 11 + rdlength
    if end != size:
        return None
    i = at + 11
    while i < end:  # options are code (2), length (2), data; they must tile the rdata exactly
        if i + 4 > end:
            return None
        i += 4 + int.from_bytes(data[i + 2 : i + 4])
    if i != end:
        return None
    # payload and the DO bit; the extended rcode of a query must be 0 and version 0 was checked above
    return b"\x01" + data[at + 3 : at + 6] + bytes([data[at + 7] & 0x80])


def header_reply(data: bytes, rcode: int, question_end: int | None = None) -> bytes | None:
    """A reply made of the header only (and the question when ``question_end`` is given), or None.

    None means no reply is possible: the header is incomplete, or the message is itself a response
    (answering responses would let two servers bounce packets at each other forever).
    """
    if len(data) < HEADER_SIZE or data[2] & _QR:
        return None
    flags = bytes([_QR | (data[2] & _OPCODE_AND_RD), rcode & 0x0F])
    if question_end is None or question_end > len(data):
        return data[:2] + flags + b"\x00" * 8
    return data[:2] + flags + b"\x00\x01" + b"\x00" * 6 + data[HEADER_SIZE:question_end]


def opcode(data: bytes) -> int:
    return (data[2] >> 3) & 0x0F


def is_truncated(wire: bytes) -> bool:
    return len(wire) >= HEADER_SIZE and bool(wire[2] & 0x02)


def rcode_of(wire: bytes) -> int:
    """The 4-bit header rcode of a response (extended rcodes need the OPT record; the cache never holds them)."""
    return wire[3] & 0x0F if len(wire) >= HEADER_SIZE else 0
