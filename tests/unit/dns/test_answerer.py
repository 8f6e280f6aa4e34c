"""The pure answerer: tables of names → rcode and records, from a fixed snapshot."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from sidecar.dns.answerer import AnswerSettings, DnsReply, Drop, Forward, Transport, Zone, answer

NOERROR, NXDOMAIN = dns.rcode.NOERROR, dns.rcode.NXDOMAIN


def ask(zone: Zone, name: str, rdtype: str = "A", rotation: int = 0, transport: Transport = Transport.UDP,
        **query_args: Any) -> tuple[DnsReply, dns.message.Message]:
    query = dns.message.make_query(name, rdtype, **query_args)
    outcome = zone.answer(query.to_wire(), transport, rotation)
    assert isinstance(outcome, DnsReply), outcome
    response = dns.message.from_wire(outcome.wire)
    assert response.id == query.id
    assert query.is_response(response)
    return outcome, response


def records(section: list[Any]) -> list[str]:
    return [f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rd}" for rrset in section for rd in rrset]


# name, type → rcode, answer records in order (rotation 0), whether the SOA is in authority
TABLE = [
    ("web.service.mesh", "A", NOERROR,
     ["web.service.mesh. A 10.0.0.1", "web.service.mesh. A 10.0.0.2", "web.service.mesh. A 10.0.0.3"], False),
    ("web.service.mesh", "AAAA", NOERROR, [], True),
    ("api.service.mesh", "AAAA", NOERROR, ["api.service.mesh. AAAA fd00::6"], False),
    ("api.service.mesh", "A", NOERROR, [], True),
    ("api.service.mesh", "ANY", NOERROR, ["api.service.mesh. AAAA fd00::6"], False),
    ("blue.web.service.mesh", "A", NOERROR,
     ["blue.web.service.mesh. A 10.0.0.1", "blue.web.service.mesh. A 10.0.0.3"], False),
    ("green.web.service.mesh", "A", NOERROR, ["green.web.service.mesh. A 10.0.0.2"], False),
    ("canary.web.service.mesh", "A", NOERROR, ["canary.web.service.mesh. A 10.0.0.1"], False),
    # only the unhealthy instance carries red: the tag is known, nothing is routable
    ("red.web.service.mesh", "A", NOERROR, [], True),
    ("purple.web.service.mesh", "A", NXDOMAIN, [], True),
    ("_web._tcp.service.mesh", "SRV", NOERROR,
     ["_web._tcp.service.mesh. SRV 1 1 15001 n1.node.mesh.", "_web._tcp.service.mesh. SRV 1 1 15002 n2.node.mesh.",
      "_web._tcp.service.mesh. SRV 2 1 15003 n3.node.mesh."], False),
    ("web.service.mesh", "SRV", NOERROR,
     ["web.service.mesh. SRV 1 1 15001 n1.node.mesh.", "web.service.mesh. SRV 1 1 15002 n2.node.mesh.",
      "web.service.mesh. SRV 2 1 15003 n3.node.mesh."], False),
    ("blue.web.service.mesh", "SRV", NOERROR,
     ["blue.web.service.mesh. SRV 1 1 15001 n1.node.mesh.", "blue.web.service.mesh. SRV 2 1 15003 n3.node.mesh."],
     False),
    ("_web._tcp.service.mesh", "A", NOERROR, [], True),
    ("_web._udp.service.mesh", "SRV", NXDOMAIN, [], True),
    ("_nope._tcp.service.mesh", "SRV", NXDOMAIN, [], True),
    ("_tcp.service.mesh", "SRV", NOERROR, [], True),
    ("down.service.mesh", "A", NOERROR, [], True),
    ("down.service.mesh", "SRV", NOERROR, [], True),
    ("nope.service.mesh", "A", NXDOMAIN, [], True),
    ("x.y.web.service.mesh", "A", NXDOMAIN, [], True),
    ("n1.node.mesh", "A", NOERROR, ["n1.node.mesh. A 10.0.0.1"], False),
    ("n1.node.mesh", "AAAA", NOERROR, [], True),
    ("n6.node.mesh", "AAAA", NOERROR, ["n6.node.mesh. AAAA fd00::6"], False),
    ("n6.node.mesh", "A", NOERROR, [], True),
    ("ns.node.mesh", "A", NOERROR, ["ns.node.mesh. A 10.0.0.5"], False),  # suspect still answers
    ("nd.node.mesh", "A", NXDOMAIN, [], True),  # dead
    ("zz.node.mesh", "A", NXDOMAIN, [], True),
    ("a.n1.node.mesh", "A", NXDOMAIN, [], True),
    ("mesh", "SOA", NOERROR, ["mesh. SOA ns.mesh. hostmaster.mesh. 7 3600 600 86400 5"], False),
    ("mesh", "A", NOERROR, [], True),
    ("service.mesh", "A", NOERROR, [], True),
    ("node.mesh", "A", NOERROR, [], True),
    ("other.mesh", "A", NXDOMAIN, [], True),
]


@pytest.mark.parametrize(("name", "rdtype", "rcode", "expected", "soa"), TABLE)
def test_names(zone: Zone, name: str, rdtype: str, rcode: int, expected: list[str], soa: bool) -> None:
    outcome, response = ask(zone, name, rdtype)
    assert response.rcode() == rcode == outcome.rcode
    assert records(response.answer) == expected
    assert response.flags & dns.flags.AA
    assert outcome.cacheable
    if soa:
        assert records(response.authority) == ["mesh. SOA ns.mesh. hostmaster.mesh. 7 3600 600 86400 5"]
        assert response.authority[0].ttl == 5
    else:
        assert response.authority == []
    assert all(rrset.ttl == 5 for rrset in response.answer)


def test_srv_additional_section_has_target_addresses(zone: Zone) -> None:
    _, response = ask(zone, "_web._tcp.service.mesh", "SRV")
    assert records(response.additional) == [
        "n1.node.mesh. A 10.0.0.1", "n2.node.mesh. A 10.0.0.2", "n3.node.mesh. A 10.0.0.3",
    ]
    _, response = ask(zone, "_api._tcp.service.mesh", "SRV")
    assert records(response.answer) == ["_api._tcp.service.mesh. SRV 1 1 15006 n6.node.mesh."]
    assert records(response.additional) == ["n6.node.mesh. AAAA fd00::6"]


def test_case_insensitive_and_the_question_case_is_echoed(zone: Zone) -> None:
    _, response = ask(zone, "WeB.SerVICE.Mesh", "A")
    assert response.question[0].name.to_text() == "WeB.SerVICE.Mesh."
    assert [r.name.to_text() for r in response.answer] == ["WeB.SerVICE.Mesh."]
    assert records(response.answer)[0].endswith("10.0.0.1")
    _, response = ask(zone, "BLUE.web.SERVICE.mesh", "A")
    assert len(response.answer[0]) == 2


def test_rotation_spreads_healthy_first_and_keeps_degraded_last(zone: Zone) -> None:
    firsts = set()
    for rotation in range(4):
        outcome, response = ask(zone, "web.service.mesh", "A", rotation=rotation)
        addresses = [rd.address for rd in response.answer[0]]
        assert addresses[-1] == "10.0.0.3"  # the degraded one
        assert sorted(addresses[:2]) == ["10.0.0.1", "10.0.0.2"]
        firsts.add(addresses[0])
        assert outcome.variants == 2  # two healthy endpoints: two distinct rotations
    assert firsts == {"10.0.0.1", "10.0.0.2"}


def test_same_inputs_same_bytes(zone: Zone, make_catalog: Any) -> None:
    query = dns.message.make_query("_web._tcp.service.mesh", "SRV").to_wire()
    first = zone.answer(query, Transport.UDP, 1)
    assert first == zone.answer(query, Transport.UDP, 1)
    assert first == answer(query, make_catalog.base(), zone.settings, Transport.UDP, 1)


def test_a_service_whose_instances_are_all_on_dead_members_is_nodata_not_nxdomain(make_catalog: Any,
                                                                                   settings: AnswerSettings) -> None:
    gone = (make_catalog.instance("pay-1", "pay", "gone", tags=("v2",)), make_catalog.instance("web-7", "web", "gone"))
    zone = Zone(replace(make_catalog.base(), down=gone), settings)
    for name, rdtype in (("pay.service.mesh", "A"), ("_pay._tcp.service.mesh", "SRV"), ("v2.pay.service.mesh", "A")):
        outcome, response = ask(zone, name, rdtype)
        assert (outcome.rcode, response.answer, len(response.authority)) == (NOERROR, [], 1), name
    assert ask(zone, "v3.pay.service.mesh")[0].rcode == NXDOMAIN
    assert ask(zone, "nope.service.mesh")[0].rcode == NXDOMAIN
    _, response = ask(zone, "web.service.mesh")   # a live service's down instances add nothing
    assert records(response.answer) == ["web.service.mesh. A 10.0.0.1", "web.service.mesh. A 10.0.0.2",
                                        "web.service.mesh. A 10.0.0.3"]


def test_soa_serial_follows_the_snapshot_version(make_catalog: Any, settings: AnswerSettings) -> None:
    zone = Zone(make_catalog.base(version=2**32 + 42), settings)
    _, response = ask(zone, "nope.service.mesh")
    assert response.authority[0][0].serial == 42
    assert response.authority[0][0].minimum == 5


def test_ttl_from_settings(make_catalog: Any) -> None:
    zone = Zone(make_catalog.base(), AnswerSettings(ttl=30))
    _, response = ask(zone, "web.service.mesh")
    assert response.answer[0].ttl == 30
    _, response = ask(zone, "nope.service.mesh")
    assert response.authority[0].ttl == 30 and response.authority[0][0].minimum == 30


def test_other_domain(make_catalog: Any) -> None:
    zone = Zone(make_catalog.base(), AnswerSettings(domain="Mesh.Local"))
    _, response = ask(zone, "web.service.mesh.local")
    assert len(response.answer[0]) == 3
    assert isinstance(zone.answer(dns.message.make_query("web.service.mesh", "A").to_wire()), Forward)


def test_outside_the_domain_is_forwarded(zone: Zone) -> None:
    query = dns.message.make_query("example.com", "A", use_edns=0, payload=1400)
    outcome = zone.answer(query.to_wire())
    assert isinstance(outcome, Forward)
    assert outcome.query.question == query.question
    assert outcome.limit == 1400
    outcome = zone.answer(query.to_wire(), Transport.TCP)
    assert isinstance(outcome, Forward) and outcome.limit == 65535
    assert isinstance(zone.answer(dns.message.make_query("meshy", "A").to_wire()), Forward)


def test_recursion_available_only_with_upstreams(make_catalog: Any) -> None:
    _, response = ask(Zone(make_catalog.base(), AnswerSettings()), "web.service.mesh")
    assert not response.flags & dns.flags.RA
    _, response = ask(Zone(make_catalog.base(), AnswerSettings(recursion_available=True)), "web.service.mesh")
    assert response.flags & dns.flags.RA


# --------------------------------------------------------------------------------- size and EDNS


@pytest.fixture
def big_zone(make_catalog: Any, settings: AnswerSettings) -> Zone:
    return Zone(make_catalog.big(100), settings)  # 100 A records: ~1.6 kB


def test_without_edns_answers_over_512_bytes_are_truncated(big_zone: Zone) -> None:
    outcome, response = ask(big_zone, "big.service.mesh", use_edns=False)
    assert response.flags & dns.flags.TC
    assert response.answer == [] and len(outcome.wire) <= 512
    assert outcome.variants == 1


def test_edns_payload_is_honoured(big_zone: Zone) -> None:
    _, response = ask(big_zone, "big.service.mesh", use_edns=0, payload=4096)
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 100
    assert response.edns == 0
    outcome, response = ask(big_zone, "big.service.mesh", use_edns=0, payload=1232)
    assert response.flags & dns.flags.TC and len(outcome.wire) <= 1232



def test_an_edns_payload_below_512_counts_as_512(make_catalog: Any, settings: AnswerSettings) -> None:
    zone = Zone(make_catalog.big(20), settings)  # 20 A records: ~370 bytes
    outcome, response = ask(zone, "big.service.mesh", use_edns=0, payload=100)  # RFC 6891 6.2.5
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 20 and 100 < len(outcome.wire) <= 512


def test_our_udp_ceiling_caps_the_client_payload(make_catalog: Any) -> None:
    zone = Zone(make_catalog.big(100), AnswerSettings(max_udp_payload=1232))
    _, response = ask(zone, "big.service.mesh", use_edns=0, payload=65000)
    assert response.flags & dns.flags.TC
    assert response.payload == 1232


def test_tcp_gets_the_whole_answer(big_zone: Zone) -> None:
    _, response = ask(big_zone, "big.service.mesh", transport=Transport.TCP, use_edns=False)
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 100


def test_srv_additionals_are_dropped_before_answers_without_tc(make_catalog: Any, settings: AnswerSettings) -> None:
    zone = Zone(make_catalog.big(12), settings)  # 12 SRV fit in 512 bytes; their 12 A records do not
    outcome, response = ask(zone, "_big._tcp.service.mesh", "SRV", use_edns=False)
    assert not response.flags & dns.flags.TC  # RFC 2181 9: the answer is complete
    assert len(response.answer[0]) == 12
    assert len(response.additional) < 12 and len(outcome.wire) <= 512


def test_do_bit_is_copied_back(zone: Zone) -> None:
    _, response = ask(zone, "web.service.mesh", use_edns=0, want_dnssec=True)
    assert response.ednsflags & dns.flags.DO
    _, response = ask(zone, "web.service.mesh", use_edns=0)
    assert not response.ednsflags & dns.flags.DO


def test_edns_options_are_ignored_and_no_padding(zone: Zone) -> None:
    options = [dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 20),
               dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")]  # COOKIE
    plain, _ = ask(zone, "web.service.mesh", use_edns=0, payload=1232)
    padded, response = ask(zone, "web.service.mesh", use_edns=0, payload=1232, options=options)
    assert len(padded.wire) == len(plain.wire)
    assert response.options == ()


def test_edns_version_above_0_is_badvers(zone: Zone) -> None:
    outcome, response = ask(zone, "web.service.mesh", use_edns=1)
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0
    assert not outcome.cacheable


# ------------------------------------------------------------------------------------ bad queries


def header(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, id: int = 0x1234) -> bytes:
    return b"".join(x.to_bytes(2, "big") for x in (id, flags, qd, an, ns, ar))


QUESTION = dns.name.from_text("web.service.mesh").to_wire() or b""
QUESTION += b"\x00\x01\x00\x01"


@pytest.mark.parametrize("data", [b"", b"\x12", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00"])
def test_shorter_than_a_header_is_dropped(zone: Zone, data: bytes) -> None:
    assert isinstance(zone.answer(data), Drop)


def test_responses_are_dropped(zone: Zone) -> None:
    assert isinstance(zone.answer(header(flags=0x8100) + QUESTION), Drop)
    assert isinstance(zone.answer(header(flags=0x8000, qd=0)), Drop)


def reply(zone: Zone, data: bytes) -> dns.message.Message:
    outcome = zone.answer(data)
    assert isinstance(outcome, DnsReply)
    assert not outcome.cacheable
    response = dns.message.from_wire(outcome.wire)
    assert response.id == 0x1234 and response.flags & dns.flags.QR
    assert response.rcode() == outcome.rcode
    return response


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        (header() + b"\x03web", dns.rcode.FORMERR),  # cut in the question
        (header() + QUESTION + b"junk", dns.rcode.FORMERR),  # trailing bytes
        (header(qd=2) + QUESTION * 2, dns.rcode.FORMERR),  # two questions
        (header(qd=0), dns.rcode.FORMERR),  # no question
        (header() + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),  # pointer loop
        (header(qd=1, an=5) + QUESTION, dns.rcode.FORMERR),  # counts beyond the data
        (header(flags=0x2800) + QUESTION, dns.rcode.NOTIMP),  # UPDATE
        (header(flags=0x2000) + QUESTION, dns.rcode.NOTIMP),  # NOTIFY
        (header(flags=0x1000) + QUESTION, dns.rcode.NOTIMP),  # STATUS
        (header() + b"\x00\x00\x29\x00\x01", dns.rcode.FORMERR),  # qtype OPT
    ],
)
def test_bad_queries(zone: Zone, data: bytes, rcode: int) -> None:
    response = reply(zone, data)
    assert response.rcode() == rcode
    if rcode == dns.rcode.NOTIMP:
        assert response.opcode() == dns.opcode.from_flags(int.from_bytes(data[2:4], "big"))


def test_zone_transfers_and_other_classes_are_refused(zone: Zone) -> None:
    _, response = ask(zone, "mesh", "AXFR")
    assert response.rcode() == dns.rcode.REFUSED
    query = dns.message.make_query("web.service.mesh", "A", rdclass=dns.rdataclass.CH)
    outcome = zone.answer(query.to_wire())
    assert isinstance(outcome, DnsReply) and outcome.rcode == dns.rcode.REFUSED


def test_a_message_object_is_answered_too(zone: Zone) -> None:
    query = dns.message.make_query("web.service.mesh", "A")
    outcome = zone.answer(query)
    assert isinstance(outcome, DnsReply)
    assert outcome.wire == zone.answer(query.to_wire()).wire  # type: ignore[union-attr]
