"""The sidecar renews its own certificate (``tls.issuer``): the asyncio driver of :mod:`sidecar.tls.renewal`.

    renewer = Renewer.from_config(config.tls, store, clock)     # None without tls.issuer
    task = asyncio.create_task(renewer.run())                    # next to store.watch()

At the time the schedule says, one attempt:

1. ask the issuer (:mod:`sidecar.tls.issuers`: the local CA key, or the command) for a new key and certificate
   with the SAME identity: the SPIFFE ID of the current certificate, and its DNS and IP names;
2. check the pair in memory exactly as the identity store will (key matches, signed by a CA in ``tls.ca``, one
   SPIFFE ID of our trust domain, valid now) and that it is still our SPIFFE ID;
3. write ``tls.key`` then ``tls.cert``, each atomically (temporary file, fsync, rename, directory fsync; the key
   0600 from its first byte), so that a restart finds the new pair;
4. make the :class:`~sidecar.tls.reloader.IdentityStore` load it at once (it checks it again before the swap):
   new handshakes present the new certificate, connections already open keep theirs.

Any failure leaves the current certificate serving; it is logged with its cause and retried with back-off.
A certificate replaced by another tool while we run (the store's file watch) is noticed and rescheduled.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.model import TlsConfig
from sidecar.log import fields
from sidecar.tls.errors import CertificateError, IssuerError
from sidecar.tls.identity import PeerIdentity
from sidecar.tls.issuers import Issuer, LocalCa, ShellCommand, WantedIdentity
from sidecar.tls.reloader import Bundle, IdentityStore, TlsPaths, validate
from sidecar.tls.renewal import Log, Renew, RenewalCore, RenewalPolicy, iso

log = logging.getLogger("sidecar.tls")

_KEY_MODE = 0o600
_CERT_MODE = 0o644
# the loop wakes at least this often: to notice a certificate another tool wrote, and a wall clock that jumped
MAX_NAP = 1.0
# a command gets this long, and never more than half of what the current certificate has left (at least
# MIN_COMMAND_TIMEOUT): a hung command must leave time for retries
COMMAND_TIMEOUT = 60.0
MIN_COMMAND_TIMEOUT = 5.0


def command_timeout(remaining: float) -> float:
    return min(COMMAND_TIMEOUT, max(MIN_COMMAND_TIMEOUT, remaining / 2.0))


class Renewer:
    """Keeps our certificate fresh; ``results`` counts attempts by outcome (``success``, ``failure``)."""

    def __init__(self, store: IdentityStore, issuer: Issuer, ttl: float, *, policy: RenewalPolicy | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.issuer = issuer
        self.ttl = ttl
        self.clock = clock
        self.core = RenewalCore(policy or RenewalPolicy())
        self.results: Counter[str] = Counter({"success": 0, "failure": 0})
        self.last_renewed: float | None = None
        material = store.material
        self._serial = material.identity.serial
        self.core.on_certificate(material.not_before.timestamp(), material.identity.not_after.timestamp(),
                                 clock.wall(), obtained=False)

    @classmethod
    def from_config(cls, tls: TlsConfig, store: IdentityStore, clock: Clock = SYSTEM_CLOCK) -> Renewer | None:
        """A renewer for ``tls.issuer``, or None when another tool renews the files. A CA key that cannot sign
        for our trust domain is refused here, at start (:class:`IssuerError`), not at the first renewal."""
        issuer_config = tls.issuer
        if issuer_config is None:
            return None
        issuer: Issuer
        if issuer_config.ca_key is not None:
            local = LocalCa(Path(issuer_config.ca_cert or tls.ca), Path(issuer_config.ca_key), tls.trust_domain)
            local.load()
            issuer = local
        elif issuer_config.command is not None:
            issuer = ShellCommand(issuer_config.command, Path(tls.ca), Path(tls.key).parent)
        else:  # load.py refuses this; a config built in code might not have gone through it
            raise IssuerError("tls.issuer: needs exactly one of ca_key or command")
        return cls(store, issuer, float(issuer_config.ttl), policy=RenewalPolicy(renew_at=issuer_config.renew_at),
                   clock=clock)

    # ------------------------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Renew whenever due, until cancelled. Nothing that goes wrong in an attempt ends the loop."""
        material = self.store.material
        due = self.core.due
        log.info("certificate renewal on", extra=fields(
            issuer=self.issuer.name, spiffe_id=material.identity.spiffe_id, serial=material.identity.serial_hex,
            valid_until=iso(material.identity.not_after.timestamp()),
            next_renewal=iso(due) if due > self.clock.wall() else "now", ttl=f"{self.ttl:g}s"))
        while True:
            now = self.clock.wall()
            self._notice_replacement(now)
            for command in self.core.on_tick(now):
                if isinstance(command, Renew):
                    await self._attempt(command)
            await self.clock.sleep(min(max(self.core.due - self.clock.wall(), 0.0), MAX_NAP))

    def _notice_replacement(self, now: float) -> None:
        material = self.store.material
        if material.identity.serial == self._serial or self.core.renewing:
            return
        self._serial = material.identity.serial
        self.core.on_certificate(material.not_before.timestamp(), material.identity.not_after.timestamp(), now,
                                 obtained=True)
        log.info("our certificate was replaced by new files; renewal rescheduled",
                 extra=fields(serial=material.identity.serial_hex, next_renewal=iso(self.core.due)))

    async def _attempt(self, command: Renew) -> None:
        old = self.store.identity
        try:
            new = await self.renew_once()
        except asyncio.CancelledError:
            raise
        except (CertificateError, OSError) as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not end renewal: it is logged and retried like any failure
            log.exception("certificate renewal hit an unexpected error")
            error = f"unexpected error {exc!r}"
        else:
            now = self.clock.wall()
            self.results["success"] += 1
            self.last_renewed = now
            self._serial = new.serial
            self.core.on_renewed(self.store.material.not_before.timestamp(), new.not_after.timestamp(), now)
            log.info("renewed our certificate", extra=fields(
                spiffe_id=new.spiffe_id, serial=f"{old.serial_hex}->{new.serial_hex}",
                valid_until=iso(new.not_after.timestamp()), next_renewal=iso(self.core.due),
                issuer=self.issuer.name, attempt=command.attempt))
            return
        self.results["failure"] += 1
        for out in self.core.on_failed(error, self.clock.wall()):
            if isinstance(out, Log):
                log.log(out.level, "%s", out.message)

    # ------------------------------------------------------------------------------------ one renewal

    async def renew_once(self) -> PeerIdentity:
        """One renewal now; the identity now in use, or :class:`CertificateError` (nothing changed in memory)."""
        material = self.store.material
        current = material.identity
        wanted = WantedIdentity.of(current, material.leaf, self.ttl)
        remaining = current.not_after.timestamp() - self.clock.wall()
        pair = await self.issuer.obtain(wanted, command_timeout(remaining))
        paths = self.store.paths
        ca = await asyncio.to_thread(_read_ca, paths.ca)
        # the same checks the store makes before a swap, on the bytes in memory, before anything is written;
        # the names say where the bytes came from, not the files they are not yet in
        source = TlsPaths(paths.ca, Path(f"the certificate from {pair.source}"), Path(f"the key from {pair.source}"))
        checked = validate(Bundle(ca, pair.cert_pem, pair.key_pem), source, self.store.trust_domain,
                           self.clock.wall())
        if checked.identity.spiffe_id != current.spiffe_id:
            raise IssuerError(f"{pair.source} made a certificate for {checked.identity.spiffe_id}, not for our"
                              f" {current.spiffe_id}: a renewal must keep the identity")
        await asyncio.to_thread(_write_pair, paths, pair.cert_pem, pair.key_pem)
        self.store.poll()  # take it now rather than at the next poll of the files; it checks the pair again
        if self.store.identity.serial != checked.identity.serial:
            raise IssuerError(f"the new certificate was written to {paths.cert} but not loaded:"
                              f" {self.store.last_error or 'the files changed again meanwhile'}")
        return self.store.identity

    # ------------------------------------------------------------------------------------ admin, metrics

    def status(self) -> dict[str, Any]:
        now = self.clock.wall()
        return {
            "issuer": self.issuer.name,
            "ttl_seconds": self.ttl,
            "renew_at": self.core.policy.renew_at,
            **self.core.status(now),
            "last_renewed": iso(self.last_renewed) if self.last_renewed is not None else None,
            "results": dict(self.results),
        }


def _read_ca(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path} (tls.ca): {exc.strerror}") from None


def _write_pair(paths: TlsPaths, cert_pem: bytes, key_pem: bytes) -> None:
    # the key first, as `sidecar certs issue` does: a watcher that reads between the two sees a mismatched
    # pair and keeps its identity; the store's poll right after takes both
    from sidecar.tls import certs  # with cryptography.x509: what renewals need, not a sidecar that never renews

    certs.write_file(paths.key, key_pem, _KEY_MODE)
    certs.write_file(paths.cert, cert_pem, _CERT_MODE)
