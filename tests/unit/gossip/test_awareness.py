"""Lifeguard's local health score: clamped, and scaling the probe interval."""

from __future__ import annotations

import pytest

from sidecar.gossip.awareness import Awareness


def test_score_moves_clamped_and_scales_timeouts() -> None:
    # memberlist's awareness_test table: delta, expected score, expected scaled 1s timeout
    cases = [(0, 0, 1.0), (-1, 0, 1.0), (-10, 0, 1.0), (1, 1, 2.0), (-1, 0, 1.0), (10, 7, 8.0), (-1, 6, 7.0),
             (-1, 5, 6.0), (-1, 4, 5.0), (-1, 3, 4.0), (-1, 2, 3.0), (-1, 1, 2.0), (-1, 0, 1.0), (-1, 0, 1.0)]
    a = Awareness(8)
    for delta, score, timeout in cases:
        assert a.apply_delta(delta) == score
        assert a.score == score
        assert a.scale_timeout(1.0) == timeout


def test_a_multiplier_of_one_never_scales() -> None:
    a = Awareness(1)
    a.apply_delta(5)
    assert a.scale_timeout(0.5) == 0.5


def test_the_multiplier_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Awareness(0)
