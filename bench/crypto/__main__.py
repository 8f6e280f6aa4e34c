"""What one cryptographic operation of the running sidecar costs: through the ``ssl`` module's libcrypto
(sidecar.tls.libcrypto, what the sidecar uses) against the ``cryptography`` package (what it used before, and its
fallback), on the same keys and bytes, in this process.

    python -m bench.crypto [--repeat 20000]

Printed, in µs a call (best of three rounds): AES-256-GCM seal and open of gossip-sized packets with their 20-byte
header as associated data, an open that fails its tag, ECDSA P-256 with SHA-256 sign and verify of a claim-sized
body, and reading a public key from a certificate's SubjectPublicKeyInfo (once per certificate: cached by
fingerprint). ctypes makes each C call cost about a microsecond of Python, which is most of a seal or open.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag as TheirInvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.tls import primitives


def best_us(fn: Callable[[], object], repeat: int) -> float:
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        rounds.append((time.perf_counter() - started) / repeat * 1e6)
    return min(rounds)


def refused(fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        try:
            fn()
        except (primitives.InvalidTag, TheirInvalidTag):
            return
        raise AssertionError("a forged packet was accepted")
    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20_000)
    args = parser.parse_args()
    if primitives.backend() != "libcrypto":
        print("skipped: the ssl module's libcrypto cannot be opened here (the sidecar uses cryptography)")
        return 0
    repeat = args.repeat
    key, nonce, header = os.urandom(32), os.urandom(12), os.urandom(20)
    ours, theirs = primitives.aes_gcm(key), AESGCM(key)
    rows = ["| operation | libcrypto (ctypes) | cryptography | ratio |", "|---|---:|---:|---:|"]

    def row(what: str, mine: Callable[[], object], other: Callable[[], object], times: int = repeat) -> None:
        a, b = best_us(mine, times), best_us(other, times)
        rows.append(f"| {what} | {a:.1f} µs | {b:.1f} µs | {a / b:.1f}x |")

    for size in (64, 512, 1400):
        data = os.urandom(size)
        sealed = ours.encrypt(nonce, data, header)
        forged = sealed[:-1] + bytes((sealed[-1] ^ 1,))
        row(f"AES-256-GCM seal, {size} bytes", lambda d=data: ours.encrypt(nonce, d, header),
            lambda d=data: theirs.encrypt(nonce, d, header))
        row(f"AES-256-GCM open, {size} bytes", lambda s=sealed: ours.decrypt(nonce, s, header),
            lambda s=sealed: theirs.decrypt(nonce, s, header))
    row("AES-256-GCM open refused (tag)", refused(lambda: ours.decrypt(nonce, forged, header)),
        refused(lambda: theirs.decrypt(nonce, forged, header)))

    private = ec.generate_private_key(ec.SECP256R1())
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    signer, verifier = primitives.signing_key(pkcs8), primitives.verify_key(spki)
    body = os.urandom(300)
    signature = signer.sign(body, "SHA256")
    ecdsa = ec.ECDSA(hashes.SHA256())
    public = private.public_key()
    few = max(1, repeat // 10)
    row("ECDSA P-256 sign, 300 bytes", lambda: signer.sign(body, "SHA256"), lambda: private.sign(body, ecdsa), few)
    row("ECDSA P-256 verify, 300 bytes", lambda: verifier.verify(signature, body, "SHA256"),
        lambda: public.verify(signature, body, ecdsa), few)
    row("public key from SubjectPublicKeyInfo", lambda: primitives.verify_key(spki),
        lambda: serialization.load_der_public_key(spki), few)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
