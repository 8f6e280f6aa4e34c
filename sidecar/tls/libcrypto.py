"""AES-GCM and signatures through the OpenSSL the ``ssl`` module already loaded, by ``ctypes``.

Why: the process maps OpenSSL's libcrypto for its TLS anyway, so calling it for the gossip cipher and the
catalog's signatures costs almost no memory, where the ``cryptography`` package brings a second OpenSSL in its
Rust extension (about 9 MiB resident in a sidecar that seals, signs and verifies with it).
:mod:`sidecar.tls.primitives` picks this binding when :func:`load` finds the library and falls back to
``cryptography`` when it does not.

Rules every function here follows (a ctypes mistake is a crash or a silent wrong answer, not an exception):

* every C function used is declared once in :data:`_FUNCTIONS`, with its argument and result types;
* every return value is checked; a failure empties OpenSSL's per-thread error queue (the ``ssl`` module reads that
  queue to word its own errors, so nothing of ours may be left in it);
* every object OpenSSL allocates is freed by the Python object that owns it, or before the call returns;
* calls keep the GIL (``PyDLL``): each takes microseconds, and releasing the GIL around each of them would let
  another thread's Python code hold it for a switch interval (5 ms) between two calls of one seal.

What is bound is exactly what the running sidecar needs: AES-GCM seal and open with associated data (the tag
checked by OpenSSL, in constant time), public keys from a DER SubjectPublicKeyInfo, private keys from DER
(PKCS#8 or the traditional per-type form), and one-shot signing and verifying (``EVP_DigestSign``/``Verify``:
ECDSA with its DER signature, RSA PKCS#1 v1.5, Ed25519). OpenSSL 1.1.1 and 3.x have all of them.
"""

from __future__ import annotations

import ctypes
import re
import ssl
import threading
from ctypes import POINTER, c_char_p, c_int, c_long, c_size_t, c_ulong, c_void_p
from typing import Any, Final

GCM_NONCE_SIZE: Final = 12
GCM_TAG_SIZE: Final = 16
_EVP_CTRL_GCM_GET_TAG: Final = 0x10   # openssl/evp.h, the same in 1.1.1 and 3.x
_EVP_CTRL_GCM_SET_TAG: Final = 0x11
_MIN_VERSION: Final = 0x1010100F      # 1.1.1: the one-shot EVP_DigestSign/EVP_DigestVerify and Ed25519
_MAX_LENGTH: Final = 0x7FFFFFFF       # the ciphers take an int length
# EVP_PKEY_get_base_id's answers (NIDs from openssl/obj_mac.h, stable across versions) and our names for them
_KINDS: Final = {6: "rsa", 408: "ec", 1087: "ed25519"}
_LIBCRYPTO_NAME = re.compile(r"(^|/)libcrypto[-.][^/]*$")

