"""DNS messages through the server's handle() and the answerer: a reply, a forward or nothing, never
an exception, over UDP and TCP."""

from __future__ import annotations

import dns.message
import dns.rdataclass
import dns.rdatatype
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import fuzz_settings, inputs
from tests.fuzz.targets import dns_query

_LABELS = st.sampled_from(["web", "blue", "n1", "node", "service", "mesh", "_web", "_tcp", "x" * 40, "*", "WeB"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=6).map(".".join)
_TYPES = st.sampled_from([int(t) for t in dns.rdatatype.RdataType] + [0, 65535, 1000])
_CLASSES = st.sampled_from([1, 3, 4, 254, 255, 0, 65535])


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    """Well-formed questions of every type and class, with and without EDNS, with random header flags."""
    query = dns.message.make_query(draw(_NAMES), dns.rdatatype.A, use_edns=draw(st.sampled_from([None, 0, 1])),
                                   payload=draw(st.integers(0, 65535)), want_dnssec=draw(st.booleans()))
    wire = bytearray(query.to_wire())
    end = wire.index(0, 12) + 1  # the question name's root label
    wire[end : end + 4] = draw(_TYPES).to_bytes(2, "big") + draw(_CLASSES).to_bytes(2, "big")
    wire[2] = draw(st.integers(0, 255)) if draw(st.booleans()) else wire[2]
    wire[3] = draw(st.integers(0, 255)) if draw(st.booleans()) else wire[3]
    return bytes(wire)


@fuzz_settings(400)
@given(inputs("dns_query"))
def test_random_and_mutated_messages(data: bytes) -> None:
    dns_query(data)


@fuzz_settings(400)
@given(queries())
def test_every_type_class_and_flag(data: bytes) -> None:
    dns_query(data)
