"""The upstream pool against a real listener on loopback: how many connections a burst dials at once."""

from __future__ import annotations

import asyncio

from sidecar.proxy.limits import PoolLimits
from sidecar.proxy.pool import UpstreamPool
from sidecar.proxy.sides import StreamUser, UpstreamStream
from sidecar.proxy.target import Target

BURST = 20
MAX_DIALING = 3


class Waiter(StreamUser):
    """A request waiting for a connection; notes how many dials were under way when it got one."""

    def __init__(self, pool: UpstreamPool, got: list[tuple[UpstreamStream, int]], done: asyncio.Event) -> None:
        self.pool = pool
        self.got = got
        self.done = done

    def on_connection(self, stream: UpstreamStream) -> None:
        self.got.append((stream, self.pool.size - self.pool.busy - self.pool.idle))
        if len(self.got) == BURST:
            self.done.set()

    def on_connect_failed(self, error: BaseException) -> None:
        raise AssertionError(f"dial failed: {error}")


async def _burst() -> tuple[int, list[int], int, int]:
    accepted = 0

    def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool("k", PoolLimits(max_dialing=MAX_DIALING), asyncio.get_running_loop())
    target = Target(("127.0.0.1", port))
    got: list[tuple[UpstreamStream, int]] = []
    done = asyncio.Event()
    for _ in range(BURST):
        assert pool.acquire(target, Waiter(pool, got, done)) is None   # no idle connection: each waits
    dialing_at_once = pool.size - pool.busy - pool.idle
    await asyncio.wait_for(done.wait(), 10.0)
    for stream, _ in got:
        pool.forget(stream)
    pool.close()
    server.close()
    await server.wait_closed()
    return dialing_at_once, [dialing for _, dialing in got], pool.dialed, accepted


def test_a_burst_dials_at_most_max_dialing_at_once_and_every_request_gets_a_connection() -> None:
    # 20 requests at once with no idle connection: 3 dials start, each finished dial starts the next, so the
    # peer never sees more than 3 handshakes from this pool at a time, and all 20 requests are served
    dialing_at_once, dialing_seen, dialed, accepted = asyncio.run(_burst())
    assert dialing_at_once == MAX_DIALING
    assert max(dialing_seen) <= MAX_DIALING, dialing_seen
    assert dialed == BURST and accepted == BURST
