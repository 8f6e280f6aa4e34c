"""X.509 certificates and EC private keys read from DER, for what the running sidecar needs of them. Pure: bytes in,
values out.

Why not ``cryptography.x509``: its Python layer (names, extensions, the OID tables) costs about 1.5 MiB resident
in every process that imports it, and a running sidecar reads few things of a certificate: the SPIFFE ID and
other names of the SAN, whether it is a CA, the validity dates, the serial, the issuer (for messages), and the
signed bytes with their signature and the public key (checked by :mod:`sidecar.tls.signatures`). The ``sidecar certs``
commands and the renewal by a local CA key build certificates and keep ``cryptography.x509``
(:mod:`sidecar.tls.certs`).

The reader is strict DER (RFC 5280's profile of X.690): definite, minimal lengths, nothing left over after any
element, one of each extension. Anything else is a :class:`DerError` (a ``ValueError``), which the callers turn into
"certificate could not be parsed". A certificate a peer presents has passed OpenSSL's own parsing and chain
verification before it is read here; a certificate in a gossiped catalog claim is read here first and then has its
signature checked against ``tls.ca``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field, replace

# universal tags (X.690)
_BOOLEAN = 0x01
_INTEGER = 0x02
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_OID = 0x06
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_SEQUENCE = 0x30
_SET = 0x31
# context tags of TBSCertificate and its extensions
_VERSION = 0xA0
_ISSUER_UID = 0x81
_SUBJECT_UID = 0x82
_EXTENSIONS = 0xA3
_SAN_DNS = 0x82
_SAN_URI = 0x86
_SAN_IP = 0x87
_AKI_KEY_ID = 0x80
# string types an AttributeValue (a common name) may have, with their encodings
_STRINGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be", 0x1C: "utf-32-be"}

# OIDs, as the content bytes of their DER encoding
OID_SUBJECT_ALT_NAME = bytes.fromhex("551d11")        # 2.5.29.17
OID_BASIC_CONSTRAINTS = bytes.fromhex("551d13")       # 2.5.29.19
OID_KEY_USAGE = bytes.fromhex("551d0f")               # 2.5.29.15
OID_AUTHORITY_KEY_ID = bytes.fromhex("551d23")        # 2.5.29.35
OID_COMMON_NAME = bytes.fromhex("550403")             # 2.5.4.3
OID_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")   # 1.2.840.10045.2.1
OID_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
OID_ED25519 = bytes.fromhex("2b6570")                 # 1.3.101.112

_KEY_CERT_SIGN = 0x04  # keyUsage bit 5 (RFC 5280 4.2.1.3), in the first byte after the unused-bits count
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


class DerError(ValueError):
    """The bytes are not the DER this reader accepts; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A SubjectPublicKeyInfo: its algorithm, the curve's OID for EC keys, the key bytes, and the whole of it."""

    algorithm: bytes   # OID content bytes (OID_EC_PUBLIC_KEY, OID_RSA_ENCRYPTION, OID_ED25519...)
    curve: bytes       # the namedCurve OID of an EC key, else b""
    key: bytes         # the BIT STRING's bytes: an EC point, an RSAPublicKey, the raw Ed25519 key
    # the SubjectPublicKeyInfo's DER, what OpenSSL loads the key from (sidecar.tls.signatures); not compared: the
    # key is the three fields above
    info: bytes = field(default=b"", compare=False)


@dataclass(frozen=True, slots=True)
class Certificate:
    """What the sidecar reads of a certificate (the names follow ``cryptography.x509.Certificate``'s)."""

    der: bytes
    tbs: bytes                     # TBSCertificate, whole: what the signature covers
    serial_number: int
    issuer: bytes                  # the issuer Name, DER (compared byte for byte with a CA's subject)
    subject: bytes
    not_valid_before_utc: dt.datetime
    not_valid_after_utc: dt.datetime
    public_key: PublicKey
    signature_algorithm: bytes     # OID content bytes
    signature: bytes
    uris: tuple[str, ...] = ()     # the SAN's URIs, in order
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    ca: bool = False               # basicConstraints cA=TRUE
    key_cert_sign: bool = False    # keyUsage keyCertSign
    authority_key_id: bytes | None = None
    issuer_common_name: str | None = None


