"""A node's catalog state is its own signed statement: peers keep only what a certificate for the service signed.

Two replications joined by hand (what one broadcasts, the other receives), with an in-memory CA; the forger
speaks the wire format directly, as any holder of the gossip key can.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.catalog.mesh import MeshCatalog
from sidecar.catalog.model import HealthStatus, NodeInfo, ServiceMetadata
from sidecar.catalog.registry import LocalRegistry
from sidecar.catalog.replication import CatalogReplication
from sidecar.catalog.signing import ClaimRefused, ClaimVerifier, sign
from sidecar.catalog.sync import Claim, decode_claims, encode_claims
from sidecar.config.load import build_section
from sidecar.config.model import ServiceConfig
from sidecar.events import EventBus
from sidecar.gossip.errors import GossipMessageTooLarge
from sidecar.gossip.outputs import MemberJoined, RemoteState, UserMessage
from sidecar.tls import certs, signatures
from sidecar.tls.der import pem_ec_private_key
from sidecar.tls.primitives import SigningKey
from tests.unit.catalog.test_replication import FakeGossip, member

TD = "mesh.local"
NOW = dt.datetime.now(dt.UTC)
CA = certs.make_ca(TD, now=NOW)
OTHER_CA = certs.make_ca(TD, now=NOW)


def der(issued: certs.IssuedCertificate) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.DER)


def signing_key(key: ec.EllipticCurvePrivateKey) -> SigningKey:
    """``key`` as the running sidecar holds its own: read from PEM by sidecar.tls.der, loaded by OpenSSL."""
    return signatures.private_key(pem_ec_private_key(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())))


def identity(service: str, ca: certs.CertificateAuthority = CA) -> tuple[bytes, SigningKey]:
    issued = certs.issue_from(ca, service, 3600, now=NOW)
    return der(issued), signing_key(issued.key)


PAY = identity("pay")
INTRUDER = identity("intruder")

# tls.ca as the store holds it: one tuple while the CA does not change (the verifier caches by it)
ANCHORS = (certs.parsed(CA.certificate),)


def verifier() -> ClaimVerifier:
    return ClaimVerifier(TD, "prod", lambda: ANCHORS, lambda: NOW.timestamp())


class SizedGossip(FakeGossip):
    """Refuses broadcasts larger than a gossip packet would carry."""

    def __init__(self, limit: int = 1300) -> None:
        super().__init__()
        self.limit = limit

    def broadcast_user(self, key: str, data: bytes) -> None:
        if len(data) > self.limit:
            raise GossipMessageTooLarge("user broadcast", len(data), self.limit)
        super().broadcast_user(key, data)


def node(name: str, identities: dict[str, tuple[bytes, SigningKey]] | None,
         gossip: FakeGossip | None = None) -> tuple[CatalogReplication, FakeGossip, MeshCatalog]:
    bus = EventBus()
    registry = LocalRegistry(name, bus)
    catalog = MeshCatalog(registry, NodeInfo(name, "10.0.0.1", 15006, "prod"))
    gossip = gossip if gossip is not None else FakeGossip()
    clock = iter(range(1000, 10**6, 10))
    replication = CatalogReplication(catalog, gossip, bus, lambda: next(clock),
                                     identities=(lambda: identities) if identities is not None else None,
                                     verifier=verifier())
    registry.listeners.append(replication.local_changed)
    return replication, gossip, catalog


def register(catalog: MeshCatalog, name: str, port: int = 1) -> None:
    catalog.registry.register(build_section(ServiceConfig, {"name": name, "port": port}), "config", 0.0, 1)


def peer_of(*names: str) -> tuple[CatalogReplication, FakeGossip, MeshCatalog]:
    replication, gossip, catalog = node("c", {})
    gossip.live = [member(n) for n in names]
    for n in names:
        replication.on_event(MemberJoined(member(n)))
    return replication, gossip, catalog


def deliver(sender: FakeGossip, receiver: CatalogReplication) -> None:
    for key, data in sender.sent:
        receiver.on_event(UserMessage(key.split(":")[1], key, data))
    sender.sent.clear()


def test_each_hosted_service_is_its_own_signed_claim_and_peers_keep_them() -> None:
    _, b_gossip, b_catalog = node("b", {"pay": PAY, "inv": identity("inv")})
    register(b_catalog, "pay")
    register(b_catalog, "inv")
    # the first change states both identities (inv still empty), the second inv's claim only
    assert sorted(key for key, _ in b_gossip.sent) == ["catalog:b:inv", "catalog:b:inv", "catalog:b:pay"]
    assert all(c.signed for _, data in b_gossip.sent for c in decode_claims(data))
    c, _, c_catalog = peer_of("b")
    deliver(b_gossip, c)
    assert sorted(i.name for i in c_catalog.snapshot().instances) == ["inv", "pay"]
    assert c.refused == {}


def test_a_service_without_a_certificate_is_not_announced(caplog: pytest.LogCaptureFixture) -> None:
    _, b_gossip, b_catalog = node("b", {"intruder": INTRUDER})
    register(b_catalog, "pay")    # the intruder's app registers pay through the API
    register(b_catalog, "intruder")
    claims = [c for _, data in b_gossip.sent for c in decode_claims(data)]
    assert [i.name for c in claims for i in c.instances] == ["intruder"]
    assert "not announced" in caplog.text


def test_the_nodes_stream_subscriptions_ride_in_its_first_identitys_claim_naming_it() -> None:
    from sidecar.catalog.model import NODE_STREAM, Subscription
    b, b_gossip, b_catalog = node("b", {"pay": PAY, "inv": identity("inv")})
    b.local_subscriptions = lambda: (Subscription(NODE_STREAM, "news"), Subscription("inv", "orders", "/o"),
                                     Subscription("ghost", "orders", "/g"))
    register(b_catalog, "pay")
    subs = {c.service: c.subscriptions for c in b.own_claims()}
    # deliveries to b's stream readers require pay's certificate; ghost holds none: not announced
    assert subs == {"pay": (Subscription(NODE_STREAM, "news", "pay"),), "inv": (Subscription("inv", "orders", "/o"),)}
    c, _, _ = peer_of("b")
    seen: list[tuple[str, tuple[Subscription, ...]]] = []
    c.subscription_listeners.append(lambda n, s: seen.append((n, s)))
    deliver(b_gossip, c)
    assert set(seen[-1][1]) == {Subscription(NODE_STREAM, "news", "pay"), Subscription("inv", "orders", "/o")}
    # a claim about intruder cannot carry a stream subscription that names pay
    stolen = sign(Claim("b", "prod", "intruder", 10**15, (), (Subscription(NODE_STREAM, "news", "pay"),)), *INTRUDER)
    with pytest.raises(ClaimRefused, match="foreign-entry"):
        verifier().check(stolen)


def held_pay() -> tuple[CatalogReplication, MeshCatalog]:
    """Node c holds b's genuine claim: pay is healthy on b."""
    _, b_gossip, b_catalog = node("b", {"pay": PAY})
    register(b_catalog, "pay")
    c, _, c_catalog = peer_of("b", "x")
    deliver(b_gossip, c)
    assert [(i.name, i.status) for i in c_catalog.snapshot().instances] == [("pay", HealthStatus.HEALTHY)]
    return c, c_catalog


