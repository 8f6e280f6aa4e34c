"""Wire-format responses by question, so the hot path never builds a dnspython object.

Why: parsing every query with dnspython runs at ~6% of dnsmasq's rate (``bench/dns``), while answering
from stored wire responses matches it. Two levels:

* by question: :func:`wire.question_key` slices the question out of the raw bytes (name lower-cased, type,
  class, RD, EDNS payload and DO); a hit patches the query ID and the client's spelling of the name in;
* by exact bytes: the query after its ID, as received. Resolvers repeat the same bytes but for the ID, so
  most hits cost one dict lookup and a 2-byte patch. Same bytes, same parse: nothing to validate again.

Every entry belongs to one catalog version: the driver calls :meth:`ResponseCache.check_version` with the
current snapshot's version before looking up, and a new version empties the cache. The table is bounded:
when it is full the oldest entry goes, so random names cannot grow it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sidecar.dns import wire

# 50 services x (A, AAAA, SRV, _NAME._tcp SRV, tags) x a few EDNS sizes is a few thousand; 20k leaves
# room for NXDOMAIN noise while staying a few MiB
DEFAULT_MAX_ENTRIES: Final = 20_000


class Answer:
    """Pre-rotated variants of one answer, served round-robin, kept without their 2-byte ID.

    A hit is then the query's ID and one stored tail: one concatenation, no slice of the stored answer.
    """

    __slots__ = ("next", "rcode", "tails")

    def __init__(self, tails: tuple[bytes, ...], rcode: int) -> None:
        self.tails = tails
        self.rcode = rcode
        self.next = 0

    def take(self) -> bytes:
        """The next variant's tail, round-robin."""
        tails = self.tails
        i = self.next
        self.next = i + 1 if i + 1 < len(tails) else 0
        return tails[i]


class ResponseCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (got {max_entries})")
        self.max_entries = max_entries
        self.version: int | None = None
        # one table per transport: a UDP answer may be truncated where the TCP one is whole
        self._tables: tuple[dict[bytes, Answer], dict[bytes, Answer]] = ({}, {})
        # the same answers by the exact query bytes after the ID, already in that query's spelling
        self._exact: tuple[dict[bytes, Answer], dict[bytes, Answer]] = ({}, {})

    def __len__(self) -> int:
        return len(self._tables[0]) + len(self._tables[1])

    def check_version(self, version: int) -> bool:
        """Forget every answer when the catalog version changed; True if it did."""
        if version == self.version:
            return False
        self.version = version
        self.clear()
        return True

    def clear(self) -> None:
        for table in (*self._tables, *self._exact):
            table.clear()

    def get(self, data: bytes, tcp: bool) -> tuple[bytes, int] | None:
        """The response to the raw query ``data`` and its rcode, or None (not plain, or not stored)."""
        entry = self.lookup(data, tcp)
        return None if entry is None else (data[:2] + entry.take(), entry.rcode)

    def lookup(self, data: bytes, tcp: bool) -> Answer | None:
        """The stored answer to the raw query ``data``, already in its spelling of the name: the reply is
        ``data[:2] + answer.take()``. None when the query is not plain or not stored."""
        exact = self._exact[tcp].get(data[2:])
        if exact is not None:
            return exact
        parsed = wire.question_key(data)
        if parsed is None:
            return None
        key, name_end = parsed
        entry = self._tables[tcp].get(key)
        if entry is None:
            return None
        # the tails start at byte 2: the query's spelling of the name goes in at HEADER_SIZE - 2
        mine = Answer(tuple(_spelled(tail, data, name_end) for tail in entry.tails), entry.rcode)
        # this spelling continues the rotation where the question's entry is, and moves it on by the one
        # answer the caller takes now
        mine.next = entry.next
        entry.next = entry.next + 1 if entry.next + 1 < len(entry.tails) else 0
        _insert(self._exact[tcp], data[2:], mine, self.max_entries)
        return mine

    def put(self, data: bytes, tcp: bool, variants: Sequence[bytes], rcode: int) -> bool:
        """Store the answers to the raw query ``data``; False when the query is not plain enough to key.

        ``variants[0]`` is the answer already sent, so the next hit serves ``variants[1]``.
        """
        parsed = wire.question_key(data)
        if parsed is None or not variants:
            return False
        entry = Answer(tuple(variant[2:] for variant in variants), rcode)
        entry.next = 1 % len(variants)
        _insert(self._tables[tcp], parsed[0], entry, self.max_entries)
        exact = Answer(entry.tails, rcode)  # ``variants`` are in this query's spelling already
        exact.next = entry.next
        _insert(self._exact[tcp], data[2:], exact, self.max_entries)
        return True


def _spelled(tail: bytes, query: bytes, name_end: int) -> bytes:
    """A stored tail (an answer after its ID) with the query's spelling of the question name."""
    return tail[: wire.HEADER_SIZE - 2] + query[wire.HEADER_SIZE : name_end] + tail[name_end - 2 :]


def _insert(table: dict[bytes, Answer], key: bytes, entry: Answer, limit: int) -> None:
    if key not in table and len(table) >= limit:
        del table[next(iter(table))]  # the oldest: insertion order
    table[key] = entry