# name: (result type, argument types); a tuple of names is the same function under its 3.x and 1.1.1 names
_FUNCTIONS: Final[dict[str | tuple[str, str], tuple[Any, tuple[Any, ...]]]] = {
    "OpenSSL_version_num": (c_ulong, ()),
    "OpenSSL_version": (c_char_p, (c_int,)),   # 0: OPENSSL_VERSION, "OpenSSL 3.0.13 30 Jan 2024"
    "ERR_get_error": (c_ulong, ()),
    "ERR_error_string_n": (None, (c_ulong, c_char_p, c_size_t)),
    "ERR_clear_error": (None, ()),
    "EVP_aes_128_gcm": (c_void_p, ()),
    "EVP_aes_192_gcm": (c_void_p, ()),
    "EVP_aes_256_gcm": (c_void_p, ()),
    "EVP_CIPHER_CTX_new": (c_void_p, ()),
    "EVP_CIPHER_CTX_free": (None, (c_void_p,)),
    # ctx, cipher, engine, key, iv, enc (1 encrypt, 0 decrypt, -1 unchanged)
    "EVP_CipherInit_ex": (c_int, (c_void_p, c_void_p, c_void_p, c_char_p, c_char_p, c_int)),
    # ctx, out (NULL: the data is associated data), out length, in, in length
    "EVP_CipherUpdate": (c_int, (c_void_p, c_void_p, POINTER(c_int), c_char_p, c_int)),
    "EVP_CipherFinal_ex": (c_int, (c_void_p, c_void_p, POINTER(c_int))),
    # ctx, command, its int argument, its pointer argument (the tag: read by SET_TAG, written by GET_TAG)
    "EVP_CIPHER_CTX_ctrl": (c_int, (c_void_p, c_int, c_int, c_void_p)),
    "EVP_sha256": (c_void_p, ()),
    "EVP_sha384": (c_void_p, ()),
    "EVP_sha512": (c_void_p, ()),
    "EVP_MD_CTX_new": (c_void_p, ()),
    "EVP_MD_CTX_free": (None, (c_void_p,)),
    # ctx, EVP_PKEY_CTX ** (NULL), md (NULL for Ed25519), engine, pkey
    "EVP_DigestSignInit": (c_int, (c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)),
    "EVP_DigestVerifyInit": (c_int, (c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)),
    "EVP_DigestSign": (c_int, (c_void_p, c_char_p, POINTER(c_size_t), c_char_p, c_size_t)),
    "EVP_DigestVerify": (c_int, (c_void_p, c_char_p, c_size_t, c_char_p, c_size_t)),
    # EVP_PKEY **a (NULL: a new key), const unsigned char **pp (advanced past what was read), length
    "d2i_PUBKEY": (c_void_p, (c_void_p, POINTER(c_void_p), c_long)),
    "d2i_AutoPrivateKey": (c_void_p, (c_void_p, POINTER(c_void_p), c_long)),
    "EVP_PKEY_free": (None, (c_void_p,)),
    ("EVP_PKEY_get_base_id", "EVP_PKEY_base_id"): (c_int, (c_void_p,)),
}
# OpenSSL 3 only: an EC public key from its curve's name and point, about 6x faster than d2i_PUBKEY's decoders
# (a claim's certificate is read on first sight by every member); without them d2i_PUBKEY reads every key
_FROMDATA: Final[dict[str, tuple[Any, tuple[Any, ...]]]] = {
    "EVP_PKEY_CTX_new_from_name": (c_void_p, (c_void_p, c_char_p, c_char_p)),   # libctx, "EC", properties
    "EVP_PKEY_CTX_free": (None, (c_void_p,)),
    "EVP_PKEY_fromdata_init": (c_int, (c_void_p,)),
    "EVP_PKEY_fromdata": (c_int, (c_void_p, POINTER(c_void_p), c_int, c_void_p)),  # ctx, &pkey, selection, params
}
_EVP_PKEY_PUBLIC_KEY: Final = 0x86        # OSSL_KEYMGMT_SELECT_ALL_PARAMETERS | OSSL_KEYMGMT_SELECT_PUBLIC_KEY
_OSSL_PARAM_UTF8_STRING: Final = 4
_OSSL_PARAM_OCTET_STRING: Final = 5
# the DER of a named-curve EC SubjectPublicKeyInfo with an uncompressed point, up to the point, and the point's
# length: bytes that match one of these whole are that curve's key (what `sidecar certs` and most CAs write)
_EC_SPKI_PREFIXES: Final = {
    bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200"): (b"P-256", 65),
    bytes.fromhex("3076301006072a8648ce3d020106052b81040022036200"): (b"P-384", 97),
    bytes.fromhex("30819b301006072a8648ce3d020106052b8104002303818600"): (b"P-521", 133),
}


class _OsslParam(ctypes.Structure):
    """OSSL_PARAM (openssl/core.h), the same in every 3.x."""

    _fields_ = [("key", c_char_p), ("data_type", ctypes.c_uint), ("data", c_void_p), ("data_size", c_size_t),
                ("return_size", c_size_t)]


class LibcryptoError(Exception):
    """A libcrypto call failed where it should not (memory, an unusable library); OpenSSL's reasons follow."""


