"""Where our HTTP/2 core (``sidecar.http2.core``) follows RFC 9113 more closely than the h2-backed one: a
malformed message is a stream error (section 8.1.1), not the end of every stream of the connection."""

from __future__ import annotations

from hyperframe.frame import GoAwayFrame, RstStreamFrame

from sidecar.http2.core import REMEMBERED_CLOSED, H2Connection
from sidecar.http2.events import ConnectionTerminated, DataReceived, HeadersReceived, StreamEnded, StreamReset
from sidecar.http2.flow import InboundWindow
from tests.unit.http2.peer import REQUEST, RawPeer, frames

PROTOCOL_ERROR, FRAME_SIZE_ERROR = 0x1, 0x6


def server() -> tuple[H2Connection, RawPeer]:
    core = H2Connection(client_side=False)
    peer = RawPeer()
    core.receive_data(peer.preface(), 0.0)
    core.data_to_send()
    return core, peer


def resets(core: H2Connection) -> list[tuple[int, int]]:
    return [(f.stream_id, f.error_code) for f in frames(core.data_to_send()) if isinstance(f, RstStreamFrame)]


def test_a_malformed_request_is_refused_and_the_other_streams_go_on() -> None:
    core, peer = server()
    core.receive_data(peer.headers(1), 0.0)
    events = core.receive_data(peer.headers(3, [*REQUEST, (b"connection", b"close")], end_stream=True), 0.0)
    assert events == [] and resets(core) == [(3, PROTOCOL_ERROR)]
    assert core.counters == {"stream_errors": 1} and not core.closed
    events = core.receive_data(peer.data(1, b"still here", end_stream=True), 0.0)
    assert [type(e) for e in events] == [DataReceived, StreamEnded]


def test_a_body_longer_than_its_content_length_resets_the_stream() -> None:
    core, peer = server()
    core.receive_data(peer.headers(1, [*REQUEST, (b"content-length", b"3")]), 0.0)
    events = core.receive_data(peer.data(1, b"four", end_stream=True), 0.0)
    assert events == [StreamReset(1, PROTOCOL_ERROR, remote=False)] and not core.closed
    sent = frames(core.data_to_send())
    assert [(f.stream_id, f.error_code) for f in sent if isinstance(f, RstStreamFrame)] == [(1, PROTOCOL_ERROR)]


def test_a_body_shorter_than_its_content_length_resets_the_stream_when_trailers_end_it() -> None:
    core, peer = server()
    core.receive_data(peer.headers(1, [*REQUEST, (b"content-length", b"10")]) + peer.data(1, b"four"), 0.0)
    events = core.receive_data(peer.headers(1, [(b"grpc-status", b"0")], end_stream=True), 0.0)
    assert events == [StreamReset(1, PROTOCOL_ERROR, remote=False)] and not core.closed


def test_trailers_without_end_stream_reset_the_stream() -> None:
    core, peer = server()
    core.receive_data(peer.headers(1), 0.0)
    events = core.receive_data(peer.headers(1, [(b"grpc-status", b"0")]), 0.0)
    assert events == [StreamReset(1, PROTOCOL_ERROR, remote=False)] and not core.closed


def test_data_before_a_response_resets_the_stream() -> None:
    client = H2Connection(client_side=True)
    client.data_to_send()
    sid = client.start_request(REQUEST, end_stream=True)
    client.data_to_send()
    events = client.receive_data(RawPeer.settings() + RawPeer.data(sid, b"early"), 0.0)
    assert events == [StreamReset(sid, PROTOCOL_ERROR, remote=False)] and not client.closed


def test_a_server_cannot_open_a_stream_with_headers() -> None:
    client = H2Connection(client_side=True)
    client.data_to_send()
    events = client.receive_data(RawPeer.settings() + RawPeer().headers(2, [(b":status", b"200")]), 0.0)
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == PROTOCOL_ERROR


def test_push_promise_is_a_protocol_error() -> None:
    client = H2Connection(client_side=True)
    sid = client.start_request(REQUEST, end_stream=True)
    client.data_to_send()
    push = b"\x00\x00\x04\x05\x04" + sid.to_bytes(4, "big") + (2).to_bytes(4, "big")  # END_HEADERS, promises 2
    events = client.receive_data(RawPeer.settings() + push, 0.0)
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == PROTOCOL_ERROR


def test_a_settings_acknowledgement_with_a_payload_is_a_frame_size_error() -> None:
    core, _ = server()
    events = core.receive_data(b"\x00\x00\x01\x04\x01\x00\x00\x00\x00\x00", 0.0)  # RFC 9113 section 6.5
    assert events == [ConnectionTerminated(FRAME_SIZE_ERROR, "SETTINGS acknowledgement with a payload", False)]
    assert [f.error_code for f in frames(core.data_to_send()) if isinstance(f, GoAwayFrame)] == [FRAME_SIZE_ERROR]


def test_padding_counts_against_the_windows() -> None:
    core, peer = server()
    core.receive_data(peer.headers(1), 0.0)
    padded = b"\x00\x00\x0a\x00\x08\x00\x00\x00\x01" + b"\x05" + b"abcd" + b"\x00" * 5  # 4 bytes + 6 of padding
    [event] = core.receive_data(padded, 0.0)
    assert event == DataReceived(1, b"abcd", 10)
    assert [type(e) for e in core.receive_data(peer.headers(3, end_stream=True), 0.0)] == [HeadersReceived,
                                                                                           StreamEnded]


def test_credit_goes_back_in_batches_of_half_a_window() -> None:
    window = InboundWindow(1000)
    window.consumed(600)
    assert window.credit(400) == 0  # under half the window passed on
    assert window.credit(200) == 600 and window.current == 1000
    window.consumed(1000)
    assert window.credit(300) == 300  # a shut window reopens sooner


def test_a_reset_of_an_idle_stream_is_a_protocol_error() -> None:
    core, peer = server()
    core.receive_data(peer.headers(1), 0.0)
    events = core.receive_data(peer.rst(5), 0.0)  # RFC 9113 section 5.1
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == PROTOCOL_ERROR


def test_the_last_closed_streams_are_remembered_and_the_oldest_forgotten() -> None:
    # a late HEADERS on a stream we reset is ignored while the stream is remembered (RFC 9113 5.1); once
    # REMEMBERED_CLOSED newer streams closed it is forgotten, and HEADERS on it reopens nothing: a connection error
    core, peer = server()
    count = REMEMBERED_CLOSED + 3
    for i in range(count):
        sid = 2 * i + 1
        events = core.receive_data(peer.headers(sid), 0.0)
        assert [type(e) for e in events] == [HeadersReceived]
        core.reset(sid)
    core.data_to_send()
    newest, oldest_kept = 2 * (count - 1) + 1, 2 * 3 + 1
    for sid in (newest, oldest_kept):
        assert core.receive_data(peer.headers(sid, end_stream=True), 0.0) == [], sid
        assert not core.closed
    events = core.receive_data(peer.headers(5, end_stream=True), 0.0)
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == PROTOCOL_ERROR
