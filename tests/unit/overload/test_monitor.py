"""The overload guard's driver on a real event loop: a loop blocked on purpose for longer than max_loop_lag
is seen as lag, sheds, and clears; resident memory is read from /proc; the open-file limit is raised."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest
import uvloop

from sidecar.overload.guard import OverloadGuard, Reason, Transition
from sidecar.overload.monitor import OverloadMonitor, ResidentMemory
from tests.harness import wait_for_async

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_a_blocked_loop_is_seen_as_lag_sheds_then_clears(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.overload")
    seen: list[Transition] = []

    async def main() -> None:
        guard = OverloadGuard(0, 0.2, hold=0.3)
        monitor = OverloadMonitor(guard, 0.02, memory=lambda: None)
        monitor.on_transition = seen.append
        monitor.start()
        try:
            await wait_for_async(lambda: guard.samples >= 3, 5, 0.01, what="the monitor sampling")
            # the deliberate block: a callback that holds the loop, so every other one waits, the monitor's too
            asyncio.get_running_loop().call_soon(time.sleep, 0.6)
            await wait_for_async(lambda: guard.shedding, 5, 0.01, what="shedding on loop lag")
            assert guard.active == [Reason.LOOP_LAG] and not guard.refusing
            assert guard.error is not None and guard.error.message.startswith("overloaded: event-loop lag ")
            await wait_for_async(lambda: not guard.shedding, 10, 0.01, what="shedding to clear")
        finally:
            monitor.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    entered = [t for t in seen if t.active]
    assert entered and entered[0].reason is Reason.LOOP_LAG
    assert entered[0].value >= 0.4, entered          # about the 0.6 s block, less the timer's remaining wait
    assert not seen[-1].active
    messages = [r.getMessage() for r in caplog.records if r.name == "sidecar.overload"]
    assert sum(m.startswith("overloaded: shedding new requests") for m in messages) == len(entered)
    assert sum(m.startswith("overload cleared") for m in messages) == len(seen) - len(entered)


def test_memory_over_sheds_and_shrinks_the_heap_a_disabled_guard_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.overload")

    shrinks: list[int] = []

    async def main() -> tuple[OverloadGuard, OverloadGuard]:
        on = OverloadGuard(1 << 20, 0)                  # 1 MiB: this process is over it
        off = OverloadGuard(1 << 20, 0, enabled=False)
        monitors = [OverloadMonitor(on, 0.02), OverloadMonitor(off, 0.02)]
        for monitor in monitors:
            monitor.start()
        try:
            await wait_for_async(lambda: on.samples >= 2 and off.samples >= 2, 5, 0.01,
                                 what="two samples by each monitor")
        finally:
            for monitor in monitors:
                monitor.stop()
        shrinks.extend(monitor.shrinks for monitor in monitors)
        return on, off

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        on, off = runner.run(main())
    assert on.shedding and on.refusing and on.active == [Reason.MEMORY]
    assert not off.shedding and off.status()["reasons"]["memory"]["value"] > 1 << 20
    assert shrinks == [1, 0]   # memory over: the heap is shrunk at once, then not again within SHRINK_EVERY
    messages = [r.getMessage() for r in caplog.records if r.name == "sidecar.overload"]
    assert len(messages) == 1 and "resident memory" in messages[0], messages


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux /proc only")
def test_resident_memory_matches_the_kernel_view() -> None:
    reader = ResidentMemory()
    try:
        value = reader.read()
        with open("/proc/self/status") as status:
            vm_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    finally:
        reader.close()
    assert value is not None and value == pytest.approx(vm_rss, rel=0.05)
    assert ResidentMemory("/nonexistent/statm").read() is None


def _in_child(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
                            check=True)
    return result.stdout + result.stderr


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    out = _in_child(
        "import logging, resource\n"
        "from sidecar.overload.rlimit import raise_open_files_limit\n"
        "logging.basicConfig(level=logging.DEBUG, format='%(levelname)s %(message)s')\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "after = raise_open_files_limit()\n"
        "print('result', after == resource.getrlimit(resource.RLIMIT_NOFILE), after[0] >= min(hard, 1 << 20))\n")
    assert "result True True" in out
    assert "DEBUG open-file limit: soft" in out


def test_a_hard_limit_under_the_caps_is_warned_about() -> None:
    out = _in_child(
        "import logging, resource\n"
        "from sidecar.overload.rlimit import raise_open_files_limit\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 512))\n"
        "print('result', raise_open_files_limit(wanted=17408))\n")
    assert "result (512, 512)" in out
    assert "WARNING the open-file limit (512, hard 512) is under the 17408 descriptors" in out
