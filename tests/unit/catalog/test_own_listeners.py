"""Which registrations name one of the sidecar's own listeners: a table (pure, "is it mine" passed in)."""

from __future__ import annotations

import pytest

from sidecar.catalog.own import listener_named, loopback_or_any, parse_address
from sidecar.config.values import HostPort

LISTENERS = {"admin": HostPort("127.0.0.1", 9901), "inbound": HostPort("0.0.0.0", 15006),
             "gossip": HostPort("::", 7946), "api": HostPort("localhost", 3500), "dns": HostPort("127.0.0.1", 0)}
MINE = {"10.0.0.5"}


def mine(address: object) -> bool:
    return loopback_or_any(address) or str(address) in MINE  # type: ignore[arg-type]


@pytest.mark.parametrize(("host", "port", "expected"), [
    ("127.0.0.1", 9901, "admin"),
    ("::ffff:127.0.0.1", 9901, "admin"),
    ("0.0.0.0", 9901, "admin"),          # dialling the unspecified address reaches this host
    ("::", 9901, "admin"),
    ("127.0.0.2", 9901, None),           # another loopback address is another socket
    ("::1", 9901, None),
    ("10.0.0.5", 9901, None),
    ("127.0.0.9", 15006, "inbound"),     # bound to every address: any of this host's
    ("10.0.0.5", 15006, "inbound"),
    ("10.0.0.6", 15006, None),           # another host's
    ("::1", 7946, "gossip"),
    ("10.0.0.5", 7946, "gossip"),
    ("127.0.0.1", 3500, "api"),          # localhost stands for both loopback addresses
    ("::1", 3500, "api"),
    ("127.0.0.1", 0, None),              # port 0 is no listener
    ("127.0.0.1", 3000, None),
])
def test_which_listener_a_registration_names(host: str, port: int, expected: str | None) -> None:
    address = parse_address(host)
    assert address is not None
    assert listener_named([address], port, LISTENERS, mine) == expected


def test_names_are_not_addresses() -> None:
    assert parse_address("localhost") is None and parse_address("app.internal") is None
    assert str(parse_address("[::1]")) == "::1" and str(parse_address("fe80::1%eth0")) == "fe80::1"
