from __future__ import annotations

import pytest

from sidecar.mesh.naming import ServiceName, authority_of_target, parse_service, path_of_target


@pytest.mark.parametrize(("authority", "expected"), [
    ("payment-service", ServiceName("payment-service")),
    ("Payment-Service:8080", ServiceName("payment-service")),
    ("payment-service.service.mesh", ServiceName("payment-service")),
    ("payment-service.service.mesh.", ServiceName("payment-service")),
    ("v2.payment-service.service.mesh:80", ServiceName("payment-service", "v2")),
    ("payment-service.service.other", None),
    ("example.com", None),
    ("127.0.0.1:15001", None),
    ("[::1]:80", None),
    ("localhost:15001", None),
    ("", None),
])
def test_parse_service(authority: str, expected: ServiceName | None) -> None:
    assert parse_service(authority, "mesh") == expected


def test_multi_label_domain() -> None:
    assert parse_service("pay.service.mesh.local", "mesh.local") == ServiceName("pay")


@pytest.mark.parametrize(("target", "authority", "path"), [
    (b"/x?y=1", None, b"/x?y=1"),
    (b"http://pay/x?y=1", b"pay", b"/x?y=1"),
    (b"HTTP://pay:80", b"pay:80", b"/"),
    (b"http://pay?q", b"pay", b"/?q"),
    (b"https://pay.service.mesh/a/b", b"pay.service.mesh", b"/a/b"),
])
def test_targets(target: bytes, authority: bytes | None, path: bytes) -> None:
    assert authority_of_target(target) == authority
    assert path_of_target(target) == path
