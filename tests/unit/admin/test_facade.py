"""The admin facade on its own: readiness from the lifecycle and gossip, and config changes refused unless ready,
with a fake lifecycle and gossip (the parts it reads are passed to its constructor, nothing else)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from sidecar.admin.facade import AdminFacade
from sidecar.errors import FailedPrecondition


class FakeLifecycle:
    def __init__(self, state: str, in_mesh: bool = True) -> None:
        self.state = state
        self.in_mesh = in_mesh

    async def drain(self) -> dict[str, Any]:
        self.state = "draining"
        return {"state": self.state}

    async def leave(self) -> dict[str, Any]:
        return {**await self.drain(), "leaving": True}


class FakeGossip:
    def __init__(self, problem: str | None = None) -> None:
        self.problem = problem


class FakeReloader:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def reload(self, *, dry_run: bool = False, text: str | None = None,
                     canary: float | None = None) -> dict[str, Any]:
        self.calls.append(("reload", dry_run))
        return {"dryRun": dry_run}

    async def rollback(self, version: int) -> dict[str, Any]:
        self.calls.append(("rollback", version))
        return {"version": version}


def facade(lifecycle: FakeLifecycle, gossip: FakeGossip | None = None,
           reloader: FakeReloader | None = None) -> AdminFacade:
    unused = cast(Any, None)
    return AdminFacade(lifecycle, unused, cast(Any, reloader or FakeReloader()),
                       gossip=cast(Any, gossip or FakeGossip()), rotation=None, catalog=unused, registry=unused,
                       replication=unused, demotion=unused, dataplane=unused, bound={})


@pytest.mark.parametrize(("state", "in_mesh", "problem", "expected"), [
    ("starting", True, None, (False, "starting")),
    ("draining", True, None, (False, "draining")),
    ("ready", False, None, (False, "joining the mesh")),
    ("ready", True, "no peer answered", (False, "gossip: no peer answered")),
    ("ready", True, None, (True, "listening")),
])
def test_readiness(state: str, in_mesh: bool, problem: str | None, expected: tuple[bool, str]) -> None:
    assert facade(FakeLifecycle(state, in_mesh), FakeGossip(problem)).readiness() == expected


@pytest.mark.parametrize("state", ["starting", "draining", "stopped"])
def test_config_changes_are_refused_unless_ready_and_dry_runs_are_not(state: str) -> None:
    reloader = FakeReloader()
    admin = facade(FakeLifecycle(state), reloader=reloader)
    with pytest.raises(FailedPrecondition, match=f"the sidecar is {state}: the configuration is reloaded only"):
        asyncio.run(admin.reload())
    with pytest.raises(FailedPrecondition, match="is rolled back only while ready"):
        asyncio.run(admin.rollback(1))
    assert reloader.calls == []
    assert asyncio.run(admin.reload(dry_run=True)) == {"dryRun": True}
    assert reloader.calls == [("reload", True)]


def test_drain_and_leave_go_to_the_lifecycle() -> None:
    lifecycle = FakeLifecycle("ready")
    admin = facade(lifecycle)
    assert asyncio.run(admin.leave()) == {"state": "draining", "leaving": True}
    assert lifecycle.state == "draining" and admin.readiness() == (False, "draining")
