"""Differential tests of the two HTTP/2 connection cores: ``sidecar.http2.core`` (ours) against
``sidecar.http2.connection_h2`` (over python-hyper's h2, the reference).

A peer made of python-hyper's h2 plays a script of actions against the reference core (requests, body, trailers,
resets, pings, settings, window updates, priorities; as a server: responses, interim responses, resets), and
every byte it writes is recorded. The recording, as it is (a valid conversation) or mutated (bits flipped, the
stream cut short, frames swapped, dropped, repeated, random frames inserted), is fed to both cores in the same
pieces, and both act alike on what they report (acknowledge every DATA; a server answers each request it has
read whole). At every step both must report the same events (type, stream, headers, data, error codes), end
the connection alike (the same code), and write bytes that parse to the same frames.

Deliberate differences, where the comparison stops (a valid recording must never reach one):
- a malformed message (header list, content-length against the body, trailers without END_STREAM) is a stream
  error in ours (RST_STREAM with PROTOCOL_ERROR, RFC 9113 section 8.1.1), a connection error in h2;
- the content-length is checked against the body when trailers end it (h2 checks only at a DATA frame);
- a server's HEADERS on an even stream the client never opened: a connection error in ours (section 5.1.1),
  an odd "request" event in h2;
- SETTINGS_ENABLE_PUSH=0 holds from our first byte: a PUSH_PROMISE is a connection error at once (h2 first
  waits for the rest of its header block);
- extension frames (ALTSVC and any unknown type) are ignored whatever they hold (h2 parses ALTSVC and ends the
  connection on a malformed one);
- RST_STREAM on an idle stream is a connection error (section 5.1; h2 ignores it once the connection is open);
- a setting repeated in one SETTINGS frame: each value is checked in order (h2 keeps only the last);
- error codes where RFC 9113 names another than h2 uses (``OTHER_CODES``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http2 import connection_h2, core
from sidecar.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    StreamEnded,
)
from sidecar.http2.frames import (
    DATA,
    GOAWAY,
    HEADERS,
    PING,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    FrameParser,
)
from sidecar.http2.hpack import Decoder
from sidecar.http2.limits import H2Limits
from sidecar.http2.preface import PREFACE
from tests.fuzz.strategies import fuzz_settings

PROTOCOL_ERROR, FRAME_SIZE_ERROR = 0x1, 0x6
LIMITS = H2Limits(max_concurrent_streams=6, initial_window=65535, connection_window=128 * 1024,
                  stream_buffer_high=64 * 1024)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Service/Method"),
           (b":authority", b"payment-service"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
REQUESTS = [REQUEST, [*REQUEST, (b"x-tenant", b"blue")], [*REQUEST[:4], (b"content-length", b"0")],
            [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"svc")]]
RESPONSES = [[(b":status", b"200"), (b"content-type", b"application/grpc")], [(b":status", b"404")]]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]

Core = Any  # either core: the same interface


# ------------------------------------------------------------------------------------------- normalizing

def event_key(event: Event) -> tuple[Any, ...]:
    if isinstance(event, ConnectionTerminated):
        return ("ConnectionTerminated", event.error_code, event.remote)  # the reasons are worded differently
    return (type(event).__name__, *(list(map(tuple, v)) if isinstance(v, list) else v
                                    for v in (getattr(event, f.name) for f in fields(event))))


class Wire:
    """One core's output, parsed into comparable frames."""

    def __init__(self, client_side: bool) -> None:
        self.parser = FrameParser(max_frame_size=2**24 - 1)
        self.decoder = Decoder(max_header_list_size=2**20)
        self.decoder.max_allowed_table_size = 2**32  # whatever table the (fuzzed) peer offered the core
        self.preface = client_side

    def frames(self, data: bytes) -> list[tuple[Any, ...]]:
        if self.preface:
            assert data.startswith(PREFACE)
            data, self.preface = data[len(PREFACE):], False
        out: list[tuple[Any, ...]] = []
        for f in self.parser.feed(data):
            if f.kind == SETTINGS:
                out.append(("SETTINGS", f.flags, sorted(f.settings)))
            elif f.kind == HEADERS:
                out.append(("HEADERS", f.stream_id, f.flags, self.decoder.decode(bytes(f.data), raw=True)))
            elif f.kind == DATA:
                out.append(("DATA", f.stream_id, f.flags, bytes(f.data)))
            elif f.kind == WINDOW_UPDATE:
                out.append(("WINDOW_UPDATE", f.stream_id, f.increment))
            elif f.kind == RST_STREAM:
                out.append(("RST_STREAM", f.stream_id, f.error_code))
            elif f.kind == GOAWAY:
                out.append(("GOAWAY", f.last_stream_id, f.error_code))  # debug data: worded differently
            elif f.kind == PING:
                out.append(("PING", f.flags, bytes(f.data)))
            else:
                out.append((f.kind, f.stream_id, f.flags, bytes(f.data)))
        return out


