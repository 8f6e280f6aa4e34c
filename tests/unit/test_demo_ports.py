"""The demo's port choice: each process gets loopback ports no other process of the demo was given."""

from __future__ import annotations

from sidecar.demo.mesh import free_ports


def test_ports_are_distinct_and_never_given_twice() -> None:
    taken: set[int] = set()
    first = free_ports(4, taken)
    second = free_ports(40, taken)
    assert len(set(first)) == 4 and len(set(second)) == 40
    assert not set(first) & set(second)            # the first node's may not be bound yet: never handed out again
    assert taken == set(first) | set(second)
    assert all(1024 <= port <= 65535 for port in taken)
