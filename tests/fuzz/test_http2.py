"""HTTP/2 frames into the connection core, and after a valid preface into a listener's connection (its streams
exchanges): nothing raises, buffers and streams stay bounded (see targets.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.http2.preface import PREFACE
from tests.fuzz.strategies import fuzz_settings, inputs, mutated
from tests.fuzz.targets import http2_frames, http2_listener


@fuzz_settings(300)
@given(inputs("http2_frames", max_noise=128))
def test_http2_bytes(data: bytes) -> None:
    http2_frames(data)


@fuzz_settings(300)
@given(st.binary(max_size=2048))
def test_http2_noise_after_a_valid_preface(data: bytes) -> None:
    http2_frames(PREFACE + data)


@fuzz_settings(200)
@given(st.lists(mutated("http2_frames", max_noise=32), min_size=2, max_size=4))
def test_http2_spliced_connections(parts: list[bytes]) -> None:
    http2_frames(b"".join(parts))


@fuzz_settings(200)
@given(inputs("http2_listener", max_noise=64))
def test_http2_listener_after_a_valid_preface(data: bytes) -> None:
    http2_listener(data)


@fuzz_settings(100)
@given(st.lists(mutated("http2_listener", max_noise=32), min_size=2, max_size=3))
def test_http2_listener_spliced(parts: list[bytes]) -> None:
    http2_listener(b"".join(parts))
