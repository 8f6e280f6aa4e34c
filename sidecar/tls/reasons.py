"""Why a peer was refused, in words a person can act on. Pure: exceptions and bytes in, reasons out.

OpenSSL's own words ("tlsv13 alert certificate required", "certificate verify failed: unable to get local
issuer certificate") say what failed inside the library, not what the operator should fix. Each refusal
here has a kind (a short, stable label for counters and tests) and a message that names the fix:

    peer presented no certificate
    client certificate expired at 2026-05-01T12:00:00Z
    certificate not signed by the mesh CA (issuer CN=other CA, key id 3f2a9c01)
    protocol version TLSv1.1 refused (minimum TLSv1.2)
    plaintext HTTP on the mTLS port
    SPIFFE ID spiffe://other.org/service/x outside trust domain mesh.local
    no SPIFFE ID in the certificate

The certificate's dates and issuer are known only if the handshake's Certificate message was captured
(see ``context``: OpenSSL verifies before Python can look at the certificate); without it the reason says
what OpenSSL knew.
"""

from __future__ import annotations

import datetime as dt
import enum
import ssl
from dataclasses import dataclass

from sidecar.tls.der import Certificate, DerError, parse_certificate

MINIMUM_VERSION = "TLSv1.2"

_VERSION_NAMES = {0x0300: "SSLv3", 0x0301: "TLSv1.0", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")
_HTTP2_PREFACE = b"PRI * HTTP/2.0"
_TLS_HANDSHAKE_RECORD = 0x16


class Refusal(enum.Enum):
    """The kind of a refusal: a stable label for counters, logs and tests."""

    NO_CERTIFICATE = "no-certificate"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    UNKNOWN_CA = "unknown-ca"
    BAD_CERTIFICATE = "bad-certificate"
    PROTOCOL_VERSION = "protocol-version"
    PLAINTEXT_HTTP = "plaintext-http"
    PLAINTEXT = "plaintext"
    NO_SPIFFE_ID = "no-spiffe-id"
    FOREIGN_TRUST_DOMAIN = "foreign-trust-domain"
    WRONG_SERVICE = "wrong-service"
    NO_SHARED_CIPHER = "no-shared-cipher"
    REFUSED_BY_PEER = "refused-by-peer"
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    NO_CLIENT_HELLO = "no-client-hello"
    EVICTED = "evicted"
    PEER_CLOSED = "peer-closed"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class RefusalReason:
    kind: Refusal
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class HandshakeEvidence:
    """What was seen of a failed handshake besides the exception: the peer's leaf certificate (DER) and the
    highest protocol version its hello offered, when they could be captured."""

    peer_certificate: bytes | None = None
    offered_version: str | None = None
    # the service the client's SNI asked for when this sidecar holds no certificate for it
    unknown_service: str | None = None


NO_EVIDENCE = HandshakeEvidence()


# ------------------------------------------------------------------------------------------ the reasons


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def no_certificate() -> RefusalReason:
    return RefusalReason(Refusal.NO_CERTIFICATE, "peer presented no certificate")


def expired(role: str, not_after: dt.datetime | None) -> RefusalReason:
    if not_after is None:
        return RefusalReason(Refusal.EXPIRED, f"{role} certificate has expired; issue a new one")
    return RefusalReason(Refusal.EXPIRED, f"{role} certificate expired at {iso(not_after)}")


def not_yet_valid(role: str, not_before: dt.datetime | None) -> RefusalReason:
    when = f" until {iso(not_before)}" if not_before is not None else " yet"
    return RefusalReason(Refusal.NOT_YET_VALID, f"{role} certificate not valid{when}; check both hosts' clocks")


def unknown_ca(issuer: str | None, detail: str | None = None) -> RefusalReason:
    if issuer is not None:
        return RefusalReason(Refusal.UNKNOWN_CA, f"certificate not signed by the mesh CA (issuer {issuer})")
    said = f" ({detail})" if detail else ""
    return RefusalReason(Refusal.UNKNOWN_CA, f"certificate not signed by the mesh CA{said}")


def bad_certificate(role: str, detail: str) -> RefusalReason:
    return RefusalReason(Refusal.BAD_CERTIFICATE, f"{role} certificate refused: {detail}")


def unreadable_certificate(detail: str) -> RefusalReason:
    return RefusalReason(Refusal.BAD_CERTIFICATE, f"peer certificate could not be parsed: {detail}")


def protocol_version(offered: str | None) -> RefusalReason:
    name = offered or "older than TLSv1.2"
    return RefusalReason(Refusal.PROTOCOL_VERSION, f"protocol version {name} refused (minimum {MINIMUM_VERSION})")


def plaintext_http() -> RefusalReason:
    return RefusalReason(Refusal.PLAINTEXT_HTTP, "plaintext HTTP on the mTLS port")


def plaintext(first: bytes = b"") -> RefusalReason:
    shown = f" (first bytes {first[:8]!r})" if first else ""
    return RefusalReason(Refusal.PLAINTEXT, f"plaintext (not TLS) on the mTLS port{shown}")


def no_spiffe_id(role: str) -> RefusalReason:
    return RefusalReason(
        Refusal.NO_SPIFFE_ID,
        f"no SPIFFE ID in the certificate (the {role} needs a URI SAN spiffe://TRUST_DOMAIN/service/NAME)",
    )


def several_spiffe_ids(role: str, ids: list[str]) -> RefusalReason:
    return RefusalReason(
        Refusal.NO_SPIFFE_ID, f"{role} certificate has {len(ids)} SPIFFE IDs ({', '.join(ids)}); exactly one is allowed"
    )


def bad_spiffe_id(role: str, detail: str) -> RefusalReason:
    return RefusalReason(Refusal.NO_SPIFFE_ID, f"{role} certificate has a malformed SPIFFE ID: {detail}")


def ca_as_leaf(role: str) -> RefusalReason:
    return RefusalReason(
        Refusal.BAD_CERTIFICATE, f"{role} certificate is a CA certificate (basicConstraints cA=TRUE or keyCertSign);"
        " an X.509-SVID must be a leaf: issue one with `sidecar certs issue`")


def not_a_service(role: str, spiffe_id: str) -> RefusalReason:
    return RefusalReason(
        Refusal.NO_SPIFFE_ID, f"SPIFFE ID {spiffe_id} of the {role} names no service (expected .../service/NAME)"
    )


def foreign_trust_domain(role: str, spiffe_id: str, trust_domain: str) -> RefusalReason:
    return RefusalReason(Refusal.FOREIGN_TRUST_DOMAIN, f"SPIFFE ID {spiffe_id} outside trust domain {trust_domain}")


def wrong_service(role: str, spiffe_id: str, expected: str) -> RefusalReason:
    return RefusalReason(
        Refusal.WRONG_SERVICE, f"{role} is {spiffe_id}, not the service {expected} the connection was meant for"
    )


def unknown_service(service: str) -> RefusalReason:
    return RefusalReason(
        Refusal.WRONG_SERVICE, f"the client asked (by SNI) for service {service}, which this sidecar holds no"
        " certificate for (tls.cert, tls.identities)")


def timeout(seconds: float) -> RefusalReason:
    return RefusalReason(Refusal.HANDSHAKE_TIMEOUT, f"TLS handshake not finished within {seconds:g}s")


def peer_closed() -> RefusalReason:
    return RefusalReason(Refusal.PEER_CLOSED, "peer closed the connection during the TLS handshake")


# ------------------------------------------------------------------------------------------ classifying


# OpenSSL X509_V_ERR_* codes (x509_vfy.h) that mean "the chain does not lead to our CA"
_UNKNOWN_ISSUER_CODES = {2, 18, 19, 20, 21}
_X509_V_ERR_CERT_SIGNATURE_FAILURE = 7
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_X509_V_ERR_CERT_HAS_EXPIRED = 10
_X509_V_ERR_INVALID_PURPOSE = 26
_X509_V_ERR_PERMITTED_VIOLATION = 47

# OpenSSL reason codes (the ``reason`` attribute of ssl.SSLError), grouped by what they mean for a person
_NO_CERT_REASONS = {"PEER_DID_NOT_RETURN_A_CERTIFICATE"}
_VERSION_REASONS = {
    "UNSUPPORTED_PROTOCOL",
    "WRONG_SSL_VERSION",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "VERSION_TOO_LOW",
    "UNKNOWN_SSL_VERSION",
}
_HTTP_REASONS = {"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"}
_NOT_TLS_REASONS = {"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH"}
_CIPHER_REASONS = {"NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "NO_SUITABLE_SIGNATURE_ALGORITHM", "NO_SHARED_GROUPS"}
# alerts the other side sent: it refused us; say what it said
_PEER_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate and we sent none",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our CA (unknown CA): is its tls.ca the same ca.pem as ours?",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer refused our certificate (certificate unknown)",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the peer refused our certificate (unsupported certificate)",
    "TLSV1_ALERT_ACCESS_DENIED": "the peer denied access",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer aborted the handshake (handshake failure)",
    "TLSV1_ALERT_DECRYPT_ERROR": "the peer could not verify our handshake signature (decrypt error)",
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": "the peer wants stronger ciphers (insufficient security)",
}


def classify(
    exc: BaseException, evidence: HandshakeEvidence = NO_EVIDENCE, *, role: str = "peer", trust_domain: str = ""
) -> RefusalReason:
    """Turn a handshake failure into a reason. ``role`` names the other side: "client" or "server"."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _classify_verify(exc, evidence, role, trust_domain)
    if isinstance(exc, TimeoutError) or "handshake is taking longer" in str(exc):  # asyncio's and uvloop's words
        return RefusalReason(Refusal.HANDSHAKE_TIMEOUT, "TLS handshake timed out")
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError | EOFError):
        return peer_closed()
    if evidence.unknown_service is not None:
        return unknown_service(evidence.unknown_service)
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if reason in _NO_CERT_REASONS:
            return no_certificate()
        if reason in _VERSION_REASONS:
            return protocol_version(evidence.offered_version)
        if reason in _HTTP_REASONS:
            return plaintext_http()
        if reason in _NOT_TLS_REASONS:
            return plaintext()
        if reason in _CIPHER_REASONS:
            return RefusalReason(Refusal.NO_SHARED_CIPHER, f"no cipher suite or key group in common with the {role}")
        if reason in _PEER_ALERTS:
            return RefusalReason(Refusal.REFUSED_BY_PEER, _PEER_ALERTS[reason])
        if reason == "CERTIFICATE_VERIFY_FAILED":  # an SSLError, not the subclass: no code to go on
            return unknown_ca(None, _openssl_words(exc))
        return RefusalReason(Refusal.OTHER, f"TLS handshake failed: {_openssl_words(exc)}")
    return RefusalReason(Refusal.OTHER, f"TLS handshake failed: {type(exc).__name__}: {exc}")


def _classify_verify(
    exc: ssl.SSLCertVerificationError, evidence: HandshakeEvidence, role: str, trust_domain: str
) -> RefusalReason:
    cert = _parse(evidence.peer_certificate)
    code = exc.verify_code
    if code == _X509_V_ERR_PERMITTED_VIOLATION:  # our CA is constrained to spiffe://TRUST_DOMAIN
        uris = _spiffe_uris(cert) if cert else []
        if uris:
            return foreign_trust_domain(role, uris[0], trust_domain or "of the mesh CA")
        return RefusalReason(
            Refusal.FOREIGN_TRUST_DOMAIN, f"{role} certificate names something outside the mesh CA's trust domain"
        )
    if code == _X509_V_ERR_CERT_HAS_EXPIRED:
        return expired(role, cert.not_valid_after_utc if cert else None)
    if code == _X509_V_ERR_CERT_NOT_YET_VALID:
        return not_yet_valid(role, cert.not_valid_before_utc if cert else None)
    if code in _UNKNOWN_ISSUER_CODES or code == _X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return unknown_ca(describe_issuer(cert) if cert else None, exc.verify_message)
    if code == _X509_V_ERR_INVALID_PURPOSE:
        return bad_certificate(role, "not allowed for TLS client/server authentication (extended key usage)")
    return bad_certificate(role, exc.verify_message or _openssl_words(exc))


def describe_issuer(cert: Certificate) -> str:
    """``CN=other CA, key id 3f2a9c01``: the name, and the key id that tells apart two CAs of one name."""
    name = cert.issuer_common_name
    text = f"CN={name}" if name is not None else "a name without CN"
    if cert.authority_key_id:
        text += f", key id {cert.authority_key_id[:4].hex()}"
    return text


def _spiffe_uris(cert: Certificate) -> list[str]:
    return [uri for uri in cert.uris if uri.startswith("spiffe://")]


def _parse(der: bytes | None) -> Certificate | None:
    if not der:
        return None
    try:
        return parse_certificate(der)
    except DerError:
        return None


def _openssl_words(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc)


# ------------------------------------------------------------------------------------------ bytes


def first_bytes(data: bytes) -> RefusalReason | None:
    """What the first bytes of a connection say: None if they may start a TLS handshake."""
    if not data:
        return None
    if data[0] == _TLS_HANDSHAKE_RECORD:
        if len(data) >= 3 and data[1] == 3 and data[2] == 0:
            return protocol_version("SSLv3")
        return None
    if data.startswith(_HTTP_METHODS) or data.startswith(_HTTP2_PREFACE):
        return plaintext_http()
    if data[0] & 0x80 and len(data) >= 3 and data[2] == 1:  # an SSLv2-framed ClientHello
        return protocol_version("SSLv2")
    return plaintext(data)


def offered_version(client_hello: bytes) -> str | None:
    """The highest protocol version a ClientHello handshake message offers (with its 4-byte header), by name.

    TLS 1.3 clients say 1.2 in ``legacy_version`` and list real versions in the supported_versions extension.
    """
    if len(client_hello) < 6 or client_hello[0] != 1:
        return None
    legacy = int.from_bytes(client_hello[4:6], "big")
    best = legacy
    try:
        pos = 4 + 2 + 32
        pos += 1 + client_hello[pos]  # session id
        pos += 2 + int.from_bytes(client_hello[pos : pos + 2], "big")  # cipher suites
        pos += 1 + client_hello[pos]  # compression methods
        end = pos + 2 + int.from_bytes(client_hello[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, len(client_hello)):
            ext_type = int.from_bytes(client_hello[pos : pos + 2], "big")
            ext_len = int.from_bytes(client_hello[pos + 2 : pos + 4], "big")
            body = client_hello[pos + 4 : pos + 4 + ext_len]
            if ext_type == 43 and body:  # supported_versions: a length byte, then 2-byte versions
                versions = [int.from_bytes(body[i : i + 2], "big") for i in range(1, 1 + body[0], 2)]
                known = [v for v in versions if v in _VERSION_NAMES]  # GREASE values are not versions
                if known:
                    best = max(known)
            pos += 4 + ext_len
    except IndexError:
        pass
    return _VERSION_NAMES.get(best, f"0x{best:04x}")


def leaf_of_certificate_message(message: bytes, tls13: bool) -> bytes | None:
    """The first (leaf) certificate's DER in a Certificate handshake message (with its 4-byte header).

    TLS 1.3 adds a request context before the list and extensions after each entry; the leaf comes first in
    both versions.
    """
    if len(message) < 4 or message[0] != 11:
        return None
    pos = 4
    if tls13:
        if pos >= len(message):
            return None
        pos += 1 + message[pos]
    if pos + 3 > len(message):
        return None
    list_len = int.from_bytes(message[pos : pos + 3], "big")
    pos += 3
    if list_len == 0 or pos + 3 > len(message):
        return None
    cert_len = int.from_bytes(message[pos : pos + 3], "big")
    pos += 3
    der = message[pos : pos + cert_len]
    return der if len(der) == cert_len and cert_len > 0 else None
