"""The raw-bytes hot path: question keys, the response cache, and that a hit equals a fresh answer."""

from __future__ import annotations

import random
from typing import Any, TypeVar

import dns.edns
import dns.message
import dns.name
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.dns import wire
from sidecar.dns.answerer import DnsReply, Transport, Zone
from sidecar.dns.cache import ResponseCache

T = TypeVar("T")


def query(name: str, rdtype: str | int = "A", **kw: Any) -> bytes:
    rdtype = dns.rdatatype.RdataType.make(rdtype)
    return dns.message.make_query(name, rdtype, **kw).to_wire()


def name_wire(text: str) -> bytes:
    data = dns.name.from_text(text).to_wire()
    assert data is not None
    return data


def key(data: bytes) -> bytes:
    parsed = wire.question_key(data)
    assert parsed is not None
    return parsed[0]


# ------------------------------------------------------------------------------------ question_key


def test_key_ignores_id_case_and_edns_options() -> None:
    plain = query("web.service.mesh", use_edns=0, payload=1232)
    assert key(plain) == key(query("WEB.Service.MESH", use_edns=0, payload=1232))
    assert key(plain) == key(b"\xff\xff" + plain[2:])
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    assert key(plain) == key(query("web.service.mesh", use_edns=0, payload=1232, options=[cookie]))


@pytest.mark.parametrize(
    "other",
    [
        query("web.service.mesh", "AAAA", use_edns=0, payload=1232),
        query("web.service.mesh", use_edns=0, payload=4096),
        query("web.service.mesh", use_edns=0, payload=1232, want_dnssec=True),
        query("web.service.mesh", use_edns=False),
        query("web.service.mesh", use_edns=0, payload=1232, flags=0),  # no RD
        query("api.service.mesh", use_edns=0, payload=1232),
    ],
)
def test_key_separates_what_changes_the_answer(other: bytes) -> None:
    assert key(other) != key(query("web.service.mesh", use_edns=0, payload=1232))


def test_key_does_not_lowercase_the_type() -> None:
    # type 65 (HTTPS) is 'A' as a byte, type 97 is 'a': lower-casing the whole question would merge them
    assert key(query("web.service.mesh", 65)) != key(query("web.service.mesh", 97))


def test_key_offsets() -> None:
    data = query("web.service.mesh")
    parsed = wire.question_key(data)
    assert parsed is not None
    assert parsed[1] == 12 + len(name_wire("web.service.mesh"))


def header(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return b"".join(x.to_bytes(2, "big") for x in (0x4242, flags, qd, an, ns, ar))


Q = name_wire("web.service.mesh") + b"\x00\x01\x00\x01"
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        header()[:11],
        header() + Q[:-1],  # cut
        header() + Q + b"x",  # trailing
        header(flags=0x8100) + Q,  # a response
        header(flags=0x2800) + Q,  # UPDATE
        header(flags=0x0300) + Q,  # TC in a query
        header(qd=2) + Q + Q,
        header(qd=0),
        header(an=1) + Q,
        header(ns=1) + Q,
        header(ar=2) + Q + OPT + b"\x00\x00" + OPT + b"\x00\x00",
        header() + b"\xc0\x0c\x00\x01\x00\x01",  # compression pointer in the question
        header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label of 64
        header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # name of 257 bytes
        header() + b"\x03web",  # unterminated name
        header(ar=1) + Q + b"\x00\x00\x01" + OPT[3:] + b"\x00\x00",  # additional record is not OPT
        header(ar=1) + Q + b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00",  # EDNS version 1
        header(ar=1) + Q + OPT + b"\x00\x05\x00\x0a\x00\x08",  # option longer than the rdata
        header(ar=1) + Q + OPT + b"\x00\x03\x00\x0a\x00",  # rdata shorter than an option header
        header(ar=1) + Q + OPT + b"\x00\x00" + b"x",  # trailing after OPT
        header(ar=1) + Q + OPT,  # OPT cut before its rdlength
    ],
)
def test_not_plain_queries_have_no_key(data: bytes) -> None:
    assert wire.question_key(data) is None


_ONE_IN_TWENTY = st.sampled_from([False] * 19 + [True])


