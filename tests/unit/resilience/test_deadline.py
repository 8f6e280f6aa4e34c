"""The deadline header: parsing, rounding, and how a hop's deadline is derived."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.resilience import deadline


@pytest.mark.parametrize(("raw", "seconds"), [
    (b"1500", 1.5), (b" 250 ", 0.25), (b"0", 0.0), (None, None), (b"", None), (b"-5", None), (b"1.5", None),
    (b"abc", None), (b"9" * 13, None), (b"999999999999", 86_400.0),
])
def test_parse(raw: bytes | None, seconds: float | None) -> None:
    assert deadline.parse(raw) == seconds


def _parse_as_defined(value: bytes | None) -> float | None:
    """What the header's value means, in the plainest words: stripped of ASCII whitespace, 1 to 12 digits."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 12:
        return None
    return min(int(text), deadline.MAX_MS) / 1000.0


@given(st.binary(max_size=16) | st.integers(0, 10**13).map(lambda n: b"%d" % n)
       | st.text("0123456789 \t\r\n\x0b\x0c+-.x", max_size=16).map(str.encode))
def test_parse_agrees_with_its_definition(raw: bytes) -> None:
    assert deadline.parse(raw) == _parse_as_defined(raw)


@pytest.mark.parametrize(("seconds", "raw"), [(1.5, b"1500"), (0.0019, b"1"), (0.0, b"0"), (-3.0, b"0"),
                                              (1e9, b"86400000")])
def test_to_header_rounds_down(seconds: float, raw: bytes) -> None:
    assert deadline.to_header(seconds) == raw


@pytest.mark.parametrize(("policy", "caller", "expected"), [(15.0, None, 15.0), (15.0, 2.0, 2.0), (1.0, 2.0, 1.0)])
def test_effective_never_exceeds_the_local_policy(policy: float, caller: float | None, expected: float) -> None:
    assert deadline.effective(policy, caller) == expected


@pytest.mark.parametrize(("remaining", "try_timeout", "expected"), [(3.0, None, 3.0), (3.0, 1.0, 1.0),
                                                                    (0.5, 1.0, 0.5)])
def test_per_try(remaining: float, try_timeout: float | None, expected: float) -> None:
    assert deadline.per_try(remaining, try_timeout) == expected


@pytest.mark.parametrize(("per_try_timeout", "retries", "timeout", "expected"), [
    (None, 2, 15.0, None),    # unset: a try may use the whole timeout
    (5.0, 2, 15.0, 5.0),
    (5.0, 0, 15.0, None),     # a request that is not retried has one try: the timeout bounds it
    (15.0, 2, 15.0, None),    # not shorter than the timeout: bounds nothing more
    (30.0, 2, 15.0, None),
])
def test_try_timeout(per_try_timeout: float | None, retries: int, timeout: float, expected: float | None) -> None:
    assert deadline.try_timeout(per_try_timeout, retries, timeout) == expected