# ------------------------------------------------------------------------------------------- driving

@dataclass
class Driven:
    """A core and how it reacts to its events: the same reactions for the same events."""

    core: Core
    answered: set[int] = field(default_factory=set)
    requested: list[int] = field(default_factory=list)

    def feed(self, data: bytes, now: float) -> tuple[list[tuple[Any, ...]], bytes]:
        events = self.core.receive_data(data, now)
        for event in events:
            if isinstance(event, DataReceived):
                self.core.acknowledge(event.stream_id, event.flow_length)
            elif isinstance(event, StreamEnded) and not self.core.client_side and event.stream_id not in self.answered:
                self.answered.add(event.stream_id)
                self.core.send_headers(event.stream_id, RESPONSES[event.stream_id % 4 // 2])
                self.core.send_data(event.stream_id, b"r" * (event.stream_id * 700 % 3000))
                self.core.send_trailers(event.stream_id, TRAILERS)
        return [event_key(e) for e in events], self.core.data_to_send()

    def act(self, action: tuple[Any, ...]) -> bytes:
        """A client core's own action (the same on both cores)."""
        kind = action[0]
        c = self.core
        if kind == "c_request" and c.can_open():
            self.requested.append(c.start_request(REQUESTS[action[1]], end_stream=action[2]))
        elif kind == "c_data" and self.requested:
            c.send_data(self.requested[action[1] % len(self.requested)], b"q" * action[2], end_stream=action[3])
        elif kind == "c_reset" and self.requested:
            c.reset(self.requested[action[1] % len(self.requested)])
        elif kind == "c_ping":
            c.ping(b"pingpong")
        return bytes(c.data_to_send())


def pair(client_side: bool) -> tuple[Driven, Driven]:
    ours = core.H2Connection(client_side=client_side, limits=LIMITS)
    ref = connection_h2.HyperH2Connection(client_side=client_side, limits=LIMITS)
    return Driven(ours), Driven(ref)


Step = tuple[str, Any]  # ("feed", bytes) or ("act", client action)


# both end the connection, for the same frame, with different codes: ours as RFC 9113 says
OTHER_CODES = {
    (SETTINGS, FRAME_SIZE_ERROR, PROTOCOL_ERROR),  # an acknowledgement with a payload (section 6.5)
}


def repeats_a_setting(frame: bytes) -> bool:
    ids = [frame[at:at + 2] for at in range(9, len(frame) - 5, 6)]
    return len(set(ids)) < len(ids)


def deliberate(ours: list[tuple[Any, ...]], theirs: list[tuple[Any, ...]], our_frames: list[tuple[Any, ...]],
               frame: bytes) -> bool:
    """Where the two may part (the module's docstring lists why); ``frame``: the one frame the step fed, empty
    when it fed several or a piece of one."""
    frame_type = frame[3] if frame else -1
    if frame_type == RST_STREAM and ending(ours) == PROTOCOL_ERROR and ending(theirs) is None:
        return True  # a reset of an idle stream
    if frame_type == SETTINGS and ending(ours) is not None and ending(theirs) is None and repeats_a_setting(frame):
        return True
    if frame_type == PUSH_PROMISE and ending(ours) == PROTOCOL_ERROR:
        return True
    if (frame_type, ending(ours), ending(theirs)) in OTHER_CODES:
        return True
    if frame_type >= 0xA and ending(ours) is None and ending(theirs) is not None:
        return True  # an extension frame (ALTSVC...): ignored here, parsed by h2
    ours_reset_malformed = any(e[0] == "StreamReset" and e[2] == PROTOCOL_ERROR and not e[3] for e in ours) \
        or any(f[0] == "RST_STREAM" and f[2] == PROTOCOL_ERROR for f in our_frames)
    theirs_end = [e for e in theirs if e[0] == "ConnectionTerminated"]
    ours_end = [e for e in ours if e[0] == "ConnectionTerminated"]
    if ours_reset_malformed and (not theirs_end or theirs_end[0][1] == PROTOCOL_ERROR):
        return True  # a malformed message: a stream error here, a connection error (or nothing) in h2
    # a server's HEADERS on a stream the client never opened
    return bool(ours_end) and ours_end[0][1] == PROTOCOL_ERROR and any(e[0] == "HeadersReceived" for e in theirs)


def check(steps: list[Step], client_side: bool, strict: bool) -> None:
    """``compare``; a difference is judged again one frame per read: h2's core applies the frames before a
    guard's verdict as one run (a flood or an oversized frame drops what came before it in the same read,
    where ours has applied it), and a single frame names the frame a deliberate difference is about."""
    try:
        compare(steps, client_side, strict, single=False)
    except AssertionError:
        compare(one_frame_per_read(steps, client_side), client_side, strict, single=True)


def one_frame_per_read(steps: list[Step], client_side: bool) -> list[Step]:
    """The same bytes and actions, fed one whole frame per read (an action goes after the frame it came in)."""
    out: list[Step] = []
    pending = b""
    preface = not client_side
    for kind, arg in steps:
        if kind == "act":
            out.append((kind, arg))
            continue
        pending += arg
        if preface:
            if len(pending) < len(PREFACE):
                continue
            out.append(("feed", pending[:len(PREFACE)]))
            pending, preface = pending[len(PREFACE):], False
        while len(pending) >= 9 and len(pending) >= 9 + int.from_bytes(pending[:3], "big"):
            end = 9 + int.from_bytes(pending[:3], "big")
            out.append(("feed", pending[:end]))
            pending = pending[end:]
    if pending:
        out.append(("feed", pending))
    return out


def ending(events: list[tuple[Any, ...]]) -> int | None:
    """The code of the connection's end among ``events``, None if it goes on."""
    ends = [e[1] for e in events if e[0] == "ConnectionTerminated"]
    return ends[0] if ends else None


def compare(steps: list[Step], client_side: bool, strict: bool, single: bool) -> None:
    ours, ref = pair(client_side)
    our_wire, ref_wire = Wire(client_side), Wire(client_side)
    assert our_wire.frames(ours.core.data_to_send()) == ref_wire.frames(ref.core.data_to_send())
    for i, (kind, arg) in enumerate(steps):
        if kind == "feed":
            (oe, ob), (re_, rb) = ours.feed(arg, i * 0.01), ref.feed(arg, i * 0.01)
        else:
            oe, re_, ob, rb = [], [], ours.act(arg), ref.act(arg)
        of, rf = our_wire.frames(ob), ref_wire.frames(rb)
        if (oe, of) != (re_, rf):
            if ending(oe) is not None and ending(oe) == ending(re_):
                return  # both end the connection, alike; what else that read meant no longer matters
            frame = arg if single and kind == "feed" and len(arg) >= 9 and not arg.startswith(PREFACE) else b""
            if not strict and deliberate(oe, re_, of, frame):
                return
            raise AssertionError(f"step {i} ({kind}): ours {oe} {of}\n  h2's {re_} {rf}")
        assert ours.core.closed == ref.core.closed
        assert ours.core.open_streams == ref.core.open_streams, f"step {i}"
        if ours.core.closed:
            return


# ------------------------------------------------------------------------------------------- recording

H2_ERRORS = (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError, h2.exceptions.FlowControlError,
             KeyError, ValueError)


def record(script: list[tuple[Any, ...]], client_side: bool) -> list[Step]:
    """Play ``script`` with an h2 peer against the reference core; the steps to replay on both cores."""
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=not client_side,
                                                                header_encoding=None))
    peer.initiate_connection()
    _, ref = pair(client_side)
    steps: list[Step] = []
    streams: list[int] = []
    headed: set[int] = set()

    def to_peer(back: bytes) -> None:
        if not back:
            return
        try:
            for event in peer.receive_data(back):
                if isinstance(event, h2.events.DataReceived) and event.stream_id:
                    peer.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, (h2.events.RequestReceived, h2.events.ResponseReceived)):
                    streams.append(event.stream_id)
        except H2_ERRORS:
            pass

    def carry() -> None:
        out = peer.data_to_send()
        if out:
            steps.append(("feed", out))
            to_peer(ref.feed(out, 0.01 * len(steps))[1])

    to_peer(ref.core.data_to_send())
    carry()
    for action in script:
        if action[0].startswith("c_"):
            steps.append(("act", action))
            to_peer(ref.act(action))
        else:
            with contextlib.suppress(H2_ERRORS):
                _peer_action(peer, action, streams, headed)
        carry()
        carry()
    return steps


