"""HealthCheckRequest/Response encoded by hand, against the bytes protobuf's own encoder produces."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from sidecar.catalog.grpccheck import ProtobufError, decode_response, encode_request


@pytest.mark.parametrize("service", ["", "pkg.Service", "grpc.health.v1.Health", "x" * 200])
def test_request_bytes_match_protobuf(service: str) -> None:
    assert encode_request(service) == health_pb2.HealthCheckRequest(service=service).SerializeToString()


def test_request_exact_bytes() -> None:
    assert encode_request("pkg.Service") == b"\x0a\x0bpkg.Service"
    assert encode_request("") == b""


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_response_status_decoded(status: int) -> None:
    data = health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[arg-type]
    assert decode_response(data) == status


def test_response_skips_fields_it_does_not_know() -> None:
    # field 2 length-delimited, field 3 fixed64, field 4 fixed32, field 5 varint, then status SERVING
    data = b"\x12\x03abc" + b"\x19" + b"\x00" * 8 + b"\x25" + b"\x00" * 4 + b"\x28\x96\x01" + b"\x08\x01"
    assert decode_response(data) == 1


@pytest.mark.parametrize("data", [b"\x08", b"\x08\x80", b"\x12\x05ab", b"\x0b", b"\x08" + b"\xff" * 11])
def test_malformed_response_is_a_protobuf_error(data: bytes) -> None:
    with pytest.raises(ProtobufError):
        decode_response(data)
