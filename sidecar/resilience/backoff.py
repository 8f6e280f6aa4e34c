"""Exponential back-off with full jitter between retries.

The ceiling of retry ``n`` (1 for the first retry) is ``min(max, base * 2^(n-1))``; the delay is drawn
uniformly below it ("full jitter", as AWS and Envoy do), so that callers failing together do not retry together.
``jitter`` scales the random part: 1 is full jitter, 0 gives exactly the ceiling (tests on a paused clock).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

# 2^32 * any sane base is already past any sane max: the exponent stops growing there
_MAX_EXPONENT: Final = 32


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float
    max: float
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.max > 0):
            raise ValueError(f"back-off base and max must be greater than 0 (got {self.base}, {self.max})")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1] (got {self.jitter})")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 for the first)."""
        if retry < 1:
            raise ValueError(f"retries are numbered from 1 (got {retry})")
        return min(self.max, self.base * 2.0 ** min(retry - 1, _MAX_EXPONENT))

    def delay(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number ``retry``: in ``(0, ceiling]`` with full jitter, the ceiling without."""
        ceiling = self.ceiling(retry)
        if self.jitter == 0.0:
            return ceiling
        return ceiling * (1.0 - self.jitter * rng.random())
