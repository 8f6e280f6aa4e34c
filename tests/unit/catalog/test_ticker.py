"""The TTL/deregistration ticker of :class:`CheckRunner` runs only while a local service needs it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from sidecar.catalog.checks import CheckRunner
from sidecar.catalog.model import HealthStatus
from sidecar.catalog.registry import LocalRegistry
from sidecar.clock import FakeClock
from sidecar.config.load import build_section
from sidecar.config.model import ServiceConfig
from sidecar.events import EventBus


async def until(clock: FakeClock, condition: Callable[[], bool], within: float, what: str) -> None:
    """Lets the runner's tasks run (each of their sleeps moves the fake clock on) until ``condition`` holds;
    fails once the clock passed ``within`` seconds or stopped moving."""
    deadline = clock.now + within
    for _ in range(10_000):
        if condition():
            return
        if clock.now > deadline:
            break
        await asyncio.sleep(0)
    raise AssertionError(f"{what}: not within {within}s of the fake clock (now {clock.now})")


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[tuple[FakeClock, LocalRegistry, CheckRunner]]:
    """A started :class:`CheckRunner` over an empty registry on a fake clock, stopped on leaving."""
    clock = FakeClock()
    registry = LocalRegistry("a", EventBus())
    runner = CheckRunner(registry, clock)
    await runner.start()
    try:
        yield clock, registry, runner
    finally:
        await runner.stop()


def test_ticker_runs_only_while_a_service_has_a_ttl_or_deregister_after() -> None:
    async def scenario() -> None:
        async with running() as (clock, registry, runner):
            assert runner._ticker is None                       # nothing registered: no wakeups
            registry.register(build_section(ServiceConfig, {"name": "plain", "port": 1}), "api", clock.now, 0)
            assert runner._ticker is None                       # no check at all
            ttl = registry.register(build_section(ServiceConfig, {"name": "beat", "port": 2,
                                                                  "check": {"ttl": "1s"}}), "api", clock.now, 0)
            assert runner._ticker is not None and not runner._ticker.done()
            registry.heartbeat(ttl.metadata.id, HealthStatus.HEALTHY, "", clock.now, 0)
            await until(clock, lambda: registry.get(ttl.metadata.id).metadata.status is HealthStatus.UNHEALTHY,
                        3.0, "the ttl expired by the ticker")
            ticker = runner._ticker
            registry.deregister(ttl.metadata.id, "test", 0)
            assert runner._ticker is None
            await asyncio.sleep(0)
            assert ticker.cancelled()
        assert runner._ticker is None

    asyncio.run(scenario())


def test_deregister_after_removes_the_service_and_stops_the_ticker() -> None:
    async def scenario() -> None:
        async with running() as (clock, registry, runner):
            spec = build_section(ServiceConfig, {"name": "gone", "port": 3,
                                                 "check": {"ttl": "1s", "deregister_after": "2s"}})
            entry = registry.register(spec, "api", clock.now, 0)
            registry.heartbeat(entry.metadata.id, HealthStatus.HEALTHY, "", clock.now, 0)
            assert runner._ticker is not None
            await until(clock, lambda: entry.metadata.id not in registry.services, 5.0,
                        "removed once unhealthy past deregister_after")
            assert runner._ticker is None                       # and with it the last reason to tick

    asyncio.run(scenario())