@dataclass(slots=True)
class _Extensions:
    """What the reader takes from a certificate's extensions (the rest it skips)."""

    uris: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    ca: bool = False
    key_cert_sign: bool = False
    authority_key_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class EcPrivateKey:
    """An EC private key (PKCS#8 or SEC1): the curve's OID, the secret scalar, and the DER it was read from."""

    curve: bytes
    value: int
    # the PEM block's DER, whole (PKCS#8 or SEC1): what OpenSSL loads the key from (sidecar.tls.signatures); not
    # compared: the key is the curve and the scalar
    der: bytes = field(default=b"", compare=False)

    def __repr__(self) -> str:  # never show the key
        return f"EcPrivateKey(curve={self.curve.hex()})"


# ------------------------------------------------------------------------------------------ the reader


class _Elements:
    """Elements of one DER encoding in order, from ``start`` to ``end`` of ``data``."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def more(self) -> bool:
        return self.pos < self.end

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < self.end else None

    def element(self) -> tuple[int, int, int, int]:
        """The next element's tag, where it starts (tag byte), where its content starts, where it ends."""
        data, at = self.data, self.pos
        if at + 2 > self.end:
            raise DerError("truncated element")
        tag = data[at]
        if tag & 0x1F == 0x1F:
            raise DerError("high tag numbers are not used in certificates")
        first = data[at + 1]
        content = at + 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4:
                raise DerError("indefinite or oversized length")
            if content + count > self.end:
                raise DerError("truncated length")
            length = int.from_bytes(data[content : content + count], "big")
            if length < 0x80 or data[content] == 0:
                raise DerError("length not in its shortest form")
            content += count
        end = content + length
        if end > self.end:
            raise DerError("element runs past its container")
        self.pos = end
        return tag, at, content, end

    def expect(self, tag: int) -> tuple[int, int]:
        """The content span of the next element, which must have ``tag``."""
        got, _, content, end = self.element()
        if got != tag:
            raise DerError(f"expected tag 0x{tag:02x}, found 0x{got:02x}")
        return content, end

    def bytes_of(self, tag: int) -> bytes:
        content, end = self.expect(tag)
        return self.data[content:end]

    def whole(self, tag: int) -> bytes:
        """The next element with its tag and length (what a signature or a comparison covers)."""
        start = self.pos
        _, end = self.expect(tag)
        return self.data[start:end]

    def inner(self, tag: int) -> _Elements:
        content, end = self.expect(tag)
        return _Elements(self.data, content, end)

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise DerError(f"unexpected data after {what}")


def _integer(content: bytes) -> int:
    if not content:
        raise DerError("empty INTEGER")
    if len(content) > 1 and ((content[0] == 0 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)):
        raise DerError("INTEGER not in its shortest form")
    return int.from_bytes(content, "big", signed=True)


def _bit_string(content: bytes) -> tuple[bytes, int]:
    if not content or content[0] > 7 or (len(content) == 1 and content[0] != 0):
        raise DerError("malformed BIT STRING")
    return content[1:], content[0]


def _boolean(content: bytes) -> bool:
    if content == b"\xff":
        return True
    if content == b"\x00":
        return False
    raise DerError("malformed BOOLEAN")


def _ascii(content: bytes, what: str) -> str:
    try:
        return content.decode("ascii")
    except UnicodeDecodeError:
        raise DerError(f"{what} is not ASCII (IA5String)") from None


def _time(tag: int, content: bytes) -> dt.datetime:
    text = _ascii(content, "a time")
    if not text.endswith("Z") or not text[:-1].isdigit():
        raise DerError(f"malformed time {text!r}")
    if tag == _UTC_TIME and len(text) == 13:
        year, rest = int(text[:2]), text[2:]
        year += 2000 if year < 50 else 1900   # RFC 5280 4.1.2.5.1
    elif tag == _GENERALIZED_TIME and len(text) == 15:
        year, rest = int(text[:4]), text[4:]
    else:
        raise DerError("a time is neither UTCTime nor GeneralizedTime in RFC 5280's form")
    try:
        return dt.datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), int(rest[8:10]),
                           tzinfo=dt.UTC)
    except ValueError:
        raise DerError(f"impossible time {text!r}") from None


def _common_name(name: bytes) -> str | None:
    """The first common name of a DER Name, None without one."""
    rdns = _Elements(name).inner(_SEQUENCE)
    while rdns.more():
        attributes = rdns.inner(_SET)
        while attributes.more():
            attribute = attributes.inner(_SEQUENCE)
            oid = attribute.bytes_of(_OID)
            tag, _, content, end = attribute.element()
            if oid == OID_COMMON_NAME and tag in _STRINGS:
                try:
                    return attribute.data[content:end].decode(_STRINGS[tag])
                except UnicodeDecodeError:
                    raise DerError("undecodable common name") from None
    return None


