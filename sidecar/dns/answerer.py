"""The pure DNS answerer: a query and a catalog snapshot in, an outcome out. No I/O, no clock.

Theory of operation
-------------------
A :class:`Zone` indexes one :class:`CatalogSnapshot` under ``dns.domain`` (``mesh`` below) once; its
:meth:`Zone.answer` turns one query into one of three outcomes:

* :class:`DnsReply`: the response's wire bytes, ready to send over the transport the query came on;
* :class:`Forward`: the name is outside the domain; the driver hands the query to the forwarder;
* :class:`Drop`: no reply is possible or wise (no readable header, or the message is a response).

Names (case-insensitive; the response echoes the client's spelling of the question)::

    NAME.service.mesh          A/AAAA  node addresses of routable instances, healthy before degraded
    NAME.service.mesh          SRV     one per instance node: priority 1 healthy / 2 degraded, weight 1,
    _NAME._tcp.service.mesh    SRV     port = the node's inbound port, target NODE.node.mesh, whose
                                       A/AAAA go in the additional section
    TAG.NAME.service.mesh      A/AAAA/SRV, only instances carrying TAG
    NODE.node.mesh             A/AAAA  the address of an alive or suspect member
    mesh                       SOA

An unknown name under the domain is NXDOMAIN and a known name without records of the asked type is
NODATA, both with the zone's SOA in the authority section (its minimum is the TTL: RFC 2308 negative
caching lasts as long as a positive answer). A service whose instances are all unhealthy is a known
name: NODATA; so is one whose instances all sit on members declared dead (``CatalogSnapshot.down``).

Instances on one node share the node's address and inbound port, so they make one record; the
address is where peer sidecars dial, not the app's own host.

Load spreading is by rotation, not randomness, so the answerer stays a function of its inputs: the
driver passes ``rotation`` and the response cache keeps one pre-rotated variant per rotation.

The outcome types live in :mod:`sidecar.dns.outcomes` (re-exported here): this module carries dnspython's
message, name and rdata modules, which the server imports with the first query.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from sidecar.catalog.model import CatalogSnapshot, HealthStatus, ServiceMetadata
from sidecar.dns import wire
from sidecar.dns.outcomes import (
    CLASSIC_UDP_SIZE,
    MAX_TCP_SIZE,
    AnswerSettings,
    DnsReply,
    Drop,
    Forward,
    Outcome,
    Transport,
)

A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
SRV = dns.rdatatype.SRV
SOA = dns.rdatatype.SOA
ANY = dns.rdatatype.ANY
IN = dns.rdataclass.IN

# SOA timers of a zone nobody transfers: only ``minimum`` matters (negative caching); the others are
# the values RFC 1912 suggests, for tools that print them
_SOA_REFRESH = 3600
_SOA_RETRY = 600
_SOA_EXPIRE = 86400

_SERVICE = b"service"
# types that only exist in the additional section; asking for them is a malformed question
_NOT_QUESTIONS = frozenset({dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY})
_NODE = b"node"
_TCP = b"_tcp"


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where one node of a service is reached: one A/AAAA and one SRV record."""

    tier: int  # 0 healthy, 1 degraded: the order of answers and the SRV priority - 1
    node: dns.name.Name  # NODE.node.<domain>
    address: str
    rdtype: dns.rdatatype.RdataType
    port: int
    tags: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class _Found:
    answer: list[dns.rrset.RRset]
    additional: list[dns.rrset.RRset]
    variants: int = 1


_NO_SUCH_NAME: _Found | None = None
_NO_DATA = _Found([], [])


def _address_type(address: str) -> dns.rdatatype.RdataType | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return A if ip.version == 4 else AAAA


def _label(text: str) -> bytes | None:
    """The lower-cased DNS label for a catalog name, or None when it cannot be one."""
    try:
        label = text.lower().encode("ascii")
    except UnicodeEncodeError:
        return None
    return label if 0 < len(label) <= 63 and b"." not in label else None


def _tag_labels(instance: ServiceMetadata) -> frozenset[bytes]:
    """An instance's tags as the lower-cased labels a TAG.NAME query is matched against."""
    return frozenset(t.lower().encode("ascii", "replace") for t in instance.tags)


def _rotate(endpoints: Sequence[_Endpoint], rotation: int) -> list[_Endpoint]:
    """Rotate within each tier, so healthy endpoints always come before degraded ones."""
    out: list[_Endpoint] = []
    start = 0
    while start < len(endpoints):
        end = start
        while end < len(endpoints) and endpoints[end].tier == endpoints[start].tier:
            end += 1
        shift = rotation % (end - start)
        out.extend(endpoints[start + shift : end])
        out.extend(endpoints[start : start + shift])
        start = end
    return out


