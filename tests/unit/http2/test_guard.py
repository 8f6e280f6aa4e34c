"""The frame guard's reset budget, through the core: every RST_STREAM frame the peer sends counts, also those
of streams that are over (h2 ignores them)."""

from __future__ import annotations

from sidecar.http2.connection import H2Connection
from sidecar.http2.events import ConnectionTerminated, StreamReset
from sidecar.http2.limits import H2Limits
from tests.unit.http2.peer import RawPeer

ENHANCE_YOUR_CALM = 0xB


def server(**limits: float) -> tuple[H2Connection, RawPeer]:
    core = H2Connection(client_side=False, limits=H2Limits(**limits))  # type: ignore[arg-type]
    peer = RawPeer()
    core.receive_data(peer.preface(), 0.0)
    core.data_to_send()
    return core, peer


def test_resets_of_closed_streams_are_bounded_too() -> None:
    """h2 ignores a RST_STREAM on a stream that is over: without the guard's count, an endless stream of them
    would cost the server for ever."""
    core, peer = server(max_peer_resets=50)
    core.receive_data(peer.headers(1, end_stream=True), 0.0)
    core.reset(1)
    events = core.receive_data(peer.rst(1) * 50, 0.0)
    assert not core.closed and events == []
    events = core.receive_data(peer.rst(1), 0.0)
    assert [type(e) for e in events] == [ConnectionTerminated]
    assert events[0].error_code == ENHANCE_YOUR_CALM   # type: ignore[union-attr]
    assert core.counters == {"rapid_reset": 1}


def test_resets_within_the_budget_pass() -> None:
    core, peer = server(max_peer_resets=100, budget_window=1.0)
    for second in range(3):
        sids = range(1 + 400 * second, 1 + 400 * second + 2 * 90, 2)
        events = core.receive_data(b"".join(peer.headers(s) + peer.rst(s) for s in sids), float(second))
        assert len([e for e in events if isinstance(e, StreamReset)]) == 90
    assert not core.closed
