"""W3C trace context parsing and continuation, with a seeded RNG."""

from __future__ import annotations

import random
import re

import pytest

from sidecar.proxy.tracecontext import IdSource, TraceParent, _Digits, header, next_hop, parse, parse_fields

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("value", "expected"), [
    (VALID, TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)),
    (VALID.encode(), TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)),
    ("  " + VALID + " ", TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future", TraceParent(
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 0)),
    (None, None),
    ("", None),
    (VALID.upper(), None),                                                     # uppercase hex
    ("ff" + VALID[2:], None),                                                  # version ff
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),         # zero trace id
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),         # zero span id
    (VALID + "-extra", None),                                                  # version 00 is exactly 55
    ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),          # short trace id
    ("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", None),
    ("00-4bf92f3577b34da6-3ce929d0e0e4736-00f067aa0ba902b7-01", None),        # a dash inside the trace id
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0bg902b7-01", None),         # not hex in the span id
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", None),         # uppercase flags
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0-", None),
    ("00-4bf92f3577b34da6a3ce929d0e0E4736-00f067aa0ba902b7-01", None),         # one uppercase digit
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", TraceParent(
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 255)),
])
def test_parse(value: str | bytes | None, expected: TraceParent | None) -> None:
    assert parse(value) == expected


def test_next_hop_continues_the_trace_with_a_new_span() -> None:
    ids = IdSource(random.Random(7))
    incoming = parse(VALID)
    hop = next_hop(incoming, ids)
    assert hop.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert hop.span_id != "00f067aa0ba902b7" and re.fullmatch(r"[0-9a-f]{16}", hop.span_id)
    assert hop.flags == 1
    assert parse(hop.to_header()) == hop


def test_next_hop_starts_a_trace_when_none_or_invalid() -> None:
    hop = next_hop(None, IdSource(random.Random(1)))
    again = next_hop(None, IdSource(random.Random(1)))
    assert hop == again  # seeded: reproducible
    assert hop.sampled and parse(hop.to_header()) == hop
    assert not next_hop(None, IdSource(random.Random(1)), sampled=False).sampled


def test_request_ids_are_uuid4_text() -> None:
    ids = IdSource(random.Random(3))
    values = {ids.request_id() for _ in range(1000)}
    assert len(values) == 1000
    for value in list(values)[:50]:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", value)


def test_new_traces_carry_the_sampling_decision_of_the_ratio() -> None:
    import random

    from sidecar.proxy.tracecontext import IdSource, next_hop
    from sidecar.telemetry.tracing import Sampler
    for ratio in (0.0, 0.25, 1.0):
        ids = IdSource(random.Random(7), sample_ratio=ratio)
        sampler = Sampler(ratio)
        hops = [next_hop(None, ids) for _ in range(400)]
        # the flag the engine sends agrees with the exporter's own decision for every new trace
        assert all(bool(h.flags & 1) == sampler.by_trace_id(h.trace_id) for h in hops)
        share = sum(h.flags & 1 for h in hops) / len(hops)
        assert abs(share - ratio) < 0.08


@pytest.mark.parametrize("value", [VALID, VALID.encode(), " " + VALID, VALID.upper(), VALID + "-extra", None, "",
                                   "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future"])
def test_parse_fields_is_parse_without_the_object(value: str | bytes | None) -> None:
    parent = parse(value)
    fields = parse_fields(value)
    assert fields == (None if parent is None else (parent.trace_id, parent.span_id, parent.flags))


@pytest.mark.parametrize("flags", [0, 1, 3, 0xFF])
def test_header_is_to_header_as_bytes(flags: int) -> None:
    hop = TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", flags)
    assert header(hop.trace_id, hop.span_id, hop.flags) == hop.to_header().encode()


