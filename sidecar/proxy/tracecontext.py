"""W3C Trace Context (``traceparent``) and request ids, as pure functions over a given RNG.

Every proxy hop is a span: it keeps the caller's trace id and flags and puts its own, new span id in the
``parent-id`` field of the ``traceparent`` it sends on (https://www.w3.org/TR/trace-context/ 3.2 and 4.3).
A header that does not parse starts a new trace, as the recommendation says. ``tracestate`` is passed on
untouched by the proxy (it is an ordinary end-to-end header).

B3 (https://github.com/openzipkin/b3-propagation): the single ``b3`` header
``{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`` or a lone sampling state (``0``, ``1``, ``d``), and the
multi-header form ``X-B3-TraceId``, ``X-B3-SpanId``, ``X-B3-Sampled``, ``X-B3-Flags``. A 64-bit trace id is
left-padded with zeros to 128 bits, as the spec says. It is read only when no valid ``traceparent`` came:
W3C wins. The proxy then continues the trace in ``traceparent`` (B3 headers pass on untouched).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

_HEX: Final = frozenset(b"0123456789abcdef")
# a byte table for ``bytes.translate``: lowercase hex digits to "0", "-" kept, any other byte to "x", so that a
# version 00 traceparent in lowercase hex becomes _V00_SHAPE (one C pass and a compare; translate with a set of
# bytes to delete builds a 256-entry table on every call, ~1,300 instructions)
_SHAPE_TABLE: Final = bytes(48 if c in b"0123456789abcdef" else 45 if c == 45 else 120 for c in range(256))
_V00_SHAPE: Final = b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-00"
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16
SAMPLED: Final = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: str   # 32 lowercase hex digits, not all zero
    span_id: str    # 16 lowercase hex digits, not all zero: the span that sent this header
    flags: int      # trace-flags; bit 0 is "sampled"

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def to_header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"


def _is_hex(value: bytes) -> bool:
    return _HEX.issuperset(value)


def parse(value: bytes | str | None) -> TraceParent | None:
    """The ``traceparent`` header's fields, or None when absent or invalid.

    Version 00 must be exactly 55 characters; a higher version may carry more fields after a dash, which
    are ignored (forward compatibility, section 4.3); version ff is invalid.
    """
    fields = parse_fields(value)
    return None if fields is None else TraceParent(*fields)


def parse_fields(value: bytes | str | None) -> tuple[str, str, int] | None:
    """:func:`parse` as ``(trace_id, span_id, flags)``: the engine's form, one tuple per request and no object."""
    if value is None:
        return None
    raw = value.encode("latin-1") if isinstance(value, str) else value
    if len(raw) != 55:
        raw = raw.strip(b" \t")
    if len(raw) == 55 and raw[0] == 48 and raw[1] == 48 and raw.translate(_SHAPE_TABLE) == _V00_SHAPE:
        # the common case (version 00, lowercase hex) told by one translation; the flags read from their two
        # digits; no match object, no int()
        trace, span = raw[3:35], raw[36:52]
        if trace == _ZERO_TRACE or span == _ZERO_SPAN:
            return None
        return trace.decode(), span.decode(), _hex_digit(raw[53]) << 4 | _hex_digit(raw[54])
    if len(raw) < 55 or raw[2:3] != b"-" or raw[35:36] != b"-" or raw[52:53] != b"-":
        return None
    version, trace_id, span_id, flags = raw[:2], raw[3:35], raw[36:52], raw[53:55]
    if not (_is_hex(version) and _is_hex(trace_id) and _is_hex(span_id) and _is_hex(flags)):
        return None  # uppercase hex is invalid too
    if version == b"ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == b"00" and len(raw) != 55:
        return None
    if version != b"00" and len(raw) > 55 and raw[55:56] != b"-":
        return None
    return trace_id.decode(), span_id.decode(), int(flags, 16)


def _hex_digit(c: int) -> int:
    """The value of one lowercase hex digit, already checked to be one."""
    return c - 48 if c <= 57 else c - 87


