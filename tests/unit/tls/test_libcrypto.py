"""The running sidecar's cryptography through the ``ssl`` module's libcrypto (sidecar.tls.libcrypto, picked by
sidecar.tls.primitives), against the ``cryptography`` package it replaces: the same bytes both ways over random keys,
messages and associated data, forgeries refused, keys of the wrong kind refused, RFC 5869's HKDF vectors, OpenSSL's
error queue left empty, and resident memory flat over 100,000 operations.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidecar.gossip.keyring import ENCRYPTION_VERSION, NONCE_SIZE, DecryptionFailed, Keyring
from sidecar.tls import der, fallback, libcrypto, primitives, signatures
from sidecar.tls.libcrypto import InvalidTag, KeyFormatError
from tests.unit.tls.pki import tlv

LIB = libcrypto.load()
RNG = random.Random(5869)


def lib() -> libcrypto.Libcrypto:
    assert LIB is not None, "no libcrypto: the ssl module's should always be found on Linux"
    return LIB


def rand(size: int) -> bytes:
    return RNG.randbytes(size)


def spki(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))


def pkcs8(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def error_queue_empty() -> bool:
    return lib().ERR_get_error() == 0


# ------------------------------------------------------------------------------------------ the library


def test_the_binding_is_the_libcrypto_the_ssl_module_runs_on() -> None:
    with open("/proc/self/maps") as maps:
        mapped = {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}
    assert lib().path in mapped                       # already mapped by _ssl: opening it maps nothing new
    assert lib().OpenSSL_version(0).decode() == ssl.OPENSSL_VERSION
    assert primitives.backend() == "libcrypto"


def test_without_a_libcrypto_the_cryptography_package_takes_over(monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(libcrypto, "load", lambda: None)
    monkeypatch.setattr(primitives, "_chosen", [])
    with caplog.at_level(logging.INFO, "sidecar.tls"):
        assert primitives.backend() == "cryptography"
    assert "use the cryptography package" in caplog.text   # operators learn why the process is larger
    key = os.urandom(32)
    ring = Keyring([key])
    sealed = ring.encrypt(b"ping", b"header")
    monkeypatch.setattr(primitives, "_chosen", [])
    monkeypatch.undo()
    assert primitives.backend() == "libcrypto"
    assert Keyring([key]).decrypt(sealed, b"header") == b"ping"   # the two backends read each other


@pytest.fixture(params=["libcrypto", "cryptography"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each backend of sidecar.tls.primitives in turn: the ssl module's libcrypto, and the cryptography package
    where that cannot be opened."""
    if request.param == "cryptography":
        monkeypatch.setattr(libcrypto, "load", lambda: None)
    monkeypatch.setattr(primitives, "_chosen", [])
    monkeypatch.setattr(signatures, "_load_public", functools.lru_cache(maxsize=64)(primitives.verify_key))
    assert primitives.backend() == request.param
    return str(request.param)


# ------------------------------------------------------------------------------------------ AES-GCM


@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_gcm_gives_cryptographys_bytes_and_each_opens_the_others(size: int, backend: str) -> None:
    for _ in range(200):
        key, nonce = rand(size), rand(12)
        data = rand(RNG.choice([0, 1, 15, 16, 17, RNG.randrange(2000)]))
        ad = RNG.choice([None, b"", rand(RNG.randrange(1, 200))])
        ours, theirs = primitives.aes_gcm(key), AESGCM(key)
        sealed = ours.encrypt(nonce, data, ad)
        assert sealed == theirs.encrypt(nonce, data, ad)
        assert len(sealed) == len(data) + 16
        assert theirs.decrypt(nonce, sealed, ad) == data
        assert ours.decrypt(nonce, sealed, ad) == data
        assert fallback.CryptographyAead(key).decrypt(nonce, sealed, ad) == data


