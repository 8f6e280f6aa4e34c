"""Health of one registered service, as a pure state machine: results in, status changes out.

Theory of operation
-------------------
Each check result is healthy, degraded or unhealthy. The status flips only after enough consecutive
results of the new kind: ``failures_before_unhealthy`` for unhealthy, ``success_before_healthy`` for
healthy and degraded (Consul's ``failures_before_critical`` and ``success_before_passing``). A service
with a check starts unhealthy, as Consul's critical and Kubernetes' not-ready: traffic waits for the
first passing result. A TTL check fails by itself when no heartbeat came within the TTL. A service
unhealthy for ``deregister_after`` is to be removed. ``now`` is always passed in (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.catalog.model import HealthStatus
from sidecar.config.model import CheckConfig


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: HealthStatus
    output: str = ""


@dataclass(frozen=True, slots=True)
class StatusChange:
    before: HealthStatus
    after: HealthStatus
    output: str


class HealthTracker:
    """Consecutive-result thresholds, TTL expiry and the deregistration clock for one service."""

    def __init__(self, check: CheckConfig | None, now: float) -> None:
        self.check = check
        self.status = HealthStatus.UNHEALTHY if check is not None else HealthStatus.HEALTHY
        self.output = "no result yet" if check is not None else "no check"
        self._streak_status = self.status
        self._streak = 0
        # when the status last became unhealthy; drives deregister_after
        self.unhealthy_since: float | None = now if self.status is HealthStatus.UNHEALTHY else None
        # TTL: the time by which the next heartbeat must come
        self.ttl_deadline: float | None = now + check.ttl if check is not None and check.ttl is not None else None
        self.forced: HealthStatus | None = None  # set while draining: overrides every result

    def record(self, result: CheckResult, now: float) -> StatusChange | None:
        """Count one result; return the change if the status flipped."""
        if result.status is self._streak_status:
            self._streak += 1
        else:
            self._streak_status, self._streak = result.status, 1
        self.output = result.output
        if self.forced is not None or result.status is self.status:
            return None
        if self._streak < self._threshold(result.status):
            return None
        return self._set(result.status, result.output, now)

    def heartbeat(self, status: HealthStatus, note: str, now: float) -> StatusChange | None:
        """A TTL heartbeat from the app: it resets the TTL and counts as a result."""
        if self.check is not None and self.check.ttl is not None:
            self.ttl_deadline = now + self.check.ttl
        return self.record(CheckResult(status, note or f"heartbeat: {status.value}"), now)

    def on_tick(self, now: float) -> StatusChange | None:
        """Fail a TTL check whose heartbeat is late; one failure per missed TTL period."""
        if self.ttl_deadline is None or now < self.ttl_deadline or self.check is None or self.check.ttl is None:
            return None
        self.ttl_deadline = now + self.check.ttl
        return self.record(CheckResult(HealthStatus.UNHEALTHY, f"no heartbeat within ttl {self.check.ttl.to_text()}"),
                           now)

    def should_deregister(self, now: float) -> bool:
        after = self.check.deregister_after if self.check is not None else None
        return after is not None and self.unhealthy_since is not None and now - self.unhealthy_since >= after

    def force(self, status: HealthStatus | None, output: str, now: float) -> StatusChange | None:
        """Pin the status (draining), or release the pin with None; results count again after release."""
        self.forced = status
        if status is not None and status is not self.status:
            return self._set(status, output, now)
        return None

    def _threshold(self, status: HealthStatus) -> int:
        if self.check is None:
            return 1
        if status is HealthStatus.UNHEALTHY:
            return self.check.failures_before_unhealthy
        return self.check.success_before_healthy

    def _set(self, status: HealthStatus, output: str, now: float) -> StatusChange:
        change = StatusChange(self.status, status, output)
        self.status = status
        if status is HealthStatus.UNHEALTHY:
            self.unhealthy_since = now
        else:
            self.unhealthy_since = None
        return change
