"""Where a renewed certificate comes from (``tls.issuer``): a local CA key, or a command.

Both make a :class:`NewPair` (PEM bytes in memory) for a :class:`WantedIdentity` identity and never touch
``tls.cert``/``tls.key`` themselves: the renewal driver (:mod:`sidecar.tls.renewer`) checks the pair first and
only then writes the files, so a bad issuer can never leave a bad certificate where the next start reads it.

The command is run by ``/bin/sh`` with its own process group (killed whole at the timeout), no stdin, and
these variables besides the sidecar's environment::

    SIDECAR_CERT         where to write the new certificate (PEM; the leaf first)
    SIDECAR_KEY          where to write its private key (PEM, unencrypted)
    SIDECAR_SPIFFE_ID    the identity to keep, spiffe://TRUST_DOMAIN/service/NAME
    SIDECAR_SERVICE      NAME alone, for tools that take a service (``sidecar certs issue NAME``)
    SIDECAR_TTL_SECONDS  the lifetime to ask for (tls.issuer.ttl), whole seconds
    SIDECAR_CA           tls.ca, the trust anchor the new certificate must chain to

``SIDECAR_CERT`` and ``SIDECAR_KEY`` are in a fresh private (0700) directory next to ``tls.key``, removed after
each attempt.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sidecar.shell import CommandTimedOut, run_shell
from sidecar.tls.der import Certificate
from sidecar.tls.errors import CertificateError, IssuerError
from sidecar.tls.identity import PeerIdentity

if TYPE_CHECKING:
    from sidecar.tls import certs

# what of a failing command's output goes into the error message (the end is where tools say what failed)
OUTPUT_TAIL = 400


@dataclass(frozen=True, slots=True)
class WantedIdentity:
    """The identity a new certificate must carry: our current one, with its other names."""

    spiffe_id: str
    service: str
    ttl: float
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    @classmethod
    def of(cls, identity: PeerIdentity, leaf: Certificate | None, ttl: float) -> WantedIdentity:
        if leaf is None:
            return cls(identity.spiffe_id, identity.service, ttl)
        return cls(identity.spiffe_id, identity.service, ttl, leaf.dns_names, leaf.ip_addresses)


@dataclass(frozen=True, slots=True)
class NewPair:
    cert_pem: bytes
    key_pem: bytes
    source: str  # for messages: where the pair came from

    def __repr__(self) -> str:  # never show the key
        return f"NewPair(source={self.source!r}, cert={len(self.cert_pem)} bytes)"


class Issuer(Protocol):
    name: str  # ca_key | command, as in tls.issuer

    async def obtain(self, wanted: WantedIdentity, timeout: float) -> NewPair:
        """A new certificate and key for ``wanted``, or :class:`IssuerError` saying what failed."""
        ...


# ------------------------------------------------------------------------------------------ a local CA key


class LocalCa:
    """Development: sign with a CA key on this machine (``tls.issuer.ca_key``), read afresh for each renewal."""

    name = "ca_key"

    def __init__(self, cert_path: Path, key_path: Path, trust_domain: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.trust_domain = trust_domain

    def load(self) -> certs.CertificateAuthority:
        """The CA, checked: its key matches a certificate of ``cert_path`` and it serves our trust domain."""
        from sidecar.tls import certs  # cryptography.x509 builds the certificate: imported by the first renewal

        try:
            ca = certs.CertificateAuthority.from_files(self.cert_path, self.key_path)
        except CertificateError as exc:
            raise IssuerError(f"tls.issuer.ca_key: {exc}") from None
        if ca.trust_domain != self.trust_domain:
            raise IssuerError(f"tls.issuer.ca_key: the CA in {self.cert_path} serves trust domain"
                              f" {ca.trust_domain}, not ours ({self.trust_domain}, tls.trust_domain)")
        return ca

    async def obtain(self, wanted: WantedIdentity, timeout: float) -> NewPair:
        # key generation, signing and reading the CA are blocking: off the loop the data plane runs on
        return await asyncio.to_thread(self._issue, wanted)

    def _issue(self, wanted: WantedIdentity) -> NewPair:
        from sidecar.tls import certs

        ca = self.load()
        try:
            issued = certs.issue_from(ca, wanted.service, wanted.ttl, dns_names=wanted.dns_names,
                                      ip_addresses=wanted.ip_addresses)
        except CertificateError as exc:
            raise IssuerError(f"tls.issuer.ca_key: {exc}") from None
        return NewPair(issued.cert_pem, issued.key_pem, "tls.issuer.ca_key")


# ------------------------------------------------------------------------------------------ a command


class ShellCommand:
    """Run ``tls.issuer.command``; it writes the pair to ``$SIDECAR_CERT``/``$SIDECAR_KEY`` and exits 0."""

    name = "command"

    def __init__(self, command: str, ca_path: Path, staging_parent: Path) -> None:
        self.command = command
        self.ca_path = ca_path
        self.staging_parent = staging_parent

    async def obtain(self, wanted: WantedIdentity, timeout: float) -> NewPair:
        import shutil
        import tempfile  # here: a renewal by command is rare, and the two modules cost an idle sidecar ~0.5 MiB
        try:
            staging = Path(tempfile.mkdtemp(prefix=".sidecar-renew-", dir=self.staging_parent))
        except OSError as exc:
            raise IssuerError(f"tls.issuer.command: cannot make a private directory in {self.staging_parent}"
                              f" for its output: {exc.strerror}") from None
        try:
            cert_path, key_path = staging / "cert.pem", staging / "key.pem"
            env = {**os.environ, "SIDECAR_CERT": str(cert_path), "SIDECAR_KEY": str(key_path),
                   "SIDECAR_SPIFFE_ID": wanted.spiffe_id, "SIDECAR_SERVICE": wanted.service,
                   "SIDECAR_TTL_SECONDS": str(max(1, round(wanted.ttl))), "SIDECAR_CA": str(self.ca_path)}
            try:
                done = await run_shell(self.command, env, timeout, merge_stderr=True)
            except OSError as exc:
                raise IssuerError(f"tls.issuer.command could not be started: {exc.strerror or exc}") from None
            except CommandTimedOut as exc:
                raise IssuerError(f"tls.issuer.command {exc}") from None
            if done.returncode != 0:
                output = done.stdout.decode("utf-8", "replace")
                raise IssuerError(f"tls.issuer.command {done.how()}{describe_output(output)}")
            return NewPair(_written(cert_path, "certificate", "SIDECAR_CERT"),
                           _written(key_path, "key", "SIDECAR_KEY"), "tls.issuer.command")
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def describe_output(output: str) -> str:
    """The end of a failed command's output for the error message; never a private key."""
    text = " ".join(output.split())
    if not text:
        return " (no output)"
    if "PRIVATE KEY" in text:
        return " (output not shown: it holds a private key)"
    if len(text) > OUTPUT_TAIL:
        text = "..." + text[-OUTPUT_TAIL:]
    return f": {text}"


def _written(path: Path, what: str, variable: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    if not data.strip():
        raise IssuerError(f"tls.issuer.command exited 0 but wrote no {what} to ${variable}")
    return data