def forgeries(sealed: bytes, nonce: bytes, ad: bytes) -> Iterator[tuple[str, bytes, bytes, bytes]]:
    """(what, nonce, sealed, ad) changed one way each from a good packet."""
    for at in (0, len(sealed) // 2, len(sealed) - 17):       # the ciphertext
        yield f"ciphertext byte {at}", nonce, sealed[:at] + bytes((sealed[at] ^ 1,)) + sealed[at + 1:], ad
    for at in (len(sealed) - 16, len(sealed) - 1):            # the tag
        yield f"tag byte {at}", nonce, sealed[:at] + bytes((sealed[at] ^ 0x80,)) + sealed[at + 1:], ad
    yield "associated data", nonce, sealed, ad + b"x"
    yield "no associated data", nonce, sealed, b""
    yield "nonce", bytes((nonce[0] ^ 1,)) + nonce[1:], sealed, ad
    yield "truncated", nonce, sealed[:-1], ad
    yield "tag only", nonce, sealed[-16:], ad
    yield "shorter than a tag", nonce, sealed[:15], ad
    yield "empty", nonce, b"", ad


def test_a_changed_ciphertext_tag_nonce_or_associated_data_is_refused_and_the_cipher_works_on(backend: str) -> None:
    key, nonce, ad = rand(32), rand(12), b"cluster prod"
    aead = primitives.aes_gcm(key)
    sealed = aead.encrypt(nonce, b"a gossip packet of some length", ad)
    for what, n, forged, a in forgeries(sealed, nonce, ad):
        with pytest.raises(InvalidTag):
            aead.decrypt(n, forged, a)
        assert error_queue_empty(), what      # nothing left for the ssl module to misreport
        assert aead.decrypt(nonce, sealed, ad) == b"a gossip packet of some length", what
    with pytest.raises(InvalidTag):
        primitives.aes_gcm(rand(32)).decrypt(nonce, sealed, ad)   # another key


@pytest.mark.parametrize("size", [0, 15, 20, 33, 64])
def test_an_aes_key_of_another_size_is_refused(size: int, backend: str) -> None:
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        primitives.aes_gcm(bytes(size))


def test_a_nonce_of_another_size_is_refused(backend: str) -> None:
    aead = primitives.aes_gcm(rand(16))
    for size in (0, 8, 16):
        with pytest.raises(ValueError, match="12 bytes"):
            aead.encrypt(bytes(size), b"x", None)
        with pytest.raises(ValueError, match="12 bytes"):
            aead.decrypt(bytes(size), bytes(32), None)


def test_the_keyring_reads_and_writes_the_layout_of_nodes_on_cryptography(backend: str) -> None:
    # what every node wrote before: version byte, 12-byte nonce, AESGCM's ciphertext and tag
    key, ad = rand(32), b"header"
    nonce = rand(NONCE_SIZE)
    old = bytes((ENCRYPTION_VERSION,)) + nonce + AESGCM(key).encrypt(nonce, b"from an old node", ad)
    assert Keyring([key]).decrypt(old, ad) == b"from an old node"
    new = Keyring([key]).encrypt(b"from a new node", ad)
    assert AESGCM(key).decrypt(new[1:1 + NONCE_SIZE], new[1 + NONCE_SIZE:], ad) == b"from a new node"
    with pytest.raises(DecryptionFailed):
        Keyring([rand(32)]).decrypt(new, ad)


# ------------------------------------------------------------------------------------------ signatures


def ec_keys() -> list[tuple[Any, str]]:
    return [(ec.generate_private_key(curve()), hash_name) for curve, hash_name in
            [(ec.SECP256R1, "SHA256"), (ec.SECP256R1, "SHA384"), (ec.SECP384R1, "SHA384"), (ec.SECP521R1, "SHA512")]
            for _ in range(3)]


KEYS: list[tuple[Any, str | None]] = [
    *ec_keys(),
    *[(rsa.generate_private_key(65537, bits), h) for bits, h in ((2048, "SHA256"), (3072, "SHA512"))],
    *[(ed25519.Ed25519PrivateKey.generate(), None) for _ in range(3)],
]


def their_sign(key: Any, data: bytes, hash_name: str | None) -> bytes:
    algorithm = getattr(hashes, hash_name)() if hash_name else None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return bytes(key.sign(data, ec.ECDSA(algorithm)))
    if isinstance(key, rsa.RSAPrivateKey):
        return bytes(key.sign(data, padding.PKCS1v15(), algorithm))
    return bytes(key.sign(data))


def their_verify(key: Any, signature: bytes, data: bytes, hash_name: str | None) -> None:
    algorithm = getattr(hashes, hash_name)() if hash_name else None
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), algorithm)
    else:
        public.verify(signature, data)