def forged(service: str = "pay", status: HealthStatus = HealthStatus.UNHEALTHY, version: int = 10**15) -> Claim:
    instance = ServiceMetadata("pay:b", "pay", "1", "127.0.0.1", 1, status=status, node="b")
    return Claim("b", "prod", service, version, (instance,))


@pytest.mark.parametrize(("claim", "reason"), [
    # a gossip-key holder without a certificate: unsigned, however new
    (forged(), "unsigned"),
    # a member with a certificate for another service signs a claim about pay
    (sign(forged(), *INTRUDER), "wrong-service"),
    # ... or about its own service, listing pay's instance
    (sign(forged(service="intruder"), *INTRUDER), "foreign-entry"),
    # pay's genuine signature over other content (the status changed after signing)
    (replace(sign(forged(status=HealthStatus.HEALTHY), *PAY), instances=forged().instances), "bad-signature"),
    # a certificate for pay from another CA
    (sign(forged(), *identity("pay", OTHER_CA)), "bad-certificate"),
    # pay's claim replayed into another cluster
    (sign(replace(forged(), cluster="dev"), *PAY), "foreign-cluster"),
])
def test_a_forged_claim_about_another_nodes_service_is_refused_and_counted(claim: Claim, reason: str) -> None:
    c, c_catalog = held_pay()
    c.on_event(UserMessage("x", "catalog:b:pay", encode_claims([claim])))
    c.on_event(RemoteState(encode_claims([claim]), False))
    assert [(i.name, i.status) for i in c_catalog.snapshot().instances] == [("pay", HealthStatus.HEALTHY)]
    assert c.refused == {reason: 2}   # refused each time it comes; the held claim is never replaced


