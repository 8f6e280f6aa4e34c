"""Connection readiness: a host that could not be connected to is left out of the picks for a short hold.

As Linkerd's balancer, which picks only among endpoints whose connection is ready and takes out one whose
connect failed until it reconnects (with back-off). An attempt that could not connect (refused, unreachable,
TLS refused, no connection within the connect timeout) reached no app: it says the host cannot take traffic
now, and a request sent there costs a retry (or fails, when the budget or ``max_retries`` refuses the retry).
Outlier ejection (:mod:`.outlier`) needs ``consecutive_failures`` of them and may be refused by
``max_ejection_percent``, since the caller cannot tell a fault of its own from the hosts'; a host's kernel
refusing a connection is the host's own answer, so the hold needs neither.

After the ``n``-th connect failure in a row a host is held for ``hold(n)``: ``HOLD_BASE`` doubling up to
``HOLD_MAX``; when the hold is over, the next pick that reaches the host probes it again. An attempt that gets a
response ends the hold and the streak. A hold never leaves a request without a host: when every host that could
take it is held, the pick falls back to them (:meth:`.cluster.Cluster.choose`).

Pure: ``now`` is passed in.
"""

from __future__ import annotations

from typing import Final

# seconds: the first hold is the retry back-off's default ceiling, so that a retry's own back-off does not bring
# it back to the host that refused it; the longest is about the time gossip takes to declare a member dead
# (the local and lan profiles), after which the catalog stops offering it: holding longer would only delay a
# restarted host's return
HOLD_BASE: Final = 0.25
HOLD_MAX: Final = 5.0


def hold(failures: int, base: float = HOLD_BASE, longest: float = HOLD_MAX) -> float:
    """How long a host is left out after its ``failures``-th connect failure in a row (1 for the first)."""
    if failures < 1:
        return 0.0
    return min(longest, base * 2.0 ** min(failures - 1, 32))


class Readiness:
    """One host's connection readiness: held until ``until`` after ``failures`` connect failures in a row."""

    __slots__ = ("failures", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.until

    def connect_failed(self, now: float) -> float:
        """An attempt could not connect: hold the host, longer for each failure in a row; returns the hold's end."""
        self.failures += 1
        self.until = max(self.until, now + hold(self.failures))
        return self.until

    def connected(self) -> None:
        """An attempt got a response: the host is ready again."""
        self.failures = 0
        self.until = 0.0
