"""When to renew our own certificate, and how to retry: a pure core, time passed in (epoch seconds).

Theory of operation
-------------------
The driver (:mod:`sidecar.tls.renewer`) tells the core which certificate is current
(:meth:`RenewalCore.on_certificate`), calls :meth:`RenewalCore.on_tick` now and then, and gets back a
:class:`Renew` command when one is due; it reports the outcome with :meth:`~RenewalCore.on_renewed` or
:meth:`~RenewalCore.on_failed`, which answer with :class:`Log` commands saying what happened and what to do.

* A certificate is due at ``renew_at`` of its lifetime, ``start + renew_at * (not_after - start)``: 70% by
  default (cert-manager renews at 2/3, SPIRE at 1/2), leaving 30% of the lifetime for retries.
* Issuers backdate ``not_before`` so that a peer whose clock lags still accepts the certificate (sidecar's own
  CA by 5 minutes, step-ca by 1). For a short certificate this dominates: a 30 s certificate backdated 5 min
  is "valid" for 330 s of which 300 were past when it was made, so 70% of that lies in the past at once.
  Backdating is not lifetime, so for a certificate we *obtained* (renewed, or written by another tool while
  we ran) the lifetime counts from when we got it (:func:`lifetime_start`); without that every renewal of a
  short backdated certificate would be due at once, a busy loop against the CA. A certificate found at
  start counts from its ``not_before``: we cannot tell backdating from age, and the safe error is one early
  renewal (a 30 s certificate backdated 5 min is renewed right at start), not a late one.
* A failed attempt keeps the current certificate (the driver never swaps in anything unverified) and is
  retried after ``retry_base`` doubling per failure up to ``retry_max``; while the certificate is valid a
  retry never waits more than half of what is left, so tries get denser toward expiry instead of jumping
  past it. Each failure is logged: a warning while there is time; an error once less than half of the
  renewal window (from the due time to expiry) remains, when the next try would fall after expiry, or
  once the certificate has expired.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    # fraction of the certificate's lifetime after which it is renewed (tls.issuer.renew_at)
    renew_at: float = 0.7
    # first retry after a failure; doubles with each failure. A second is enough for a transient CA or
    # disk error and still gives a 30 s certificate a dozen tries in its last 9 seconds
    retry_base: float = 1.0
    # retries are never further apart than this (before expiry also never past half of what remains)
    retry_max: float = 300.0


@dataclass(frozen=True, slots=True)
class Renew:
    """Obtain a new certificate for our identity now; ``attempt`` counts from 1 since the last success."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Log:
    level: int
    message: str


Command = Renew | Log


def lifetime_start(not_before: float, seen_at: float, *, obtained: bool) -> float:
    """Where a certificate's lifetime is counted from (see the module): ``seen_at`` is when we got it
    (``obtained``) or found it at start."""
    return max(not_before, seen_at) if obtained else not_before


def renewal_time(start: float, not_after: float, renew_at: float) -> float:
    """When a certificate whose lifetime counts from ``start`` is due."""
    return start + renew_at * max(not_after - start, 0.0)


def retry_delay(failures: int, remaining: float, policy: RenewalPolicy) -> float:
    """Seconds before the next try after ``failures`` consecutive failures, ``remaining`` seconds before expiry."""
    delay = min(policy.retry_base * 2.0 ** max(failures - 1, 0), policy.retry_max)
    if remaining > 0:
        delay = min(delay, max(remaining / 2.0, policy.retry_base))
    return delay


def describe_span(seconds: float) -> str:
    """A duration for a log line: ``9.0s``, ``14m``, ``16.8h``, ``3.0 days``."""
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f} days"


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RenewalCore:
    """Decides when to renew and how loudly to complain; see the module."""

    policy: RenewalPolicy = field(default_factory=RenewalPolicy)
    not_before: float = 0.0
    not_after: float = 0.0
    due: float = math.inf  # nothing is due before a certificate is known
    scheduled: float = math.inf  # when the current certificate was due before any failure moved ``due``
    failures: int = 0
    renewing: bool = False
    last_error: str | None = None

    def on_certificate(self, not_before: float, not_after: float, now: float, *, obtained: bool) -> None:
        """A certificate became current: found at start (``obtained=False``), or got at ``now``."""
        self.not_before, self.not_after = not_before, not_after
        self.failures, self.last_error = 0, None
        start = lifetime_start(not_before, now, obtained=obtained)
        self.due = self.scheduled = renewal_time(start, not_after, self.policy.renew_at)

    def on_tick(self, now: float) -> list[Command]:
        if self.renewing or now < self.due:
            return []
        self.renewing = True  # one attempt at a time; the driver answers with on_renewed or on_failed
        return [Renew(self.failures + 1)]

    def on_renewed(self, not_before: float, not_after: float, now: float) -> list[Command]:
        self.renewing = False
        self.on_certificate(not_before, not_after, now, obtained=True)
        return []

    def on_failed(self, error: str, now: float) -> list[Command]:
        self.renewing = False
        self.failures += 1
        self.last_error = error
        remaining = self.not_after - now
        delay = retry_delay(self.failures, remaining, self.policy)
        self.due = now + delay
        retry = f"try {self.failures + 1} in {describe_span(delay)}"
        if remaining <= 0:
            return [Log(logging.ERROR, f"certificate renewal failed: {error}. Our certificate expired at"
                                       f" {iso(self.not_after)}: peers refuse this sidecar until a renewal succeeds"
                                       f" or new files are written to tls.cert and tls.key; {retry}")]
        window = self.not_after - self.scheduled  # the time renewal had, from when it was due
        urgent = remaining < window / 2.0 or now + delay >= self.not_after
        return [Log(logging.ERROR if urgent else logging.WARNING,
                    f"certificate renewal failed: {error}. The current certificate keeps serving until"
                    f" {iso(self.not_after)} (in {describe_span(remaining)}); {retry}")]

    def status(self, now: float) -> dict[str, object]:
        return {
            "next_renewal": iso(self.due) if math.isfinite(self.due) else None,
            "next_renewal_in_seconds": round(self.due - now, 3) if math.isfinite(self.due) else None,
            "renewing": self.renewing,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
        }