def ca_flagged(service: str) -> tuple[bytes, SigningKey]:
    """A certificate from our CA naming ``service`` that says it is a CA itself (not a leaf)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    key = certs.new_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, service)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(CA.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=5)).not_valid_after(NOW + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{TD}/service/{service}")]), critical=False)
            .sign(CA.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER), signing_key(key)


def test_a_ca_certificate_is_no_identity_for_a_claim() -> None:
    with pytest.raises(ClaimRefused, match=r"bad-certificate: .*CA certificate"):
        verifier().check(sign(forged(), *ca_flagged("pay")))


def test_a_claim_without_its_certificate_verifies_once_the_certificate_is_known() -> None:
    check = verifier()
    claim = sign(forged(), *PAY)
    bare = replace(claim, certificate=b"")
    with pytest.raises(ClaimRefused, match="unknown-certificate"):
        check.check(bare)
    check.check(claim)
    kept = check.check(replace(bare, version=bare.version))
    assert kept.certificate == PAY[0]   # attached again, so push-pull passes it on whole


def test_an_older_or_equal_claim_costs_no_signature_check() -> None:
    _, b_gossip, b_catalog = node("b", {"pay": PAY})
    register(b_catalog, "pay")
    c, _, _ = peer_of("b")
    sent = list(b_gossip.sent)
    deliver(b_gossip, c)
    verified = c.verifier.verified if c.verifier is not None else -1
    for _, data in sent:
        c.on_event(RemoteState(data, False))
    assert c.verifier is not None and c.verifier.verified == verified


def test_three_hundred_services_on_one_node_never_overflow_a_packet() -> None:
    services = {f"svc-{i:03d}": identity(f"svc-{i:03d}") for i in range(300)}
    b, b_gossip, b_catalog = node("b", services, SizedGossip())
    for i, name in enumerate(services):
        register(b_catalog, name, 1000 + i)
    assert len({key for key, _ in b_gossip.sent}) == 300 and b.left_to_push_pull == 0
    c, _, c_catalog = peer_of("b")
    c.on_event(RemoteState(b.local_state(), True))   # the join's push-pull: every claim with its certificate
    deliver(b_gossip, c)
    assert len({i.name for i in c_catalog.snapshot().instances}) == 300
    assert c.refused == {}


def test_a_claim_too_large_for_a_packet_goes_without_its_certificate_then_to_push_pull() -> None:
    b, b_gossip, b_catalog = node("b", {"pay": PAY}, SizedGossip(limit=500))
    register(b_catalog, "pay")
    assert [c.certificate for _, data in b_gossip.sent for c in decode_claims(data)] == [b""]
    for port in range(2, 80):
        register(b_catalog, "pay", port)
    assert b.left_to_push_pull > 0
    c, _, c_catalog = peer_of("b")
    c.on_event(RemoteState(b.local_state(), False))
    assert len(c_catalog.snapshot().instances) == 79
