"""The life of one HTTP/2 stream (RFC 9113 section 5.1) as a table, without server push (we advertise
SETTINGS_ENABLE_PUSH=0 and refuse PUSH_PROMISE, so the reserved states never occur).

Theory of operation
-------------------
A stream is idle until a HEADERS frame opens it; END_STREAM closes one direction (half-closed), RST_STREAM
both. :func:`advance` takes the state and one input and returns the next state, or raises
:class:`StreamStateError` naming what the RFC makes of the input: a stream error of type STREAM_CLOSED (the
stream is reset, the connection lives on) or a connection error. Inputs of the peer are ``RECV_*``, ours
``SEND_*``; an END_STREAM flag is its own input, fed after the HEADERS or DATA that carried it.

A closed stream is no longer kept by the core: frames for it are judged by :func:`after_close` from how it
closed (``CLOSED_BY_RESET`` or ``CLOSED_BY_END``), which the core remembers for a bounded number of streams.
"""

from __future__ import annotations

from typing import Final

IDLE: Final = 0
OPEN: Final = 1
HALF_CLOSED_LOCAL: Final = 2  # we sent END_STREAM; the peer may still send
HALF_CLOSED_REMOTE: Final = 3  # the peer sent END_STREAM; we may still send
CLOSED: Final = 4

RECV_HEADERS: Final = 0
RECV_DATA: Final = 1
RECV_END_STREAM: Final = 2
RECV_RST_STREAM: Final = 3
RECV_WINDOW_UPDATE: Final = 4
SEND_HEADERS: Final = 5
SEND_DATA: Final = 6
SEND_END_STREAM: Final = 7
SEND_RST_STREAM: Final = 8
_INPUTS: Final = 9

STATE_NAMES: Final = ("idle", "open", "half-closed (local)", "half-closed (remote)", "closed")
INPUT_NAMES: Final = ("HEADERS received", "DATA received", "END_STREAM received", "RST_STREAM received",
                      "WINDOW_UPDATE received", "HEADERS sent", "DATA sent", "END_STREAM sent", "RST_STREAM sent")

# how a closed stream ended: the RFC treats late frames differently after a reset than after END_STREAM
CLOSED_BY_END: Final = 0
CLOSED_BY_RESET: Final = 1

# outcomes that are not states
STREAM_CLOSED_ERROR: Final = -1  # stream error STREAM_CLOSED: reset the stream, keep the connection
CONNECTION_ERROR: Final = -2  # PROTOCOL_ERROR for the whole connection
IGNORE: Final = -3  # a frame the RFC tolerates on a closed stream (a reset or window update racing the close)

PROTOCOL_ERROR_CODE: Final = 0x1
STREAM_CLOSED_CODE: Final = 0x5

_TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (IDLE, RECV_HEADERS): OPEN,
    (IDLE, SEND_HEADERS): OPEN,
    (IDLE, RECV_DATA): CONNECTION_ERROR,  # section 5.1: anything but HEADERS or PRIORITY on an idle stream
    (IDLE, RECV_WINDOW_UPDATE): CONNECTION_ERROR,
    (IDLE, RECV_RST_STREAM): CONNECTION_ERROR,
    (OPEN, RECV_HEADERS): OPEN,  # a response after interim ones, or trailers (which must carry END_STREAM)
    (OPEN, RECV_DATA): OPEN,
    (OPEN, RECV_END_STREAM): HALF_CLOSED_REMOTE,
    (OPEN, RECV_WINDOW_UPDATE): OPEN,
    (OPEN, RECV_RST_STREAM): CLOSED,
    (OPEN, SEND_HEADERS): OPEN,
    (OPEN, SEND_DATA): OPEN,
    (OPEN, SEND_END_STREAM): HALF_CLOSED_LOCAL,
    (OPEN, SEND_RST_STREAM): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_HEADERS): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_DATA): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_END_STREAM): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_WINDOW_UPDATE): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_RST_STREAM): CLOSED,
    (HALF_CLOSED_LOCAL, SEND_RST_STREAM): CLOSED,
    (HALF_CLOSED_REMOTE, RECV_HEADERS): STREAM_CLOSED_ERROR,  # section 5.1: the peer said it was done
    (HALF_CLOSED_REMOTE, RECV_DATA): STREAM_CLOSED_ERROR,
    (HALF_CLOSED_REMOTE, RECV_WINDOW_UPDATE): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, RECV_RST_STREAM): CLOSED,
    (HALF_CLOSED_REMOTE, SEND_HEADERS): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, SEND_DATA): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, SEND_END_STREAM): CLOSED,
    (HALF_CLOSED_REMOTE, SEND_RST_STREAM): CLOSED,
}

# late frames on a closed stream, by how it closed (section 5.1, "closed"): after a reset frames already in
# flight are expected, so DATA and HEADERS only draw a STREAM_CLOSED reset; after END_STREAM both ways the peer
# has no excuse for HEADERS (a connection error of type STREAM_CLOSED); DATA is reset either way (its bytes are
# returned to the connection window), window updates and resets are ignored
_AFTER_CLOSE: Final[dict[tuple[int, int], int]] = {
    (CLOSED_BY_RESET, RECV_HEADERS): STREAM_CLOSED_ERROR,
    (CLOSED_BY_RESET, RECV_DATA): STREAM_CLOSED_ERROR,
    (CLOSED_BY_RESET, RECV_WINDOW_UPDATE): IGNORE,
    (CLOSED_BY_RESET, RECV_RST_STREAM): IGNORE,
    (CLOSED_BY_END, RECV_HEADERS): CONNECTION_ERROR,
    (CLOSED_BY_END, RECV_DATA): STREAM_CLOSED_ERROR,
    (CLOSED_BY_END, RECV_WINDOW_UPDATE): IGNORE,
    (CLOSED_BY_END, RECV_RST_STREAM): IGNORE,
}


def _flatten(table: dict[tuple[int, int], int], rows: int) -> list[int]:
    """The table as a list indexed by ``row * _INPUTS + input``; a missing pair is ``CONNECTION_ERROR``."""
    flat = [CONNECTION_ERROR] * (rows * _INPUTS)
    for (row, what), outcome in table.items():
        flat[row * _INPUTS + what] = outcome
    return flat


_NEXT: Final = _flatten(_TRANSITIONS, CLOSED + 1)
_LATE: Final = _flatten(_AFTER_CLOSE, CLOSED_BY_RESET + 1)


class StreamStateError(Exception):
    """An input the stream's state does not allow; ``connection``: the whole connection ends with ``code``."""

    def __init__(self, code: int, connection: bool, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.connection = connection
        self.reason = reason


def _outcome(outcome: int, stream_id: int, where: str, what: int) -> int:
    if outcome >= 0 or outcome == IGNORE:
        return outcome
    reason = f"{INPUT_NAMES[what]} on stream {stream_id} in state {where}"
    if outcome == STREAM_CLOSED_ERROR:
        raise StreamStateError(STREAM_CLOSED_CODE, False, reason)
    raise StreamStateError(STREAM_CLOSED_CODE if where == "closed" else PROTOCOL_ERROR_CODE, True, reason)


def advance(state: int, what: int, stream_id: int) -> int:
    """The state after ``what``; raises :class:`StreamStateError` for an input the state does not allow."""
    return _outcome(_NEXT[state * _INPUTS + what], stream_id, STATE_NAMES[state], what)


def after_close(closed_by: int, what: int, stream_id: int) -> int:
    """``IGNORE`` for a frame a closed stream may still see; raises :class:`StreamStateError` otherwise."""
    return _outcome(_LATE[closed_by * _INPUTS + what], stream_id, "closed", what)
