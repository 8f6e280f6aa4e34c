"""The retry budget's arithmetic on a fake clock: deposits, withdrawals, the reserve, the sliding window."""

from __future__ import annotations

import pytest

from sidecar.resilience.budget import RetryBudget


def spend(budget: RetryBudget, now: float, limit: int = 10_000) -> int:
    """Withdraw until refused; how many were allowed."""
    taken = 0
    while taken < limit and budget.try_withdraw(now):
        taken += 1
    return taken


@pytest.mark.parametrize(("ratio", "min_per_second", "requests", "allowed"), [
    (0.2, 0.0, 100, 20),
    (0.2, 10.0, 100, 30),      # 20 from traffic, 10 from one second of reserve
    (0.0, 10.0, 100, 10),      # the reserve only
    (0.2, 0.0, 4, 0),          # 0.8 of a retry is not a retry
    (0.5, 0.0, 3, 1),
    (1.0, 0.0, 7, 7),
])
def test_allowance_in_the_first_second(ratio: float, min_per_second: float, requests: int, allowed: int) -> None:
    budget = RetryBudget(ratio, min_per_second, now=100.0)
    for _ in range(requests):
        budget.deposit(100.0)
    assert spend(budget, 100.5) == allowed
    assert budget.state(100.5).retries == allowed


def test_the_reserve_grows_by_the_second_up_to_the_window() -> None:
    budget = RetryBudget(0.2, 10.0, now=0.0, window=10.0, slots=10)
    assert budget.state(0.0).reserve == 10.0
    assert budget.state(3.5).reserve == 40.0
    assert budget.state(9.99).reserve == 100.0
    assert budget.state(50.0).reserve == 100.0      # a whole window at most


def test_a_total_outage_is_bounded_by_ratio_and_reserve() -> None:
    """Every request fails and asks for a retry: over T seconds retries <= ratio * requests + min * ceil(T)."""
    budget = RetryBudget(0.2, 10.0, now=0.0)
    requests = retries = 0
    now = 0.0
    for _ in range(300):                 # 100 requests/s for 3 s
        budget.deposit(now)
        requests += 1
        if budget.try_withdraw(now):
            retries += 1
        now += 0.01
    assert retries <= 0.2 * requests + 10 * 3
    assert retries >= 0.2 * requests     # and the budget is used, not refused outright


def test_deposits_and_withdrawals_leave_the_window() -> None:
    budget = RetryBudget(0.5, 0.0, now=0.0, window=10.0, slots=10)
    for _ in range(10):
        budget.deposit(0.0)
    assert spend(budget, 1.0) == 5
    assert spend(budget, 9.0) == 0                  # still in the window: spent
    state = budget.state(10.5)                      # the slot of t=0 left the window, that of t=1 not yet
    assert (state.requests, state.retries) == (0, 5)
    state = budget.state(11.5)
    assert (state.requests, state.retries) == (0, 0)
    assert spend(budget, 11.5) == 0                 # nothing deposited since
    for _ in range(4):
        budget.deposit(11.5)
    assert spend(budget, 11.5) == 2


def test_withdrawals_after_their_deposits_left_still_count_until_they_leave() -> None:
    budget = RetryBudget(1.0, 0.0, now=0.0, window=2.0, slots=2)
    for _ in range(4):
        budget.deposit(0.0)
    assert spend(budget, 1.5) == 4                  # withdrawn in slot 1
    for _ in range(4):
        budget.deposit(2.2)                         # slot 0 left; slot 1's 4 withdrawals remain
    assert budget.state(2.2).available == pytest.approx(0.0)
    assert budget.state(3.1).available == pytest.approx(4.0)   # slot 1 left too


def test_refused_withdrawals_take_nothing() -> None:
    budget = RetryBudget(0.2, 0.0, now=0.0)
    for _ in range(5):
        budget.deposit(0.0)
    assert budget.try_withdraw(0.0) is True
    assert budget.try_withdraw(0.0) is False
    assert budget.state(0.0).retries == 1


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryBudget(-0.1, 1.0, now=0.0)
    with pytest.raises(ValueError):
        RetryBudget(0.2, 1.0, now=0.0, slots=0)


def test_the_reserve_counts_from_the_budgets_creation_not_the_clocks_grid() -> None:
    budget = RetryBudget(0.0, 10.0, now=100.7)
    assert budget.state(101.2).reserve == 10.0       # 0.5 s after creation: one second begun
    assert budget.state(101.7).reserve == 20.0
