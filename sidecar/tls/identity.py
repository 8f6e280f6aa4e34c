"""SPIFFE IDs and the identity a peer proves with its certificate.

A sidecar's certificate names its service as ``spiffe://TRUST_DOMAIN/service/NAME`` in its one URI SAN
(SPIFFE X.509-SVID: exactly one ``spiffe://`` URI). Everything here is pure: certificates in, values out,
the time passed in as epoch seconds.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sidecar.tls import reasons
from sidecar.tls.der import Certificate, DerError, parse_certificate
from sidecar.tls.errors import PeerRefused, SpiffeIdError

SCHEME = "spiffe://"
SERVICE_SEGMENT = "service"
# SPIFFE ID spec: the trust domain is lower-case letters, digits, '.', '-' and '_'; path segments add upper case
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_ID_BYTES = 2048


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if SPIFFE allows it, else raise :class:`SpiffeIdError` saying why."""
    if not trust_domain or not _TRUST_DOMAIN.match(trust_domain):
        raise SpiffeIdError(
            f"trust domain {trust_domain!r} is not valid: use lower-case letters, digits, '.', '_' and '-'"
            " (like mesh.local)"
        )
    return trust_domain


def validate_service_name(service: str) -> str:
    """Return ``service`` if it can be a SPIFFE path segment, else raise :class:`SpiffeIdError`."""
    if not service or not _SEGMENT.match(service) or service in (".", ".."):
        raise SpiffeIdError(
            f"service name {service!r} cannot be part of a SPIFFE ID: use letters, digits, '.', '_' and '-'"
        )
    return service


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """``spiffe://TRUST_DOMAIN/PATH``; a sidecar's is ``spiffe://TD/service/NAME``."""

    trust_domain: str
    path: str  # starts with '/', or is empty for the trust domain's own ID

    @classmethod
    def for_service(cls, trust_domain: str, service: str) -> SpiffeId:
        validate_trust_domain(trust_domain)
        validate_service_name(service)
        return cls(trust_domain, f"/{SERVICE_SEGMENT}/{service}")

    @classmethod
    def for_trust_domain(cls, trust_domain: str) -> SpiffeId:
        return cls(validate_trust_domain(trust_domain), "")

    @classmethod
    def from_text(cls, text: str) -> SpiffeId:
        if len(text.encode()) > _MAX_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID is longer than {_MAX_ID_BYTES} bytes")
        if not text.startswith(SCHEME):
            # the X.509-SVID spec: the scheme is lower case; "SPIFFE://" is refused, not folded
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: it must start with spiffe:// (lower case)")
        rest = text[len(SCHEME) :]
        if any(c in rest for c in "?#"):
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: no query or fragment is allowed")
        trust_domain, slash, path = rest.partition("/")
        if ":" in trust_domain or "@" in trust_domain:
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: the trust domain has no port or user")
        try:
            validate_trust_domain(trust_domain)
        except SpiffeIdError as exc:
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: {exc}") from None
        if not slash:
            return cls(trust_domain, "")
        for segment in path.split("/"):
            if not segment or segment in (".", "..") or not _SEGMENT.match(segment):
                raise SpiffeIdError(
                    f"{text!r} is not a SPIFFE ID: path segments are non-empty letters, digits, '.', '_', '-'"
                )
        return cls(trust_domain, "/" + path)

    def to_text(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    def __str__(self) -> str:
        return self.to_text()

    @property
    def service(self) -> str | None:
        """The NAME of ``/service/NAME``, or None for any other path."""
        parts = self.path.split("/")
        if len(parts) == 3 and parts[1] == SERVICE_SEGMENT:
            return parts[2]
        return None


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is at the other end of a verified connection."""

    spiffe_id: str
    service: str
    trust_domain: str
    not_after: dt.datetime  # UTC
    serial: int

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


# certificates read, by their DER: peers present few distinct certificates, and reading one in Python costs ~75 µs
# against a dictionary look-up; the key is the whole DER, so a hit is the same certificate (dates are checked per use)
_READ: dict[bytes, Certificate] = {}
MAX_READ = 1024


def load_der(der: bytes) -> Certificate:
    known = _READ.get(der)
    if known is not None:
        return known
    try:
        cert = parse_certificate(der)
    except DerError as exc:
        raise PeerRefused(reasons.unreadable_certificate(str(exc))) from None
    if len(_READ) >= MAX_READ:
        _READ.clear()
    _READ[der] = cert
    return cert


def spiffe_ids(cert: Certificate) -> list[str]:
    """Every ``spiffe://`` URI SAN of the certificate, in order."""
    return [uri for uri in cert.uris if uri.lower().startswith(SCHEME)]


def is_ca(cert: Certificate) -> bool:
    """Whether the certificate says it is a CA (basicConstraints cA=TRUE) or may sign certificates."""
    return cert.ca or cert.key_cert_sign


def identity_of(
    cert: Certificate, trust_domain: str, now: float, *, role: str = "peer", expected_service: str | None = None
) -> PeerIdentity:
    """The identity the certificate proves, or :class:`PeerRefused` with a reason a person can act on.

    The chain is checked elsewhere (by OpenSSL, against ``tls.ca``); this checks what OpenSSL does not know
    about: exactly one SPIFFE ID, of a service, in our trust domain, the expected one if one is expected,
    and the validity dates again (a resumed TLS session may outlive its certificate).
    """
    if is_ca(cert):
        # X.509-SVID: a leaf SVID must not be a CA; a CA certificate signed by the mesh CA (OpenSSL takes one as
        # an end entity) proves no workload
        raise PeerRefused(reasons.ca_as_leaf(role))
    ids = spiffe_ids(cert)
    if not ids:
        raise PeerRefused(reasons.no_spiffe_id(role))
    if len(ids) > 1:
        raise PeerRefused(reasons.several_spiffe_ids(role, ids))
    try:
        spiffe_id = SpiffeId.from_text(ids[0])
    except SpiffeIdError as exc:
        raise PeerRefused(reasons.bad_spiffe_id(role, str(exc))) from None
    if spiffe_id.trust_domain != trust_domain:
        raise PeerRefused(reasons.foreign_trust_domain(role, spiffe_id.to_text(), trust_domain))
    service = spiffe_id.service
    if service is None:
        raise PeerRefused(reasons.not_a_service(role, spiffe_id.to_text()))
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    if when > cert.not_valid_after_utc:
        raise PeerRefused(reasons.expired(role, cert.not_valid_after_utc))
    if when < cert.not_valid_before_utc:
        raise PeerRefused(reasons.not_yet_valid(role, cert.not_valid_before_utc))
    if expected_service is not None and service != expected_service:
        raise PeerRefused(reasons.wrong_service(role, spiffe_id.to_text(), expected_service))
    return PeerIdentity(spiffe_id.to_text(), service, trust_domain, cert.not_valid_after_utc, cert.serial_number)


def identity_of_der(
    der: bytes, trust_domain: str, now: float, *, role: str = "peer", expected_service: str | None = None
) -> PeerIdentity:
    return identity_of(load_der(der), trust_domain, now, role=role, expected_service=expected_service)