class InvalidTag(ValueError):
    """The sealed data, its tag, the nonce or the associated data is not what the key sealed."""


class KeyFormatError(ValueError):
    """Bytes that are not a key this binding can load (not DER of a key, trailing data, a point off the curve)."""


class Libcrypto:
    """The library and its declared functions, as attributes named as in C."""

    def __init__(self, library: ctypes.CDLL, path: str) -> None:
        self.path = path
        self._lib = library
        for names, (result, arguments) in _FUNCTIONS.items():
            candidates = (names,) if isinstance(names, str) else names
            function = None
            for name in candidates:
                try:
                    function = getattr(library, name)
                    break
                except AttributeError:
                    continue
            if function is None:
                raise LibcryptoError(f"{path} has no {candidates[0]}")
            function.restype = result
            function.argtypes = list(arguments)
            setattr(self, candidates[0], function)
        self.fromdata = all(hasattr(library, name) for name in _FROMDATA)
        for name, (result, arguments) in _FROMDATA.items() if self.fromdata else ():
            function = getattr(library, name)
            function.restype = result
            function.argtypes = list(arguments)
            setattr(self, name, function)
        self.version: int = self.OpenSSL_version_num()
        self.ciphers = {16: self.EVP_aes_128_gcm(), 24: self.EVP_aes_192_gcm(), 32: self.EVP_aes_256_gcm()}
        self.digests: dict[str | None, int | None] = {
            "SHA256": self.EVP_sha256(), "SHA384": self.EVP_sha384(), "SHA512": self.EVP_sha512(), None: None}
        if not all(self.ciphers.values()) or not all(v for k, v in self.digests.items() if k is not None):
            raise LibcryptoError(f"{path} lacks AES-GCM or SHA-2")

    def __getattr__(self, name: str) -> Any:  # the declared functions, set in __init__ (for mypy)
        raise AttributeError(name)

    def failure(self, what: str) -> LibcryptoError:
        """The error for a failed call, with OpenSSL's queued reasons; the queue is left empty."""
        reasons = []
        buffer = ctypes.create_string_buffer(256)
        while code := self.ERR_get_error():
            self.ERR_error_string_n(code, buffer, len(buffer))
            reasons.append(buffer.value.decode(errors="replace"))
        return LibcryptoError(f"{what} failed" + (f": {'; '.join(reasons)}" if reasons else ""))

    def clear(self) -> None:
        self.ERR_clear_error()


# ------------------------------------------------------------------------------------------ finding the library


