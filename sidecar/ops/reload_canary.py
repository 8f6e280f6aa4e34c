"""The canary's judgement: did the error ratio after a reload rise past the threshold above the ratio before?

Pure. Counts are (requests, errors) as telemetry records them per request: an error is a request whose caller
got no answer from the app (connect failure, reset, timeout, a refusal by the sidecar itself such as an
authorization denial or a cap) or a 5xx. The baseline is the window of the same length before the reload;
the observed counts are the requests that ended since. Below :data:`MIN_REQUESTS` observed requests there is
no verdict: one failed request among three is not a trend.

Like Flagger's and Argo Rollouts' analysis, the check runs at intervals during the window and rolls back at
the first failing check rather than at the end: the point of a canary is to shorten the bad minutes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# observed requests below which the canary does not judge (one failure among a handful proves nothing)
MIN_REQUESTS = 20


@dataclass(frozen=True, slots=True)
class Counts:
    requests: int
    errors: int

    @property
    def ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def __sub__(self, other: Counts) -> Counts:
        return Counts(max(0, self.requests - other.requests), max(0, self.errors - other.errors))

    def as_tuple(self) -> tuple[int, int]:
        return self.requests, self.errors


class CanaryVerdict(enum.Enum):
    UNDECIDED = "undecided"     # too few requests yet
    HEALTHY = "healthy"
    ROLL_BACK = "roll-back"


def judge(baseline: Counts, observed: Counts, max_error_rate: float,
          min_requests: int = MIN_REQUESTS) -> tuple[CanaryVerdict, str]:
    """The verdict on the requests observed since the reload, and a sentence saying why."""
    if observed.requests < min_requests:
        return CanaryVerdict.UNDECIDED, (f"{observed.requests} requests since the reload, fewer than the "
                                         f"{min_requests} needed to judge")
    limit = baseline.ratio + max_error_rate
    said = (f"error ratio {observed.ratio:.3f} ({observed.errors}/{observed.requests}) since the reload, "
            f"{baseline.ratio:.3f} ({baseline.errors}/{baseline.requests}) before, threshold {limit:.3f} "
            f"(before + reload.canary_max_error_rate {max_error_rate:g})")
    if observed.ratio > limit:
        return CanaryVerdict.ROLL_BACK, said
    return CanaryVerdict.HEALTHY, said


def check_interval(window: float) -> float:
    """How often the window is checked: ten times per window, between 0.1s and 1s."""
    return min(1.0, max(0.1, window / 10.0))