@pytest.mark.parametrize(("key", "hash_name"), KEYS, ids=lambda k: type(k).__name__.strip("_") if k else "")
def test_signatures_verify_both_ways_with_cryptography(key: Any, hash_name: str | None, backend: str) -> None:
    signer, verifier = primitives.signing_key(pkcs8(key)), primitives.verify_key(spki(key))
    assert signer.kind == verifier.kind == {ec.EllipticCurvePrivateKey: "ec", rsa.RSAPrivateKey: "rsa"}.get(
        next((t for t in (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey) if isinstance(key, t)), None), "ed25519")
    for _ in range(20):
        data = rand(RNG.randrange(0, 3000))
        ours = signer.sign(data, hash_name)
        their_verify(key, ours, data, hash_name)                        # raises if refused
        assert verifier.verify(their_sign(key, data, hash_name), data, hash_name)
        assert verifier.verify(ours, data, hash_name)


def test_a_changed_signature_or_message_is_refused(backend: str) -> None:
    for key, hash_name in KEYS:
        verifier = primitives.verify_key(spki(key))
        data = rand(300)
        good = their_sign(key, data, hash_name)
        other_key = next(k for k, h in KEYS if type(k) is type(key) and k is not key and h == hash_name) \
            if not isinstance(key, rsa.RSAPrivateKey) else rsa.generate_private_key(65537, 2048)
        bad = [good[:-1] + bytes((good[-1] ^ 1,)), good[:-1], good + b"\x00", b"", b"\x30\x00", rand(len(good)),
               bytes(len(good)), their_sign(other_key, data, hash_name)]
        for signature in bad:
            assert not verifier.verify(signature, data, hash_name)
            assert error_queue_empty()
        assert not verifier.verify(good, data + b"x", hash_name)
        assert not verifier.verify(good, data[1:], hash_name)
        assert verifier.verify(good, data, hash_name)


def test_a_key_is_refused_with_a_hash_it_does_not_take(backend: str) -> None:
    ed, p256 = ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="ed25519"):
        primitives.signing_key(pkcs8(ed)).sign(b"x", "SHA256")
    with pytest.raises(ValueError, match="ec"):
        primitives.signing_key(pkcs8(p256)).sign(b"x", None)
    with pytest.raises(ValueError, match="ec"):
        primitives.verify_key(spki(p256)).verify(b"x", b"x", None)
    with pytest.raises(ValueError, match="unsupported hash"):
        primitives.verify_key(spki(p256)).verify(b"x", b"x", "MD5")


def test_bytes_that_are_no_key_are_refused_without_a_trace_in_the_error_queue(backend: str) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    public, private = spki(p256), pkcs8(p256)
    for der_bytes in (b"", b"\x30\x00", rand(91), public[:-1], public + b"\x00", private):
        with pytest.raises(KeyFormatError):
            primitives.verify_key(der_bytes)
        assert error_queue_empty()
    for der_bytes in (b"", rand(100), private[:-1], private + b"\x00", public):
        with pytest.raises(KeyFormatError):
            primitives.signing_key(der_bytes)
        assert error_queue_empty()


