"""TimerGroup and SharedTimer (sidecar.proxy.limits): the deadlines of many streams on one timer handle, on a
fake clock."""

from __future__ import annotations

from sidecar.proxy.limits import TimerGroup
from tests.unit.proxy.test_exchange import FakeLoop


def armed(loop: FakeLoop) -> int:
    return sum(1 for handle in loop.handles if not handle.cancelled())


def test_members_fire_at_their_own_deadlines_from_one_handle() -> None:
    loop = FakeLoop()
    group = TimerGroup(loop)
    fired: list[str] = []
    timers = {name: group.timer(lambda name=name: fired.append(name)) for name in "abc"}  # type: ignore[misc]
    timers["a"].set(loop.now + 5)
    timers["b"].set(loop.now + 2)
    timers["c"].set(loop.now + 9)
    assert armed(loop) == 1
    loop.advance(2)
    assert fired == ["b"]
    loop.advance(3)
    assert fired == ["b", "a"]
    timers["c"].cancel()
    loop.advance(10)
    assert fired == ["b", "a"]
    assert armed(loop) == 0


def test_a_deadline_moved_later_fires_at_the_later_time_only() -> None:
    loop = FakeLoop()
    group = TimerGroup(loop)
    fired: list[float] = []
    timer = group.timer(lambda: fired.append(loop.now))
    start = loop.now
    timer.set(start + 1)
    timer.set(start + 5)   # the response head came: the idle deadline is later now
    loop.advance(4.9)
    assert fired == []
    loop.advance(0.2)
    assert fired == [start + 5]


def test_many_members_set_later_and_later_make_no_new_handle() -> None:
    # one stream after another on a busy connection: each sets a deadline later than the group's, so the
    # group's one handle stays armed and none is made per stream
    loop = FakeLoop()
    group = TimerGroup(loop)
    for i in range(100):
        timer = group.timer(lambda: None)
        timer.set(loop.now + 300 + i)
        timer.cancel()
    assert len(loop.handles) == 1


def test_a_member_that_sets_itself_again_from_its_callback_fires_again_and_close_stops_all() -> None:
    loop = FakeLoop()
    group = TimerGroup(loop)
    fired: list[float] = []

    def again() -> None:
        fired.append(loop.now)
        if len(fired) < 3:
            timer.set(loop.now + 1)

    timer = group.timer(again)
    other = group.timer(lambda: fired.append(-1.0))
    start = loop.now
    timer.set(start + 1)
    loop.advance(5)
    assert fired == [start + 1, start + 2, start + 3]
    other.set(loop.now + 1)
    group.close()
    loop.advance(5)
    assert fired == [start + 1, start + 2, start + 3]
