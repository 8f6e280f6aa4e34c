"""Signatures of the running sidecar: a certificate issued by a CA, our key's claims, a peer's claims.

This is the one place the running process reaches ``cryptography`` for its public keys, and it imports it on the
first call, not at start: the library's Rust extension carries its own OpenSSL (about 7 MiB resident), which a
sidecar without ``tls`` never needs (its gossip encryption, ``gossip.encrypt_keys``, loads the AES-GCM part by
itself: :mod:`sidecar.gossip.keyring`). Certificates come in read by :mod:`sidecar.tls.der`; ``cryptography.x509``
and its serialization are left to the ``sidecar certs`` commands and to renewals signed by a local CA key
(:mod:`sidecar.tls.certs`).

Supported, as ``sidecar certs`` and the usual CAs make them: EC keys on P-256, P-384 and P-521, RSA and Ed25519 CA
keys, signatures ECDSA or RSA PKCS#1 v1.5 with SHA-256/384/512, and Ed25519. A certificate signed another way
(RSA-PSS, SHA-1) is refused as not signed by the CA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.tls.der import (
    OID_EC_PUBLIC_KEY,
    OID_ED25519,
    OID_RSA_ENCRYPTION,
    Certificate,
    EcPrivateKey,
    PublicKey,
    rsa_public_numbers,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# namedCurve OIDs (content bytes) and cryptography's names for them
_CURVES = {bytes.fromhex("2a8648ce3d030107"): "SECP256R1", bytes.fromhex("2b81040022"): "SECP384R1",
           bytes.fromhex("2b81040023"): "SECP521R1"}
# signatureAlgorithm OIDs: (key algorithm, hash)
_ALGORITHMS = {
    bytes.fromhex("2a8648ce3d040302"): (OID_EC_PUBLIC_KEY, "SHA256"),
    bytes.fromhex("2a8648ce3d040303"): (OID_EC_PUBLIC_KEY, "SHA384"),
    bytes.fromhex("2a8648ce3d040304"): (OID_EC_PUBLIC_KEY, "SHA512"),
    bytes.fromhex("2a864886f70d01010b"): (OID_RSA_ENCRYPTION, "SHA256"),
    bytes.fromhex("2a864886f70d01010c"): (OID_RSA_ENCRYPTION, "SHA384"),
    bytes.fromhex("2a864886f70d01010d"): (OID_RSA_ENCRYPTION, "SHA512"),
    OID_ED25519: (OID_ED25519, ""),
}


class UnusableKey(ValueError):
    """A key the sidecar cannot use; the message says why."""


def ec_public_key(key: PublicKey) -> ec.EllipticCurvePublicKey:
    """The EC public key of a certificate, or :class:`UnusableKey` for another kind or curve."""
    from cryptography.hazmat.primitives.asymmetric import ec

    curve = _CURVES.get(key.curve)
    if key.algorithm != OID_EC_PUBLIC_KEY or curve is None:
        raise UnusableKey("not an EC key on P-256, P-384 or P-521")
    return ec.EllipticCurvePublicKey.from_encoded_point(getattr(ec, curve)(), key.key)


def ec_private_key(key: EcPrivateKey) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    curve = _CURVES.get(key.curve)
    if curve is None:
        raise UnusableKey("not an EC key on P-256, P-384 or P-521")
    return ec.derive_private_key(key.value, getattr(ec, curve)())


def key_matches(certificate: Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether ``key`` is the private key of ``certificate``."""
    try:
        public = ec_public_key(certificate.public_key)
    except (UnusableKey, ValueError):
        return False
    return public.public_numbers() == key.public_key().public_numbers()


def signed_by(certificate: Certificate, ca: Certificate) -> bool:
    """Whether ``ca`` issued ``certificate``: its subject is the certificate's issuer, and its key verifies the
    certificate's signature (as ``cryptography``'s ``verify_directly_issued_by``; the chain of a peer's connection is
    verified by OpenSSL instead)."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    if certificate.issuer != ca.subject:
        return False
    algorithm = _ALGORITHMS.get(certificate.signature_algorithm)
    if algorithm is None or algorithm[0] != ca.public_key.algorithm:
        return False
    try:
        _verify(ca.public_key, algorithm[1], certificate.signature, certificate.tbs)
    except (InvalidSignature, UnsupportedAlgorithm, UnusableKey, ValueError, TypeError):
        return False
    return True


def _verify(key: PublicKey, hash_name: str, signature: bytes, data: bytes) -> None:
    from cryptography.hazmat.primitives import hashes

    if key.algorithm == OID_EC_PUBLIC_KEY:
        from cryptography.hazmat.primitives.asymmetric import ec

        ec_public_key(key).verify(signature, data, ec.ECDSA(getattr(hashes, hash_name)()))
    elif key.algorithm == OID_RSA_ENCRYPTION:
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        public: Any = rsa.RSAPublicNumbers(*rsa_public_numbers(key.key)).public_key()
        public.verify(signature, data, padding.PKCS1v15(), getattr(hashes, hash_name)())
    elif key.algorithm == OID_ED25519:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        ed25519.Ed25519PublicKey.from_public_bytes(key.key).verify(signature, data)
    else:
        raise UnusableKey("a CA key of an unsupported kind")


_ecdsa_sha256: ec.ECDSA | None = None


def _claims_algorithm() -> ec.ECDSA:
    """ECDSA with SHA-256, made once (the claims' signatures run per gossip update)."""
    global _ecdsa_sha256
    if _ecdsa_sha256 is None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        _ecdsa_sha256 = ec.ECDSA(hashes.SHA256())
    return _ecdsa_sha256


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA with SHA-256 by our key (a catalog claim's signature)."""
    return key.sign(data, _claims_algorithm())


def verify(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``key``'s ECDSA with SHA-256 over ``data``."""
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, data, _claims_algorithm())
    except InvalidSignature:
        return False
    return True
