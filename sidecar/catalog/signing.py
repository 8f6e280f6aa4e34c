"""A node's catalog claims as its own signed statements, and their verification by peers.

Theory of operation
-------------------
Gossip is readable and writable by every holder of the gossip key, and it relays: who sent a packet says
nothing about who said what is in it. So a claim carries its own proof. A node signs its claim about service S
with the private key of its certificate for S (an X.509-SVID naming ``spiffe://TD/service/S``); a peer keeps
the claim only if

* the certificate (carried in the claim, or known from an earlier claim by its SHA-256 fingerprint) chains to
  ``tls.ca``, is a leaf (not a CA), is valid now, and its one SPIFFE ID is S's, in our trust domain;
* every instance in the claim is of S and on the claiming node, every subscription is S's (or the node's own
  stream subscription, which names S as the identity its deliveries require);
* the claim is of our cluster, and the signature (ECDSA P-256, SHA-256) verifies over :func:`signed_bytes`.

A signature by S's key proves possession of S's certificate; a certificate alone proves nothing (certificates
are public). So a member holding a certificate for X can make claims about X only: it cannot add, remove, or
change the health of anyone's instances of another service. Without any certificate, nothing it says is kept.

Cost: a certificate is checked once per fingerprint (cached); each new claim costs one signature to its node
and one verification to every peer, and claims are per (node, service), so one registration or health change
costs one of each whatever the node hosts. An unchanged claim (a push-pull repeating what a peer holds) is
recognised by its version and not verified again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sidecar.catalog.model import NODE_STREAM
from sidecar.catalog.sync import Claim, signed_bytes
from sidecar.tls import signatures
from sidecar.tls.der import Certificate, DerError, parse_certificate
from sidecar.tls.errors import PeerRefused
from sidecar.tls.identity import identity_of

if TYPE_CHECKING:
    from sidecar.tls.primitives import SigningKey, VerifyKey

MAX_CACHED_CERTIFICATES = 8192


def fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def sign(claim: Claim, certificate: bytes, key: SigningKey) -> Claim:
    """``claim`` with its proof: the certificate that names its service, its fingerprint, the signature."""
    bound = replace(claim, fingerprint=fingerprint(certificate), certificate=certificate, signature=b"")
    return replace(bound, signature=signatures.sign(key, signed_bytes(bound)))


@dataclass(frozen=True, slots=True)
class _Known:
    """A certificate that chained to the CA set of ``anchors`` when first seen."""

    der: bytes
    certificate: Certificate
    public_key: VerifyKey
    anchors: Sequence[Certificate]  # the CA set it was checked against: a new tls.ca checks it again
    service: str                    # the service its SPIFFE ID names
    not_before: float               # epoch seconds
    not_after: float


class ClaimRefused(ValueError):
    """Why a claim is not kept; ``reason`` is a short label for the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ClaimVerifier:
    """Checks claims against the CA and the trust domain; ``cas()`` is the current ``tls.ca`` (it may rotate),
    ``now()`` epoch seconds."""

    def __init__(self, trust_domain: str, cluster: str, cas: Callable[[], Sequence[Certificate]],
                 now: Callable[[], float]) -> None:
        self.trust_domain = trust_domain
        self.cluster = cluster
        self._cas = cas
        self._now = now
        self._known: dict[bytes, _Known] = {}
        self.verified = 0   # signatures verified

    def check(self, claim: Claim) -> Claim:
        """The claim with its certificate attached (so it can be passed on whole), or :class:`ClaimRefused`."""
        if claim.cluster != self.cluster:
            raise ClaimRefused("foreign-cluster", f"claim of cluster {claim.cluster!r}, ours is {self.cluster!r}")
        if not claim.signed:
            raise ClaimRefused("unsigned", f"{claim.node} sent an unsigned claim (it runs without tls)")
        known = self._certificate(claim)
        when = self._now()
        if not known.not_before <= when <= known.not_after:
            try:   # for the reason's words
                identity_of(known.certificate, self.trust_domain, when, role="claim")
            except PeerRefused as exc:
                raise ClaimRefused("bad-certificate", exc.reason.message) from None
        if known.service != claim.service:
            raise ClaimRefused("wrong-service", f"claim about {claim.service!r} signed as the service {known.service}")
        for instance in claim.instances:
            if instance.name != claim.service or instance.node not in ("", claim.node):
                raise ClaimRefused("foreign-entry", f"claim about {claim.service} lists {instance.name}"
                                                    f" on {instance.node or claim.node}")
        for subscription in claim.subscriptions:
            stream = subscription.service == NODE_STREAM and subscription.path == claim.service
            if subscription.service != claim.service and not stream:
                raise ClaimRefused("foreign-entry", f"claim about {claim.service} subscribes"
                                                    f" {subscription.service} {subscription.path}".rstrip())
        if not signatures.verify(known.public_key, claim.signature, signed_bytes(claim)):
            raise ClaimRefused("bad-signature", f"claim of {claim.node} about {claim.service}")
        self.verified += 1
        return claim if claim.certificate else replace(claim, certificate=known.der)

    def _certificate(self, claim: Claim) -> _Known:
        anchors = self._cas()
        known = self._known.get(claim.fingerprint)
        if known is not None and known.anchors is anchors:
            return known
        der = claim.certificate or (known.der if known is not None else b"")
        if not der:
            raise ClaimRefused("unknown-certificate", f"claim of {claim.node} about {claim.service} names a"
                                                      " certificate not seen yet (push-pull brings it)")
        if fingerprint(der) != claim.fingerprint:
            raise ClaimRefused("bad-certificate", "certificate does not match the claim's fingerprint")
        try:
            certificate = parse_certificate(der)
        except DerError as exc:
            raise ClaimRefused("bad-certificate", f"unreadable certificate: {exc}") from None
        try:
            public_key = signatures.ec_public_key(certificate.public_key)
        except ValueError:   # another kind of key or curve, or a point not on the curve
            raise ClaimRefused("bad-certificate", "not an EC certificate as sidecar issues") from None
        if not any(signatures.signed_by(certificate, ca) for ca in anchors):
            raise ClaimRefused("bad-certificate", f"certificate of {claim.node}'s claim about {claim.service} is"
                                                  " not signed by the mesh CA")
        try:   # the SVID rules (a leaf, one lower-case SPIFFE ID of our trust domain naming a service); dates apart
            identity = identity_of(certificate, self.trust_domain, certificate.not_valid_before_utc.timestamp(),
                                   role="claim")
        except PeerRefused as exc:
            raise ClaimRefused("bad-certificate", exc.reason.message) from None
        if len(self._known) >= MAX_CACHED_CERTIFICATES:
            self._known.clear()
        known = self._known[claim.fingerprint] = _Known(
            der, certificate, public_key, anchors, identity.service, certificate.not_valid_before_utc.timestamp(),
            certificate.not_valid_after_utc.timestamp())
        return known

