from __future__ import annotations

import contextlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.catalog.model import HealthStatus, ServiceMetadata
from sidecar.catalog.sync import Claim, SyncDecodeError, decode_claims, encode_claims, next_version, signed_bytes


def test_round_trip() -> None:
    instance = ServiceMetadata("pay:a:1", "pay", "1.0.0", "127.0.0.1", 1, ("x",), ("stripe",), HealthStatus.DEGRADED,
                               123, "a", "/in")
    claims = [Claim("a", "prod", "pay", 10, (instance,), (), b"f" * 32, b"sig", b"der"), Claim("b", "prod", "", 11, ())]
    assert decode_claims(encode_claims(claims)) == claims
    # without certificates (known by fingerprint): everything else stays
    assert decode_claims(encode_claims(claims[:1], with_certificates=False)) == [
        Claim("a", "prod", "pay", 10, (instance,), (), b"f" * 32, b"sig", b"")]


def test_the_signed_bytes_cover_every_field_but_the_proof() -> None:
    instance = ServiceMetadata("pay:a:1", "pay", "1.0.0", "127.0.0.1", 1, node="a")
    claim = Claim("a", "prod", "pay", 10, (instance,), (), b"f" * 32, b"sig", b"der")
    base = signed_bytes(claim)
    from dataclasses import replace
    assert signed_bytes(replace(claim, signature=b"other", certificate=b"")) == base
    for changed in (replace(claim, node="b"), replace(claim, cluster="dev"), replace(claim, service="inv"),
                    replace(claim, version=11), replace(claim, instances=()), replace(claim, fingerprint=b"g" * 32),
                    replace(claim, instances=(instance.with_status(HealthStatus.UNHEALTHY, 0),))):
        assert signed_bytes(changed) != base


def test_versions_only_grow() -> None:
    assert next_version(5, 3) == 6
    assert next_version(5, 100) == 100


@pytest.mark.parametrize("data", [
    b"", b"garbage", zlib.compress(b"[]"), zlib.compress(b"[1, []]"), zlib.compress(b'[2, [["a", "x", []]]]'),
    zlib.compress(b'[2, [["a", "c", "s", 1, [], [], "not base64!", "", ""]]]'),
    zlib.compress(b'[2, [["a", "c", "s", true, [], [], "", "", ""]]]'),
    zlib.compress(b'[2, [["a", "c", "s", 1, [{"id": 1}], [], "", "", ""]]]'),
    zlib.compress(b'[2, [["a", "c", "s", 1, [{"id": "x", "name": "n", "version": "1", "host": "h", "port": "p"}],'
                  b' [], "", "", ""]]]'),
])
def test_malformed_states_raise_one_error_type(data: bytes) -> None:
    with pytest.raises(SyncDecodeError):
        decode_claims(data)


def test_a_decompression_bomb_is_refused() -> None:
    with pytest.raises(SyncDecodeError):
        decode_claims(zlib.compress(b"[" + b" " * (8 << 20) + b"]"))


@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(SyncDecodeError):
        decode_claims(data)