def header(trace_id: str, span_id: str, flags: int) -> bytes:
    """The ``traceparent`` value (version 00) for these fields: :meth:`TraceParent.to_header`, as bytes."""
    if flags == SAMPLED:
        return f"00-{trace_id}-{span_id}-01".encode()   # one string built at its size, not three concatenations
    return f"00-{trace_id}-{span_id}-{flags:02x}".encode()


# ------------------------------------------------------------------------------------------ B3


_HEX_TEXT: Final = frozenset("0123456789abcdef")


def _hex(value: str, lengths: tuple[int, ...]) -> str | None:
    value = value.strip().lower()
    if len(value) not in lengths or not _HEX_TEXT.issuperset(value) or not value.strip("0"):
        return None
    return value


def _sampled(state: str | None) -> int | None:
    if state is None:
        return None
    state = state.strip().lower()
    return {"1": SAMPLED, "true": SAMPLED, "d": SAMPLED, "0": 0, "false": 0}.get(state)


def b3_single(value: str) -> TraceParent | None:
    """The ``b3`` header as a :class:`TraceParent` (the B3 span id becomes the parent-id), or None when it does
    not parse or carries only a sampling decision."""
    parts = value.strip().split("-")
    if len(parts) < 2:
        return None
    trace_id = _hex(parts[0], (16, 32))
    span_id = _hex(parts[1], (16,))
    if trace_id is None or span_id is None:
        return None
    flags = _sampled(parts[2]) if len(parts) >= 3 else None
    if len(parts) >= 3 and flags is None:
        return None
    return TraceParent(trace_id.rjust(32, "0"), span_id, SAMPLED if flags is None else flags)


def b3_multi(headers: Mapping[str, str]) -> TraceParent | None:
    """``X-B3-TraceId``/``X-B3-SpanId``/``X-B3-Sampled``/``X-B3-Flags`` (``headers`` keyed in lower case)."""
    trace_id = _hex(headers.get("x-b3-traceid", ""), (16, 32))
    span_id = _hex(headers.get("x-b3-spanid", ""), (16,))
    if trace_id is None or span_id is None:
        return None
    if headers.get("x-b3-flags", "").strip() == "1":
        flags: int | None = SAMPLED   # debug implies sampled
    else:
        flags = _sampled(headers.get("x-b3-sampled"))
    return TraceParent(trace_id.rjust(32, "0"), span_id, SAMPLED if flags is None else flags)


def from_b3(headers: Iterable[tuple[bytes, bytes]]) -> TraceParent | None:
    """The trace context of B3 headers among ``(lowercase name, value)`` pairs, or None. The single header
    wins over the multi-header form, as the B3 spec recommends."""
    multi: dict[str, str] = {}
    for name, value in headers:
        if name == b"b3":
            return b3_single(value.decode("latin-1"))
        if name.startswith(b"x-b3-"):
            multi[name.decode("latin-1")] = value.decode("latin-1")
    return b3_multi(multi) if multi else None


def incoming_context(headers: Iterable[tuple[bytes, bytes]]) -> TraceParent | None:
    """What a hop continues: a valid ``traceparent``, else B3, else None (a new trace)."""
    pairs = list(headers)
    for name, value in pairs:
        if name == b"traceparent":
            parsed = parse(value)
            if parsed is not None:
                return parsed
    return from_b3(pairs)


# ------------------------------------------------------------------------------------------ ids


