"""The per-client token bucket, with time passed in."""

from __future__ import annotations

import pytest

from sidecar.dns.ratelimit import RateLimiter


def run(limiter: RateLimiter, client: str, times: list[float]) -> list[bool]:
    return [limiter.allow(client, t) for t in times]


@pytest.mark.parametrize(
    ("qps", "burst", "times", "expected"),
    [
        (1.0, 3, [0, 0, 0, 0], [True, True, True, False]),
        (1.0, 3, [0, 0, 0, 0, 1.0], [True, True, True, False, True]),
        (1.0, 3, [0, 0, 0, 0.5, 0.99, 1.0], [True, True, True, False, False, True]),
        (10.0, 1, [0, 0.05, 0.1, 0.1, 0.2], [True, False, True, False, True]),
        # a long pause refills to burst, never above
        (100.0, 2, [0, 0, 100, 100, 100], [True, True, True, True, False]),
        # the clock stepping back refills nothing
        (1.0, 2, [10, 10, 5, 10.5, 11], [True, True, False, False, True]),
    ],
)
def test_bucket(qps: float, burst: int, times: list[float], expected: list[bool]) -> None:
    limiter = RateLimiter(qps, burst)
    assert run(limiter, "10.0.0.1", times) == expected
    assert limiter.limited == expected.count(False)


def test_clients_are_apart() -> None:
    limiter = RateLimiter(1.0, 1)
    assert run(limiter, "a", [0, 0]) == [True, False]
    assert run(limiter, "b", [0]) == [True]


def test_table_is_bounded_and_forgets_the_oldest() -> None:
    limiter = RateLimiter(1.0, 1, max_clients=3)
    for client in ["a", "b", "c", "d"]:
        assert limiter.allow(client, 0)
    assert len(limiter) == 3
    assert limiter.allow("a", 0)  # forgotten: a full bucket again
    assert not limiter.allow("d", 0)


@pytest.mark.parametrize(("qps", "burst", "clients"), [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bad_settings(qps: float, burst: int, clients: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(qps, burst, clients)