@pytest.fixture(params=["from the point", "d2i_PUBKEY"])
def ec_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the binding reads an EC public key: OpenSSL 3's EVP_PKEY_fromdata with the curve's name and the
    point (a named-curve key with an uncompressed point), and the generic d2i_PUBKEY (every other one)."""
    if request.param == "d2i_PUBKEY":
        monkeypatch.setattr(lib(), "fromdata", False)
    elif not lib().fromdata:
        pytest.skip("OpenSSL 1.1.1 has no EVP_PKEY_fromdata")
    return str(request.param)


@pytest.mark.parametrize("curve", [ec.SECP256R1, ec.SECP384R1, ec.SECP521R1])
def test_ec_keys_read_either_way_verify_what_cryptography_signs(ec_reader: str, curve: type[Any]) -> None:
    key = ec.generate_private_key(curve())
    algorithm = der._Elements(spki(key)).inner(0x30).whole(0x30)
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    compressed = tlv(0x30, algorithm + tlv(0x03, b"\x00" + point))   # the same key, its point compressed
    for data in (b"", rand(100), rand(5000)):
        signature = their_sign(key, data, "SHA256")
        for der_bytes in (spki(key), compressed):
            verifier = primitives.verify_key(der_bytes)
            assert verifier.kind == "ec"
            assert verifier.verify(signature, data, "SHA256")
            assert not verifier.verify(signature, data + b"x", "SHA256")


def test_a_point_off_its_curve_is_refused(ec_reader: str) -> None:
    for curve in (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1):
        public = spki(ec.generate_private_key(curve()))
        off = public[:-1] + bytes((public[-1] ^ 1,))       # y changed: not on the curve
        with pytest.raises(KeyFormatError):
            primitives.verify_key(off)
        assert error_queue_empty()
        point_size = {ec.SECP256R1: 65, ec.SECP384R1: 97, ec.SECP521R1: 133}[curve]
        curve_oid = der._public_key_info(public).curve
        leaf = der.PublicKey(der.OID_EC_PUBLIC_KEY, curve_oid, off[-point_size:], off)
        with pytest.raises(signatures.UnusableKey):
            signatures.ec_public_key(leaf)


def spki_of(key: Any) -> der.PublicKey:
    """``key``'s SubjectPublicKeyInfo as sidecar.tls.der reads it from a certificate."""
    return der._public_key_info(spki(key))


def test_keys_of_a_kind_the_sidecar_does_not_use_are_refused(backend: str) -> None:
    rsa_key, ed_key = rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()
    k256 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(signatures.UnusableKey):
        signatures.ec_public_key(spki_of(rsa_key))         # claims are signed by EC keys only
    with pytest.raises(signatures.UnusableKey):
        signatures.ec_public_key(spki_of(ed_key))
    with pytest.raises(signatures.UnusableKey):
        signatures.public_key(spki_of(k256))              # a curve outside P-256/384/521
    # an algorithm that says one kind over a key of another
    disguised = der.PublicKey(der.OID_EC_PUBLIC_KEY, bytes.fromhex("2a8648ce3d030107"), b"", spki(rsa_key))
    with pytest.raises(signatures.UnusableKey, match="rsa key under the ec"):
        signatures.public_key(disguised)
    assert signatures.public_key(spki_of(rsa_key)).kind == "rsa"
    assert signatures.public_key(spki_of(ed_key)).kind == "ed25519"
    for key in (rsa_key, ed_key, k256):
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        with pytest.raises(ValueError):                   # DerError or UnusableKey: tls.key is EC on our curves
            signatures.private_key(der.pem_ec_private_key(pem))


