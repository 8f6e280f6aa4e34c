"""The DER reader of the running sidecar (sidecar.tls.der) and its signature checks (sidecar.tls.signatures), against
certificates made by ``cryptography`` (``sidecar certs``) and by the ``openssl`` command, and against hand-built
ones that break a rule."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.tls import certs, der, signatures
from sidecar.tls.der import DerError, parse_certificate
from tests.unit.tls.pki import tlv

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
CA = certs.make_ca("mesh.local", now=NOW - dt.timedelta(days=1))
ISSUED = certs.issue_from(CA, "web", 3600, dns_names=["web.internal"], ip_addresses=["127.0.0.1", "::1"], now=NOW)
LEAF_DER = ISSUED.certificate.public_bytes(serialization.Encoding.DER)


def extension(oid: bytes, value: bytes, critical: bool = False) -> bytes:
    return tlv(0x30, tlv(0x06, oid) + (tlv(0x01, b"\xff") if critical else b"") + tlv(0x04, value))


def uri_san(*uris: str) -> bytes:
    return extension(der.OID_SUBJECT_ALT_NAME, tlv(0x30, b"".join(tlv(0x86, u.encode("utf-8")) for u in uris)))


def hand_built(extensions: list[bytes], version: int = 2) -> bytes:
    """A leaf signed by CA (ECDSA SHA-256) with these extensions, built element by element."""
    ca = certs.parsed(CA.certificate)
    algorithm = tlv(0x30, tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
    spki = ISSUED.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    validity = tlv(0x30, tlv(0x17, b"300601110000Z") + tlv(0x17, b"300601130000Z"))
    fields = (tlv(0xA0, tlv(0x02, bytes((version,)))) if version else b"") + tlv(0x02, b"\x2a") + algorithm
    fields += ca.subject + validity + tlv(0x30, b"") + spki
    if extensions:
        fields += tlv(0xA3, tlv(0x30, b"".join(extensions)))
    tbs = tlv(0x30, fields)
    signature = CA.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return tlv(0x30, tbs + algorithm + tlv(0x03, b"\x00" + signature))


def test_a_leaf_reads_as_cryptography_reads_it() -> None:
    ours, theirs = parse_certificate(LEAF_DER), ISSUED.certificate
    san = theirs.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ours.uris == tuple(san.get_values_for_type(x509.UniformResourceIdentifier)) \
        == ("spiffe://mesh.local/service/web",)
    assert ours.dns_names == ("web.internal",) and ours.ip_addresses == ("127.0.0.1", "::1")
    assert ours.serial_number == theirs.serial_number
    assert (ours.not_valid_before_utc, ours.not_valid_after_utc) == (theirs.not_valid_before_utc,
                                                                     theirs.not_valid_after_utc)
    assert not ours.ca and not ours.key_cert_sign
    aki = theirs.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert ours.authority_key_id == aki.key_identifier
    assert ours.issuer_common_name == "sidecar CA mesh.local"
    assert ours.issuer == certs.parsed(CA.certificate).subject
    assert ours.tbs == theirs.tbs_certificate_bytes and ours.signature == theirs.signature


def test_the_ca_reads_as_a_ca_and_signs_the_leaf() -> None:
    ca, leaf = certs.parsed(CA.certificate), parse_certificate(LEAF_DER)
    assert ca.ca and ca.key_cert_sign and ca.uris == ("spiffe://mesh.local",)
    assert signatures.signed_by(leaf, ca)
    assert signatures.signed_by(ca, ca)          # self-signed
    assert not signatures.signed_by(ca, leaf)    # the leaf's subject is not the CA's issuer


def test_a_ca_of_the_same_name_with_another_key_signs_nothing_of_ours() -> None:
    impostor = certs.parsed(certs.make_ca("mesh.local", now=NOW - dt.timedelta(days=1)).certificate)
    leaf = parse_certificate(LEAF_DER)
    assert impostor.subject == certs.parsed(CA.certificate).subject
    assert not signatures.signed_by(leaf, impostor)


def test_a_changed_byte_of_the_signed_part_breaks_the_signature() -> None:
    leaf = parse_certificate(LEAF_DER)
    at = LEAF_DER.index(leaf.tbs) + len(leaf.tbs) - 5   # inside the extensions, still readable
    tampered = parse_certificate(LEAF_DER[:at] + bytes((LEAF_DER[at] ^ 1,)) + LEAF_DER[at + 1 :])
    assert not signatures.signed_by(tampered, certs.parsed(CA.certificate))


def test_a_hand_built_leaf_is_read_and_verified() -> None:
    leaf = parse_certificate(hand_built([uri_san("spiffe://mesh.local/service/web")]))
    assert leaf.uris == ("spiffe://mesh.local/service/web",) and leaf.serial_number == 42
    assert signatures.signed_by(leaf, certs.parsed(CA.certificate))


@pytest.mark.parametrize(("extensions", "ca", "key_cert_sign"), [
    ([extension(der.OID_BASIC_CONSTRAINTS, tlv(0x30, tlv(0x01, b"\xff")), critical=True)], True, False),
    ([extension(der.OID_BASIC_CONSTRAINTS, tlv(0x30, b""))], False, False),
    ([extension(der.OID_KEY_USAGE, tlv(0x03, b"\x01\x06"))], False, True),     # keyCertSign, cRLSign
    ([extension(der.OID_KEY_USAGE, tlv(0x03, b"\x07\x80"))], False, False),    # digitalSignature only
])
def test_ca_markers(extensions: list[bytes], ca: bool, key_cert_sign: bool) -> None:
    leaf = parse_certificate(hand_built(extensions))
    assert (leaf.ca, leaf.key_cert_sign) == (ca, key_cert_sign)


@pytest.mark.parametrize(("broken", "message"), [
    (lambda d: d[:-1], "past its container"),
    (lambda d: d + b"\x00", "after the certificate"),
    (lambda d: b"\x30\x81" + d[1:2] + d[2:] if d[1] < 0x80 else b"\x30\x83\x00" + d[2:], "shortest form"),
    (lambda d: b"\x30\x80" + d[4:], "indefinite"),
    (lambda d: b"", "truncated"),
])
def test_malformed_encodings_are_refused(broken: object, message: str) -> None:
    with pytest.raises(DerError, match=message):
        parse_certificate(broken(LEAF_DER))  # type: ignore[operator]


@pytest.mark.parametrize(("built", "message"), [
    (lambda: hand_built([uri_san("spiffe://a/service/x"), uri_san("spiffe://b/service/y")]), "appears twice"),
    (lambda: hand_built([uri_san("spiffe://mesh.local/service/wéb")]), "not ASCII"),
    (lambda: hand_built([uri_san("spiffe://mesh.local/service/web")], version=0), "not version 3"),
    (lambda: hand_built([extension(der.OID_BASIC_CONSTRAINTS, tlv(0x30, tlv(0x01, b"\x01")))]), "BOOLEAN"),
])
def test_certificates_breaking_rfc_5280_are_refused(built: object, message: str) -> None:
    with pytest.raises(DerError, match=message):
        parse_certificate(built())  # type: ignore[operator]


def test_random_corruption_gives_a_der_error_or_a_certificate_never_another_exception() -> None:
    rng = random.Random(21)
    for _ in range(3000):
        data = bytearray(LEAF_DER)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(DerError):
            parse_certificate(bytes(data))


def test_pem_files_certificates_and_keys(tmp_path: Path) -> None:
    pem = ISSUED.cert_pem + b"junk between blocks\n" + CA.certificate.public_bytes(serialization.Encoding.PEM)
    assert [c.uris for c in der.pem_certificates(pem)] == [("spiffe://mesh.local/service/web",),
                                                             ("spiffe://mesh.local",)]
    with pytest.raises(DerError, match="no PEM certificate"):
        der.pem_certificates(ISSUED.key_pem)
    key = signatures.private_key(der.pem_ec_private_key(ISSUED.key_pem))
    assert signatures.key_matches(parse_certificate(LEAF_DER), key)
    assert not signatures.key_matches(certs.parsed(CA.certificate), key)
    encrypted = ISSUED.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(DerError, match="encrypted"):
        der.pem_ec_private_key(encrypted)
    sec1 = ISSUED.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY")
    assert der.pem_ec_private_key(sec1) == der.pem_ec_private_key(ISSUED.key_pem)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("key", ["rsa:2048", "ed25519"])
def test_certificates_made_by_openssl(tmp_path: Path, key: str) -> None:
    new_key = ["-newkey", key] if key.startswith("rsa") else ["-newkey", "ed25519"]
    subprocess.run(["openssl", "req", "-x509", *new_key, "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem"), "-subj", "/CN=other CA", "-days", "1",
                    "-addext", "subjectAltName=URI:spiffe://other.org/service/a,DNS:a.example,IP:10.0.0.1"],
                   check=True, capture_output=True)
    cert = der.pem_certificates((tmp_path / "c.pem").read_bytes())[0]
    assert cert.uris == ("spiffe://other.org/service/a",) and cert.dns_names == ("a.example",)
    assert cert.ip_addresses == ("10.0.0.1",) and cert.issuer_common_name == "other CA"
    assert cert.ca                                   # openssl req -x509 marks it a CA
    assert signatures.signed_by(cert, cert)
    assert not signatures.signed_by(parse_certificate(LEAF_DER), cert)
    with pytest.raises(DerError, match="not an EC private key" if key.startswith("rsa") else "EC"):
        der.pem_ec_private_key((tmp_path / "k.pem").read_bytes())


def test_a_certificate_read_once_is_checked_again_at_each_use() -> None:
    from sidecar.tls.errors import PeerRefused
    from sidecar.tls.identity import identity_of_der, load_der
    from sidecar.tls.reasons import Refusal

    assert load_der(bytes(LEAF_DER)) is load_der(bytes(LEAF_DER))    # read once, by its whole DER
    assert identity_of_der(LEAF_DER, "mesh.local", NOW.timestamp()).service == "web"
    with pytest.raises(PeerRefused) as caught:
        identity_of_der(LEAF_DER, "mesh.local", (NOW + dt.timedelta(hours=2)).timestamp())
    assert caught.value.reason.kind is Refusal.EXPIRED
    with pytest.raises(PeerRefused) as caught:
        identity_of_der(LEAF_DER, "other.org", NOW.timestamp())
    assert caught.value.reason.kind is Refusal.FOREIGN_TRUST_DOMAIN


def _as_cryptography_reads(cert: x509.Certificate) -> tuple[object, ...]:
    extensions = cert.extensions
    try:
        uris = tuple(extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                     .get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    try:
        ca = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    try:
        key_cert_sign = extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        key_cert_sign = False
    return uris, ca, key_cert_sign, cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc


def test_where_both_readers_read_a_corrupted_certificate_they_read_the_same_identity() -> None:
    # a differential test: what identity_of decides on (SPIFFE IDs, CA markers, serial, dates) never differs from
    # cryptography's reading of the same bytes; what only one of them refuses is counted, not compared
    rng = random.Random(7)
    compared = 0
    for _ in range(2000):
        data = bytearray(LEAF_DER)
        for _ in range(rng.randint(1, 2)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            ours = parse_certificate(bytes(data))
            with warnings.catch_warnings():   # a serial made negative: cryptography warns, and reads it as we do
                warnings.simplefilter("ignore")
                theirs = _as_cryptography_reads(x509.load_der_x509_certificate(bytes(data)))
        except ValueError:    # DerError, or cryptography's refusal
            continue
        compared += 1
        assert (ours.uris, ours.ca, ours.key_cert_sign, ours.serial_number, ours.not_valid_before_utc,
                ours.not_valid_after_utc) == theirs, bytes(data).hex()
    assert compared > 500
