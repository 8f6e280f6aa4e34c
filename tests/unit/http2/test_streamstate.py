"""The stream state table (RFC 9113 section 5.1) and what a closed stream makes of late frames, row by row."""

from __future__ import annotations

import pytest

from sidecar.http2 import streamstate as s

PROTOCOL_ERROR, STREAM_CLOSED = 0x1, 0x5


@pytest.mark.parametrize(("state", "what", "after"), [
    (s.IDLE, s.RECV_HEADERS, s.OPEN),
    (s.IDLE, s.SEND_HEADERS, s.OPEN),
    (s.OPEN, s.RECV_DATA, s.OPEN),
    (s.OPEN, s.RECV_END_STREAM, s.HALF_CLOSED_REMOTE),
    (s.OPEN, s.SEND_END_STREAM, s.HALF_CLOSED_LOCAL),
    (s.OPEN, s.RECV_RST_STREAM, s.CLOSED),
    (s.OPEN, s.SEND_RST_STREAM, s.CLOSED),
    (s.HALF_CLOSED_LOCAL, s.RECV_HEADERS, s.HALF_CLOSED_LOCAL),
    (s.HALF_CLOSED_LOCAL, s.RECV_END_STREAM, s.CLOSED),
    (s.HALF_CLOSED_REMOTE, s.SEND_DATA, s.HALF_CLOSED_REMOTE),
    (s.HALF_CLOSED_REMOTE, s.RECV_WINDOW_UPDATE, s.HALF_CLOSED_REMOTE),
    (s.HALF_CLOSED_REMOTE, s.SEND_END_STREAM, s.CLOSED),
])
def test_allowed_inputs_move_the_stream(state: int, what: int, after: int) -> None:
    assert s.advance(state, what, 1) == after


@pytest.mark.parametrize(("state", "what", "code", "connection"), [
    (s.IDLE, s.RECV_DATA, PROTOCOL_ERROR, True),  # section 5.1: only HEADERS or PRIORITY on an idle stream
    (s.IDLE, s.RECV_WINDOW_UPDATE, PROTOCOL_ERROR, True),
    (s.IDLE, s.RECV_RST_STREAM, PROTOCOL_ERROR, True),
    (s.HALF_CLOSED_REMOTE, s.RECV_DATA, STREAM_CLOSED, False),  # the peer said it was done
    (s.HALF_CLOSED_REMOTE, s.RECV_HEADERS, STREAM_CLOSED, False),
    (s.HALF_CLOSED_LOCAL, s.SEND_DATA, PROTOCOL_ERROR, True),  # not in the table: never allowed
])
def test_inputs_the_state_does_not_allow_are_errors_of_the_kind_the_rfc_names(state: int, what: int, code: int,
                                                                              connection: bool) -> None:
    with pytest.raises(s.StreamStateError) as caught:
        s.advance(state, what, 7)
    assert (caught.value.code, caught.value.connection) == (code, connection)
    assert "stream 7" in caught.value.reason


@pytest.mark.parametrize(("closed_by", "what", "outcome"), [
    (s.CLOSED_BY_RESET, s.RECV_HEADERS, (STREAM_CLOSED, False)),  # in flight when we reset it
    (s.CLOSED_BY_RESET, s.RECV_DATA, (STREAM_CLOSED, False)),
    (s.CLOSED_BY_RESET, s.RECV_WINDOW_UPDATE, None),
    (s.CLOSED_BY_RESET, s.RECV_RST_STREAM, None),
    (s.CLOSED_BY_END, s.RECV_HEADERS, (STREAM_CLOSED, True)),  # the peer had ended it: no excuse
    (s.CLOSED_BY_END, s.RECV_DATA, (STREAM_CLOSED, False)),
    (s.CLOSED_BY_END, s.RECV_WINDOW_UPDATE, None),
])
def test_late_frames_on_a_closed_stream(closed_by: int, what: int, outcome: tuple[int, bool] | None) -> None:
    if outcome is None:
        assert s.after_close(closed_by, what, 3) == s.IGNORE
        return
    with pytest.raises(s.StreamStateError) as caught:
        s.after_close(closed_by, what, 3)
    assert (caught.value.code, caught.value.connection) == outcome
