"""The checks the abuse tests rely on work on an untouched sidecar."""

from __future__ import annotations

from tests.integration.abuse.conftest import NORMAL_LATENCY, Target


def test_every_listener_answers_a_normal_request(target: Target) -> None:
    took = target.check_all()
    assert set(took) == {"admin", "api", "outbound", "inbound", "dns", "gossip"}
    assert max(took.values()) < NORMAL_LATENCY * 2, took
