"""The HTTP/2 keepalive core (sidecar.http2.keepalive): when a PING goes out, when a silent peer is declared dead,
and that any frame heard counts as an answer (Envoy's connection_keepalive)."""

from __future__ import annotations

import pytest

from sidecar.http2.keepalive import Action, Keepalive, KeepalivePolicy

POLICY = KeepalivePolicy(interval=30.0, timeout=5.0)


def test_a_silent_connection_pings_after_the_interval_and_is_dead_after_the_timeout() -> None:
    keepalive = Keepalive(POLICY, now=100.0)
    assert keepalive.tick(110.0) == (Action.WAIT, 130.0)
    assert keepalive.tick(130.0) == (Action.PING, 135.0)
    assert keepalive.tick(133.0) == (Action.WAIT, 135.0)
    assert keepalive.tick(135.0) == (Action.DEAD, 135.0)


def test_an_answer_rearms_the_interval_from_when_it_was_heard() -> None:
    keepalive = Keepalive(POLICY, now=0.0)
    assert keepalive.tick(30.0)[0] is Action.PING
    keepalive.heard(30.2)   # the ack
    assert keepalive.tick(35.0) == (Action.WAIT, 60.2)
    assert keepalive.tick(60.2) == (Action.PING, 65.2)


def test_any_frame_after_the_ping_counts_as_alive() -> None:
    """An ack stuck behind a long DATA run does not kill a connection that is visibly busy."""
    keepalive = Keepalive(POLICY, now=0.0)
    assert keepalive.tick(30.0)[0] is Action.PING
    keepalive.heard(34.9)
    assert keepalive.tick(35.0)[0] is Action.WAIT


def test_traffic_keeps_a_connection_from_pinging() -> None:
    keepalive = Keepalive(POLICY, now=0.0)
    for t in range(1, 200, 10):
        keepalive.heard(float(t))
        action, wake_at = keepalive.tick(float(t) + 5)
        assert action is Action.WAIT and wake_at == t + 30.0


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 5.0), (30.0, 0.0), (-1.0, 5.0)])
def test_a_policy_needs_positive_figures(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        KeepalivePolicy(interval, timeout)