def _public_key_info(info: bytes) -> PublicKey:
    spki = _Elements(info).inner(_SEQUENCE)
    algorithm = spki.inner(_SEQUENCE)
    oid = algorithm.bytes_of(_OID)
    curve = b""
    if oid == OID_EC_PUBLIC_KEY:
        curve = algorithm.bytes_of(_OID)
    key, unused = _bit_string(spki.bytes_of(_BIT_STRING))
    spki.done("SubjectPublicKeyInfo")
    if unused:
        raise DerError("public key is not a whole number of bytes")
    return PublicKey(oid, curve, key, info)


# ------------------------------------------------------------------------------------------ certificates


def parse_certificate(der: bytes) -> Certificate:
    """A DER certificate read, or :class:`DerError`."""
    outer = _Elements(der)
    certificate = outer.inner(_SEQUENCE)
    outer.done("the certificate")
    tbs_bytes = certificate.whole(_SEQUENCE)
    signature_algorithm = certificate.whole(_SEQUENCE)
    signature, unused = _bit_string(certificate.bytes_of(_BIT_STRING))
    certificate.done("the signature")
    if unused:
        raise DerError("signature is not a whole number of bytes")

    tbs = _Elements(tbs_bytes).inner(_SEQUENCE)
    version = 0
    if tbs.peek() == _VERSION:
        explicit = tbs.inner(_VERSION)
        version = _integer(explicit.bytes_of(_INTEGER))
        explicit.done("the version")
    serial = _integer(tbs.bytes_of(_INTEGER))
    if tbs.whole(_SEQUENCE) != signature_algorithm:
        raise DerError("the signed algorithm differs from the certificate's signature algorithm")
    issuer = tbs.whole(_SEQUENCE)
    validity = tbs.inner(_SEQUENCE)
    times = []
    for _ in range(2):
        tag, _, content, end = validity.element()
        times.append(_time(tag, validity.data[content:end]))
    validity.done("the validity")
    subject = tbs.whole(_SEQUENCE)
    key = _public_key_info(tbs.whole(_SEQUENCE))
    extensions = _Extensions()
    for unique_id in (_ISSUER_UID, _SUBJECT_UID):
        if tbs.peek() == unique_id:
            tbs.element()
    if tbs.peek() == _EXTENSIONS:
        if version != 2:
            raise DerError("extensions in a certificate that is not version 3")
        explicit = tbs.inner(_EXTENSIONS)
        extensions = _extensions(explicit.inner(_SEQUENCE))
        explicit.done("the extensions")
    tbs.done("the certificate's fields")
    algorithm = _Elements(signature_algorithm).inner(_SEQUENCE).bytes_of(_OID)
    return Certificate(der=der, tbs=tbs_bytes, serial_number=serial, issuer=issuer, subject=subject,
                       not_valid_before_utc=times[0], not_valid_after_utc=times[1], public_key=key,
                       signature_algorithm=algorithm, signature=signature, uris=extensions.uris,
                       dns_names=extensions.dns_names, ip_addresses=extensions.ip_addresses, ca=extensions.ca,
                       key_cert_sign=extensions.key_cert_sign, authority_key_id=extensions.authority_key_id,
                       issuer_common_name=_common_name(issuer))


def _extensions(extensions: _Elements) -> _Extensions:
    seen: set[bytes] = set()
    found = _Extensions()
    while extensions.more():
        extension = extensions.inner(_SEQUENCE)
        oid = extension.bytes_of(_OID)
        if oid in seen:
            raise DerError("an extension appears twice")  # RFC 5280 4.2
        seen.add(oid)
        if extension.peek() == _BOOLEAN:
            _boolean(extension.bytes_of(_BOOLEAN))
        content, end = extension.expect(_OCTET_STRING)
        extension.done("an extension")
        value = _Elements(extension.data, content, end)
        if oid == OID_SUBJECT_ALT_NAME:
            found.uris, found.dns_names, found.ip_addresses = _alt_names(value.inner(_SEQUENCE))
        elif oid == OID_BASIC_CONSTRAINTS:
            constraints = value.inner(_SEQUENCE)
            if constraints.peek() == _BOOLEAN:
                found.ca = _boolean(constraints.bytes_of(_BOOLEAN))
            if constraints.peek() == _INTEGER:
                _integer(constraints.bytes_of(_INTEGER))
            constraints.done("basicConstraints")
        elif oid == OID_KEY_USAGE:
            bits, _ = _bit_string(value.bytes_of(_BIT_STRING))
            found.key_cert_sign = bool(bits) and bool(bits[0] & _KEY_CERT_SIGN)
        elif oid == OID_AUTHORITY_KEY_ID:
            identifier = value.inner(_SEQUENCE)
            if identifier.peek() == _AKI_KEY_ID:
                found.authority_key_id = identifier.bytes_of(_AKI_KEY_ID)
            continue   # its issuer and serial parts are not read
        else:
            continue   # an extension the sidecar does not read (OpenSSL refuses unknown critical ones)
        value.done("an extension's value")
    return found