def test_new_trace_draws_what_next_hop_draws() -> None:
    # the engine writes traceparent from new_trace() and span_id(): the same ids, flags and RNG sequence as
    # next_hop(None), so seeded tests see the same traces either way
    for ratio in (0.0, 0.5, 1.0):
        engine, reference = IdSource(random.Random(11), ratio), IdSource(random.Random(11), ratio)
        for _ in range(200):
            trace_id, flags = engine.new_trace()
            hop = next_hop(None, reference)
            assert (trace_id, engine.span_id(), flags) == (hop.trace_id, hop.span_id, hop.flags)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_fresh_ids_are_what_the_three_draws_would_be(ratio: float) -> None:
    # the engine's one-draw path for requests without ids: a UUID4 request id, non-zero trace and span ids, and
    # the sampling flag that sampled() (the exporter's rule) gives for that trace id
    ids = IdSource(random.Random(5), sample_ratio=ratio)
    drawn = [ids.fresh() for _ in range(500)]
    assert len({request_id for request_id, _, _, _ in drawn}) == 500
    for request_id, trace_id, span_id, flags in drawn:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", request_id)
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and int(trace_id, 16)
        assert re.fullmatch(r"[0-9a-f]{16}", span_id) and int(span_id, 16)
        assert flags == (1 if ids.sampled(trace_id) else 0)
        assert parse_fields(header(trace_id, span_id, flags)) == (trace_id, span_id, flags)
    share = sum(flags for _, _, _, flags in drawn) / len(drawn)
    assert abs(share - ratio) < 0.08


def test_ids_are_the_digits_of_one_draw_per_batch_of_64() -> None:
    # fresh() slices 80 hex digits a request from one draw of 64 requests' bits, span_id() 16 from one of 64 spans'
    # bits: the digits of those numbers written out in full, and nothing else (no padding of zeros to skip)
    ids, rng = IdSource(random.Random(9)), random.Random(9)
    digits = f"{rng.getrandbits(320 * 64):05120x}"
    for n in range(64):
        request_id, trace_id, span_id, _ = ids.fresh()
        assert (trace_id, span_id) == (digits[80 * n:80 * n + 32], digits[80 * n + 32:80 * n + 48])
        assert request_id.replace("-", "")[20:] == digits[80 * n + 68:80 * n + 80]
    spans = f"{rng.getrandbits(64 * 64):01024x}"
    assert [ids.span_id() for _ in range(64)] == [spans[16 * n:16 * n + 16] for n in range(64)]


@pytest.mark.parametrize("size", [16, 80])
def test_a_batch_is_64_ids_of_digits_with_no_padding(size: int) -> None:
    batch = _Digits(random.Random(4).getrandbits, size)
    assert [batch.take() for _ in range(64)] == [size * n for n in range(64)]
    assert batch.text == f"{random.Random(4).getrandbits(4 * size * 64):0{size * 64}x}"
    assert batch.take() == 0   # the next batch


_SPEC_55 = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _by_the_spec(raw: bytes) -> tuple[str, str, int] | None:
    """A 55-byte traceparent read as W3C Trace Context 3.2 words it, with a regular expression."""
    match = _SPEC_55.fullmatch(raw)
    if match is None or match[1] == b"ff" or match[2] == b"0" * 32 or match[3] == b"0" * 16:
        return None
    return match[2].decode(), match[3].decode(), int(match[4], 16)


def test_parse_fields_agrees_with_the_spec_on_every_one_byte_change_of_a_valid_header() -> None:
    # the fast path tells a version 00 header by one byte-table translation; every byte of a valid header replaced
    # by every kind of byte (hex either case, the next letters, dash, space, tab, NUL, high bytes) is read as the
    # spec's grammar reads it
    valid = VALID.encode()
    replacements = b"0123456789abcdefABCDEFgxz-_ \t\x00\x7f\x80\xff"
    checked = 0
    for i in range(len(valid)):
        for byte in replacements:
            raw = valid[:i] + bytes([byte]) + valid[i + 1:]
            assert parse_fields(raw) == _by_the_spec(raw), raw
            checked += 1
    assert checked == 55 * len(replacements)
