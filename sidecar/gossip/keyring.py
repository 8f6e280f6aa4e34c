"""AES-GCM encryption of gossip with a keyring: the first key encrypts, every key decrypts.

Rotation without a flag day, as memberlist does it: install the new key everywhere (all can now read
it), use it (everyone now writes it), then remove the old one. The key in use cannot be removed.

An encrypted body is ``version byte (1) + 12-byte nonce + ciphertext and 16-byte tag``; the caller passes
the associated data (the packet header with the cluster name), so a packet sealed for another cluster
fails authentication even under the right key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence

from sidecar.gossip.errors import GossipError, KeyringError
from sidecar.tls import primitives
from sidecar.tls.primitives import Aead, InvalidTag

ENCRYPTION_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
KEY_SIZES = (16, 24, 32)


class DecryptionFailed(GossipError):
    """No key of the keyring authenticates the packet: a wrong key, another cluster, or tampering."""


def generate_key() -> str:
    """A new random 32-byte key, base64 as ``gossip.encrypt_keys`` and ``sidecar keys generate`` write it."""
    return base64.b64encode(os.urandom(32)).decode()


def decode_key(key: str | bytes) -> bytes:
    """A key from its base64 text (or raw bytes), checked for an AES size."""
    if isinstance(key, str):
        try:
            raw = base64.b64decode(key.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError("the key is not valid base64") from None
    else:
        raw = bytes(key)
    if len(raw) not in KEY_SIZES:
        raise KeyringError(f"an AES key is 16, 24 or 32 bytes (got {len(raw)})")
    return raw


def key_text(key: bytes) -> str:
    return base64.b64encode(key).decode()


def fingerprint(key: str | bytes) -> str:
    """A key as operators and peers may see it: the first 12 hex digits of the SHA-256 of its base64 text (a text
    key as given, so that even one that does not decode can be named in an error without being shown)."""
    text = key if isinstance(key, str) else key_text(key)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Keyring:
    """The installed keys and their ciphers: AES-GCM of the libcrypto the ``ssl`` module already maps
    (:mod:`sidecar.tls.primitives`), the tag checked by OpenSSL."""

    __slots__ = ("_ciphers", "_keys")

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, Aead] = {}
        for key in keys:
            self.install(key)

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    def keys(self) -> list[bytes]:
        """Every installed key, the primary (encrypting) one first."""
        return list(self._keys)

    def install(self, key: str | bytes) -> None:
        """Accept packets under ``key`` too; installing a known key changes nothing."""
        raw = decode_key(key)
        if raw not in self._ciphers:
            self._ciphers[raw] = primitives.aes_gcm(raw)
            self._keys.append(raw)

    def use(self, key: str | bytes) -> None:
        """Encrypt with ``key`` from now on; it must be installed first."""
        raw = decode_key(key)
        if raw not in self._ciphers:
            raise KeyringError("the key is not installed; install it before using it")
        self._keys.remove(raw)
        self._keys.insert(0, raw)

    def remove(self, key: str | bytes) -> None:
        """Stop accepting ``key``; the primary key cannot be removed."""
        raw = decode_key(key)
        if raw not in self._ciphers:
            raise KeyringError("the key is not installed")
        if raw == self._keys[0]:
            raise KeyringError("the primary key cannot be removed; use another key first")
        self._keys.remove(raw)
        del self._ciphers[raw]

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._ciphers[self._keys[0]].encrypt(nonce, plaintext, associated_data)
        return bytes((ENCRYPTION_VERSION,)) + nonce + sealed

    def decrypt(self, data: bytes, associated_data: bytes) -> bytes:
        """The plaintext under any installed key; raises DecryptionFailed when none authenticates."""
        if len(data) < OVERHEAD or data[0] != ENCRYPTION_VERSION:
            raise DecryptionFailed("not an AES-GCM body of a known version")
        nonce, sealed = data[1 : 1 + NONCE_SIZE], data[1 + NONCE_SIZE :]
        for key in self._keys:
            try:
                return self._ciphers[key].decrypt(nonce, sealed, associated_data)
            except InvalidTag:
                continue
        raise DecryptionFailed("no installed key authenticates the packet")
