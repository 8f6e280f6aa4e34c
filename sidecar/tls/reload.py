"""When to reload our certificate files and when to warn of expiry: the pure core of certificate rotation
without restart, time passed in (epoch seconds). The asyncio driver is :mod:`sidecar.tls.reloader`.

Theory of operation
-------------------
The driver reads the three files (CA, certificate, key) and feeds :meth:`ReloadCore.on_poll` a digest of each
(:class:`FileDigests`) and the time; the core answers with commands: :class:`Reload` the identity (cert + key)
and/or the trust (CA), or :class:`Warn`. The driver reports a load with :meth:`~ReloadCore.on_loaded` or
:meth:`~ReloadCore.on_failed`.

* Files are compared by content digest, not mtime: a rewrite within one mtime tick is still seen, and a
  ``touch`` alone reloads nothing.
* ``sidecar certs issue`` writes the key, then the certificate, so a poll can fall in between and see a
  mismatched pair: content that failed to load is not retried until a file changes again, the current
  identity keeps serving, and a warning is written only if the bad state lasts ``settle`` seconds.
* Expiry: a warning when less than ``warn_fraction`` of the certificate's lifetime remains (the last fifth:
  4.8 h of a 24 h certificate, 73 days of a year's), again every ``repeat_every``, and an error once expired.
  A fixed "less than 24 h" rule would warn for the whole life of the default 24 h certificate.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FileDigests:
    """What the three files hold: a digest each, None when missing or unreadable."""

    ca: str | None
    cert: str | None
    key: str | None

    @property
    def complete(self) -> bool:
        return None not in (self.ca, self.cert, self.key)


class MaterialChange(enum.Flag):
    NONE = 0
    IDENTITY = enum.auto()  # the certificate or its key
    TRUST = enum.auto()  # the CA


class ExpiryState(enum.Enum):
    OK = "ok"
    EXPIRING = "expiring"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    # how often the files are read; rotation takes effect within this time
    poll_interval: float = 2.0
    # warn when less than this fraction of the certificate's lifetime remains (cert-manager renews at 1/3)
    warn_fraction: float = 0.2
    # repeat the expiry warning this often, so it is in the recent log whenever someone looks
    repeat_every: float = 3600.0
    # a bad pair of files is normal for a moment during a rotation; warn if it lasts this long
    settle: float = 10.0
    # what the expiry warnings tell the operator to do (with tls.issuer: RENEWED_BY_ISSUER)
    remedy: str = "issue a new one (`sidecar certs issue`): it is picked up without a restart"


RENEWED_BY_ISSUER = ("tls.issuer renews it and logs why if it cannot: then fix tls.issuer, or write new files to"
                     " tls.cert and tls.key (picked up without a restart)")


@dataclass(frozen=True, slots=True)
class Reload:
    change: MaterialChange
    snapshot: FileDigests


@dataclass(frozen=True, slots=True)
class Warn:
    message: str
    level: int = logging.WARNING


Command = Reload | Warn


def plan(loaded: FileDigests, seen: FileDigests) -> MaterialChange:
    """What changed between what is loaded and what the files hold now."""
    change = MaterialChange.NONE
    if (seen.cert, seen.key) != (loaded.cert, loaded.key):
        change |= MaterialChange.IDENTITY
    if seen.ca != loaded.ca:
        change |= MaterialChange.TRUST
    return change


def expiry_state(not_before: float, not_after: float, now: float, warn_fraction: float) -> ExpiryState:
    remaining = not_after - now
    if remaining <= 0:
        return ExpiryState.EXPIRED
    if remaining < warn_fraction * max(not_after - not_before, 0.0):
        return ExpiryState.EXPIRING
    return ExpiryState.OK


def describe_remaining(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"  # short-lived certificates: "0 minutes" would say nothing


@dataclass
class ReloadCore:
    """Decides when to reload and when to warn; time is passed in (epoch seconds)."""

    loaded: FileDigests
    not_before: float
    not_after: float
    policy: RotationPolicy = field(default_factory=RotationPolicy)
    failed: FileDigests | None = None
    failed_since: float = 0.0
    failure: str = ""
    failure_warned: bool = False
    expiry: ExpiryState = ExpiryState.OK
    expiry_warned_at: float | None = None

    def on_poll(self, seen: FileDigests, now: float) -> list[Command]:
        out: list[Command] = []
        change = plan(self.loaded, seen)
        if not change:
            self.failed, self.failure, self.failure_warned = None, "", False
        elif not seen.complete:  # mid-rename, or deleted: nothing to load; the current identity serves on
            self._note_failure(seen, "a certificate, key or CA file is missing or unreadable", now)
        elif seen != self.failed:
            out.append(Reload(change, seen))
        if change and seen == self.failed and not self.failure_warned and now - self.failed_since >= self.policy.settle:
            self.failure_warned = True
            out.append(Warn(f"keeping the current certificate: the new files are not usable ({self.failure})"))
        out += self._expiry(now)
        return out

    def _note_failure(self, snapshot: FileDigests, error: str, now: float) -> None:
        if snapshot != self.failed:
            self.failed, self.failed_since, self.failure, self.failure_warned = snapshot, now, error, False

    def on_loaded(self, snapshot: FileDigests, not_before: float, not_after: float, now: float) -> list[Command]:
        self.loaded, self.not_before, self.not_after = snapshot, not_before, not_after
        self.failed, self.failure, self.failure_warned = None, "", False
        self.expiry, self.expiry_warned_at = ExpiryState.OK, None
        return self._expiry(now)

    def on_failed(self, snapshot: FileDigests, error: str, now: float) -> list[Command]:
        self._note_failure(snapshot, error, now)
        if self.policy.settle <= 0 and not self.failure_warned:
            self.failure_warned = True
            return [Warn(f"keeping the current certificate: the new files are not usable ({error})")]
        return []

    def _expiry(self, now: float) -> list[Command]:
        state = expiry_state(self.not_before, self.not_after, now, self.policy.warn_fraction)
        changed = state != self.expiry
        self.expiry = state
        if state is ExpiryState.OK:
            return []
        due = self.expiry_warned_at is None or now - self.expiry_warned_at >= self.policy.repeat_every
        if not (changed or due):
            return []
        self.expiry_warned_at = now
        when = dt.datetime.fromtimestamp(self.not_after, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if state is ExpiryState.EXPIRED:
            return [Warn(f"our certificate expired at {when}: peers refuse us; {self.policy.remedy}", logging.ERROR)]
        return [Warn(f"our certificate expires at {when}, in {describe_remaining(self.not_after - now)};"
                     f" {self.policy.remedy}")]
