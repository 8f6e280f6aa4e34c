"""The ``cryptography`` package behind :mod:`sidecar.tls.primitives`' interface, where the ``ssl`` module's libcrypto
cannot be opened (see :mod:`sidecar.tls.libcrypto`). Imported only then: it loads the package's own OpenSSL."""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.tls.libcrypto import GCM_NONCE_SIZE, GCM_TAG_SIZE, InvalidTag, KeyFormatError

_HASHES: dict[str | None, Any] = {"SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}


def _kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ec"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    return "other"


def _hash(kind: str, hash_name: str | None) -> Any:
    if (hash_name is None) != (kind == "ed25519"):
        raise ValueError(f"a {kind} key does not sign with {hash_name or 'no hash'}")
    if hash_name is not None and hash_name not in _HASHES:
        raise ValueError(f"unsupported hash {hash_name}")
    return _HASHES[hash_name]() if hash_name is not None else None


class CryptographyAead:
    """``AESGCM`` with the binding's checks and its :class:`InvalidTag`."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError(f"an AES key is 16, 24 or 32 bytes (got {len(key)})")
        self._aead = AESGCM(bytes(key))

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if len(nonce) != GCM_NONCE_SIZE:
            raise ValueError(f"the nonce is {GCM_NONCE_SIZE} bytes (got {len(nonce)})")
        return self._aead.encrypt(nonce, data, associated_data)

    def decrypt(self, nonce: bytes, sealed: bytes, associated_data: bytes | None) -> bytes:
        if len(nonce) != GCM_NONCE_SIZE:
            raise ValueError(f"the nonce is {GCM_NONCE_SIZE} bytes (got {len(nonce)})")
        if len(sealed) < GCM_TAG_SIZE:
            raise InvalidTag("shorter than a tag")
        try:
            return self._aead.decrypt(nonce, sealed, associated_data)
        except Exception as exc:   # cryptography's InvalidTag
            raise InvalidTag("the tag does not authenticate the data") from exc


class CryptographyPublicKey:
    __slots__ = ("_key", "kind")

    def __init__(self, der: bytes) -> None:
        try:
            self._key: Any = serialization.load_der_public_key(bytes(der))
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFormatError("not a SubjectPublicKeyInfo cryptography reads") from None
        self.kind = _kind(self._key)

    def verify(self, signature: bytes, data: bytes, hash_name: str | None) -> bool:
        algorithm = _hash(self.kind, hash_name)
        try:
            if self.kind == "ec":
                self._key.verify(signature, data, ec.ECDSA(algorithm))
            elif self.kind == "rsa":
                self._key.verify(signature, data, padding.PKCS1v15(), algorithm)
            elif self.kind == "ed25519":
                self._key.verify(signature, data)
            else:
                raise ValueError(f"cannot verify with a {self.kind} key")
        except InvalidSignature:
            return False
        return True


class CryptographyPrivateKey:
    __slots__ = ("_key", "kind")

    def __init__(self, der: bytes) -> None:
        try:
            self._key: Any = serialization.load_der_private_key(bytes(der), None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyFormatError("not an unencrypted private key cryptography reads") from None
        self.kind = _kind(self._key)

    def __repr__(self) -> str:  # never show the key
        return f"CryptographyPrivateKey({self.kind})"

    def sign(self, data: bytes, hash_name: str | None) -> bytes:
        algorithm = _hash(self.kind, hash_name)
        if self.kind == "ec":
            return bytes(self._key.sign(data, ec.ECDSA(algorithm)))
        if self.kind == "rsa":
            return bytes(self._key.sign(data, padding.PKCS1v15(), algorithm))
        if self.kind == "ed25519":
            return bytes(self._key.sign(data))
        raise ValueError(f"cannot sign with a {self.kind} key")
