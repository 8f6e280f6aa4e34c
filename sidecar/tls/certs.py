"""A small certificate authority for the mesh: one CA, and one leaf per service naming it by SPIFFE ID.

Layout of a certificate directory (``sidecar certs init/issue``)::

    ca.pem             the CA certificate: the trust anchor every sidecar loads as ``tls.ca``
    ca-key.pem         the CA's private key (0600): keep it off the nodes if you can
    SERVICE.pem        the leaf certificate only; the peer verifies it against its own ca.pem
    SERVICE-key.pem    the leaf's private key (0600)

Keys are EC P-256 (fast handshakes, small certificates). The CA is constrained to the trust domain: its
name constraints permit only ``spiffe://TRUST_DOMAIN`` URIs (RFC 5280 URI constraints match the host, which
for a SPIFFE ID is the trust domain), so even a misused CA key cannot mint IDs of another trust domain that
a strict verifier would accept. Leaves carry exactly one URI SAN, ``spiffe://TD/service/NAME``, both
serverAuth and clientAuth (every sidecar is both), and start a few minutes in the past so that a peer whose
clock is slightly behind does not see a "not yet valid" certificate.

Files are written atomically (a temporary file in the same directory, then ``os.replace``), keys with mode
0600 from the start, so a reader never sees half a file and a key is never readable by others, not even
briefly. Private key material is never logged or printed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.config.values import Duration
from sidecar.tls import der
from sidecar.tls.errors import CertificateError, SpiffeIdError, read_tls_file
from sidecar.tls.identity import SpiffeId, spiffe_ids, validate_service_name, validate_trust_domain

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
# a CA outlives many leaves; ten years, like `step ca init`'s root
DEFAULT_CA_TTL = Duration(10 * 365 * 24 * 3600)
# leaves are short-lived and rotated; a day (`sidecar certs issue --ttl 24h`), as SPEC's command line says
DEFAULT_LEAF_TTL = Duration(24 * 3600)
# not-before is set this far in the past: peers' clocks may lag ours by a few minutes
CLOCK_SKEW = dt.timedelta(minutes=5)
_KEY_MODE = 0o600
# a directory made here holds private keys: its owner's only, whatever the umask (as ~/.ssh), so no one else
# can list it or replace a certificate in it; an existing directory is left as its owner set it
_DIR_MODE = 0o700
_CERT_MODE = 0o644


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """The CA in memory: enough to issue leaves without touching the disk (automatic renewal)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """Read ``ca.pem`` and ``ca-key.pem`` from ``directory``."""
        folder = Path(directory)
        return cls.from_files(folder / CA_CERT_FILE, folder / CA_KEY_FILE)

    @classmethod
    def from_files(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> CertificateAuthority:
        """The CA whose key is in ``key_path``; ``cert_path`` may be a bundle (old and new CA during a CA
        rotation): the certificate that matches the key is taken."""
        key = load_private_key(key_path)
        certificate = next((c for c in load_certificates(cert_path) if key_matches(c, key)), None)
        if certificate is None:
            raise CertificateError(f"{key_path} is not the key of {cert_path}: the two files belong to different CAs")
        return cls(certificate, key, trust_domain_of_ca(certificate, cert_path))


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A freshly issued leaf and its key, in memory and as PEM."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    spiffe_id: str

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def __repr__(self) -> str:  # never show the key
        return f"IssuedCertificate(spiffe_id={self.spiffe_id!r}, serial={self.certificate.serial_number:x})"


# ------------------------------------------------------------------------------------------- reading


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first certificate of a PEM file, or :class:`CertificateError` naming the file."""
    return load_certificates(path)[0]


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate of a PEM file (at least one), or :class:`CertificateError` naming the file."""
    data = read_tls_file(path, "certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path} holds no PEM certificate (expected '-----BEGIN CERTIFICATE-----')") from None


def load_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    data = read_tls_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # the library's message may quote key bytes; say only what the person needs
        raise CertificateError(f"{path} holds no unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path} holds a {type(key).__name__.lstrip('_')}, not an EC key as sidecar writes")
    return key


def key_matches(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether ``key`` is the private half of the certificate's public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def parsed(certificate: x509.Certificate) -> der.Certificate:
    """The certificate as the running sidecar reads it (:mod:`sidecar.tls.der`)."""
    return der.parse_certificate(certificate.public_bytes(serialization.Encoding.DER))


def trust_domain_of_ca(certificate: x509.Certificate, where: object = "the CA certificate") -> str:
    """The trust domain a CA serves, from its ``spiffe://TD`` URI SAN."""
    for uri in spiffe_ids(parsed(certificate)):
        try:
            return SpiffeId.from_text(uri).trust_domain
        except SpiffeIdError:
            continue
    raise CertificateError(
        f"{where} names no SPIFFE trust domain (no spiffe://TD URI SAN); was it made by `sidecar certs init`?"
    )


# ------------------------------------------------------------------------------------------- making


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    trust_domain: str, ttl: float = DEFAULT_CA_TTL, *, now: dt.datetime | None = None, constrained: bool = True
) -> CertificateAuthority:
    """A new CA for ``trust_domain``, in memory; ``constrained`` adds the name constraint (see the module)."""
    try:
        validate_trust_domain(trust_domain)
    except SpiffeIdError as exc:
        raise CertificateError(str(exc)) from None
    if ttl <= 0:
        raise CertificateError("the CA's ttl must be greater than 0")
    start = _utc(now)
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sidecar mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"sidecar CA {trust_domain}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + dt.timedelta(seconds=float(ttl)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SpiffeId.for_trust_domain(trust_domain).to_text())]),
            critical=False,
        )
    )
    if constrained:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)], excluded_subtrees=None
            ),
            critical=True,
        )
    return CertificateAuthority(builder.sign(key, hashes.SHA256()), key, trust_domain)


