"""The catalog's wire form for gossip: claims, each a node's statement about one service it hosts.

A claim is ``(node, cluster, service, version, instances, subscriptions)`` plus the proof: the SHA-256
fingerprint of the certificate that names the service, the certificate itself (DER; left out where the
receiver is expected to know it by fingerprint), and a signature by that certificate's key over
:func:`signed_bytes`. A node with ``tls`` sends one claim per identity it holds (sidecar.catalog.signing); a
node without sends one unsigned claim with service ``""`` for all of its services, which only nodes without
``tls`` keep. Peers keep, per (node, service), the claim with the highest version.

Versions are epoch milliseconds made strictly increasing per node, so a restarted node's claims are newer
than anything it said before it died. Decoding never raises anything but :class:`SyncDecodeError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from sidecar.catalog.model import ServiceMetadata, Subscription

_FORMAT = 2
MAX_DECODED = 4 << 20  # claims larger than 4 MiB decompressed are refused, not inflated
# what the signature covers besides the claim: a signature made for anything else never verifies as a claim
SIGNATURE_CONTEXT = "sidecar-catalog/2"
WHOLE_NODE = ""  # the service of an unsigned claim that covers every service of a node without tls


class SyncDecodeError(ValueError):
    """A catalog claim from a peer could not be read; the peer is at fault."""


@dataclass(frozen=True, slots=True)
class Claim:
    node: str
    cluster: str
    service: str
    version: int
    instances: tuple[ServiceMetadata, ...]
    subscriptions: tuple[Subscription, ...] = ()
    fingerprint: bytes = b""   # SHA-256 of the certificate's DER; empty: unsigned
    signature: bytes = field(default=b"", repr=False)
    certificate: bytes = field(default=b"", repr=False)   # DER; may be left out (known by fingerprint)

    @property
    def signed(self) -> bool:
        return bool(self.signature and self.fingerprint)

    @property
    def slot(self) -> tuple[str, str]:
        """What a newer claim replaces: the same node's claim about the same service."""
        return self.node, self.service


def next_version(previous: int, now_ms: int) -> int:
    """Strictly increasing, and close to wall time so it survives restarts."""
    return max(previous + 1, now_ms)


def _instance_json(instance: ServiceMetadata) -> dict[str, object]:
    return dict(instance.to_json(), messagesPath=instance.messages_path)


def signed_bytes(claim: Claim) -> bytes:
    """The canonical bytes a claim's signature covers: everything but the signature and the certificate (the
    fingerprint binds it). Built from the parsed values, so a receiver computes the same bytes however the
    sender spelled its JSON, and a value that does not survive parsing unchanged fails the signature."""
    body = [SIGNATURE_CONTEXT, claim.node, claim.cluster, claim.service, claim.version,
            [_instance_json(i) for i in claim.instances], [s.to_json() for s in claim.subscriptions],
            claim.fingerprint.hex()]
    return json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _claim_json(claim: Claim, with_certificate: bool) -> list[object]:
    return [claim.node, claim.cluster, claim.service, claim.version, [_instance_json(i) for i in claim.instances],
            [s.to_json() for s in claim.subscriptions], _b64(claim.fingerprint), _b64(claim.signature),
            _b64(claim.certificate) if with_certificate else ""]


def encode_claims(claims: Iterable[Claim], with_certificates: bool = True) -> bytes:
    body = json.dumps([_FORMAT, [_claim_json(c, with_certificates) for c in claims]], separators=(",", ":")).encode()
    return zlib.compress(body, 6)


def _bytes(value: object) -> bytes:
    if not isinstance(value, str):
        raise SyncDecodeError("malformed claim: proof fields are base64 strings")
    return base64.b64decode(value, validate=True)


def decode_claims(data: bytes) -> list[Claim]:
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(data, MAX_DECODED)
        if inflater.unconsumed_tail:
            raise SyncDecodeError(f"catalog claims larger than {MAX_DECODED} bytes")
        doc = json.loads(body)
        if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == _FORMAT and isinstance(doc[1], list)):
            raise SyncDecodeError("not catalog claims of a known format")
        claims = []
        for item in doc[1]:
            if not isinstance(item, list) or len(item) != 9:
                raise SyncDecodeError("malformed claim")
            node, cluster, service, version, instances, subscriptions = item[:6]
            if (not isinstance(node, str) or not isinstance(cluster, str) or not isinstance(service, str)
                    or not isinstance(version, int) or isinstance(version, bool) or not isinstance(instances, list)
                    or not isinstance(subscriptions, list)):
                raise SyncDecodeError("malformed claim")
            claims.append(Claim(node, cluster, service, version,
                                tuple(ServiceMetadata.from_json(i) for i in instances),
                                tuple(Subscription.from_json(s) for s in subscriptions),
                                _bytes(item[6]), _bytes(item[7]), _bytes(item[8])))
        return claims
    except SyncDecodeError:
        raise
    # RecursionError: JSON nested deeper than the interpreter's stack; OverflowError: a port of Infinity
    except (zlib.error, ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError,
            binascii.Error) as e:
        raise SyncDecodeError(f"malformed catalog claim: {type(e).__name__}: {e}") from None