def _mapped_libcrypto() -> list[str]:
    """Every libcrypto this process has mapped (the ``_ssl`` module's, and any a wheel brought), from
    /proc/self/maps, in the order they appear."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and _LIBCRYPTO_NAME.search(path := fields[5].strip()) and path not in paths:
                    paths.append(path)
    except OSError:
        return []
    return paths


def _open(path: str) -> Libcrypto | None:
    try:
        lib = Libcrypto(ctypes.PyDLL(path), path)
    except (OSError, LibcryptoError):
        return None
    name = lib.OpenSSL_version(0) or b""
    if not name.startswith(b"OpenSSL ") or lib.version < _MIN_VERSION:   # LibreSSL names itself, and says 2.0.0
        return None
    return lib


_loaded: list[Libcrypto | None] = []
_loading = threading.Lock()


def load() -> Libcrypto | None:
    """The ``ssl`` module's libcrypto (found once), or None when no usable one can be opened.

    The one ``_ssl`` runs on is the mapped library that names itself as ``ssl.OPENSSL_VERSION`` does (``_ssl`` reads
    that from the library at import): opening it again maps nothing new. Elsewhere (no /proc, or an ``_ssl`` with
    OpenSSL linked in statically) the system's library is taken if its major version is the ``ssl`` module's.
    """
    with _loading:
        if not _loaded:
            lib = None
            for path in _mapped_libcrypto():
                candidate = _open(path)
                if candidate is not None and candidate.OpenSSL_version(0) == ssl.OPENSSL_VERSION.encode():
                    lib = candidate
                    break
            if lib is None:
                import ctypes.util  # with shutil and subprocess: only where no mapped library serves

                name = ctypes.util.find_library("crypto")
                candidate = _open(name) if name else None
                if candidate is not None and candidate.version >> 28 == ssl.OPENSSL_VERSION_NUMBER >> 28:
                    lib = candidate
            _loaded.append(lib)
        return _loaded[0]


def _check_length(data: bytes, what: str) -> None:
    if len(data) > _MAX_LENGTH:
        raise ValueError(f"{what} is longer than OpenSSL takes in one call ({len(data)} bytes)")


# ------------------------------------------------------------------------------------------ AES-GCM


class AesGcm:
    """AES-GCM under one key (16, 24 or 32 bytes), 12-byte nonces and 16-byte tags appended to the ciphertext,
    the layout of ``cryptography``'s ``AESGCM``. One context per direction keeps the key schedule between calls;
    a lock makes the object safe to share between threads."""

    __slots__ = ("__weakref__", "_decrypt", "_encrypt", "_lib", "_lock", "_scratch", "_size", "_size_ref")

    def __init__(self, lib: Libcrypto, key: bytes) -> None:
        cipher = lib.ciphers.get(len(key))
        if cipher is None:
            raise ValueError(f"an AES key is 16, 24 or 32 bytes (got {len(key)})")
        self._lib = lib
        self._lock = threading.Lock()
        # per-call out-parameters, used under the lock: GCM's final writes nothing to ``_scratch``, but a buffer
        # it is all the same
        self._size = c_int(0)
        self._size_ref = ctypes.byref(self._size)
        self._scratch = ctypes.create_string_buffer(GCM_TAG_SIZE)
        self._encrypt: int | None = None
        self._decrypt: int | None = None
        self._encrypt = self._context(cipher, bytes(key), 1)
        self._decrypt = self._context(cipher, bytes(key), 0)

    def _context(self, cipher: int, key: bytes, enc: int) -> int:
        lib = self._lib
        ctx: int | None = lib.EVP_CIPHER_CTX_new()
        if not ctx:
            raise lib.failure("EVP_CIPHER_CTX_new")
        if lib.EVP_CipherInit_ex(ctx, cipher, None, key, None, enc) != 1:
            lib.EVP_CIPHER_CTX_free(ctx)
            raise lib.failure("EVP_CipherInit_ex")
        return ctx

    def __del__(self) -> None:
        for ctx in (getattr(self, "_encrypt", None), getattr(self, "_decrypt", None)):
            if ctx:
                self._lib.EVP_CIPHER_CTX_free(ctx)
        self._encrypt = self._decrypt = None

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """``data`` sealed: its ciphertext (as long as ``data``) followed by the 16-byte tag."""
        if len(nonce) != GCM_NONCE_SIZE:
            raise ValueError(f"the nonce is {GCM_NONCE_SIZE} bytes (got {len(nonce)})")
        size = len(data)
        _check_length(data, "the plaintext")
        lib, ctx, ad = self._lib, self._encrypt, bytes(associated_data or b"")
        out = ctypes.create_string_buffer(size + GCM_TAG_SIZE)
        with self._lock:
            done = self._size
            if (lib.EVP_CipherInit_ex(ctx, None, None, None, bytes(nonce), 1) != 1
                    or (ad and lib.EVP_CipherUpdate(ctx, None, self._size_ref, ad, len(ad)) != 1)
                    or lib.EVP_CipherUpdate(ctx, out, self._size_ref, bytes(data), size) != 1 or done.value != size
                    or lib.EVP_CipherFinal_ex(ctx, self._scratch, self._size_ref) != 1 or done.value != 0
                    or lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_GET_TAG, GCM_TAG_SIZE,
                                               ctypes.addressof(out) + size) != 1):
                raise lib.failure("AES-GCM encryption")
        return out.raw

    def decrypt(self, nonce: bytes, sealed: bytes, associated_data: bytes | None) -> bytes:
        """The plaintext of ``encrypt``'s output; :class:`InvalidTag` when the tag does not authenticate it (then
        nothing decrypted is returned)."""
        if len(nonce) != GCM_NONCE_SIZE:
            raise ValueError(f"the nonce is {GCM_NONCE_SIZE} bytes (got {len(nonce)})")
        if len(sealed) < GCM_TAG_SIZE:
            raise InvalidTag("shorter than a tag")
        _check_length(sealed, "the ciphertext")
        lib, ctx, ad = self._lib, self._decrypt, bytes(associated_data or b"")
        size = len(sealed) - GCM_TAG_SIZE
        sealed = bytes(sealed)
        out = ctypes.create_string_buffer(size or 1)
        with self._lock:
            done = self._size
            if (lib.EVP_CipherInit_ex(ctx, None, None, None, bytes(nonce), 0) != 1
                    or (ad and lib.EVP_CipherUpdate(ctx, None, self._size_ref, ad, len(ad)) != 1)
                    or lib.EVP_CipherUpdate(ctx, out, self._size_ref, sealed, size) != 1 or done.value != size
                    or lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_SET_TAG, GCM_TAG_SIZE, sealed[size:]) != 1):
                raise lib.failure("AES-GCM decryption")
            # the tag is compared here, by OpenSSL (CRYPTO_memcmp: constant time)
            if lib.EVP_CipherFinal_ex(ctx, self._scratch, self._size_ref) != 1:
                lib.clear()
                ctypes.memset(out, 0, len(out))   # what was decrypted of a forgery is never handed out
                raise InvalidTag("the tag does not authenticate the data")
        return out.raw[:size]


# ------------------------------------------------------------------------------------------ keys and signatures


def _d2i(lib: Libcrypto, function: Any, der: bytes, what: str) -> int:
    """An EVP_PKEY read from the whole of ``der`` by ``function`` (d2i_PUBKEY, d2i_AutoPrivateKey)."""
    if not der or len(der) > _MAX_LENGTH:
        raise KeyFormatError(f"no {what} in {len(der)} bytes")
    buffer = ctypes.create_string_buffer(bytes(der), len(der))
    start = ctypes.addressof(buffer)
    cursor = c_void_p(start)
    try:
        pkey: int | None = function(None, ctypes.byref(cursor), len(der))
        if not pkey:
            lib.clear()
            raise KeyFormatError(f"not a {what} OpenSSL reads")
        if cursor.value != start + len(der):
            lib.EVP_PKEY_free(pkey)
            raise KeyFormatError(f"data after the {what}")
        return pkey
    finally:
        ctypes.memset(buffer, 0, len(der))   # a private key's copy does not outlive the call


def _ec_from_point(lib: Libcrypto, curve: bytes, point: bytes) -> int:
    """An EVP_PKEY of ``curve``'s point ``point`` (OpenSSL checks that it is on the curve)."""
    ctx: int | None = lib.EVP_PKEY_CTX_new_from_name(None, b"EC", None)
    if not ctx:
        raise lib.failure("EVP_PKEY_CTX_new_from_name")
    params = (_OsslParam * 3)()
    params[0] = _OsslParam(b"group", _OSSL_PARAM_UTF8_STRING, ctypes.cast(c_char_p(curve), c_void_p), len(curve), 0)
    params[1] = _OsslParam(b"pub", _OSSL_PARAM_OCTET_STRING, ctypes.cast(c_char_p(point), c_void_p), len(point), 0)
    pkey = c_void_p()
    try:
        if lib.EVP_PKEY_fromdata_init(ctx) != 1:
            raise lib.failure("EVP_PKEY_fromdata_init")
        if lib.EVP_PKEY_fromdata(ctx, ctypes.byref(pkey), _EVP_PKEY_PUBLIC_KEY, params) != 1 or not pkey.value:
            lib.clear()
            raise KeyFormatError(f"not a point of {curve.decode()}")
        return pkey.value
    finally:
        lib.EVP_PKEY_CTX_free(ctx)


