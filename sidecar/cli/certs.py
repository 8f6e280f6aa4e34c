"""``sidecar certs init`` and ``sidecar certs issue``: the development CA of :mod:`sidecar.tls.certs` on the
command line. Exit codes: 0 written, 2 bad usage, 1 failure."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar.tls import certs
from sidecar.tls.errors import CertificateError, SpiffeIdError
from sidecar.tls.identity import spiffe_ids, validate_service_name, validate_trust_domain


def cmd_certs_init(directory: str, trust_domain: str) -> int:
    """``sidecar certs init --dir DIR --trust-domain TD``: 0 written, 2 bad usage, 1 failure."""
    try:
        validate_trust_domain(trust_domain)
    except SpiffeIdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        paths = certs.init_ca(directory, trust_domain)
    except CertificateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ca = certs.load_certificate(paths.cert)
    print(f"CA for trust domain {trust_domain}, valid until {certs.iso_utc(ca.not_valid_after_utc)}")
    print(f"wrote {paths.cert}")
    print(f"wrote {paths.key} (private key, mode 0600: keep it safe)")
    return 0


MAX_COMPLIANT_TTL = 366 * 86400   # Mozilla's intermediate profile: certificate lifetime at most 366 days


def cmd_certs_issue(services: str | Sequence[str], directory: str, ttl: str = "24h") -> int:
    """``sidecar certs issue SERVICE [SERVICE...] --dir DIR [--ttl 24h]``: one certificate and key per service
    (an X.509-SVID names exactly one service); 0 written, 2 bad usage, 1 failure. With several services, the
    lines to paste into ``tls.identities`` are printed too."""
    names = [services] if isinstance(services, str) else list(services)
    try:
        for service in names:
            validate_service_name(service)
        seconds = certs.ttl_seconds(ttl)
    except (SpiffeIdError, CertificateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(set(names)) != len(names):
        print("error: a service is named twice; each gets one certificate", file=sys.stderr)
        return 2
    if not (Path(directory) / certs.CA_CERT_FILE).exists():
        print(f"error: no CA in {directory} ({certs.CA_CERT_FILE} is missing); run `sidecar certs init`",
              file=sys.stderr)
        return 1
    if seconds > MAX_COMPLIANT_TTL:
        print(f"warning: --ttl {ttl} is over 366 days: Mozilla's TLS profiles (and sslyze) call such a certificate"
              " non-compliant; prefer short certificates renewed by tls.issuer", file=sys.stderr)
    written: list[tuple[str, certs.CertPaths]] = []
    for service in names:
        try:
            paths = certs.issue(service, directory, seconds)
            leaf = certs.load_certificate(paths.cert)
        except CertificateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        until = certs.iso_utc(leaf.not_valid_after_utc)
        print(f"{spiffe_ids(certs.parsed(leaf))[0]}, serial {leaf.serial_number:x}, valid until {until}")
        print(f"wrote {paths.cert}")
        print(f"wrote {paths.key} (private key, mode 0600)")
        written.append((service, paths))
    if len(written) > 1:
        first, rest = written[0], written[1:]
        print(f"for one node hosting them all: tls: {{cert: {first[1].cert}, key: {first[1].key}, identities: [")
        for service, paths in rest:
            print(f"  {{service: {service}, cert: {paths.cert}, key: {paths.key}}},")
        print("]}")
    return 0