def issue_from(
    ca: CertificateAuthority,
    service: str,
    ttl: float = DEFAULT_LEAF_TTL,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    now: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> IssuedCertificate:
    """Issue a leaf for ``service`` from an in-memory CA.

    ``not_before`` overrides the start (tests use it to make certificates that are already expired);
    ``key`` reuses an existing key (renewal without re-keying); both are rarely needed.
    """
    try:
        validate_service_name(service)
    except SpiffeIdError as exc:
        raise CertificateError(str(exc)) from None
    if ttl <= 0:
        raise CertificateError("the certificate's ttl must be greater than 0")
    start = _utc(now)
    valid_from = _utc(not_before) if not_before is not None else start - CLOCK_SKEW
    valid_until = (not_before if not_before is not None else start) + dt.timedelta(seconds=float(ttl))
    if not_before is None and valid_until > ca.certificate.not_valid_after_utc:
        raise CertificateError(
            f"ttl {Duration(ttl).to_text()} runs past the CA's expiry at {iso_utc(ca.certificate.not_valid_after_utc)};"
            " choose a shorter --ttl or make a new CA"
        )
    spiffe_id = SpiffeId.for_service(ca.trust_domain, service).to_text()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names += [x509.DNSName(name) for name in dns_names]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    except ValueError as exc:
        raise CertificateError(f"bad IP address for the certificate: {exc}") from None
    leaf_key = key or new_key()
    try:
        ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:  # a CA made by another tool may carry no subject key identifier
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sidecar mesh"),
                    x509.NameAttribute(NameOID.COMMON_NAME, service),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(authority, critical=False)
        # SPIFFE X.509-SVID: the SAN is critical when the subject is empty; ours has a CN, so it need not be
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return IssuedCertificate(certificate, leaf_key, spiffe_id)


# ------------------------------------------------------------------------------------------- files


def init_ca(
    directory: str | os.PathLike[str],
    trust_domain: str,
    ttl: float | str = DEFAULT_CA_TTL,
    *,
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> CertPaths:
    """Make a CA and write ``ca.pem`` and ``ca-key.pem`` into ``directory`` (created if missing).

    An existing CA is never replaced unless ``overwrite``: every certificate of the mesh chains to it.
    """
    folder = Path(directory)
    paths = CertPaths(folder / CA_CERT_FILE, folder / CA_KEY_FILE)
    if not overwrite:
        for path in (paths.cert, paths.key):
            if path.exists():
                raise CertificateError(
                    f"{path} already exists; every certificate of the mesh chains to it, so it is not replaced."
                    " Remove it first or choose another directory"
                )
    ca = make_ca(trust_domain, ttl_seconds(ttl), now=now)
    _ensure_directory(folder)
    write_file(paths.key, _key_pem(ca.key), _KEY_MODE)
    write_file(paths.cert, ca.certificate.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    return paths


def issue(
    service: str,
    directory: str | os.PathLike[str],
    ttl: float | str = DEFAULT_LEAF_TTL,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    out_directory: str | os.PathLike[str] | None = None,
    now: dt.datetime | None = None,
) -> CertPaths:
    """Issue a leaf for ``service`` with the CA in ``directory``; write ``SERVICE.pem`` and ``SERVICE-key.pem``.

    The trust domain is the CA's. The files go to ``out_directory`` (default: the CA's directory) and replace
    earlier ones atomically, the key first: a sidecar watching them sees a mismatched pair for a moment and
    keeps its current identity until both are new (see ``reloader``).
    """
    ca = CertificateAuthority.load(directory)
    issued = issue_from(ca, service, ttl_seconds(ttl), dns_names=dns_names, ip_addresses=ip_addresses, now=now)
    return write_issued(issued, out_directory if out_directory is not None else directory, service)


def write_issued(issued: IssuedCertificate, directory: str | os.PathLike[str], name: str) -> CertPaths:
    folder = Path(directory)
    _ensure_directory(folder)
    paths = CertPaths(folder / f"{name}.pem", folder / f"{name}-key.pem")
    write_file(paths.key, issued.key_pem, _KEY_MODE)
    write_file(paths.cert, issued.cert_pem, _CERT_MODE)
    return paths


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically; the file has ``mode`` from its first byte."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates with 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _sync_directory(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CertificateError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync_directory(folder: Path) -> None:
    """Make a rename durable: after a crash the file is either the old one or the new one."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not every platform or filesystem lets a directory be opened; the rename itself is atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_directory(folder: Path) -> None:
    created = not folder.exists()
    try:
        folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        if created:
            os.chmod(folder, _DIR_MODE)  # mkdir's mode is masked by the umask; chmod's is not
    except OSError as exc:
        raise CertificateError(f"cannot create directory {folder}: {exc.strerror}") from None
    if not folder.is_dir():
        raise CertificateError(f"{folder} is not a directory")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ttl_seconds(ttl: float | str) -> float:
    """A certificate lifetime (``24h``, or seconds) as seconds; a CertificateError when it is not one."""
    try:
        value = float(Duration.from_text(ttl))
    except ValueError as exc:
        raise CertificateError(f"ttl {ttl!r}: {exc}") from None
    if value <= 0:
        raise CertificateError(f"ttl {ttl!r}: must be greater than 0")
    return value


def _utc(when: dt.datetime | None) -> dt.datetime:
    if when is None:
        return dt.datetime.now(dt.UTC)
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def iso_utc(when: dt.datetime) -> str:
    """``2026-11-27T05:08:59Z``: how certificate times are shown."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