def _peer_action(peer: h2.connection.H2Connection, action: tuple[Any, ...], streams: list[int],
                 headed: set[int]) -> None:
    """One action of the h2 peer; body and trailers only after headers, as a well-formed message has them."""
    kind = action[0]
    sid = streams[action[1] % len(streams)] if streams and len(action) > 1 else 0
    if kind == "request":
        new = peer.get_next_available_stream_id()
        headers = REQUESTS[action[1] % len(REQUESTS)]
        # a declared empty body ends with the headers: the recording stays well-formed
        peer.send_headers(new, headers, end_stream=action[2] or (b"content-length", b"0") in headers)
        streams.append(new)
        headed.add(new)
    elif kind == "data" and sid in headed:
        size = min(action[2], peer.local_flow_control_window(sid))
        peer.send_data(sid, b"d" * size, end_stream=action[3], pad_length=action[4])
    elif kind == "respond" and sid:
        if action[3]:
            peer.send_headers(sid, [(b":status", b"100")])
        peer.send_headers(sid, RESPONSES[action[2] % 2], end_stream=action[4])
        headed.add(sid)
    elif kind == "trailers" and sid in headed:
        peer.send_headers(sid, TRAILERS, end_stream=True)
    elif kind == "end" and sid:
        peer.end_stream(sid)
    elif kind == "reset" and sid:
        peer.reset_stream(sid, action[2])
    elif kind == "window":
        peer.increment_flow_control_window(action[2], stream_id=sid if action[3] else None)
    elif kind == "priority" and sid:
        peer.prioritize(sid, weight=action[2] % 256 + 1)
    elif kind == "ping":
        peer.ping(b"12345678")
    elif kind == "settings":
        peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: action[1],
                              h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: action[2]})


