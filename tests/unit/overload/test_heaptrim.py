"""The heap trim after TLS handshakes: once per ``every`` verified handshakes, ``delay`` seconds after the
``every``-th, one pending at a time; nothing where there is no trim function."""

from __future__ import annotations

import asyncio

from sidecar.overload.heaptrim import HandshakeTrim


def test_the_heap_is_trimmed_once_per_burst_of_handshakes_after_the_delay() -> None:
    trims: list[float] = []

    async def main() -> HandshakeTrim:
        loop = asyncio.get_running_loop()
        trim = HandshakeTrim(lambda: trims.append(loop.time()), every=4, delay=0.05)
        for _ in range(3):
            trim.handshake_done()
        await asyncio.sleep(0.1)
        assert trims == []                      # fewer than ``every``: nothing to give back yet
        started = loop.time()
        for _ in range(9):                      # two more bursts of 4 while the first trim is pending
            trim.handshake_done()
        assert trims == []                      # not at once: the burst's last handshakes would fill the pages again
        deadline = loop.time() + 5
        while not trims and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert len(trims) == 1 and trims[0] - started >= 0.05   # one pending at a time
        for _ in range(4):
            trim.handshake_done()
        trim.close()                            # stopping cancels a pending trim
        await asyncio.sleep(0.1)
        assert len(trims) == 1
        return trim

    assert asyncio.run(main()).trims == 1


def test_without_a_trim_function_nothing_is_scheduled() -> None:
    async def main() -> None:
        trim = HandshakeTrim(None, every=1, delay=0.0)
        for _ in range(3):
            trim.handshake_done()
        await asyncio.sleep(0.01)
        assert trim.trims == 0

    asyncio.run(main())
