"""Signatures of the running sidecar: a certificate issued by a CA, our key's claims, a peer's claims.

Keys and signatures go through :mod:`sidecar.tls.primitives`: the libcrypto the ``ssl`` module already maps, so a
running sidecar never loads ``cryptography`` (its Rust extension carries a second OpenSSL, about 9 MiB
resident once used). Certificates come in read by :mod:`sidecar.tls.der`, which keeps each one's
SubjectPublicKeyInfo for OpenSSL to load; ``cryptography`` builds certificates for the ``sidecar certs`` commands
and for renewals signed by a local CA key (:mod:`sidecar.tls.certs`).

Supported, as ``sidecar certs`` and the usual CAs make them: EC keys on P-256, P-384 and P-521, RSA and Ed25519 CA
keys, signatures ECDSA or RSA PKCS#1 v1.5 with SHA-256/384/512, and Ed25519. A certificate signed another way
(RSA-PSS, SHA-1) is refused as not signed by the CA. A node's own key (``tls.key``) is an EC key on one of those
curves, and its claims are ECDSA with SHA-256, DER-encoded.
"""

from __future__ import annotations

import functools
import os

from sidecar.tls import primitives
from sidecar.tls.der import (
    OID_EC_PUBLIC_KEY,
    OID_ED25519,
    OID_RSA_ENCRYPTION,
    Certificate,
    EcPrivateKey,
    PublicKey,
)
from sidecar.tls.primitives import KeyFormatError, SigningKey, VerifyKey

__all__ = ["SigningKey", "UnusableKey", "VerifyKey", "ec_public_key", "key_matches", "private_key", "public_key",
           "sign", "signed_by", "verify"]

# namedCurve OIDs (content bytes) of the curves accepted
_CURVES = {bytes.fromhex("2a8648ce3d030107"): "P-256", bytes.fromhex("2b81040022"): "P-384",
           bytes.fromhex("2b81040023"): "P-521"}
# the key kinds (primitives' names) of the SubjectPublicKeyInfo algorithms accepted
_KINDS = {OID_EC_PUBLIC_KEY: "ec", OID_RSA_ENCRYPTION: "rsa", OID_ED25519: "ed25519"}
# signatureAlgorithm OIDs: (key algorithm, hash; None for Ed25519)
_ALGORITHMS: dict[bytes, tuple[bytes, str | None]] = {
    bytes.fromhex("2a8648ce3d040302"): (OID_EC_PUBLIC_KEY, "SHA256"),
    bytes.fromhex("2a8648ce3d040303"): (OID_EC_PUBLIC_KEY, "SHA384"),
    bytes.fromhex("2a8648ce3d040304"): (OID_EC_PUBLIC_KEY, "SHA512"),
    bytes.fromhex("2a864886f70d01010b"): (OID_RSA_ENCRYPTION, "SHA256"),
    bytes.fromhex("2a864886f70d01010c"): (OID_RSA_ENCRYPTION, "SHA384"),
    bytes.fromhex("2a864886f70d01010d"): (OID_RSA_ENCRYPTION, "SHA512"),
    OID_ED25519: (OID_ED25519, None),
}
CLAIMS_HASH = "SHA256"   # a catalog claim's signature: ECDSA with SHA-256


class UnusableKey(ValueError):
    """A key the sidecar cannot use; the message says why."""


def public_key(key: PublicKey) -> VerifyKey:
    """A certificate's public key, loaded: EC on P-256/384/521, RSA or Ed25519, else :class:`UnusableKey`."""
    kind = _KINDS.get(key.algorithm)
    if kind is None or (kind == "ec" and key.curve not in _CURVES) or not key.info:
        raise UnusableKey("not an EC key on P-256, P-384 or P-521, an RSA key or an Ed25519 key")
    try:
        loaded = _load_public(key.info)
    except KeyFormatError as exc:   # a point off its curve, an RSA key that is not one
        raise UnusableKey(f"the public key cannot be loaded: {exc}") from None
    if loaded.kind != kind:
        raise UnusableKey(f"a {loaded.kind} key under the {kind} algorithm")
    return loaded


@functools.lru_cache(maxsize=64)
def _load_public(info: bytes) -> VerifyKey:
    """Keys read by OpenSSL 3's decoders cost ~0.1 ms each: a CA's key, which checks every new certificate, is
    read once (a loaded key is only read from afterwards, by any thread)."""
    return primitives.verify_key(info)


def ec_public_key(key: PublicKey) -> VerifyKey:
    """The EC public key of a certificate (what signs claims), or :class:`UnusableKey` for another kind or curve."""
    if key.algorithm != OID_EC_PUBLIC_KEY:
        raise UnusableKey("not an EC key on P-256, P-384 or P-521")
    return public_key(key)


def private_key(key: EcPrivateKey) -> SigningKey:
    """Our EC private key (as :func:`sidecar.tls.der.pem_ec_private_key` read it), loaded for signing."""
    if key.curve not in _CURVES or not key.der:
        raise UnusableKey("not an EC key on P-256, P-384 or P-521")
    try:
        loaded = primitives.signing_key(key.der)
    except KeyFormatError as exc:   # a scalar OpenSSL refuses
        raise UnusableKey(f"the private key cannot be loaded: {exc}") from None
    if loaded.kind != "ec":
        raise UnusableKey(f"a {loaded.kind} key, not an EC key")
    return loaded


def key_matches(certificate: Certificate, key: SigningKey) -> bool:
    """Whether ``key`` is the private key of ``certificate``: a signature by it verifies under the certificate's
    key (whatever the encodings of the two: a compressed point, SEC1 or PKCS#8)."""
    try:
        public = ec_public_key(certificate.public_key)
        challenge = os.urandom(32)
        return public.verify(key.sign(challenge, CLAIMS_HASH), challenge, CLAIMS_HASH)
    except ValueError:
        return False


def signed_by(certificate: Certificate, ca: Certificate) -> bool:
    """Whether ``ca`` issued ``certificate``: its subject is the certificate's issuer, and its key verifies the
    certificate's signature (as ``cryptography``'s ``verify_directly_issued_by``; the chain of a peer's connection is
    verified by OpenSSL instead)."""
    if certificate.issuer != ca.subject:
        return False
    algorithm = _ALGORITHMS.get(certificate.signature_algorithm)
    if algorithm is None or algorithm[0] != ca.public_key.algorithm:
        return False
    try:
        return public_key(ca.public_key).verify(certificate.signature, certificate.tbs, algorithm[1])
    except ValueError:
        return False


def sign(key: SigningKey, data: bytes) -> bytes:
    """ECDSA with SHA-256 by our key (a catalog claim's signature), DER-encoded."""
    return key.sign(data, CLAIMS_HASH)


def verify(key: VerifyKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``key``'s ECDSA with SHA-256 over ``data``."""
    try:
        return key.verify(signature, data, CLAIMS_HASH)
    except ValueError:
        return False
