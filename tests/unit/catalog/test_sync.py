from __future__ import annotations

import contextlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.catalog.model import HealthStatus, ServiceMetadata
from sidecar.catalog.sync import NodeState, SyncDecodeError, decode_states, encode_states, next_version


def test_round_trip() -> None:
    instance = ServiceMetadata("pay:a:1", "pay", "1.0.0", "127.0.0.1", 1, ("x",), ("stripe",), HealthStatus.DEGRADED,
                               123, "a", "/in")
    states = [NodeState("a", 10, (instance,)), NodeState("b", 11, ())]
    assert decode_states(encode_states(states)) == states


def test_versions_only_grow() -> None:
    assert next_version(5, 3) == 6
    assert next_version(5, 100) == 100


@pytest.mark.parametrize("data", [
    b"", b"garbage", zlib.compress(b"[]"), zlib.compress(b"[2, []]"), zlib.compress(b'[1, [["a", "x", []]]]'),
    zlib.compress(b'[1, [["a", 1, [{"id": 1}]]]]'), zlib.compress(b'[1, [["a", 1, [{"id": "x", "name": "n", '
                                                                  b'"version": "1", "host": "h", "port": "p"}]]]]'),
])
def test_malformed_states_raise_one_error_type(data: bytes) -> None:
    with pytest.raises(SyncDecodeError):
        decode_states(data)


def test_a_decompression_bomb_is_refused() -> None:
    with pytest.raises(SyncDecodeError):
        decode_states(zlib.compress(b"[" + b" " * (8 << 20) + b"]"))


@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(SyncDecodeError):
        decode_states(data)
