"""Back-off: the exponential ceilings as a table, full jitter bounds with a seeded RNG."""

from __future__ import annotations

import random

import pytest

from sidecar.resilience.backoff import Backoff


@pytest.mark.parametrize(("base", "cap", "retry", "expected"), [
    (0.025, 0.25, 1, 0.025),
    (0.025, 0.25, 2, 0.05),
    (0.025, 0.25, 3, 0.1),
    (0.025, 0.25, 4, 0.2),
    (0.025, 0.25, 5, 0.25),     # capped
    (0.025, 0.25, 60, 0.25),    # no overflow however many
    (1.0, 0.5, 1, 0.5),         # a base above the cap: the cap
])
def test_ceiling_doubles_up_to_the_cap(base: float, cap: float, retry: int, expected: float) -> None:
    backoff = Backoff(base, cap, jitter=0.0)
    assert backoff.ceiling(retry) == pytest.approx(expected)
    assert backoff.delay(retry, random.Random(1)) == pytest.approx(expected)   # jitter 0: exactly the ceiling


def test_full_jitter_stays_below_the_ceiling_and_spreads() -> None:
    backoff = Backoff(0.025, 0.25)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(2000)]
    assert all(0.0 < d <= 0.1 for d in delays)
    assert min(delays) < 0.01 and max(delays) > 0.09            # uses the whole range
    assert sum(delays) / len(delays) == pytest.approx(0.05, rel=0.05)


def test_half_jitter_keeps_half_the_ceiling() -> None:
    backoff = Backoff(0.1, 1.0, jitter=0.5)
    rng = random.Random(3)
    assert all(0.05 < backoff.delay(1, rng) <= 0.1 for _ in range(500))


@pytest.mark.parametrize("kwargs", [{"base": 0.0, "max": 1.0}, {"base": 1.0, "max": -1.0},
                                    {"base": 1.0, "max": 1.0, "jitter": 1.5}])
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_retries_are_numbered_from_one() -> None:
    with pytest.raises(ValueError):
        Backoff(1.0, 2.0).ceiling(0)