@st.composite
def plain_queries(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A query built field by field, each field usually what a plain query has and one time in twenty not; and
    whether every field was the usual one (then the query must have a key). Random bytes almost never have a
    plain query's header, so with them alone the key would almost never be computed and its checks not run."""
    usual = True

    def pick(common: st.SearchStrategy[T], odd: st.SearchStrategy[T]) -> T:
        nonlocal usual
        if draw(_ONE_IN_TWENTY):
            usual = False
            return draw(odd)
        return draw(common)

    two = st.binary(min_size=2, max_size=2)
    ident = draw(two)
    flags = pick(st.sampled_from([b"\x00", b"\x01"]),                  # RD or not, nothing else in byte 2
                 st.sampled_from([b"\x02", b"\x80", b"\x28", b"\xff"]))  # TC, QR, UPDATE, all
    flags += draw(st.binary(min_size=1, max_size=1))   # RA, Z, AD, CD, rcode: not looked at in a query
    additional = draw(st.sampled_from([b"\x00\x00", b"\x00\x01"]))
    counts = pick(st.just(b"\x00\x01\x00\x00\x00\x00" + additional),
                  st.sampled_from([b"\x00\x02\x00\x00\x00\x00" + additional, b"\x00\x01\x00\x01\x00\x00" + additional,
                                   b"\x00\x01\x00\x00\x00\x00\x00\x02", b"\x00\x00\x00\x00\x00\x00" + additional]))
    labels = draw(st.lists(st.binary(min_size=1, max_size=63), max_size=5).filter(
        lambda ls: sum(len(label) + 1 for label in ls) < 255))
    name = b"".join(bytes([len(label)]) + label for label in labels)
    name = pick(st.just(name + b"\x00"),
                st.sampled_from([b"\xc0\x0c", b"\x40" + b"a" * 64 + b"\x00", name]))  # pointer, label of 64, no end
    question = name + draw(two) + draw(two)   # any type, any class
    opt = b""
    if additional == b"\x00\x01":
        options = draw(st.lists(st.tuples(two, st.binary(max_size=12)), max_size=3))
        rdata = b"".join(code + len(value).to_bytes(2, "big") + value for code, value in options)
        owner_and_type = pick(st.just(b"\x00\x00\x29"), st.just(b"\x00\x00\x01"))  # OPT, or an A record
        rcode_and_version = pick(st.just(b"\x00\x00"), st.sampled_from([b"\x01\x00", b"\x00\x01"]))
        rdlength = pick(st.just(len(rdata)), st.sampled_from([len(rdata) + 1, len(rdata) + 3]))
        opt = owner_and_type + draw(two) + rcode_and_version + draw(two) + rdlength.to_bytes(2, "big") + rdata
    data = ident + flags + counts + question + opt
    cut = pick(st.just(len(data)), st.integers(0, len(data) - 1))
    tail = pick(st.just(b""), st.binary(min_size=1, max_size=4))
    return data[:cut] + tail, usual


@settings(max_examples=500)
@given(plain_queries())
def test_question_key_never_raises_and_keys_exactly_the_plain_queries(case: tuple[bytes, bool]) -> None:
    data, plain = case
    parsed = wire.question_key(data)
    if plain:
        assert parsed is not None
    if parsed is not None:
        message = dns.message.from_wire(data)  # what the key accepts, dnspython reads
        assert len(message.question) == 1 and message.edns <= 0
        assert parsed[1] == 12 + len(message.question[0].name.to_wire())


@given(st.binary(max_size=600))
def test_question_key_never_raises_on_random_bytes(data: bytes) -> None:
    assert wire.question_key(data) is None or dns.message.from_wire(data).question


@given(st.data())
def test_question_key_on_mutated_queries(data: st.DataObject) -> None:
    base = bytearray(query(data.draw(st.sampled_from(["web.service.mesh", "a.b"])), use_edns=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
    raw = bytes(base[: data.draw(st.integers(0, len(base)))] if data.draw(st.booleans()) else base)
    parsed = wire.question_key(raw)
    if parsed is not None:
        message = dns.message.from_wire(raw)
        assert len(message.question) == 1 and message.edns <= 0
        assert parsed[1] == 12 + len(name_wire(message.question[0].name.to_text()))


def test_header_reply() -> None:
    data = query("web.service.mesh")
    reply = wire.header_reply(data, 5)
    assert reply is not None and reply[:2] == data[:2]
    message = dns.message.from_wire(reply)
    assert message.rcode() == 5 and message.question == [] and message.flags & dns.flags.QR
    with_question = wire.header_reply(data, 5, wire.question_key(data)[1] + 4)  # type: ignore[index]
    assert dns.message.from_wire(with_question).question == dns.message.from_wire(data).question  # type: ignore[arg-type]
    assert wire.header_reply(b"short", 1) is None
    assert wire.header_reply(header(flags=0x8000), 1) is None


# ------------------------------------------------------------------------------------ the cache


def test_hit_patches_id_and_cycles_variants() -> None:
    cache = ResponseCache()
    cache.check_version(1)
    first = query("web.service.mesh")
    variants = [first[:2] + bytes([0x81, 0x80]) + first[4:] + bytes([n]) for n in range(3)]
    assert cache.get(first, False) is None
    assert cache.put(first, False, variants, 0)
    second = query("web.service.mesh")
    served = [cache.get(second, False) for _ in range(4)]
    assert [s[0][-1] for s in served if s] == [1, 2, 0, 1]  # variants[0] was the miss's answer
    assert all(s is not None and s[0][:2] == second[:2] and s[1] == 0 for s in served)
    assert cache.get(second, True) is None  # transports are apart


def test_version_change_empties_the_cache() -> None:
    cache = ResponseCache()
    data = query("web.service.mesh")
    assert cache.check_version(1)
    cache.put(data, False, [data], 0)
    assert not cache.check_version(1)
    assert cache.get(data, False) is not None
    assert cache.check_version(2)
    assert cache.get(data, False) is None and len(cache) == 0


def test_bounded_oldest_goes_first() -> None:
    cache = ResponseCache(max_entries=3)
    names = [query(f"s{i}.service.mesh") for i in range(5)]
    for data in names:
        cache.put(data, False, [data], 3)
    assert len(cache) == 3
    assert [cache.get(d, False) is not None for d in names] == [False, False, True, True, True]


def test_not_plain_queries_are_not_stored() -> None:
    cache = ResponseCache()
    bad = header() + b"\xc0\x0c\x00\x01\x00\x01"
    assert not cache.put(bad, False, [bad], 0)
    assert cache.get(bad, False) is None
    assert len(cache) == 0
    with pytest.raises(ValueError, match="at least 1"):
        ResponseCache(0)


# a hit must be byte-for-byte what the answerer would have said for that exact query, for one rotation;
# asked again and again, every rotation comes round
NAMES = ["web.service.mesh", "_web._tcp.service.mesh", "blue.web.service.mesh", "n1.node.mesh", "nope.service.mesh",
         "mesh", "api.service.mesh", "web.service.mesh"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(NAMES),
    rdtype=st.sampled_from(["A", "AAAA", "SRV", "SOA", "TXT"]),
    case_seed=st.integers(0, 2**32),
    edns=st.sampled_from([None, 512, 1232, 4096]),
    tcp=st.booleans(),
    spellings=st.integers(1, 4),
)
def test_a_hit_equals_a_fresh_answer(zone: Zone, name: str, rdtype: str, case_seed: int, edns: int | None,
                                     tcp: bool, spellings: int) -> None:
    rng = random.Random(case_seed)
    transport = Transport.TCP if tcp else Transport.UDP
    cache = ResponseCache()
    cache.check_version(zone.version)
    kw: dict[str, Any] = {"use_edns": False} if edns is None else {"use_edns": 0, "payload": edns}
    first = query(name, rdtype, **kw)
    miss = zone.answer(first, transport)
    assert isinstance(miss, DnsReply) and miss.cacheable
    rotations = [zone.answer(first, transport, r) for r in range(miss.variants)]
    assert cache.put(first, tcp, [r.wire for r in rotations if isinstance(r, DnsReply)], miss.rcode)
    for _ in range(spellings):
        spelled = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
        seen = set()
        for _ in range(miss.variants):  # the first hit of a spelling goes by question, the rest by exact bytes
            again = query(spelled, rdtype, **kw)
            hit = cache.get(again, tcp)
            assert hit is not None
            fresh = [zone.answer(again, transport, r) for r in range(miss.variants)]
            matching = [r for r, f in enumerate(fresh) if isinstance(f, DnsReply) and hit == (f.wire, f.rcode)]
            assert len(matching) == 1
            seen.add(matching[0])
        assert seen == set(range(miss.variants))


def test_exact_bytes_hit_patches_only_the_id() -> None:
    cache = ResponseCache()
    cache.check_version(1)
    first = query("Web.Service.Mesh")
    response = first[:2] + b"\x81\x80" + first[4:]
    cache.put(first, False, [response], 0)
    again = b"\x99\x99" + first[2:]
    assert cache.get(again, False) == (b"\x99\x99" + response[2:], 0)
    other_case = query("WEB.service.mesh")
    hit = cache.get(other_case, False)
    assert hit is not None and hit[0][12:29] == other_case[12:29] and hit[0][:2] == other_case[:2]
    # the version change empties both levels
    cache.check_version(2)
    assert cache.get(again, False) is None and cache.get(other_case, False) is None