class _Pkey:
    """An EVP_PKEY owned by this object."""

    __slots__ = ("__weakref__", "_lib", "_pkey", "kind")

    def __init__(self, lib: Libcrypto, pkey: int) -> None:
        self._lib = lib
        self._pkey: int | None = pkey
        self.kind = _KINDS.get(lib.EVP_PKEY_get_base_id(pkey), "other")

    def __del__(self) -> None:
        pkey, self._pkey = getattr(self, "_pkey", None), None
        if pkey:
            self._lib.EVP_PKEY_free(pkey)

    def _md(self, hash_name: str | None) -> int | None:
        if (hash_name is None) != (self.kind == "ed25519"):
            raise ValueError(f"a {self.kind} key does not sign with {hash_name or 'no hash'}")
        if hash_name not in self._lib.digests:
            raise ValueError(f"unsupported hash {hash_name}")
        return self._lib.digests[hash_name]

    def _md_ctx(self) -> int:
        ctx: int | None = self._lib.EVP_MD_CTX_new()
        if not ctx:
            raise self._lib.failure("EVP_MD_CTX_new")
        return ctx


class EvpPublicKey(_Pkey):
    """A public key, from DER SubjectPublicKeyInfo; ``kind`` is ``ec``, ``rsa``, ``ed25519`` or ``other``."""

    __slots__ = ()

    @classmethod
    def from_der(cls, lib: Libcrypto, der: bytes) -> EvpPublicKey:
        der = bytes(der)
        if lib.fromdata:
            for prefix, (curve, size) in _EC_SPKI_PREFIXES.items():
                if der.startswith(prefix) and len(der) == len(prefix) + size:
                    return cls(lib, _ec_from_point(lib, curve, der[len(prefix):]))
        return cls(lib, _d2i(lib, lib.d2i_PUBKEY, der, "SubjectPublicKeyInfo"))

    def verify(self, signature: bytes, data: bytes, hash_name: str | None) -> bool:
        """Whether ``signature`` is this key's over ``data`` (ECDSA as DER, RSA PKCS#1 v1.5, Ed25519 with
        ``hash_name`` None); a malformed signature is simply not valid."""
        md = self._md(hash_name)
        _check_length(data, "the signed data")
        lib, ctx = self._lib, self._md_ctx()
        try:
            signature, data = bytes(signature), bytes(data)
            # a key and hash OpenSSL will not pair is no proof either: anything but 1 refuses
            valid = bool(lib.EVP_DigestVerifyInit(ctx, None, md, None, self._pkey) == 1
                         and lib.EVP_DigestVerify(ctx, signature, len(signature), data, len(data)) == 1)
            if not valid:
                lib.clear()
            return valid
        finally:
            lib.EVP_MD_CTX_free(ctx)