_LOW_64: Final = (1 << 64) - 1   # the low half of a trace id, as sampled() reads it
_UUID4_KEEP: Final = ~(0xF000 << 64) & ~(0xC000 << 48)   # the version and variant bits...
_UUID4_SET: Final = (0x4000 << 64) | (0x8000 << 48)      # ...set to version 4, variant RFC 4122
_BATCH: Final = 64                                         # ids drawn at once by fresh() and span_id()
_TRACE_ZEROS: Final = "0" * 32   # as text: fresh() and span_id() slice text
_SPAN_ZEROS: Final = "0" * 16
# a UUID4's variant digit (RFC 4122: 10xx) from any hex digit's low two bits
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class _Digits:
    """Random hex digits drawn ``size`` at a time from batches of ``_BATCH`` draws: slicing a few digits out of a
    batch costs less than drawing and formatting one number (the digits are those of f"{bits:0{width}x}", made
    from bytes: formatting a 20,480-bit number digit by digit cost ~1,000 instructions a request)."""

    __slots__ = ("_bits", "_pos", "_size", "text")

    def __init__(self, bits: Callable[[int], int], size: int) -> None:
        self._bits = bits
        self._size = size
        self._pos = 0
        self.text = ""

    def take(self) -> int:
        """Where the next ``size`` digits start in :attr:`text` (which may be a new batch)."""
        pos = self._pos
        if pos >= len(self.text):
            self.text = self._bits(4 * self._size * _BATCH).to_bytes(self._size * _BATCH // 2, "big").hex()
            pos = 0
        self._pos = pos + self._size
        return pos


class IdSource:
    """Random trace, span and request ids; seed it in tests for reproducible ids."""

    __slots__ = ("_bits", "_fresh", "_spans", "sample_bound")

    def __init__(self, rng: random.Random | None = None, sample_ratio: float = 1.0) -> None:
        self._bits = (rng or random.Random(os.urandom(16))).getrandbits
        self.sample_bound = 0
        self.set_sample_ratio(sample_ratio)
        self._fresh = _Digits(self._bits, 80)   # fresh(): a trace id, a span id and a request id
        self._spans = _Digits(self._bits, 16)   # span_id()

    def set_sample_ratio(self, ratio: float) -> None:
        # a new trace is sampled when its trace id's low 64 bits fall under ratio * 2^64, the rule of
        # OpenTelemetry's TraceIdRatioBased, so this flag and the span exporter's decision always agree
        self.sample_bound = round(ratio * (1 << 64))

    def sampled(self, trace_id: str) -> bool:
        return int(trace_id[16:], 16) < self.sample_bound

    def span_id(self) -> str:
        """A non-zero span id, sliced from a batch of digits."""
        spans = self._spans
        while True:
            pos = spans.take()
            span = spans.text[pos:pos + 16]
            if span != _SPAN_ZEROS:
                return span

    def trace_id(self) -> str:
        while True:
            value = self._bits(128)
            if value:
                return f"{value:032x}"

    def new_trace(self, sampled: bool = True) -> tuple[str, int]:
        """A new trace id and its flags: :meth:`trace_id` and the :meth:`sampled` decision, in one step."""
        while True:
            value = self._bits(128)
            if value:
                break
        return f"{value:032x}", SAMPLED if sampled and value & _LOW_64 < self.sample_bound else 0

    def fresh(self) -> tuple[str, str, str, int]:
        """``(request id, trace id, span id, flags)`` for a request that comes without any (the caller's sidecar
        does this on every request): 80 random hex digits, sliced from a batch drawn and formatted at once,
        for a UUID4 request id, a non-zero trace id and a non-zero span id, and the :meth:`sampled` flag."""
        digits = self._fresh
        while True:
            pos = digits.take()
            batch = digits.text
            trace = batch[pos:pos + 32]
            span = batch[pos + 32:pos + 48]
            if trace != _TRACE_ZEROS and span != _SPAN_ZEROS:
                break
        r = batch[pos + 48:pos + 80]
        request = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{_VARIANT[r[16]]}{r[17:20]}-{r[20:]}"
        bound = self.sample_bound
        if bound > _LOW_64:
            flags = SAMPLED
        elif bound == 0:
            flags = 0
        else:
            flags = SAMPLED if int(trace[16:], 16) < bound else 0
        return request, trace, span, flags

    def request_id(self) -> str:
        """A random 128-bit id in UUID text form (version 4 bits set), like Envoy's x-request-id."""
        text = "%032x" % (self._bits(128) & _UUID4_KEEP | _UUID4_SET)
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def next_hop(incoming: TraceParent | None, ids: IdSource, sampled: bool = True) -> TraceParent:
    """The ``traceparent`` this hop sends on: the caller's trace continued with a new span id, or a new trace."""
    if incoming is None:
        trace_id = ids.trace_id()
        return TraceParent(trace_id, ids.span_id(), SAMPLED if sampled and ids.sampled(trace_id) else 0)
    return TraceParent(incoming.trace_id, ids.span_id(), incoming.flags)