# ------------------------------------------------------------------------------------------- strategies

sizes = st.sampled_from([0, 1, 100, 5000, 20000, 70000])
pads = st.one_of(st.none(), st.integers(0, 20))
client_actions = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("data"), st.integers(0, 9), sizes, st.booleans(), pads),
    st.tuples(st.just("trailers"), st.integers(0, 9)),
    st.tuples(st.just("end"), st.integers(0, 9)),
    st.tuples(st.just("reset"), st.integers(0, 9), st.sampled_from([0x0, 0x8, 0x2])),
    st.tuples(st.just("window"), st.integers(0, 9), st.integers(1, 100000), st.booleans()),
    st.tuples(st.just("priority"), st.integers(0, 9), st.integers(0, 300)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("settings"), st.sampled_from([0, 1000, 65535, 200000]), st.integers(1, 10)),
)
server_actions = st.one_of(
    st.tuples(st.just("c_request"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("c_data"), st.integers(0, 9), sizes, st.booleans()),
    st.tuples(st.just("c_reset"), st.integers(0, 9)),
    st.tuples(st.just("c_ping")),
    st.tuples(st.just("respond"), st.integers(0, 9), st.integers(0, 1), st.booleans(), st.booleans()),
    st.tuples(st.just("data"), st.integers(0, 9), sizes, st.booleans(), pads),
    st.tuples(st.just("trailers"), st.integers(0, 9)),
    st.tuples(st.just("reset"), st.integers(0, 9), st.sampled_from([0x0, 0x8])),
    st.tuples(st.just("ping")),
    st.tuples(st.just("settings"), st.sampled_from([0, 1000, 65535, 200000]), st.integers(1, 10)),
)


def split_frames(data: bytes) -> list[bytes]:
    """Whole frames, then whatever trails them."""
    out, pos = [], 0
    while len(data) - pos >= 9:
        end = pos + 9 + int.from_bytes(data[pos:pos + 3], "big")
        out.append(data[pos:end])
        pos = end
    if pos < len(data):
        out.append(data[pos:])
    return out


@st.composite
def mutations(draw: st.DrawFn, steps: list[Step], client_side: bool) -> list[Step]:
    """The recorded peer bytes with a few edits, cut into random pieces; our own actions stay in place."""
    feeds = [i for i, (kind, _) in enumerate(steps) if kind == "feed" and _]
    if not feeds:
        return steps
    at = draw(st.sampled_from(feeds))
    head = PREFACE if not client_side and at == feeds[0] else b""
    frames = split_frames(steps[at][1][len(head):])
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.integers(0, 5))
        i = draw(st.integers(0, max(0, len(frames) - 1)))
        if edit == 0 and frames:  # flip a bit
            frame = bytearray(frames[i] or b"\x00")
            bit = draw(st.integers(0, len(frame) * 8 - 1))
            frame[bit // 8] ^= 1 << (bit % 8)
            frames[i] = bytes(frame)
        elif edit == 1 and frames:  # cut short
            frames[i] = frames[i][:draw(st.integers(0, len(frames[i])))]
            del frames[i + 1:]
        elif edit == 2 and len(frames) > 1:  # swap with the next
            j = min(i + 1, len(frames) - 1)
            frames[i], frames[j] = frames[j], frames[i]
        elif edit == 3 and frames:  # drop
            del frames[i]
        elif edit == 4 and frames:  # repeat
            frames.insert(i, frames[i])
        else:  # a random frame
            payload = draw(st.binary(max_size=24))
            kind = draw(st.integers(0, 10))
            flags = draw(st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25]))
            sid = draw(st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]))
            frames.insert(i, len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big")
                          + payload)
    data = head + b"".join(frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [*steps[:at], *(("feed", p) for p in pieces), *steps[at + 1:]]


# ------------------------------------------------------------------------------------------- tests

@fuzz_settings(60)
@given(st.lists(client_actions, max_size=25))
def test_valid_conversations_with_an_h2_client_agree(script: list[tuple[Any, ...]]) -> None:
    check(record(script, client_side=False), client_side=False, strict=True)


@fuzz_settings(60)
@given(st.lists(server_actions, max_size=25))
def test_valid_conversations_with_an_h2_server_agree(script: list[tuple[Any, ...]]) -> None:
    check(record(script, client_side=True), client_side=True, strict=True)


@fuzz_settings(150)
@given(st.data(), st.lists(client_actions, min_size=1, max_size=15))
def test_mutated_conversations_from_an_h2_client_agree(data: st.DataObject, script: list[tuple[Any, ...]]) -> None:
    steps = record(script, client_side=False)
    check(data.draw(mutations(steps, False)), client_side=False, strict=False)


@fuzz_settings(150)
@given(st.data(), st.lists(server_actions, min_size=1, max_size=15))
def test_mutated_conversations_from_an_h2_server_agree(data: st.DataObject, script: list[tuple[Any, ...]]) -> None:
    steps = record(script, client_side=True)
    check(data.draw(mutations(steps, True)), client_side=True, strict=False)
