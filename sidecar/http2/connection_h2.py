"""A sans-IO HTTP/2 connection, server or client side, over python-hyper's ``h2`` with our compiled HPACK
(``sidecar.http2.hpack``) in place of python-hyper's ``hpack``: the reference the core of our own
(``sidecar.http2.core``) is tested against, and the one ``SIDECAR_H2_CORE=h2`` runs
(``sidecar.http2.connection`` picks).

Theory of operation
-------------------
Bytes in (``receive_data(data, now)``), events out (``sidecar.http2.events``); actions (``send_headers``,
``send_data``, ``send_trailers``, ``end_stream``, ``reset``, ``ping``, ``goaway``) queue frames, and
``data_to_send()`` hands over every queued byte for one write per batch. No I/O, no clock: ``now`` comes in.

Each complete frame's header goes through :class:`~sidecar.http2.guard.FrameGuard` before ``h2`` parses the
frame; runs of frames it passes are fed to ``h2`` in one call. A rule broken by the peer (``h2``'s protocol
errors, and the guard's floods) ends the connection: a GOAWAY with the error's code is queued, a
:class:`ConnectionTerminated` event is returned, ``counters`` counts it by name, and nothing raises.

Flow control: received DATA stays charged to the peer's windows until the consumer calls ``acknowledge`` after
passing the bytes on, so a slow reader stalls the writer and the core holds at most the windows it advertised.
Outgoing DATA waits in a per-stream buffer until the peer's windows open; ``send_data`` returns False once a
stream's buffer passes ``stream_buffer_high``, and :class:`StreamWritable` says when to resume.

GOAWAY in either direction is handled here rather than by ``h2``, which stops every stream on one: after ours
(``goaway``) streams the peer opens above the last one are refused while those below finish; after the peer's,
our streams above its last one are reported reset with REFUSED_STREAM (safe to retry elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hyperframe.frame import GoAwayFrame, RstStreamFrame, WindowUpdateFrame

from sidecar.http2 import hpack
from sidecar.http2.core import H2UsageError
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
from sidecar.http2.frames import (
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    HEADERS,
    PADDED,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
)
from sidecar.http2.guard import FrameGuard, Verdict, Violation
from sidecar.http2.hpack_errors import HeaderBlockError, HeaderListTooLarge
from sidecar.http2.limits import DEFAULT_WINDOW, Budget, H2Limits
from sidecar.http2.preface import PREFACE

NO_ERROR = 0x0
CANCEL = 0x8


@dataclass(slots=True)
class _HyperStream:
    out: bytearray = field(default_factory=bytearray)
    end_after: bool = False  # END_STREAM once ``out`` is sent
    trailers: Headers | None = None  # sent (with END_STREAM) once ``out`` is sent
    local_done: bool = False
    peer_done: bool = False
    over_high: bool = False  # send_data returned False; StreamWritable is owed


class HyperH2Connection:
    """One HTTP/2 connection; ``client_side`` for sidecar-to-sidecar and sidecar-to-app, else a listener's."""

    def __init__(self, *, client_side: bool, limits: H2Limits | None = None, check_outbound: bool = True) -> None:
        """``check_outbound=False`` skips h2's checks of the header lists we send (4 to 10% of the CPU
        of a call): for a caller that only sends lists it built or that a peer's side already validated."""
        self.limits = limits or H2Limits()
        self.client_side = client_side
        self.counters: dict[str, int] = {}
        self.closed = False
        self.goaway_received: int | None = None  # the peer's last stream id, once it sent GOAWAY
        self.settings_received = False  # the peer's first SETTINGS arrived: its limits are known
        self._guard = FrameGuard(self.limits, client_side)
        self._resets = Budget(self.limits.max_peer_resets, self.limits.budget_window)
        self._streams: dict[int, _HyperStream] = {}
        self._waiting: set[int] = set()  # streams with bytes held back by a closed window
        self._inbuf = bytearray()
        self._out = bytearray()
        self._preface_pending = not client_side
        self._pending_new = 0  # streams opened by frames not yet fed to h2
        self._drop_block = bytearray()  # header block of a refused stream, decoded only for HPACK's sake
        self._drop_refuse = False
        self._now = 0.0
        self._to_flush: set[int] = set()  # windows a batch of frames opened
        self._events: list[Event] = []
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client_side, header_encoding=None,
            validate_outbound_headers=check_outbound, normalize_outbound_headers=check_outbound))
        lim = self.limits
        self._h2.local_settings = h2.settings.Settings(client=client_side, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: lim.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: lim.initial_window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: lim.max_frame_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: lim.max_header_list_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self._h2.max_inbound_frame_size = lim.max_frame_size
        # our compiled HPACK in place of python-hyper's (the same interface, a fifth of the CPU); the header
        # list limit is enforced from the first frame, before the peer acknowledges our SETTINGS
        self._h2.encoder = hpack.Encoder()  # type: ignore[assignment]
        self._h2.decoder = hpack.Decoder(max_header_list_size=lim.max_header_list_size)  # type: ignore[assignment]
        self._h2.initiate_connection()
        if lim.connection_window > DEFAULT_WINDOW:
            self._h2.increment_flow_control_window(lim.connection_window - DEFAULT_WINDOW)

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
            start = 0
            guard, max_frame, limit = self._guard, self.limits.max_frame_size, self.limits.max_concurrent_streams
            while len(buf) - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > max_frame:
                    raise Violation(FRAME_SIZE_ERROR, f"frame of {length} bytes over {max_frame}", "frame_size")
                end = pos + 9 + length
                if end > len(buf):
                    break
                ftype, flags = buf[pos + 3], buf[pos + 4]
                stream_id = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                verdict = guard.inspect(ftype, flags, stream_id, length, now)
                if verdict is Verdict.NEW:
                    if len(self._streams) + self._pending_new >= limit:
                        # count exactly: the frames before this one may have closed streams
                        self._feed(bytes(buf[start:pos]))
                        start = pos
                    if len(self._streams) + self._pending_new >= limit:
                        verdict = Verdict.REFUSE
                        guard.refuse(stream_id)
                        self._count("refused_streams")
                        self._peer_reset_hit()
                    else:
                        verdict = Verdict.PASS
                        guard.admit(stream_id, flags)
                        self._pending_new += 1
                elif verdict is Verdict.REFUSE:  # opened after our GOAWAY
                    self._count("refused_streams")
                    self._peer_reset_hit()
                if verdict is not Verdict.PASS:
                    self._feed(bytes(buf[start:pos]))
                    start = end
                    self._divert(verdict, ftype, flags, stream_id, bytes(buf[pos + 9:end]))
                    if self.closed:
                        return events
                pos = end
            self._feed(bytes(buf[start:pos]))
            del buf[:pos]
        except Violation as v:
            self._terminate(v.error_code, v.reason, v.counter)
        return events

    def _divert(self, verdict: Verdict, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        """A frame h2 must not see: the peer's GOAWAY, or one of a stream h2 never saw."""
        if verdict is Verdict.GOAWAY:
            self._on_goaway(stream_id, payload)
            return
        if ftype == DATA:
            if payload:  # the peer's connection window shrank by it: give it back
                self._emit_frame(WindowUpdateFrame(0, window_increment=len(payload)).serialize())
            return
        if ftype == HEADERS:
            self._drop_block = bytearray(_header_fragment(flags, payload))
            self._drop_refuse = verdict is Verdict.REFUSE
        elif ftype == CONTINUATION:
            self._drop_block += payload
        else:
            return
        if flags & END_HEADERS:
            self._decode_dropped_block()
            if self._drop_refuse:
                self._emit_frame(RstStreamFrame(stream_id, error_code=REFUSED_STREAM).serialize())

    def _decode_dropped_block(self) -> None:
        """Decode a refused stream's header block: it may change the connection's HPACK table."""
        block, self._drop_block = bytes(self._drop_block), bytearray()
        try:
            self._h2.decoder.decode(block, raw=True)
        except OversizedHeaderListError as e:
            raise Violation(ENHANCE_YOUR_CALM, f"header list too large: {e}", "header_list_too_large") from e
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise Violation(COMPRESSION_ERROR, f"bad header block: {e}", "compression_error") from e

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
            self._streams.pop(sid)
            self._waiting.discard(sid)
            self._guard.forget(sid)
            self._h2.reset_stream(sid, CANCEL)
            self._events.append(StreamReset(sid, REFUSED_STREAM, remote=True))

    def _feed(self, chunk: bytes) -> None:
        self._pending_new = 0
        if not chunk:
            return
        try:
            h2_events = self._h2.receive_data(chunk)
        except h2.exceptions.ProtocolError as e:
            # h2 queued its own GOAWAY (the last 17 bytes, no debug data) before raising; ours replaces it, so
            # the peer sees exactly one, with the code and reason below
            pending = self._h2.data_to_send()
            if pending[-17:-13] == b"\x00\x00\x08\x07":
                pending = pending[:-17]
            self._out += pending
            if isinstance(e.__cause__, HeaderBlockError) and not isinstance(e.__cause__, HeaderListTooLarge):
                # h2 says PROTOCOL_ERROR; RFC 9113 section 4.3 says a field block that fails to decode is a
                # COMPRESSION_ERROR (the HPACK context is lost)
                raise Violation(COMPRESSION_ERROR, str(e), "compression_error") from e
            raise Violation(int(e.error_code), str(e) or type(e).__name__, _counter_of(e)) from e
        self._to_flush = set()
        for ev in h2_events:
            self._translate(ev)
        # after every event of the batch: h2 has already applied them all, so a stream a later RST_STREAM
        # closed must not be written to because an earlier WINDOW_UPDATE opened its window
        if self._to_flush:
            self._flush_waiting(0 if 0 in self._to_flush else self._to_flush)

    def _translate(self, ev: h2.events.Event) -> None:
        out = self._events
        if isinstance(ev, h2.events.DataReceived):
            sid = ev.stream_id or 0
            if sid in self._streams:
                out.append(DataReceived(sid, ev.data or b"", ev.flow_controlled_length or 0))
            elif ev.flow_controlled_length:
                self._h2.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, h2.events.RequestReceived):
            sid = ev.stream_id or 0
            self._streams[sid] = _HyperStream()
            out.append(HeadersReceived(sid, _headers(ev.headers), ev.stream_ended is not None))
        elif isinstance(ev, h2.events.ResponseReceived):
            sid = ev.stream_id or 0
            if sid in self._streams:
                out.append(HeadersReceived(sid, _headers(ev.headers), ev.stream_ended is not None))
        elif isinstance(ev, h2.events.TrailersReceived):
            if ev.stream_id in self._streams:
                out.append(TrailersReceived(ev.stream_id or 0, _headers(ev.headers)))
        elif isinstance(ev, h2.events.StreamEnded):
            sid = ev.stream_id or 0
            stream = self._streams.get(sid)
            if stream is not None:
                stream.peer_done = True
                out.append(StreamEnded(sid))
                if stream.local_done:
                    del self._streams[sid]
        elif isinstance(ev, h2.events.StreamReset):
            sid = ev.stream_id or 0
            known = self._streams.pop(sid, None) is not None
            self._waiting.discard(sid)
            self._guard.forget(sid)
            if known:
                out.append(StreamReset(sid, int(ev.error_code or 0), bool(ev.remote_reset)))
            if not ev.remote_reset:
                self._count("stream_errors")  # h2 reset it for the peer's fault (e.g. its window overflowed)
            # either way the peer made us set up and tear down a stream: one budget for both
            self._peer_reset_hit()
        elif isinstance(ev, h2.events.WindowUpdated):
            self._to_flush.add(ev.stream_id or 0)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_received = True
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                self._to_flush.add(0)
        elif isinstance(ev, h2.events.PingAckReceived):
            out.append(PingAcked(ev.ping_data or b""))

    def _peer_reset_hit(self) -> None:
        if self._resets.hit(self._now):
            raise Violation(ENHANCE_YOUR_CALM, f"more than {self.limits.max_peer_resets} streams reset or refused "
                            f"in {self.limits.budget_window:g}s", "rapid_reset")

    def _terminate(self, error_code: int, reason: str, counter: str) -> None:
        self._count(counter)
        self._emit_frame(GoAwayFrame(0, last_stream_id=self._h2.highest_inbound_stream_id,
                                     error_code=error_code, additional_data=reason.encode()[:256]).serialize())
        self._close()
        self._events.append(ConnectionTerminated(error_code, reason, remote=False))

    def _close(self) -> None:
        self.closed = True
        self._streams.clear()
        self._waiting.clear()
        self._inbuf.clear()

    def _count(self, counter: str) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + 1

    def _emit_frame(self, frame: bytes) -> None:
        """Queue a frame written without h2, after everything h2 queued before it."""
        self._out += self._h2.data_to_send()
        self._out += frame

    # -- output ------------------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Every byte queued since the last call, for one write."""
        out = self._h2.data_to_send()
        if self._out:
            out, self._out = bytes(self._out) + out, bytearray()
        return out

    def start_request(self, headers: Headers, end_stream: bool = False) -> int:
        """Client side: open a stream with a request's headers; returns its id."""
        if not self.client_side:
            raise H2UsageError("a server-side connection cannot start requests")
        if not self.can_open():
            raise H2UsageError("no stream available: peer's limit reached, GOAWAY received or connection closed")
        sid = self._h2.get_next_available_stream_id()
        self._h2.send_headers(sid, headers, end_stream=end_stream)
        self._streams[sid] = _HyperStream(local_done=end_stream)
        self._guard.opened_locally(sid)
        return sid

    def can_open(self) -> bool:
        """Client side: whether one more stream fits the peer's SETTINGS_MAX_CONCURRENT_STREAMS."""
        return (not self.closed and self.goaway_received is None
                and len(self._streams) < self._h2.remote_settings.max_concurrent_streams)

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """Server side: the response's headers (``end_stream`` for a headers-only or trailers-only answer)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_done or self.closed:
            return  # the stream is gone (reset): its StreamReset event said so
        self._h2.send_headers(stream_id, headers, end_stream=end_stream)
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
        stream.trailers = headers
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
        if flow_length and not self.closed:
            self._h2.acknowledge_received_data(flow_length, stream_id)

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        """RST_STREAM: cancel the stream both ways."""
        if self._streams.pop(stream_id, None) is None or self.closed:
            return
        self._waiting.discard(stream_id)
        self._guard.forget(stream_id)
        self._h2.reset_stream(stream_id, error_code)

    def ping(self, opaque: bytes) -> None:
        """Send a PING of 8 bytes; the peer's answer comes as PingAcked with the same bytes."""
        if not self.closed:
            self._h2.ping(opaque)

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """Drain: tell the peer no stream above ``last_stream_id`` (by default the last it opened) will be
        processed; those at or below it finish. An error code other than NO_ERROR ends the connection at once.
        A second GOAWAY may lower the last stream id, never raise it: the graceful two-step drain sends
        ``goaway(last_stream_id=2**31 - 1)`` first, then ``goaway()`` a round trip later."""
        if self.closed:
            return
        if error_code != NO_ERROR:
            self._terminate(error_code, "closed by the sidecar", "local_goaway")
            return
        last = self._guard.highest_peer if last_stream_id is None else last_stream_id
        if self._guard.goaway_last is not None:
            last = min(last, self._guard.goaway_last)
        self._guard.goaway_last = last
        self._emit_frame(GoAwayFrame(0, last_stream_id=last, error_code=NO_ERROR).serialize())

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def peer_max_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (its default until its SETTINGS arrive)."""
        return int(self._h2.remote_settings.max_concurrent_streams)

    # -- flow control ------------------------------------------------------------------------------------

    def _flush(self, stream_id: int, stream: _HyperStream) -> None:
        """Send what the windows allow of the stream's queue, then its end or trailers once it is empty."""
        out, h2c = stream.out, self._h2
        if stream.local_done:  # ended by an earlier flush: nothing may follow END_STREAM
            self._waiting.discard(stream_id)
            return
        while out:
            window = h2c.local_flow_control_window(stream_id)
            if window <= 0:
                self._waiting.add(stream_id)
                return
            n = min(window, len(out), h2c.max_outbound_frame_size)
            last = n == len(out) and stream.end_after and stream.trailers is None
            h2c.send_data(stream_id, bytes(out[:n]), end_stream=last)
            del out[:n]
            if last:
                self._waiting.discard(stream_id)
                self._local_end(stream_id, stream)
                return
        self._waiting.discard(stream_id)
        if stream.trailers is not None:
            h2c.send_headers(stream_id, stream.trailers, end_stream=True)
            self._local_end(stream_id, stream)
        elif stream.end_after:
            h2c.end_stream(stream_id)
            self._local_end(stream_id, stream)

    def _local_end(self, stream_id: int, stream: _HyperStream) -> None:
        stream.local_done = True
        if stream.peer_done:
            self._streams.pop(stream_id, None)

    def _flush_waiting(self, which: int | set[int]) -> None:
        """Flush the waiting streams among ``which`` (0: all of them)."""
        for sid in (list(self._waiting) if which == 0 else list(which) if isinstance(which, set) else [which]):
            stream = self._streams.get(sid)
            if stream is None or sid not in self._waiting:
                continue
            self._flush(sid, stream)
            if stream.over_high and len(stream.out) < self.limits.stream_buffer_high:
                stream.over_high = False
                self._events.append(StreamWritable(sid))


def _headers(headers: object) -> Headers:
    """h2 types header lists loosely; with ``header_encoding=None`` they are (bytes, bytes) pairs."""
    assert isinstance(headers, list)
    return headers


def _header_fragment(flags: int, payload: bytes) -> bytes:
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise Violation(PROTOCOL_ERROR, "padded HEADERS without a pad length", "protocol_error")
        start, end = 1, end - payload[0]
    if flags & PRIORITY_FLAG:
        start += 5
    if start > end:
        raise Violation(PROTOCOL_ERROR, "HEADERS padding longer than the frame", "protocol_error")
    return payload[start:end]


def _counter_of(e: h2.exceptions.ProtocolError) -> str:
    if isinstance(e, h2.exceptions.DenialOfServiceError):
        return "header_list_too_large"
    if isinstance(e, h2.exceptions.FlowControlError):
        return "flow_control"
    if isinstance(e, h2.exceptions.TooManyStreamsError):
        return "refused_streams"
    if isinstance(e, h2.exceptions.FrameTooLargeError):
        return "frame_size"
    return "protocol_error"
