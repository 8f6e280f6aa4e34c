"""What signed catalog claims cost: the signature and its check, push-pull sizes, and a broadcast at N members.

    python -m bench.claims [--n 1000] [--seed 1] [--repeat 2000]

1. One claim (one instance, the project's key type: EC P-256, ECDSA with SHA-256): its size on the wire with
   and without its certificate, the signing node's cost, and a peer's cost to check it, warm (certificate
   known by fingerprint: one signature verification) and cold (certificate first seen: parse, chain to the
   CA, then the signature).
2. Push-pull at N nodes of one service each: the size of a node's whole state (every claim with its
   certificate), a joiner's cost to check all N claims (cold), and a member's cost for the same push-pull
   when it holds every claim already (versions compared, no signature checked).
3. The simulated network (sidecar.gossip.simnet, LAN profile) at N members: one node broadcasts a real signed
   claim (with its certificate) at t=2s, every member decodes and checks it on delivery (the check's CPU
   time is measured and added up), and the 99.9% reach is compared with the same run carrying the 160-byte
   payload bench.gossip uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.catalog.model import ServiceMetadata
from sidecar.catalog.signing import ClaimVerifier, sign
from sidecar.catalog.sync import Claim, decode_claims, encode_claims, signed_bytes
from sidecar.config.model import GOSSIP_PROFILES
from sidecar.gossip.outputs import Event, UserMessage
from sidecar.gossip.simnet import SimNetwork
from sidecar.tls import certs, signatures
from sidecar.tls.der import parse_certificate, pem_ec_private_key
from sidecar.tls.primitives import SigningKey

LAN = GOSSIP_PROFILES["lan"]
ALGORITHM = ec.ECDSA(hashes.SHA256())
TD = "mesh.local"
NOW = dt.datetime.now(dt.UTC)
CA = certs.make_ca(TD, now=NOW)


def signing_key(issued: certs.IssuedCertificate) -> SigningKey:
    """The issued key as a running sidecar holds its own (read from PEM, loaded by sidecar.tls.primitives)."""
    return signatures.private_key(pem_ec_private_key(issued.key_pem))


def claim_of(node: str, service: str, version: int = 1) -> Claim:
    issued = certs.issue_from(CA, service, 3600, now=NOW)
    instance = ServiceMetadata(f"{service}:{node}", service, "1.0.0", "10.0.0.1", 8080, ("v1",), (), node=node)
    unsigned = Claim(node, "prod", service, version, (instance,))
    return sign(unsigned, issued.certificate.public_bytes(serialization.Encoding.DER), signing_key(issued))


def verifier() -> ClaimVerifier:
    anchors = (certs.parsed(CA.certificate),)
    return ClaimVerifier(TD, "prod", lambda: anchors, lambda: NOW.timestamp())


def per_call_us(fn: Callable[[], object], repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat * 1e6


def micro(repeat: int) -> list[str]:
    issued = certs.issue_from(CA, "pay", 3600, now=NOW)
    der = issued.certificate.public_bytes(serialization.Encoding.DER)
    instance = ServiceMetadata("pay:n1", "pay", "1.0.0", "10.0.0.1", 8080, ("v1",), (), node="n1")
    unsigned = Claim("n1", "prod", "pay", 1, (instance,))
    key = signing_key(issued)
    claim = sign(unsigned, der, key)
    sign_us = per_call_us(lambda: sign(unsigned, der, key), repeat)
    warm = verifier()
    warm.check(claim)
    warm_us = per_call_us(lambda: warm.check(claim), repeat)
    cold_us = per_call_us(lambda: verifier().check(claim), max(1, repeat // 4))
    wire = encode_claims([claim])
    decode_us = per_call_us(lambda: decode_claims(wire), repeat)
    body = signed_bytes(claim)
    public_key = signatures.ec_public_key(parse_certificate(der).public_key)
    raw_sign_us = per_call_us(lambda: signatures.sign(key, body), repeat)
    raw_verify_us = per_call_us(lambda: signatures.verify(public_key, claim.signature, body), repeat)
    theirs = issued.key.public_key()   # the same operations by the cryptography package, for comparison
    their_sign_us = per_call_us(lambda: issued.key.sign(body, ALGORITHM), repeat)
    their_verify_us = per_call_us(lambda: theirs.verify(claim.signature, body, ALGORITHM), repeat)
    return [
        "| claim (1 instance) | bytes with certificate | bytes without | sign (node) | check warm (peer) |"
        " check cold (first sight of the certificate) | decode | raw ECDSA sign / verify | the same by cryptography |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| EC P-256 / ECDSA-SHA256 | {len(wire)} | {len(encode_claims([claim], False))} | {sign_us:.0f} µs |"
        f" {warm_us:.0f} µs | {cold_us:.0f} µs | {decode_us:.0f} µs | {raw_sign_us:.0f} / {raw_verify_us:.0f} µs |"
        f" {their_sign_us:.0f} / {their_verify_us:.0f} µs |",
    ]


def push_pull(n: int) -> list[str]:
    claims = [claim_of(f"n{i:05d}", f"svc-{i:05d}") for i in range(n)]
    state = encode_claims(claims)
    joiner = verifier()
    started = time.perf_counter()
    for claim in decode_claims(state):
        joiner.check(claim)
    cold = time.perf_counter() - started
    held = {c.slot: c.version for c in claims}
    started = time.perf_counter()
    checked = 0
    for claim in decode_claims(state):
        if held.get(claim.slot, -1) < claim.version:
            checked += 1
    warm = time.perf_counter() - started
    return [
        f"| push-pull at N={n:,} | state (all claims with certificates) | a joiner checks all (cold) |"
        " a member that holds them all |",
        "|---|---|---|---|",
        f"| one service per node | {len(state) / 1024:,.0f} KiB ({len(state) / n:.0f} B per claim) |"
        f" {cold * 1000:,.0f} ms | {warm * 1000:,.1f} ms (decode only; {checked} signatures checked) |",
    ]


def simulate(n: int, seed: int, payload: bytes, check: bool) -> tuple[float | None, float, int]:
    """99.9% reach (s), CPU seconds spent checking, deliveries."""
    net = SimNetwork(LAN, seed=seed)
    names = [f"m{i:05d}" for i in range(n)]
    net.add_converged(names)
    gc.collect()
    gc.freeze()
    reached: dict[str, float] = {}
    spent = [0.0]
    checkers: dict[str, ClaimVerifier] = {}

    def listener(now: float, observer: str, event: Event) -> None:
        if not isinstance(event, UserMessage) or observer in reached:
            return
        reached[observer] = now
        if check:
            started = time.perf_counter()
            found = checkers.setdefault(observer, verifier())
            for claim in decode_claims(event.data):
                found.check(claim)
            spent[0] += time.perf_counter() - started

    net.listeners.append(listener)
    net.run_until(2.0)
    net.nodes[names[0]].core.broadcast_user("catalog:m00000:pay", payload)
    net.run_until(12.0)
    reach = sorted(when - 2.0 for when in reached.values())
    need = math.ceil(0.999 * (n - 1))
    del net
    gc.unfreeze()
    gc.collect()
    return (reach[need - 1] if len(reach) >= need else None), spent[0], len(reached)


def simulation(n: int, seed: int) -> list[str]:
    claim = encode_claims([claim_of("m00000", "pay")])
    rows = [f"| N={n:,}, LAN profile | payload | 99.9% reach | deliveries | checking CPU, all members |"
            " per member |", "|---|---|---|---|---|---|"]
    for label, payload, check in (("bench.gossip's user broadcast", b'{"status":"healthy"}' * 8, False),
                                  ("a signed claim with its certificate", claim, True)):
        reach, spent, delivered = simulate(n, seed, payload, check)
        shown = f"{reach:.2f}s = {reach / LAN.gossip_interval:.1f} rounds" if reach is not None else "n/a"
        cpu = f"{spent * 1000:,.0f} ms" if check else "-"
        each = f"{spent / max(delivered, 1) * 1e6:,.0f} µs" if check else "-"
        rows.append(f"| | {label} ({len(payload)} B) | {shown} | {delivered:,} | {cpu} | {each} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.claims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args(argv)
    for block in (micro(args.repeat), push_pull(args.n), simulation(args.n, args.seed)):
        print("\n".join(block) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