def _largest_tier(endpoints: Sequence[_Endpoint]) -> int:
    counts: dict[int, int] = {}
    for endpoint in endpoints:
        counts[endpoint.tier] = counts.get(endpoint.tier, 0) + 1
    return max(counts.values(), default=1)


class Zone:
    """The names of one catalog snapshot under the domain, indexed once per snapshot version."""

    def __init__(self, snapshot: CatalogSnapshot, settings: AnswerSettings) -> None:
        self.settings = settings
        self.version = snapshot.version
        self.origin = dns.name.from_text(settings.domain)
        self._node_origin = dns.name.Name((_NODE, *self.origin.labels))
        self._ttl = settings.ttl
        self._soa_rdata = dns.rdata.from_text(
            IN, SOA,
            f"ns.{self.origin} hostmaster.{self.origin} {snapshot.version % 2**32} "
            f"{_SOA_REFRESH} {_SOA_RETRY} {_SOA_EXPIRE} {self._ttl}",
        )
        self._soa = self._soa_for(self.origin)
        # every node an alive or suspect member has: NODE.node.<domain> → (address, type, inbound port)
        self._nodes: dict[bytes, tuple[dns.name.Name, str, dns.rdatatype.RdataType, int]] = {}
        for node in snapshot.nodes.values():
            label = _label(node.name)
            rdtype = _address_type(node.address)
            if label is None or rdtype is None or node.state not in ("alive", "suspect"):
                continue
            self._nodes.setdefault(label, (self._node_name(node.name), node.address, rdtype, node.inbound_port))
        # services by lower-cased name: every tag any instance has (a known TAG.NAME), and the endpoints
        # of routable instances, one per node, best tier first
        self._tags: dict[bytes, set[bytes]] = {}
        by_label: dict[bytes, list[ServiceMetadata]] = {}
        for instance in snapshot.instances:
            label = _label(instance.name)
            if label is None:
                continue
            by_label.setdefault(label, []).append(instance)
            self._tags.setdefault(label, set()).update(_tag_labels(instance))
        self._services: dict[bytes, list[_Endpoint]] = {}
        for instance in snapshot.down:   # known names without records
            label = _label(instance.name)
            if label is not None and label not in by_label:
                self._services[label] = []
                self._tags.setdefault(label, set()).update(_tag_labels(instance))
        for label, group in by_label.items():
            endpoints: dict[bytes, _Endpoint] = {}
            # routable() is the one definition of "fit for traffic"; asked of a snapshot holding only this
            # service, so indexing stays linear in the catalog size
            alone = CatalogSnapshot(snapshot.version, snapshot.nodes, tuple(group))
            routable = [i for name in sorted({i.name for i in group}) for i in alone.routable(name)]
            for instance in sorted(routable, key=lambda i: i.status.rank):
                node_label = _label(instance.node)
                if node_label is None or node_label not in self._nodes:
                    continue  # no known address for it: nothing to answer with
                target, address, rdtype, port = self._nodes[node_label]
                tier = 0 if instance.status is HealthStatus.HEALTHY else 1
                tags = _tag_labels(instance)
                known = endpoints.get(node_label)
                if known is None:
                    endpoints[node_label] = _Endpoint(tier, target, address, rdtype, port, tags)
                else:  # another instance on the same node: same records, more tags
                    endpoints[node_label] = _Endpoint(
                        known.tier, known.node, known.address, known.rdtype, known.port, known.tags | tags
                    )
            self._services[label] = sorted(endpoints.values(), key=lambda e: e.tier)

    # ------------------------------------------------------------------------------------- answer

    def answer(
        self,
        query: bytes | dns.message.Message,
        transport: Transport = Transport.UDP,
        rotation: int = 0,
    ) -> Outcome:
        if isinstance(query, bytes | bytearray | memoryview):
            parsed = _parse(bytes(query))
            if not isinstance(parsed, dns.message.Message):
                return parsed
            query = parsed
        if query.flags & dns.flags.QR:
            return Drop("the message is a response")
        if query.opcode() != dns.opcode.QUERY:
            return self._error(query, dns.rcode.NOTIMP, transport, keep_question=False)
        if len(query.question) != 1:
            return self._error(query, dns.rcode.FORMERR, transport, keep_question=False)
        if query.edns > 0:
            return self._error(query, dns.rcode.BADVERS, transport)
        question = query.question[0]
        qname, rdtype = question.name, question.rdtype
        if rdtype in _NOT_QUESTIONS:
            return self._error(query, dns.rcode.FORMERR, transport)
        if not qname.is_subdomain(self.origin):
            return Forward(query, _limit(query, transport, self.settings))
        if question.rdclass not in (IN, dns.rdataclass.ANY):
            return self._error(query, dns.rcode.REFUSED, transport)
        if rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            return self._error(query, dns.rcode.REFUSED, transport)  # no zone transfers
        found = self._lookup(qname, rdtype, rotation)
        response = self._response(query)
        response.flags |= dns.flags.AA
        if found is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa)
            variants = 1
        else:
            response.answer.extend(found.answer)
            response.additional.extend(found.additional)
            if not found.answer:
                response.authority.append(self._soa)
            variants = found.variants
        wire_bytes = _to_wire(response, _limit(query, transport, self.settings))
        if wire.is_truncated(wire_bytes):
            variants = 1  # nothing left to rotate
        return DnsReply(wire_bytes, response.rcode(), cacheable=True, variants=variants)

    # ------------------------------------------------------------------------------------- lookup

    def _lookup(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, rotation: int) -> _Found | None:
        labels = tuple(label.lower() for label in qname.relativize(self.origin).labels)
        if not labels:
            if rdtype in (SOA, ANY):
                return _Found([self._soa_for(qname)], [])
            return _NO_DATA
        if labels in ((_SERVICE,), (_NODE,)):
            return _NO_DATA  # empty non-terminals above services and nodes
        kind, rest = labels[-1], labels[:-1]
        if kind == _NODE and len(rest) == 1:
            node = self._nodes.get(rest[0])
            if node is None:
                return _NO_SUCH_NAME
            _, address, node_type, _ = node
            if rdtype in (node_type, ANY):
                return _Found([self._addresses(qname, node_type, [address])], [])
            return _NO_DATA
        if kind != _SERVICE:
            return _NO_SUCH_NAME
        if len(rest) == 1:  # NAME.service
            if rest[0] == _TCP:
                return _NO_DATA if self._services else _NO_SUCH_NAME  # above every _NAME._tcp
            return self._service(qname, rdtype, rest[0], None, rotation, srv_only=False)
        if len(rest) == 2 and rest[1] == _TCP and rest[0].startswith(b"_"):  # _NAME._tcp.service
            return self._service(qname, rdtype, rest[0][1:], None, rotation, srv_only=True)
        if len(rest) == 2:  # TAG.NAME.service
            name, tag = rest[1], rest[0]
            if tag not in self._tags.get(name, ()):
                return _NO_SUCH_NAME
            return self._service(qname, rdtype, name, tag, rotation, srv_only=False)
        return _NO_SUCH_NAME

    def _service(
        self,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        name: bytes,
        tag: bytes | None,
        rotation: int,
        *,
        srv_only: bool,
    ) -> _Found | None:
        endpoints = self._services.get(name)
        if endpoints is None:
            return _NO_SUCH_NAME
        if tag is not None:
            endpoints = [e for e in endpoints if tag in e.tags]
        if not endpoints:
            return _NO_DATA
        ordered = _rotate(endpoints, rotation)
        variants = min(_largest_tier(endpoints), self.settings.max_variants)
        answer: list[dns.rrset.RRset] = []
        additional: list[dns.rrset.RRset] = []
        if rdtype == SRV or (srv_only and rdtype == ANY):
            srv = dns.rrset.RRset(qname, IN, SRV)
            for e in ordered:
                srv.add(dns.rdata.from_text(IN, SRV, f"{e.tier + 1} 1 {e.port} {e.node}"), self._ttl)
                additional.append(self._addresses(e.node, e.rdtype, [e.address]))
            answer.append(srv)
        elif not srv_only:
            types = (A, AAAA) if rdtype == ANY else (rdtype,)
            for address_type in types:
                addresses = [e.address for e in ordered if e.rdtype == address_type]
                if addresses:
                    answer.append(self._addresses(qname, address_type, addresses))
        if not answer:
            return _NO_DATA
        return _Found(answer, additional, variants)

    # ----------------------------------------------------------------------------------- building

    def _addresses(
        self, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType, addresses: Sequence[str]
    ) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(owner, IN, rdtype)
        for address in addresses:
            rrset.add(dns.rdata.from_text(IN, rdtype, address), self._ttl)
        return rrset

    def _node_name(self, node: str) -> dns.name.Name:
        return dns.name.Name((node.encode("ascii"), *self._node_origin.labels))

    def _soa_for(self, owner: dns.name.Name) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(owner, IN, SOA)
        rrset.add(self._soa_rdata, self._ttl)
        return rrset

    def _response(self, query: dns.message.Message) -> dns.message.Message:
        # no padding: it is for encrypted transports, and it would make the answer depend on options
        response = dns.message.make_response(
            query,
            recursion_available=self.settings.recursion_available,
            our_payload=self.settings.max_udp_payload,
            pad=0,
        )
        if query.edns >= 0:
            response.ednsflags = query.ednsflags & dns.flags.DO  # RFC 3225: DO is copied back
        return response

    def _error(
        self, query: dns.message.Message, rcode: dns.rcode.Rcode, transport: Transport, *, keep_question: bool = True
    ) -> DnsReply:
        response = self._response(query)
        if not keep_question:
            response.question = []
        response.set_rcode(rcode)
        return DnsReply(_to_wire(response, _limit(query, transport, self.settings)), rcode)


