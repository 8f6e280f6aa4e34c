"""SPIFFE IDs, peer identities and refusal reasons: pure functions, tables of cases."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest

from sidecar.tls import certs, reasons
from sidecar.tls.errors import PeerRefused, SpiffeIdError
from sidecar.tls.identity import SpiffeId, identity_of
from sidecar.tls.reasons import HandshakeEvidence, Refusal

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "trust_domain", "path", "service"),
    [
        ("spiffe://mesh.local/service/web", "mesh.local", "/service/web", "web"),
        ("spiffe://mesh.local", "mesh.local", "", None),
        ("spiffe://a_b-c.d/ns/x/sa/y", "a_b-c.d", "/ns/x/sa/y", None),
        ("spiffe://mesh.local/service/Web.v2", "mesh.local", "/service/Web.v2", "Web.v2"),
    ],
)
def test_spiffe_id_parses(text: str, trust_domain: str, path: str, service: str | None) -> None:
    sid = SpiffeId.from_text(text)
    assert (sid.trust_domain, sid.path, sid.service) == (trust_domain, path, service)
    assert SpiffeId.from_text(sid.to_text()) == sid


@pytest.mark.parametrize(
    "text",
    ["http://mesh.local/x", "SPIFFE://mesh.local/service/web", "Spiffe://mesh.local/service/web",
     "spiffe://", "spiffe://Mesh/x", "spiffe://m:8080/x", "spiffe://u@m/x", "spiffe://m/x/",
     "spiffe://m//x", "spiffe://m/./x", "spiffe://m/x?y", "spiffe://m/x#y", "spiffe://m/sp ace"],
)
def test_spiffe_id_rejects(text: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.from_text(text)


def test_for_service_round_trip() -> None:
    assert SpiffeId.for_service("mesh.local", "web").to_text() == "spiffe://mesh.local/service/web"
    with pytest.raises(SpiffeIdError):
        SpiffeId.for_service("mesh.local", "..")


@pytest.fixture(scope="module")
def ca() -> certs.CertificateAuthority:
    return certs.make_ca("mesh.local", now=NOW - dt.timedelta(days=1))


def test_identity_of_a_good_leaf(ca: certs.CertificateAuthority) -> None:
    leaf = certs.issue_from(ca, "web", now=NOW).certificate
    ident = identity_of(certs.parsed(leaf), "mesh.local", NOW.timestamp(), role="client")
    assert (ident.spiffe_id, ident.service) == ("spiffe://mesh.local/service/web", "web")
    assert ident.trust_domain == "mesh.local"
    assert ident.not_after == NOW + dt.timedelta(hours=24) and ident.serial == leaf.serial_number


@pytest.mark.parametrize(
    ("at", "expected", "kind", "message"),
    [
        (NOW + dt.timedelta(days=2), None, Refusal.EXPIRED, "client certificate expired at 2030-06-02T12:00:00Z"),
        (NOW - dt.timedelta(hours=1), None, Refusal.NOT_YET_VALID,
         "client certificate not valid until 2030-06-01T11:55:00Z"),
        (NOW, "api", Refusal.WRONG_SERVICE, "client is spiffe://mesh.local/service/web, not the service api"),
    ],
)
def test_identity_refusals(ca: certs.CertificateAuthority, at: dt.datetime, expected: str | None, kind: Refusal,
                           message: str) -> None:
    leaf = certs.issue_from(ca, "web", now=NOW).certificate
    with pytest.raises(PeerRefused) as caught:
        identity_of(certs.parsed(leaf), "mesh.local", at.timestamp(), role="client", expected_service=expected)
    assert caught.value.reason.kind is kind
    assert caught.value.reason.message.startswith(message)


def test_foreign_trust_domain_refused(ca: certs.CertificateAuthority) -> None:
    leaf = certs.issue_from(ca, "web", now=NOW).certificate
    with pytest.raises(PeerRefused) as caught:
        identity_of(certs.parsed(leaf), "other.org", NOW.timestamp())
    assert caught.value.reason.message == "SPIFFE ID spiffe://mesh.local/service/web outside trust domain other.org"


def test_a_ca_certificate_is_no_leaf(ca: certs.CertificateAuthority) -> None:
    # signed by our CA, naming a service, but cA=TRUE: OpenSSL takes it as an end entity, the X.509-SVID spec does not
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    key = certs.new_key()
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.certificate.subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(NOW - dt.timedelta(hours=1))
            .not_valid_after(NOW + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://mesh.local/service/web")]), critical=True)
            .sign(ca.key, hashes.SHA256()))
    with pytest.raises(PeerRefused) as caught:
        identity_of(certs.parsed(leaf), "mesh.local", NOW.timestamp(), role="client")
    assert caught.value.reason.kind is Refusal.BAD_CERTIFICATE
    assert "is a CA certificate" in caught.value.reason.message


def test_certificate_without_spiffe_id_refused(ca: certs.CertificateAuthority) -> None:
    # the CA's own certificate (spiffe://TD, no service path) is no workload: refused as a CA first
    with pytest.raises(PeerRefused) as caught:
        identity_of(certs.parsed(ca.certificate), "mesh.local", NOW.timestamp())
    assert caught.value.reason.kind is Refusal.BAD_CERTIFICATE


# ------------------------------------------------------------------------------------------ reasons


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    exc.verify_code, exc.verify_message, exc.reason = code, message, "CERTIFICATE_VERIFY_FAILED"
    return exc


def ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


def test_classify_with_evidence(ca: certs.CertificateAuthority) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    old = certs.issue_from(ca, "web", now=NOW).certificate
    der = old.public_bytes(Encoding.DER)
    expired = reasons.classify(verify_error(10, "certificate has expired"), HandshakeEvidence(der), role="client")
    assert expired.message == "client certificate expired at 2030-06-02T12:00:00Z"
    unknown = reasons.classify(verify_error(20, "unable to get local issuer certificate"), HandshakeEvidence(der))
    assert unknown.message.startswith("certificate not signed by the mesh CA (issuer CN=sidecar CA mesh.local, key id ")


@pytest.mark.parametrize(
    ("exc", "evidence", "kind", "message"),
    [
        (ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), None, Refusal.NO_CERTIFICATE, "peer presented no certificate"),
        (ssl_error("UNSUPPORTED_PROTOCOL"), "TLSv1.1", Refusal.PROTOCOL_VERSION,
         "protocol version TLSv1.1 refused (minimum TLSv1.2)"),
        (ssl_error("HTTP_REQUEST"), None, Refusal.PLAINTEXT_HTTP, "plaintext HTTP on the mTLS port"),
        (ssl_error("WRONG_VERSION_NUMBER"), None, Refusal.PLAINTEXT, "plaintext (not TLS) on the mTLS port"),
        (ssl_error("NO_SHARED_CIPHER"), None, Refusal.NO_SHARED_CIPHER, "no cipher suite or key group in common"),
        (ssl_error("TLSV1_ALERT_UNKNOWN_CA"), None, Refusal.REFUSED_BY_PEER, "the peer does not trust our CA"),
        (verify_error(10, "certificate has expired"), None, Refusal.EXPIRED, "client certificate has expired"),
        (verify_error(20, "unable to get local issuer certificate"), None, Refusal.UNKNOWN_CA,
         "certificate not signed by the mesh CA (unable to get local issuer certificate)"),
        (ssl.SSLEOFError(8, "EOF"), None, Refusal.PEER_CLOSED, "peer closed the connection during the TLS handshake"),
        (ConnectionAbortedError("SSL handshake is taking longer than 5 seconds"), None, Refusal.HANDSHAKE_TIMEOUT,
         "TLS handshake timed out"),
    ],
)
def test_classify_table(exc: BaseException, evidence: str | None, kind: Refusal, message: str) -> None:
    reason = reasons.classify(exc, HandshakeEvidence(offered_version=evidence), role="client")
    assert reason.kind is kind
    assert reason.message.startswith(message)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x16\x03\x01\x02\x00", None),
        (b"GET / HTTP/1.1\r\n", Refusal.PLAINTEXT_HTTP),
        (b"PRI * HTTP/2.0\r\n", Refusal.PLAINTEXT_HTTP),
        (b"\x16\x03\x00\x00\x10", Refusal.PROTOCOL_VERSION),
        (b"\x80\x2e\x01\x00\x02", Refusal.PROTOCOL_VERSION),
        (b"hello", Refusal.PLAINTEXT),
        (b"", None),
    ],
)
def test_first_bytes(data: bytes, kind: Refusal | None) -> None:
    reason = reasons.first_bytes(data)
    assert (reason.kind if reason else None) is kind


def client_hello(legacy: int, supported: list[int] | None) -> bytes:
    body = legacy.to_bytes(2, "big") + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    ext = b""
    if supported is not None:
        vs = b"".join(v.to_bytes(2, "big") for v in supported)
        ext = (43).to_bytes(2, "big") + (len(vs) + 1).to_bytes(2, "big") + bytes([len(vs)]) + vs
    body += len(ext).to_bytes(2, "big") + ext
    return b"\x01" + len(body).to_bytes(3, "big") + body


@pytest.mark.parametrize(
    ("hello", "name"),
    [
        (client_hello(0x0302, None), "TLSv1.1"),
        (client_hello(0x0301, None), "TLSv1.0"),
        (client_hello(0x0303, [0x0A0A, 0x0304, 0x0303]), "TLSv1.3"),
        (b"\x02\x00", None),
    ],
)
def test_offered_version(hello: bytes, name: str | None) -> None:
    assert reasons.offered_version(hello) == name


def test_leaf_of_certificate_message() -> None:
    der = b"\x30\x03\x02\x01\x01"
    entry = len(der).to_bytes(3, "big") + der
    tls12 = b"\x0b" + (3 + len(entry)).to_bytes(3, "big") + len(entry).to_bytes(3, "big") + entry
    assert reasons.leaf_of_certificate_message(tls12, tls13=False) == der
    entry13 = entry + b"\x00\x00"
    body = b"\x00" + len(entry13).to_bytes(3, "big") + entry13
    assert reasons.leaf_of_certificate_message(b"\x0b" + len(body).to_bytes(3, "big") + body, tls13=True) == der
    assert reasons.leaf_of_certificate_message(b"\x0b\x00\x00\x04\x00\x00\x00\x00", tls13=True) is None  # empty
