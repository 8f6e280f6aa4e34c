"""A sans-IO HTTP/2 connection of our own, server or client side, compiled with mypyc: the same interface and
events as the h2-backed core (``sidecar.http2.connection_h2``), with our frames (``sidecar.http2.frames``),
HPACK (``sidecar.http2.hpack``), stream state table (``sidecar.http2.streamstate``), flow-control windows
(``sidecar.http2.flow``) and header checks (``sidecar.http2.headercheck``).

Theory of operation
-------------------
Bytes in (``receive_data(data, now)``), events out (``sidecar.http2.events``); actions (``start_request``,
``send_headers``, ``send_data``, ``send_trailers``, ``end_stream``, ``reset``, ``ping``, ``goaway``) queue
frames, and ``data_to_send()`` hands over every queued byte for one write per batch. No I/O, no clock.

Each complete frame's header goes through :class:`~sidecar.http2.guard.FrameGuard` first (floods, refused
streams, the peer's GOAWAY), then the frame is parsed and applied at once. A connection error (the peer broke
a rule of the connection, or a guard's flood) queues one GOAWAY with its code, returns
:class:`ConnectionTerminated`, counts it in ``counters`` and raises nothing. A stream error (a malformed
request or response, RFC 9113 section 8.1.1; a frame the stream's state does not allow, section 5.1; a stream
window opened past 2**31-1) resets that stream only, reports :class:`StreamReset` when the consumer knew the
stream, and counts against the same budget as the peer's resets.

Flow control, send buffers and GOAWAY behave as documented in ``sidecar.http2.connection_h2``: received DATA
stays charged to the peer's windows until ``acknowledge``; outgoing DATA waits per stream for the peer's
windows; ``send_data`` returns False past ``stream_buffer_high`` and :class:`StreamWritable` says when to
resume; after our GOAWAY new streams are refused, after the peer's our streams above its last one are reset.
"""

from __future__ import annotations

from typing import Final

from sidecar.http2 import headercheck, streamstate
from sidecar.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    Headers,
    HeadersReceived,
    PingAcked,
    StreamEnded,
    StreamReset,
    StreamWritable,
    TrailersReceived,
)
from sidecar.http2.flow import FlowControlOverflow, InboundWindow, opened
from sidecar.http2.frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Frame,
    H2FrameError,
    continuation_frame,
    data_frame,
    goaway_frame,
    headers_frame,
    parse_frame,
    ping_frame,
    rst_stream_frame,
    settings_frame,
    window_update_frame,
)
from sidecar.http2.guard import FrameGuard, Verdict, Violation
from sidecar.http2.hpack import Decoder, Encoder
from sidecar.http2.hpack_errors import HeaderBlockError, HeaderListTooLarge
from sidecar.http2.limits import DEFAULT_WINDOW, Budget, H2Limits
from sidecar.http2.preface import PREFACE

NO_ERROR: Final = 0x0
STREAM_CLOSED: Final = 0x5
CANCEL: Final = 0x8

HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8
# the largest HPACK table our encoder keeps for a peer, whatever SETTINGS_HEADER_TABLE_SIZE it offers (64 KiB)
MAX_ENCODER_TABLE: Final = 65536
UNLIMITED_STREAMS: Final = 2**32 + 1  # the peer's limit until its SETTINGS say otherwise (RFC: no limit)
REMEMBERED_CLOSED: Final = 4096  # closed streams whose way of closing is kept for judging late frames


class H2UsageError(Exception):
    """The core was used against the protocol (our bug, not the peer's): e.g. a request on a server side."""