def _alt_names(names: _Elements) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The URIs, DNS names and IP addresses of a GeneralNames, each in order."""
    uris: list[str] = []
    dns: list[str] = []
    ips: list[str] = []
    while names.more():
        tag, _, content, end = names.element()
        value = names.data[content:end]
        if tag == _SAN_URI:
            uris.append(_ascii(value, "a URI name"))
        elif tag == _SAN_DNS:
            dns.append(_ascii(value, "a DNS name"))
        elif tag == _SAN_IP:
            if len(value) not in (4, 16):
                raise DerError("an IP address name is neither 4 nor 16 bytes")
            ips.append(str(ipaddress.ip_address(value)))
    return tuple(uris), tuple(dns), tuple(ips)


# ------------------------------------------------------------------------------------------ PEM and keys


def pem_blocks(pem: bytes, *labels: str) -> list[bytes]:
    """The DER of every PEM block labelled one of ``labels``, in order; :class:`DerError` for bad base64."""
    found = []
    for match in _PEM_BLOCK.finditer(pem):
        if match.group(1).decode() not in labels:
            continue
        body = b"".join(line.strip() for line in match.group(2).splitlines()
                        if line.strip() and b":" not in line)   # RFC 1421 headers (an encrypted key) are skipped
        try:
            found.append(base64.b64decode(body, validate=True))
        except binascii.Error:
            raise DerError(f"a {match.group(1).decode()} block is not base64") from None
    return found


def pem_certificates(pem: bytes) -> list[Certificate]:
    """Every certificate of a PEM file, read; :class:`DerError` when there is none or one is unreadable."""
    blocks = pem_blocks(pem, "CERTIFICATE")
    if not blocks:
        raise DerError("no PEM certificate")
    return [parse_certificate(block) for block in blocks]


def pem_ec_private_key(pem: bytes) -> EcPrivateKey:
    """The first unencrypted EC private key of a PEM file (PKCS#8 ``PRIVATE KEY`` or SEC1 ``EC PRIVATE KEY``)."""
    if b"ENCRYPTED" in pem or b"Proc-Type: 4,ENCRYPTED" in pem:
        raise DerError("the private key is encrypted")
    pkcs8 = pem_blocks(pem, "PRIVATE KEY")
    if pkcs8:
        info = _Elements(pkcs8[0]).inner(_SEQUENCE)
        _integer(info.bytes_of(_INTEGER))
        algorithm = info.inner(_SEQUENCE)
        if algorithm.bytes_of(_OID) != OID_EC_PUBLIC_KEY:
            raise DerError("not an EC private key")
        curve = algorithm.bytes_of(_OID)
        return replace(_sec1(info.bytes_of(_OCTET_STRING), curve), der=pkcs8[0])
    sec1 = pem_blocks(pem, "EC PRIVATE KEY")
    if sec1:
        return replace(_sec1(sec1[0], b""), der=sec1[0])
    raise DerError("no PEM private key")


def _sec1(der: bytes, curve: bytes) -> EcPrivateKey:
    """RFC 5915's ECPrivateKey; its [0] parameters name the curve when the PKCS#8 wrapper does not."""
    key = _Elements(der).inner(_SEQUENCE)
    if _integer(key.bytes_of(_INTEGER)) != 1:
        raise DerError("unknown ECPrivateKey version")
    value = int.from_bytes(key.bytes_of(_OCTET_STRING), "big")
    if key.peek() == 0xA0:
        parameters = key.inner(0xA0)
        named = parameters.bytes_of(_OID)
        if curve and named != curve:
            raise DerError("the key's two curve names differ")
        curve = named
    if not curve:
        raise DerError("the EC private key names no curve")
    return EcPrivateKey(curve, value)