def test_our_key_read_from_pem_signs_claims_a_node_on_cryptography_verifies(backend: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for form in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        pem = key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
        ours = signatures.private_key(der.pem_ec_private_key(pem))
        signature = signatures.sign(ours, b"claim")
        key.public_key().verify(signature, b"claim", ec.ECDSA(hashes.SHA256()))
        theirs = key.sign(b"claim", ec.ECDSA(hashes.SHA256()))
        assert signatures.verify(signatures.ec_public_key(spki_of(key)), theirs, b"claim")
        assert not signatures.verify(signatures.ec_public_key(spki_of(key)), theirs, b"claim!")


# ------------------------------------------------------------------------------------------ HKDF


# RFC 5869 appendix A, test cases 1 to 3 (HKDF-SHA256)
RFC5869 = [
    ("0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    (bytes(range(0x00, 0x50)).hex(), bytes(range(0x60, 0xB0)).hex(), bytes(range(0xB0, 0x100)).hex(), 82,
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09"
     "da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    ("0b" * 22, "", "", 42,
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869)
def test_hkdf_gives_rfc_5869s_vectors(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    got = primitives.hkdf_sha256(bytes.fromhex(ikm), salt=bytes.fromhex(salt), info=bytes.fromhex(info),
                                 length=length)
    assert got.hex() == okm


def test_hkdf_agrees_with_cryptographys() -> None:
    for _ in range(200):
        ikm, salt, info, length = rand(RNG.randrange(1, 80)), rand(RNG.randrange(0, 80)), rand(RNG.randrange(0, 80)), \
            RNG.randrange(1, 255 * 32 + 1)
        theirs = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
        assert primitives.hkdf_sha256(ikm, salt=salt, info=info, length=length) == theirs
    for length in (0, 255 * 32 + 1):
        with pytest.raises(ValueError):
            primitives.hkdf_sha256(b"k", salt=b"", info=b"", length=length)


# ------------------------------------------------------------------------------------------ no leak


def resident() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def test_resident_memory_stays_flat_over_100000_operations() -> None:
    """Every path that allocates in OpenSSL (cipher contexts, keys read, digest contexts, the failures) run 100,000
    times: a leak of even 16 bytes a call would show as 1.6 MB."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    public, private, key, nonce = spki(p256), pkcs8(p256), rand(32), rand(12)
    aead = primitives.aes_gcm(key)
    sealed = aead.encrypt(nonce, b"x" * 500, b"ad")
    forged = sealed[:-1] + bytes((sealed[-1] ^ 1,))
    signer, verifier = primitives.signing_key(private), primitives.verify_key(public)
    signature = signer.sign(b"claim", "SHA256")

    def refused(call: Callable[[], object]) -> None:
        try:
            call()
        except (InvalidTag, KeyFormatError):
            return
        raise AssertionError("accepted")

    # one round: reading keys costs OpenSSL 3's decoders ~0.2-0.7 ms, so those come once a round and the cipher,
    # signatures and verifications fill it
    cheap: list[Callable[[], object]] = [
        lambda: aead.encrypt(nonce, b"x" * 500, b"ad"),
        lambda: aead.decrypt(nonce, sealed, b"ad"),
        lambda: refused(lambda: aead.decrypt(nonce, forged, b"ad")),
        lambda: primitives.aes_gcm(key).encrypt(nonce, b"y", None),       # a cipher made and freed
        lambda: verifier.verify(signature, b"claim", "SHA256"),
        lambda: verifier.verify(signature, b"claim?", "SHA256"),
        lambda: verifier.verify(b"\x30\x02\x02\x00", b"claim", "SHA256"),
        lambda: signer.sign(b"claim", "SHA256"),
    ]
    operations: list[Callable[[], object]] = [
        lambda: primitives.verify_key(public).verify(signature, b"claim", "SHA256"),
        lambda: primitives.signing_key(private).sign(b"claim", "SHA256"),
        lambda: refused(lambda: primitives.verify_key(public[:-3])),                    # d2i_PUBKEY refuses
        lambda: refused(lambda: primitives.verify_key(public[:-1] + bytes((public[-1] ^ 1,)))),  # off the curve
        lambda: refused(lambda: primitives.signing_key(private + b"\x00")),
        *cheap * 8,
    ]
    for i in range(2_000):                                # the allocator's first arenas, not a leak
        operations[i % len(operations)]()
    before = resident()
    for i in range(100_000):
        operations[i % len(operations)]()
    grown = resident() - before
    assert error_queue_empty()
    assert grown < 1 << 20, f"resident memory grew {grown / 1024:.0f} KiB over 100,000 operations"