class _StreamError(Exception):
    """The peer broke a rule of one stream: reset it with ``code`` (section 5.4.2)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class _Stream:
    def __init__(self, state: int, send_window: int, recv_window: int) -> None:
        self.state = state
        self.send_window = send_window  # what the peer lets us send on it
        self.recv = InboundWindow(recv_window)
        self.out = bytearray()
        self.end_after = False  # END_STREAM once ``out`` is sent
        self.trailers: Headers | None = None  # sent (with END_STREAM) once ``out`` is sent
        self.over_high = False  # send_data returned False; StreamWritable is owed
        self.headers_seen = False  # the peer's headers arrived (a request's, or a response's after any 1xx)
        self.expected_length = -1  # the peer's content-length, -1: none declared
        self.received_length = 0
        self.head_request = False  # client side: a response to HEAD has no body whatever its content-length

    @property
    def local_done(self) -> bool:
        return self.state == streamstate.HALF_CLOSED_LOCAL or self.state == streamstate.CLOSED


class H2Connection:
    """One HTTP/2 connection; ``client_side`` for sidecar-to-sidecar and sidecar-to-app, else a listener's."""

    def __init__(self, *, client_side: bool, limits: H2Limits | None = None, check_outbound: bool = True) -> None:
        """``check_outbound=False`` skips the checks of the header lists we send: for a caller that only sends
        lists it built or that a peer's side already validated."""
        self.limits = limits or H2Limits()
        self.client_side = client_side
        self.check_outbound = check_outbound
        self.counters: dict[str, int] = {}
        self.closed = False
        self.goaway_received: int | None = None  # the peer's last stream id, once it sent GOAWAY
        self.settings_received = False  # the peer's first SETTINGS arrived: its limits are known
        lim = self.limits
        self._guard = FrameGuard(lim, client_side)
        self._resets = Budget(lim.max_peer_resets, lim.budget_window)
        self._streams: dict[int, _Stream] = {}
        self._closed_by: dict[int, int] = {}  # recently closed streams: how they closed (streamstate.CLOSED_BY_*)
        # the keys of _closed_by in the order they came, a ring once full: its slot at _closed_next holds the
        # oldest, forgotten when the next stream closes (taking a dict's first key instead walks the slots its
        # earlier deletions left, hundreds a stream on a busy connection)
        self._closed_order: list[int] = []
        self._closed_next = 0
        self._waiting: set[int] = set()  # streams with bytes held back by a closed window
        self._to_flush: set[int] = set()  # windows the frames of one receive_data opened (0: the connection's)
        self._inbuf = bytearray()
        self._out = bytearray()
        self._events: list[Event] = []
        self._now = 0.0
        self._preface_pending = not client_side
        self._highest_inbound = 0  # highest stream the peer opened and we admitted
        self._highest_outbound = 0
        self._next_stream = 1 if client_side else 2
        self._block = bytearray()  # a header block waiting for END_HEADERS
        self._block_stream = 0
        self._block_flags = 0
        self._block_pass = True  # False: the block of a refused stream, decoded only for HPACK's sake
        self._block_refuse = False
        self.encoder = Encoder()
        self.decoder = Decoder(max_header_list_size=lim.max_header_list_size)
        # the peer's settings, RFC 9113 defaults until its SETTINGS arrive
        self._peer_max_streams = UNLIMITED_STREAMS
        self._peer_initial_window = DEFAULT_WINDOW
        self._max_send_frame = 16384
        self._send_window = DEFAULT_WINDOW  # the connection's
        # ours apply from the start: the peer may only send less than they allow until it reads them
        self._recv_initial = lim.initial_window
        self._recv = InboundWindow(DEFAULT_WINDOW)  # the connection's
        settings = [(HEADER_TABLE_SIZE, 4096), (ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, lim.initial_window),
                    (MAX_FRAME_SIZE, lim.max_frame_size), (ENABLE_CONNECT_PROTOCOL, 0),
                    (MAX_CONCURRENT_STREAMS, lim.max_concurrent_streams),
                    (MAX_HEADER_LIST_SIZE, lim.max_header_list_size)]
        if client_side:
            self._out += PREFACE
        self._out += settings_frame(settings)
        if lim.connection_window > DEFAULT_WINDOW:
            self._recv.grow(lim.connection_window - DEFAULT_WINDOW)
            self._out += window_update_frame(0, lim.connection_window - DEFAULT_WINDOW)

    # -- input -------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; return what they meant. Never raises on bad input."""
        if self.closed:
            return []
        events: list[Event] = []
        self._events = events
        self._now = now
        buf = self._inbuf
        buf += data
        pos = 0
        try:
            if self._preface_pending:
                n = min(len(buf), len(PREFACE))
                if buf[:n] != PREFACE[:n]:
                    raise Violation(PROTOCOL_ERROR, "bad connection preface", "bad_preface")
                if n < len(PREFACE):
                    return events
                self._preface_pending = False
                pos = len(PREFACE)
            guard, max_frame, limit = self._guard, self.limits.max_frame_size, self.limits.max_concurrent_streams
            while len(buf) - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > max_frame:
                    raise Violation(FRAME_SIZE_ERROR, f"frame of {length} bytes over {max_frame}", "frame_size")
                end = pos + 9 + length
                if end > len(buf):
                    break
                ftype, flags = buf[pos + 3], buf[pos + 4]
                stream_id = ((buf[pos + 5] << 24) | (buf[pos + 6] << 16) | (buf[pos + 7] << 8) | buf[pos + 8]) \
                    & 0x7FFFFFFF
                payload = bytes(buf[pos + 9:end])
                pos = end
                verdict = guard.inspect(ftype, flags, stream_id, length, now)
                if verdict is Verdict.NEW:
                    if len(self._streams) >= limit:
                        verdict = Verdict.REFUSE
                        guard.refuse(stream_id)
                        self._count("refused_streams")
                        self._peer_reset_hit()
                    else:
                        verdict = Verdict.PASS
                        guard.admit(stream_id, flags)
                elif verdict is Verdict.REFUSE:  # opened after our GOAWAY
                    self._count("refused_streams")
                    self._peer_reset_hit()
                if verdict is Verdict.PASS:
                    self._frame(ftype, flags, stream_id, payload)
                else:
                    self._divert(verdict, ftype, flags, stream_id, payload)
                if self.closed:
                    return events
            del buf[:pos]
            if self._to_flush:
                which, self._to_flush = self._to_flush, set()
                self._flush_waiting(which)
        except Violation as v:
            self._terminate(v.error_code, v.reason, v.counter)
        return events

    def _divert(self, verdict: Verdict, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        """A frame of a stream the core refused or forgot, or the peer's GOAWAY."""
        if verdict is Verdict.GOAWAY:
            self._on_goaway(stream_id, payload)
            return
        if ftype == DATA:
            if payload:  # the peer's connection window shrank by it: give it back
                self._out += window_update_frame(0, len(payload))
            return
        if ftype in (HEADERS, CONTINUATION):
            self._pass_frame(ftype, flags, stream_id, payload, False, verdict is Verdict.REFUSE)

    def _frame(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        if ftype in (HEADERS, CONTINUATION):
            self._pass_frame(ftype, flags, stream_id, payload, True, False)
        elif ftype == DATA:
            self._on_data(self._parse(ftype, flags, stream_id, payload), len(payload))
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(stream_id, self._parse(ftype, flags, stream_id, payload).increment)
        elif ftype == RST_STREAM:
            self._on_rst_stream(stream_id, self._parse(ftype, flags, stream_id, payload).error_code)
        elif ftype == SETTINGS:
            self._on_settings(self._parse(ftype, flags, stream_id, payload))
        elif ftype == PING:
            frame = self._parse(ftype, flags, stream_id, payload)
            if flags & ACK:
                self._events.append(PingAcked(bytes(frame.data)))
            else:
                self._out += ping_frame(bytes(frame.data), ack=True)
        elif ftype == PRIORITY:
            frame = self._parse(ftype, flags, stream_id, payload)
            if frame.depends_on == stream_id:  # priorities are otherwise ignored (RFC 9113 section 5.3.2)
                raise Violation(PROTOCOL_ERROR, f"stream {stream_id} depends on itself", "protocol_error")
        elif ftype == PUSH_PROMISE:
            self._parse(ftype, flags, stream_id, payload)
            raise Violation(PROTOCOL_ERROR, "PUSH_PROMISE with push disabled", "protocol_error")
        elif ftype == GOAWAY:  # the guard diverts every GOAWAY; kept for completeness
            self._on_goaway(stream_id, payload)
        # frames of unknown types are ignored (section 4.1)

    @staticmethod
    def _parse(ftype: int, flags: int, stream_id: int, payload: bytes) -> Frame:
        try:
            return parse_frame(ftype, flags, stream_id, memoryview(payload))
        except H2FrameError as e:
            counter = "frame_size" if e.code == FRAME_SIZE_ERROR else "protocol_error"
            raise Violation(e.code, e.reason, counter) from e

    # -- header blocks -----------------------------------------------------------------------------------

    def _pass_frame(self, ftype: int, flags: int, stream_id: int, payload: bytes, passed: bool,
                    refuse: bool) -> None:
        """HEADERS or CONTINUATION: gather the block; a complete one is decoded (even a refused stream's:
        the HPACK table is the connection's) and applied."""
        if ftype == HEADERS:
            frame = self._parse(ftype, flags, stream_id, payload)
            if flags & PRIORITY_FLAG and frame.depends_on == stream_id:
                raise Violation(PROTOCOL_ERROR, f"stream {stream_id} depends on itself", "protocol_error")
            self._block = bytearray(frame.data)
            self._block_stream, self._block_flags = stream_id, flags
            self._block_pass, self._block_refuse = passed, refuse
        else:
            if not self._block_stream or stream_id != self._block_stream:
                raise Violation(PROTOCOL_ERROR, "CONTINUATION without a header block", "protocol_error")
            if stream_id == 0:
                raise Violation(PROTOCOL_ERROR, "CONTINUATION frame on stream 0", "protocol_error")
            self._block += payload
        if not flags & END_HEADERS:
            return
        block, self._block = bytes(self._block), bytearray()
        self._block_stream = 0
        headers = self._decode(block)
        if not self._block_pass:
            if self._block_refuse:
                self._out += rst_stream_frame(stream_id, REFUSED_STREAM)
            return
        try:
            self._on_headers(stream_id, headers, bool(self._block_flags & END_STREAM))
        except _StreamError as e:
            self._stream_error(stream_id, e.code, str(e))

    def _decode(self, block: bytes) -> Headers:
        try:
            return self.decoder.decode(block, raw=True)
        except HeaderListTooLarge as too_large:
            raise Violation(ENHANCE_YOUR_CALM, f"header list too large: {too_large}",
                            "header_list_too_large") from too_large
        except (HeaderBlockError, IndexError, TypeError) as bad:
            raise Violation(COMPRESSION_ERROR, f"bad header block: {bad}", "compression_error") from bad

    def _on_headers(self, sid: int, headers: Headers, end: bool) -> None:
        stream = self._streams.get(sid)
        if stream is None:
            self._new_stream(sid, headers, end)
            return
        self._advance(sid, stream, streamstate.RECV_HEADERS)
        if self.client_side and not stream.headers_seen:
            if headercheck.is_informational(headers):
                if end:
                    raise _StreamError(PROTOCOL_ERROR, "an interim response with END_STREAM")
                return  # 1xx: the real response follows
            self._check(headers, headercheck.RESPONSE)
            stream.headers_seen = True
            stream.expected_length = 0 if stream.head_request else self._content_length(headers)
            self._events.append(HeadersReceived(sid, headers, end))
        else:
            if not end:
                raise _StreamError(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._check(headers, headercheck.TRAILERS)
            if 0 <= stream.expected_length != stream.received_length:
                raise _StreamError(PROTOCOL_ERROR, f"a body of {stream.received_length} bytes, content-length "
                                   f"{stream.expected_length}")
            self._events.append(TrailersReceived(sid, headers))
        if end:
            self._peer_ended(sid, stream)

    def _new_stream(self, sid: int, headers: Headers, end: bool) -> None:
        ours = sid % 2 == (1 if self.client_side else 0)
        if not ours and sid > self._highest_inbound and not self.client_side:
            self._highest_inbound = sid
            problem = headercheck.check(headers, headercheck.REQUEST)
            length = self._content_length_or_none(headers)
            if problem is not None or length < -1:
                # malformed (section 8.1.1): refused before the consumer sees it
                self._note_closed(sid, streamstate.CLOSED_BY_RESET)
                self._guard.forget(sid)
                self._out += rst_stream_frame(sid, PROTOCOL_ERROR)
                self._count("stream_errors")
                self._peer_reset_hit()
                return
            stream = _Stream(streamstate.OPEN, self._peer_initial_window, self._recv_initial)
            stream.headers_seen = True
            stream.expected_length = length
            self._streams[sid] = stream
            self._events.append(HeadersReceived(sid, headers, end))
            if end:
                self._peer_ended(sid, stream)
            return
        highest = self._highest_outbound if ours else self._highest_inbound
        if sid > highest or sid not in self._closed_by:
            raise Violation(PROTOCOL_ERROR, f"HEADERS opening stream {sid}, which the peer may not open",
                            "protocol_error")
        self._late(sid, streamstate.RECV_HEADERS)

    def _check(self, headers: Headers, kind: int) -> None:
        problem = headercheck.check(headers, kind)
        if problem is not None:
            raise _StreamError(PROTOCOL_ERROR, f"malformed header list: {problem}")

    def _content_length(self, headers: Headers) -> int:
        length = self._content_length_or_none(headers)
        if length < -1:
            raise _StreamError(PROTOCOL_ERROR, "malformed content-length")
        return length

    @staticmethod
    def _content_length_or_none(headers: Headers) -> int:
        """-1: none declared; -2: malformed."""
        length = headercheck.content_length(headers)
        return -1 if length is None else (-2 if length < 0 else length)

    # -- the other frames --------------------------------------------------------------------------------

    def _on_data(self, frame: Frame, flow: int) -> None:
        """``flow``: the whole payload, padding included, counts against the windows (section 6.9.1)."""
        sid = frame.stream_id
        self._consume(self._recv, flow)
        stream = self._streams.get(sid)
        if stream is None:
            highest = self._highest_outbound if sid % 2 == (1 if self.client_side else 0) else self._highest_inbound
            if sid > highest:
                raise Violation(PROTOCOL_ERROR, f"DATA on idle stream {sid}", "protocol_error")
            self._credit_connection(flow)  # nobody will acknowledge these bytes
            self._late(sid, streamstate.RECV_DATA)
            return
        end = bool(frame.flags & END_STREAM)
        try:
            self._accept_data(sid, stream, len(frame.data), flow, end)
        except _StreamError as broken:
            self._credit_connection(flow)  # nobody will acknowledge these bytes
            self._stream_error(sid, broken.code, str(broken))
            return
        self._events.append(DataReceived(sid, bytes(frame.data), flow))
        if end:
            self._peer_ended(sid, stream)

    def _accept_data(self, sid: int, stream: _Stream, size: int, flow: int, end: bool) -> None:
        """Raises :class:`_StreamError` for DATA the stream may not take."""
        self._advance(sid, stream, streamstate.RECV_DATA)
        if not stream.headers_seen:
            raise _StreamError(PROTOCOL_ERROR, "DATA before the response's headers")  # section 8.1
        self._consume(stream.recv, flow)
        stream.received_length += size
        expected = stream.expected_length
        if expected >= 0 and (stream.received_length > expected or (end and stream.received_length != expected)):
            raise _StreamError(PROTOCOL_ERROR, f"a body of {stream.received_length} bytes or more, "
                               f"content-length {expected}")

    @staticmethod
    def _consume(window: InboundWindow, flow: int) -> None:
        try:
            window.consumed(flow)
        except FlowControlOverflow as overflow:
            raise Violation(FLOW_CONTROL_ERROR, str(overflow), "flow_control") from overflow

    def _on_window_update(self, sid: int, increment: int) -> None:
        if sid == 0:
            try:
                self._send_window = opened(self._send_window, increment)
            except FlowControlOverflow as conn_overflow:
                raise Violation(FLOW_CONTROL_ERROR, str(conn_overflow), "flow_control") from conn_overflow
            self._to_flush.add(0)
            return
        stream = self._streams.get(sid)
        if stream is None:
            highest = self._highest_outbound if sid % 2 == (1 if self.client_side else 0) else self._highest_inbound
            if sid > highest:
                raise Violation(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}", "protocol_error")
            return  # a closed stream: late updates are expected
        try:
            stream.send_window = opened(stream.send_window, increment)
        except FlowControlOverflow as stream_overflow:
            self._stream_error(sid, FLOW_CONTROL_ERROR, str(stream_overflow))
            return
        self._to_flush.add(sid)

    def _on_rst_stream(self, sid: int, code: int) -> None:
        stream = self._streams.pop(sid, None)
        if stream is None:
            highest = self._highest_outbound if sid % 2 == (1 if self.client_side else 0) else self._highest_inbound
            if sid > highest:  # section 5.1 (h2 ignores it once the connection is open)
                raise Violation(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}", "protocol_error")
            return  # already closed: a reset racing the close
        self._note_closed(sid, streamstate.CLOSED_BY_RESET)
        self._waiting.discard(sid)
        self._guard.forget(sid)
        self._events.append(StreamReset(sid, code, True))
        self._peer_reset_hit()

    def _on_settings(self, frame: Frame) -> None:
        if frame.flags & ACK:
            return  # ours were in force from the start
        self.settings_received = True
        for ident, value in frame.settings:
            if ident == HEADER_TABLE_SIZE:
                # the peer allows up to value; the encoder's table (our memory) stays within MAX_ENCODER_TABLE
                self.encoder.header_table_size = min(value, MAX_ENCODER_TABLE)
            elif ident == MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif ident == INITIAL_WINDOW_SIZE:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                try:
                    for stream in self._streams.values():
                        stream.send_window = opened(stream.send_window, delta)
                except FlowControlOverflow as e:
                    raise Violation(FLOW_CONTROL_ERROR, str(e), "flow_control") from e
                self._to_flush.add(0)
            elif ident == MAX_FRAME_SIZE:
                self._max_send_frame = value
            elif ident == ENABLE_CONNECT_PROTOCOL and value > 1:
                raise Violation(PROTOCOL_ERROR, f"SETTINGS_ENABLE_CONNECT_PROTOCOL of {value}", "protocol_error")
        self._out += settings_frame([], ack=True)

    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise Violation(PROTOCOL_ERROR, "GOAWAY on a stream", "protocol_error")
        if len(payload) < 8:
            raise Violation(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes", "frame_size")
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        self.goaway_received = last if self.goaway_received is None else min(last, self.goaway_received)
        self._events.append(GoAwayReceived(last, code))
        if code != NO_ERROR:
            self._close()
            self._events.append(ConnectionTerminated(code, f"peer sent GOAWAY with error code {code}", remote=True))
            return
        ours = 1 if self.client_side else 0
        for sid in [s for s in self._streams if s > last and s % 2 == ours]:
            del self._streams[sid]
            self._note_closed(sid, streamstate.CLOSED_BY_RESET)
            self._waiting.discard(sid)
            self._guard.forget(sid)
            self._out += rst_stream_frame(sid, CANCEL)
            self._events.append(StreamReset(sid, REFUSED_STREAM, remote=True))

    # -- stream life -------------------------------------------------------------------------------------

    def _advance(self, sid: int, stream: _Stream, what: int) -> None:
        try:
            stream.state = streamstate.advance(stream.state, what, sid)
        except streamstate.StreamStateError as e:
            if e.connection:
                raise Violation(e.code, e.reason, "protocol_error") from e
            raise _StreamError(e.code, e.reason) from e

    def _late(self, sid: int, what: int) -> None:
        """A frame on a stream that is over: ignored, reset with STREAM_CLOSED, or the connection's end."""
        try:
            streamstate.after_close(self._closed_by.get(sid, streamstate.CLOSED_BY_END), what, sid)
        except streamstate.StreamStateError as e:
            if e.connection:
                raise Violation(e.code, e.reason, "protocol_error") from e
            self._out += rst_stream_frame(sid, e.code)

    def _peer_ended(self, sid: int, stream: _Stream) -> None:
        self._advance(sid, stream, streamstate.RECV_END_STREAM)
        self._guard.forget(sid)
        self._events.append(StreamEnded(sid))
        if stream.state == streamstate.CLOSED:
            del self._streams[sid]
            self._note_closed(sid, streamstate.CLOSED_BY_END)

    def _stream_error(self, sid: int, code: int, reason: str) -> None:
        """Reset the stream for the peer's fault; the consumer knows every stream the core keeps, and hears."""
        stream = self._streams.pop(sid, None)
        self._note_closed(sid, streamstate.CLOSED_BY_RESET)
        self._waiting.discard(sid)
        self._guard.forget(sid)
        self._out += rst_stream_frame(sid, code)
        if stream is not None:
            self._events.append(StreamReset(sid, code, False))
        self._count("stream_errors")
        self._peer_reset_hit()

    def _note_closed(self, sid: int, how: int) -> None:
        closed = self._closed_by
        if sid not in closed:
            order = self._closed_order
            if len(order) < REMEMBERED_CLOSED:
                order.append(sid)
            else:
                at = self._closed_next
                del closed[order[at]]
                order[at] = sid
                self._closed_next = at + 1 if at + 1 < REMEMBERED_CLOSED else 0
        closed[sid] = how

    def _credit_connection(self, size: int) -> None:
        increment = self._recv.credit(size)
        if increment:
            self._out += window_update_frame(0, increment)

    def _peer_reset_hit(self) -> None:
        if self._resets.hit(self._now):
            raise Violation(ENHANCE_YOUR_CALM, f"more than {self.limits.max_peer_resets} streams reset or refused "
                            f"in {self.limits.budget_window:g}s", "rapid_reset")

    def _terminate(self, error_code: int, reason: str, counter: str) -> None:
        self._count(counter)
        self._out += goaway_frame(self._highest_inbound, error_code, reason.encode()[:256])
        self._close()
        self._events.append(ConnectionTerminated(error_code, reason, remote=False))

    def _close(self) -> None:
        self.closed = True
        self._streams.clear()
        self._waiting.clear()
        self._inbuf.clear()

    def _count(self, counter: str) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + 1

    # -- output ------------------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Every byte queued since the last call, for one write."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def start_request(self, headers: Headers, end_stream: bool = False) -> int:
        """Client side: open a stream with a request's headers; returns its id."""
        if not self.client_side:
            raise H2UsageError("a server-side connection cannot start requests")
        if not self.can_open():
            raise H2UsageError("no stream available: peer's limit reached, GOAWAY received or connection closed")
        headers = self._outbound(headers, headercheck.REQUEST)
        sid = self._next_stream
        self._next_stream += 2
        self._highest_outbound = sid
        stream = _Stream(streamstate.OPEN, self._peer_initial_window, self._recv_initial)
        for name, value in headers:
            if name == b":method":
                stream.head_request = value == b"HEAD"
                break
        self._streams[sid] = stream
        self._write_headers(sid, headers, end_stream)
        if end_stream:
            stream.state = streamstate.HALF_CLOSED_LOCAL
        self._guard.opened_locally(sid)
        return sid

    def can_open(self) -> bool:
        """Client side: whether one more stream fits the peer's SETTINGS_MAX_CONCURRENT_STREAMS."""
        return not self.closed and self.goaway_received is None and len(self._streams) < self._peer_max_streams

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """Server side: the response's headers (``end_stream`` for a headers-only or trailers-only answer)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_done or self.closed:
            return  # the stream is gone (reset): its StreamReset event said so
        headers = self._outbound(headers, headercheck.RESPONSE)
        self._write_headers(stream_id, headers, end_stream)
        if end_stream:
            self._local_end(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Queue body bytes; False once the stream holds ``stream_buffer_high`` bytes: wait for StreamWritable."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_done or self.closed:
            return False
        stream.out += data
        stream.end_after = stream.end_after or end_stream
        self._flush(stream_id, stream)
        if len(stream.out) >= self.limits.stream_buffer_high:
            stream.over_high = True
            return False
        return True

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """End the stream with trailers, after the body bytes still queued."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_done or self.closed:
            return
        stream.trailers = self._outbound(headers, headercheck.TRAILERS)
        self._flush(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream, after the body bytes still queued."""
        self.send_data(stream_id, b"", end_stream=True)

    def buffered(self, stream_id: int) -> int:
        """Bytes queued on the stream that the peer's windows have not let out yet."""
        stream = self._streams.get(stream_id)
        return len(stream.out) if stream is not None else 0

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """The consumer passed on ``flow_length`` bytes of the stream's DATA: reopen the peer's windows."""
        if not flow_length or self.closed:
            return
        self._credit_connection(flow_length)
        stream = self._streams.get(stream_id)
        if stream is not None:
            increment = stream.recv.credit(flow_length)
            if increment:
                self._out += window_update_frame(stream_id, increment)

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        """RST_STREAM: cancel the stream both ways."""
        if self.closed or self._streams.pop(stream_id, None) is None:
            return
        self._note_closed(stream_id, streamstate.CLOSED_BY_RESET)
        self._waiting.discard(stream_id)
        self._guard.forget(stream_id)
        self._out += rst_stream_frame(stream_id, error_code)

    def ping(self, opaque: bytes) -> None:
        """Send a PING of 8 bytes; the peer's answer comes as PingAcked with the same bytes."""
        if not self.closed:
            self._out += ping_frame(opaque)

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """Drain: tell the peer no stream above ``last_stream_id`` (by default the last it opened) will be
        processed; those at or below it finish. An error code other than NO_ERROR ends the connection at once.
        A second GOAWAY may lower the last stream id, never raise it: the graceful two-step drain sends
        ``goaway(last_stream_id=2**31 - 1)`` first, then ``goaway()`` a round trip later."""
        if self.closed:
            return
        if error_code != NO_ERROR:
            self._events = []
            self._terminate(error_code, "closed by the sidecar", "local_goaway")
            return
        last = self._guard.highest_peer if last_stream_id is None else last_stream_id
        if self._guard.goaway_last is not None:
            last = min(last, self._guard.goaway_last)
        self._guard.goaway_last = last
        self._out += goaway_frame(last, NO_ERROR)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def peer_max_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS arrive)."""
        return self._peer_max_streams

    def _outbound(self, headers: Headers, kind: int) -> Headers:
        """With ``check_outbound``: names in lower case and values trimmed, then the list checked as the peer
        will check it; a bad list is our caller's bug."""
        if not self.check_outbound or headercheck.check(headers, kind) is None:
            return headers   # a list that passes has lower-case names and trimmed values already: nothing to copy
        clean: Headers = []
        for field in headers:
            name, value = field[0], field[1]
            lower, trimmed = name.lower(), value.strip(b" \t")
            # a field kept as it is keeps its type (hpack's NeverIndexedHeaderTuple stays never indexed)
            clean.append(field if lower == name and trimmed == value else (lower, trimmed))
        problem = headercheck.check(clean, kind)
        if problem is not None:
            raise H2UsageError(f"refusing to send a malformed header list: {problem}")
        return clean

    def _write_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        block = self.encoder.encode(headers)
        size = self._max_send_frame
        if len(block) <= size:
            self._out += headers_frame(sid, block, end_stream=end_stream)
            return
        self._out += headers_frame(sid, block[:size], end_stream=end_stream, end_headers=False)
        for at in range(size, len(block), size):
            self._out += continuation_frame(sid, block[at:at + size], end_headers=at + size >= len(block))

    # -- flow control ------------------------------------------------------------------------------------

    def _flush(self, stream_id: int, stream: _Stream) -> None:
        """Send what the windows allow of the stream's queue, then its end or trailers once it is empty."""
        out = stream.out
        if stream.local_done:  # ended by an earlier flush: nothing may follow END_STREAM
            self._waiting.discard(stream_id)
            return
        while out:
            window = min(stream.send_window, self._send_window)
            if window <= 0:
                self._waiting.add(stream_id)
                return
            n = min(window, len(out), self._max_send_frame)
            last = n == len(out) and stream.end_after and stream.trailers is None
            self._out += data_frame(stream_id, bytes(out[:n]), end_stream=last)
            stream.send_window -= n
            self._send_window -= n
            del out[:n]
            if last:
                self._waiting.discard(stream_id)
                self._local_end(stream_id, stream)
                return
        self._waiting.discard(stream_id)
        if stream.trailers is not None:
            self._write_headers(stream_id, stream.trailers, True)
            self._local_end(stream_id, stream)
        elif stream.end_after:
            self._out += data_frame(stream_id, b"", end_stream=True)
            self._local_end(stream_id, stream)

    def _local_end(self, stream_id: int, stream: _Stream) -> None:
        stream.state = streamstate.advance(stream.state, streamstate.SEND_END_STREAM, stream_id)
        if stream.state == streamstate.CLOSED:
            del self._streams[stream_id]
            self._note_closed(stream_id, streamstate.CLOSED_BY_END)

    def _flush_waiting(self, which: set[int]) -> None:
        """Flush the waiting streams among ``which`` (holding 0: all of them)."""
        for sid in (list(self._waiting) if 0 in which else list(which)):
            stream = self._streams.get(sid)
            if stream is None or sid not in self._waiting:
                continue
            self._flush(sid, stream)
            if stream.over_high and len(stream.out) < self.limits.stream_buffer_high:
                stream.over_high = False
                self._events.append(StreamWritable(sid))
