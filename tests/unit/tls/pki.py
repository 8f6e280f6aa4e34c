"""A throwaway PKI for the TLS tests: a mesh CA and leaves of every kind a test needs, good and bad."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from sidecar.tls import certs

DAY = 86400.0


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: ``tag``, the definite length, ``content``."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


@dataclass
class Pki:
    directory: Path
    ca: certs.CertificateAuthority

    @property
    def ca_path(self) -> Path:
        return self.directory / certs.CA_CERT_FILE

    def leaf(self, name: str, ttl: float = DAY, **kwargs: object) -> certs.CertPaths:
        issued = certs.issue_from(self.ca, name, ttl, **kwargs)  # type: ignore[arg-type]
        return certs.write_issued(issued, self.directory, name)

    def expired(self, name: str, days_ago: float = 2.0) -> certs.CertPaths:
        """A leaf whose validity ended ``days_ago - 1`` days ago."""
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
        return certs.write_issued(certs.issue_from(self.ca, name, DAY, not_before=start), self.directory, name)

    def without_spiffe_id(self, name: str) -> certs.CertPaths:
        """Signed by the mesh CA, but naming itself only by DNS: no URI SAN."""
        return self._signed(name, x509.DNSName(f"{name}.example"), "", ca=False)

    def custom(self, name: str, uri: str, *, ca: bool = False) -> certs.CertPaths:
        """Signed by the mesh CA with ``uri`` as its one URI SAN; ``ca`` makes it say it is a CA (cA=TRUE)."""
        return self._signed(name, x509.UniformResourceIdentifier(uri), uri, ca=ca)

    def _signed(self, name: str, san: x509.GeneralName, spiffe_id: str, *, ca: bool) -> certs.CertPaths:
        key = certs.new_key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(self.ca.key, hashes.SHA256())
        )
        return certs.write_issued(certs.IssuedCertificate(cert, key, spiffe_id), self.directory, name)

    def ca_as_leaf(self, name: str) -> certs.CertPaths:
        """A CA certificate (cA=TRUE) from the mesh CA naming spiffe://TD/service/NAME: no X.509-SVID."""
        return self.custom(name, f"spiffe://{self.ca.trust_domain}/service/{name}", ca=True)

    def upper_case_scheme(self, name: str) -> certs.CertPaths:
        """A leaf naming ``SPIFFE://TD/service/NAME``: the X.509-SVID spec wants the scheme in lower case."""
        return self.custom(name, f"SPIFFE://{self.ca.trust_domain}/service/{name}")

    def foreign_trust_domain(self, name: str, trust_domain: str = "other.example") -> certs.CertPaths:
        """Signed by this CA but naming spiffe://OTHER/service/NAME (a constrained CA's signature is void)."""
        rogue = certs.CertificateAuthority(self.ca.certificate, self.ca.key, trust_domain)
        return certs.write_issued(certs.issue_from(rogue, name, DAY), self.directory, name)


def make_pki(directory: Path, trust_domain: str = "mesh.local", *, constrained: bool = True) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    if constrained:
        certs.init_ca(directory, trust_domain)
        return Pki(directory, certs.CertificateAuthority.load(directory))
    ca = certs.make_ca(trust_domain, constrained=False)
    from cryptography.hazmat.primitives import serialization

    certs.write_file(directory / certs.CA_CERT_FILE, ca.certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    certs.write_file(directory / certs.CA_KEY_FILE, certs._key_pem(ca.key), 0o600)
    return Pki(directory, ca)
