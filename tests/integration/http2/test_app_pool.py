"""The lifecycle of the h2c connections to an app (sidecar.proxy.h2up.H2UpstreamPool), against real HTTP/2 apps:
tests.grpcapps.h2app (in a loop of its own, or as a process a test stops and kills) and grpcio's server.

    HTTP/1.1 or h2c client --> HttpProxy (route: an H2cKey target) --h2c--> app
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.proxy import HttpProxy, Target
from sidecar.proxy.h2pool import H2UpstreamPool
from sidecar.proxy.limits import PoolLimits
from sidecar.proxy.pool import Pools
from sidecar.proxy.target import H2cKey, RequestStats
from tests.grpcapps import h2app
from tests.grpcapps.launch import Spawned, spawn
from tests.grpcapps.service import INSTANCE_KEY, Knobs, channel, method, serve
from tests.harness import SidecarProcess, free_port, http, make_certs, wait_for
from tests.integration.grpc.mesh import launch
from tests.integration.http2.test_h2_to_app import exchange
from tests.loops import LoopThread

IDLE = 0.6   # the pool's idle timeout in these tests
DELAY = 0.4  # how long a slow app holds its SETTINGS back


class Rig:
    """A proxy in its own loop whose every request goes to the app at ``app_port`` over h2c."""

    def __init__(self, app_port: int, idle_timeout: float | None = None, timeout: float | None = None) -> None:
        """``idle_timeout`` None: the proxy owns its pools, with the defaults, as the inbound listener does (they
        close with it); else pools of that idle timeout, shared as the outbound's are (closed by their owner)."""
        self.loop = LoopThread()
        self.stats: list[RequestStats] = []
        target = Target(("127.0.0.1", app_port), pool_key=H2cKey("127.0.0.1", app_port), timeout=timeout)
        pools = None if idle_timeout is None else Pools(PoolLimits(idle_timeout=idle_timeout, connect_timeout=2.0))
        self.proxy = HttpProxy(lambda head, conn: target, name="to-app", h2c=True, on_request_done=self.stats.append,
                               pools=pools)
        server = self.loop.run(self.proxy.listen("127.0.0.1", 0))
        self.address: tuple[str, int] = server.sockets[0].getsockname()[:2]

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return self.loop.run(exchange(self.address, f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode()), 20)

    def get_all(self, paths: list[str]) -> list[tuple[int, dict[str, Any]]]:
        async def every() -> list[tuple[int, dict[str, Any]]]:
            return await asyncio.gather(*(exchange(self.address, f"GET {p} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
                                          for p in paths))
        return self.loop.run(every(), 20)

    def pool(self) -> H2UpstreamPool:
        pools = list(self.proxy.pools._h2.values())
        assert len(pools) == 1 and isinstance(pools[0], H2UpstreamPool), pools
        return pools[0]

    def in_flight(self) -> int:
        """Streams open or reserved on the pool's connections, read on the proxy's loop."""
        return int(self.loop.call(lambda: sum(len(c.streams) + c.reserved for c in self.pool().conns)))

    def close(self, grace: float = 5.0) -> None:
        self.loop.run(self.proxy.close(grace), grace + 5)
        self.loop.call(self.proxy.pools.close)
        self.loop.close()


class App:
    """tests.grpcapps.h2app in a loop of its own, with the app's view of its connections."""

    def __init__(self, max_streams: int | None = None, settings_delay: float = 0.0) -> None:
        self.loop = LoopThread(use_uvloop=False)
        self.live = h2app.Live()
        self.server = self.loop.run(h2app.serve("127.0.0.1", 0, "app", max_streams, self.live, settings_delay))
        self.port: int = self.server.sockets[0].getsockname()[1]

    def open(self) -> int:
        return int(self.loop.call(lambda: len(self.live.open)))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for conn in list(self.live.open):
                if conn.transport is not None:
                    conn.transport.close()
        self.loop.run(stop())
        self.loop.close()


@pytest.fixture
def app() -> Iterator[App]:
    app = App()
    yield app
    app.close()


@pytest.fixture
def narrow_app() -> Iterator[App]:
    app = App(max_streams=2)
    yield app
    app.close()


# ------------------------------------------------------------------------------------------ idle and drain


def test_an_idle_app_connection_is_closed_after_the_pools_idle_timeout(app: App) -> None:
    rig = Rig(app.port, idle_timeout=IDLE)
    try:
        status, body = rig.get("/first")
        assert (status, body["path"]) == (200, "/first")
        started = time.monotonic()
        assert app.open() == 1
        wait_for(lambda: app.open() == 0, 10, what="the idle connection closed by the proxy")
        took = time.monotonic() - started
        assert IDLE * 0.8 <= took < IDLE + 2.0, took   # the idle timeout (swept every IDLE/4), not at once
        assert app.live.goaways == 1   # closed with GOAWAY, not dropped
        assert rig.loop.call(lambda: len(rig.pool().conns)) == 0
        # the next request dials again
        assert rig.get("/second")[0] == 200
        assert (rig.pool().dialed, app.live.accepted) == (2, 2)
    finally:
        rig.close()


def test_a_connection_carrying_a_stream_longer_than_the_idle_timeout_is_kept(app: App) -> None:
    rig = Rig(app.port, idle_timeout=IDLE)
    try:
        status, body = rig.get(f"/slow/{int(IDLE * 3 * 1000)}")   # three idle timeouts in flight
        assert (status, body["path"]) == (200, f"/slow/{int(IDLE * 3 * 1000)}")
        assert app.live.accepted == 1 and app.live.goaways == 0
    finally:
        rig.close()


def test_drain_lets_the_stream_in_flight_finish_then_closes_the_app_connection_with_goaway(app: App) -> None:
    rig = Rig(app.port)
    slow = asyncio.run_coroutine_threadsafe(
        exchange(rig.address, b"GET /slow/800 HTTP/1.1\r\nHost: app\r\n\r\n"), rig.loop.loop)
    wait_for(lambda: rig.in_flight() == 1, 10, what="the slow request's stream open")
    closing = asyncio.run_coroutine_threadsafe(rig.proxy.close(grace=10.0), rig.loop.loop)
    try:
        status, body = slow.result(10)
        assert (status, body["path"]) == (200, "/slow/800")
        closing.result(10)
        wait_for(lambda: app.open() == 0, 5, what="the app connection closed on drain")
        assert app.live.goaways == 1
    finally:
        rig.loop.close()


def test_a_sidecar_stopping_closes_its_h2c_app_connections_with_goaway(app: App, tmp_path: Path) -> None:
    """``sidecar run`` with a ``protocol: grpc`` service (h2c to the app): SIGTERM drains the inbound, whose pools
    say GOAWAY to the app and close before the process exits."""
    certs = make_certs(tmp_path / "certs", ["h2app"])
    sidecar = launch(SidecarProcess(tmp_path, {"tls": certs["h2app"], "services": [
        {"name": "h2app", "port": app.port, "protocol": "grpc", "check": {"tcp": True}}]}))
    try:
        wait_for(lambda: [i for i in http("GET", f"{sidecar.api}/v1/catalog/h2app").json()
                          if i["status"] == "healthy"], 20, what="h2app healthy")
        reply = http("GET", f"http://{sidecar.listeners['outbound']}/via-sidecar", headers={"Host": "h2app"})
        assert reply.status == 200 and reply.json()["protocol"] == "HTTP/2", reply
        assert app.live.goaways == 0
        assert sidecar.terminate() == 0
        wait_for(lambda: app.live.goaways == 1 and app.open() == 0, 5, what="GOAWAY to the app, closed")
    finally:
        sidecar.kill()


# ------------------------------------------------------------------------------------------ the app's stream limit


def test_the_apps_max_concurrent_streams_opens_a_second_connection_and_no_more(narrow_app: App) -> None:
    rig = Rig(narrow_app.port)
    try:
        answers = rig.get_all([f"/slow/400?n={i}" for i in range(4)])   # four in flight, two per connection
        assert sorted(body["path"] for _, body in answers) == sorted(f"/slow/400?n={i}" for i in range(4))
        assert {status for status, _ in answers} == {200}
        assert (rig.pool().dialed, narrow_app.live.accepted) == (2, 2)
        # two at once fit the first connection
        answers = rig.get_all([f"/slow/200?m={i}" for i in range(2)])
        assert {status for status, _ in answers} == {200}
        assert rig.pool().dialed == 2
    finally:
        rig.close()


def test_a_burst_dials_the_connections_it_needs_at_once_not_one_after_another() -> None:
    # the app allows 2 streams per connection and sends its SETTINGS DELAY after accepting (a loaded peer); ten
    # requests held 2 DELAYs each need 5 connections at once
    app = App(max_streams=2, settings_delay=DELAY)
    rig = Rig(app.port)
    paths = [f"/slow/{round(2000 * DELAY)}?n={i}" for i in range(10)]
    try:
        started = time.monotonic()
        answers = rig.get_all(paths)
        elapsed = time.monotonic() - started
        assert {status for status, _ in answers} == {200}
        assert sorted(body["path"] for _, body in answers) == sorted(paths)
        # the first connection tells the app's limit, the four others are dialed together: the last answer
        # comes after 2 + 2 DELAYs (one after another: 5 + 2)
        assert elapsed < 5.5 * DELAY, elapsed
        assert (rig.pool().dialed, app.live.accepted) == (5, 5)
    finally:
        rig.close()
        app.close()


# ------------------------------------------------------------------------------------------ the app's GOAWAY


def test_a_grpc_apps_graceful_stop_finishes_the_call_in_flight_and_new_calls_take_a_new_connection() -> None:
    old = serve(Knobs("old"))
    new = None
    rig = Rig(old.port)
    try:
        with channel(f"{rig.address[0]}:{rig.address[1]}", "app") as ch:
            assert ch.unary_unary(method("Unary"))(b"warm", timeout=10) == b"warm"
            slow = ch.unary_unary(method("Slow")).future(json.dumps({"seconds": 1.0}).encode(), timeout=20)
            wait_for(lambda: old.service.observed()["calls"].get("Slow") == 1, 10, what="the slow call at the app")
            new = serve(Knobs("new"), port=old.port)   # grpcio binds with SO_REUSEPORT: both listen for now
            stopped = old.server.stop(grace=10)        # GOAWAY to the proxy's connection; stops listening
            answer, call = ch.unary_unary(method("Unary")).with_call(b"after", timeout=10)
            assert answer == b"after"
            assert dict(call.initial_metadata())[INSTANCE_KEY] == "new"
            assert slow.result(20) == b"slept"          # the call in flight finished on the old connection
            assert dict(slow.initial_metadata())[INSTANCE_KEY] == "old"
            assert stopped.wait(10)
        assert rig.pool().dialed == 2
        # the drained connection is gone from the pool, closed once its last stream ended
        wait_for(lambda: rig.loop.call(lambda: [c.closed for c in rig.pool().conns]) == [False], 10,
                 what="one open connection left: the new one")
    finally:
        rig.close()
        old.stop(0)
        if new is not None:
            new.stop(0)


# ------------------------------------------------------------------------------------------ an app that fails


def spawn_app(port: int) -> Spawned:
    return spawn("tests.grpcapps.h2app", "--port", str(port))


def test_an_app_that_stops_answering_fails_its_streams_at_the_timeout_and_the_pool_recovers() -> None:
    port = free_port()
    app = spawn_app(port)
    rig = Rig(port, timeout=1.0)
    try:
        assert rig.get("/before")[0] == 200
        os.kill(app.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, body = rig.get("/while-stopped")
            took = time.monotonic() - started
        finally:
            os.kill(app.process.pid, signal.SIGCONT)
        assert (status, body["error"]["code"]) == (504, "DEADLINE_EXCEEDED")
        assert took < 1.0 + 2.0, took
        assert rig.stats[-1].error == "timeout"   # retried by retry_on "reset" (SPEC: it covers a try that timed out)
        wait_for(lambda: rig.in_flight() == 0, 5, what="the timed-out stream reset and forgotten")
        status, body = rig.get("/after")
        assert (status, body["path"]) == (200, "/after")
    finally:
        rig.close()
        app.kill()


def test_an_app_that_dies_mid_stream_fails_it_as_a_reset_and_the_pool_redials_once_it_is_back() -> None:
    port = free_port()
    app = spawn_app(port)
    rig = Rig(port, timeout=10.0)
    try:
        assert rig.get("/before")[0] == 200
        slow = asyncio.run_coroutine_threadsafe(
            exchange(rig.address, b"GET /slow/5000 HTTP/1.1\r\nHost: app\r\n\r\n"), rig.loop.loop)
        wait_for(lambda: rig.in_flight() == 1, 10, what="the slow request's stream open")
        started = time.monotonic()
        app.kill()   # SIGKILL: the kernel closes the app's sockets
        status, body = slow.result(10)
        assert time.monotonic() - started < 3.0
        assert (status, body["error"]["code"]) == (503, "UNAVAILABLE")
        assert rig.stats[-1].error == "reset"   # retriable: retry_on "reset"
        # while the app is down: a connect failure, at once
        status, body = rig.get("/down")
        assert (status, body["error"]["code"], rig.stats[-1].error) == (503, "UNAVAILABLE", "connect-failure")
        app = spawn_app(port)
        status, body = rig.get("/after")
        assert (status, body["path"]) == (200, "/after")
        assert rig.pool().dialed == 2
    finally:
        rig.close()
        app.kill()


def test_an_app_that_accepts_but_never_speaks_http2_is_a_connect_failure() -> None:
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)   # the kernel accepts; nobody reads or writes
        rig = Rig(mute.getsockname()[1], idle_timeout=10.0, timeout=10.0)   # connect timeout 2s
        try:
            started = time.monotonic()
            status, body = rig.get("/x")
            assert (status, body["error"]["code"], rig.stats[-1].error) == (503, "UNAVAILABLE", "connect-failure")
            assert time.monotonic() - started < 2.0 + 2.0   # the pool's connect timeout (2s), not the request's
        finally:
            rig.close(grace=0.5)