def _limit(query: dns.message.Message, transport: Transport, settings: AnswerSettings) -> int:
    """The largest response the client accepts: its EDNS payload over UDP (512 without EDNS), 64 KiB over TCP."""
    if transport is Transport.TCP:
        return MAX_TCP_SIZE
    if query.edns < 0:
        return CLASSIC_UDP_SIZE
    return max(CLASSIC_UDP_SIZE, min(query.payload, settings.max_udp_payload))


def _to_wire(response: dns.message.Message, limit: int) -> bytes:
    # truncation drops whole RRsets (the additional section first, without TC, RFC 2181 9); no shuffle:
    # the order is the rotation we chose, and a pure answerer gives the same bytes for the same inputs
    return response.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)


def _parse(data: bytes) -> dns.message.Message | DnsReply | Drop:
    if len(data) < wire.HEADER_SIZE:
        return Drop("shorter than a DNS header")
    if data[2] & 0x80:
        return Drop("the message is a response")
    if wire.opcode(data) != dns.opcode.QUERY:
        # other opcodes (UPDATE, NOTIFY...) have sections we do not read; the header is enough
        return DnsReply(_header_only(data, dns.rcode.NOTIMP), dns.rcode.NOTIMP)
    try:
        return dns.message.from_wire(data)
    # dnspython raises many kinds (FormError, TrailingJunk, BadEDNS, UnknownTSIGKey, ValueError on odd
    # rdata...); for the answerer they all mean the same: the client sent something we cannot read
    except Exception:
        return DnsReply(_header_only(data, dns.rcode.FORMERR), dns.rcode.FORMERR)


