"""The cryptography the running sidecar uses, from one place: AES-GCM, public and private keys, signatures, HKDF.

Two backends with one interface: the ``ssl`` module's own libcrypto through :mod:`sidecar.tls.libcrypto` (no
memory beyond what TLS already maps), and the ``cryptography`` package where that library cannot be opened (an
``_ssl`` with OpenSSL linked in statically, a platform without /proc and without a system libcrypto). Both speak
the same wire formats: a 12-byte nonce and the 16-byte tag after the ciphertext, ECDSA signatures as DER, so a node
on one backend and a node on the other read each other. ``sidecar certs`` and renewals by a local CA key build
certificates with ``cryptography`` (:mod:`sidecar.tls.certs`); nothing here is used for that.

HKDF (RFC 5869) is the standard library's HMAC: two lines of arithmetic, no backend.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sidecar.tls import libcrypto
from sidecar.tls.libcrypto import InvalidTag, KeyFormatError

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("sidecar.tls")

__all__ = ["Aead", "InvalidTag", "KeyFormatError", "SigningKey", "VerifyKey", "aes_gcm", "backend", "hkdf_sha256",
           "signing_key", "verify_key"]


class Aead(Protocol):
    """AES-GCM under one key; ``decrypt`` raises :class:`InvalidTag` for anything the key did not seal."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...
    def decrypt(self, nonce: bytes, sealed: bytes, associated_data: bytes | None) -> bytes: ...


class VerifyKey(Protocol):
    """A public key; ``kind`` is ``ec``, ``rsa``, ``ed25519`` or ``other``; ``hash_name`` SHA256/384/512, None
    for Ed25519."""

    kind: str

    def verify(self, signature: bytes, data: bytes, hash_name: str | None) -> bool: ...


class SigningKey(Protocol):
    kind: str

    def sign(self, data: bytes, hash_name: str | None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _Backend:
    name: str
    aes_gcm: Callable[[bytes], Aead]
    verify_key: Callable[[bytes], VerifyKey]
    signing_key: Callable[[bytes], SigningKey]


_chosen: list[_Backend] = []
_choosing = threading.Lock()


def _backend() -> _Backend:
    if not _chosen:
        with _choosing:
            if not _chosen:
                _chosen.append(_load())
    return _chosen[0]


def _load() -> _Backend:
    lib = libcrypto.load()
    if lib is not None:
        return _Backend("libcrypto", lambda key: libcrypto.AesGcm(lib, key),
                        lambda der: libcrypto.EvpPublicKey.from_der(lib, der),
                        lambda der: libcrypto.EvpPrivateKey.from_der(lib, der))
    from sidecar.tls import fallback

    log.info("the ssl module's libcrypto cannot be opened: AES-GCM and signatures use the cryptography package"
             " (about 9 MiB more resident)")
    return _Backend("cryptography", fallback.CryptographyAead, fallback.CryptographyPublicKey,
                    fallback.CryptographyPrivateKey)


def backend() -> str:
    """``libcrypto`` or ``cryptography``: which one this process uses (chosen at the first use)."""
    return _backend().name


def aes_gcm(key: bytes) -> Aead:
    """AES-GCM under ``key`` (16, 24 or 32 bytes; ValueError otherwise)."""
    return _backend().aes_gcm(key)


def verify_key(der: bytes) -> VerifyKey:
    """The public key of a DER SubjectPublicKeyInfo; :class:`KeyFormatError` when it is not one (or an EC point is
    off its curve)."""
    return _backend().verify_key(der)


def signing_key(der: bytes) -> SigningKey:
    """The private key of unencrypted DER (PKCS#8 or SEC1 for EC); :class:`KeyFormatError` when it is not one."""
    return _backend().signing_key(der)


def hkdf_sha256(key: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869's HKDF with SHA-256: extract with ``salt`` (all zeros when empty), expand with ``info``."""
    size = hashlib.sha256().digest_size
    if not 0 < length <= 255 * size:
        raise ValueError(f"HKDF-SHA256 gives 1 to {255 * size} bytes (asked {length})")
    prk = hmac.digest(salt or bytes(size), key, "sha256")
    blocks, block = [], b""
    for counter in range(1, -(-length // size) + 1):
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        blocks.append(block)
    return b"".join(blocks)[:length]