class EvpPrivateKey(_Pkey):
    """A private key, from DER (PKCS#8, or the traditional per-type form such as SEC1's ECPrivateKey)."""

    __slots__ = ()

    @classmethod
    def from_der(cls, lib: Libcrypto, der: bytes) -> EvpPrivateKey:
        return cls(lib, _d2i(lib, lib.d2i_AutoPrivateKey, der, "private key"))

    def __repr__(self) -> str:  # never show the key
        return f"EvpPrivateKey({self.kind})"

    def sign(self, data: bytes, hash_name: str | None) -> bytes:
        """This key's signature over ``data``: ECDSA as DER, RSA PKCS#1 v1.5, Ed25519 with ``hash_name`` None."""
        md = self._md(hash_name)
        _check_length(data, "the data to sign")
        lib, ctx = self._lib, self._md_ctx()
        data = bytes(data)
        try:
            size = c_size_t(0)
            if (lib.EVP_DigestSignInit(ctx, None, md, None, self._pkey) != 1
                    or lib.EVP_DigestSign(ctx, None, ctypes.byref(size), data, len(data)) != 1):
                raise lib.failure("signing")
            out = ctypes.create_string_buffer(size.value)
            if lib.EVP_DigestSign(ctx, out, ctypes.byref(size), data, len(data)) != 1:
                raise lib.failure("signing")
            return out.raw[: size.value]
        finally:
            lib.EVP_MD_CTX_free(ctx)