def _header_only(data: bytes, rcode: dns.rcode.Rcode) -> bytes:
    reply = wire.header_reply(data, rcode)
    assert reply is not None  # _parse checked the header is complete and a query
    return reply


def answer(
    query: bytes | dns.message.Message,
    snapshot: CatalogSnapshot,
    settings: AnswerSettings,
    transport: Transport = Transport.UDP,
    rotation: int = 0,
) -> Outcome:
    """Answer one query from a snapshot; drivers keep a :class:`Zone` per snapshot version instead."""
    return Zone(snapshot, settings).answer(query, transport, rotation)


def refusal(query: dns.message.Message, rcode: dns.rcode.Rcode, limit: int) -> bytes:
    """A response to ``query`` with ``rcode`` and no records (REFUSED, SERVFAIL from the forwarder)."""
    response = dns.message.make_response(query, pad=0)
    response.set_rcode(rcode)
    return _to_wire(response, limit)


def truncated(query: dns.message.Message, rcode: dns.rcode.Rcode, flags: int) -> bytes:
    """An empty response with TC set, for an upstream answer too big for the client's UDP buffer."""
    response = dns.message.make_response(query, pad=0)
    response.flags |= dns.flags.TC | (flags & (dns.flags.AA | dns.flags.RA | dns.flags.AD))
    response.set_rcode(rcode)
    return response.to_wire()


__all__ = [
    "CLASSIC_UDP_SIZE",
    "MAX_TCP_SIZE",
    "AnswerSettings",
    "DnsReply",
    "Drop",
    "Forward",
    "Outcome",
    "Transport",
    "Zone",
    "answer",
    "refusal",
    "truncated",
]
