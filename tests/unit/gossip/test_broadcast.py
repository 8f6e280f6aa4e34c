"""The transmit-limited broadcast queue: limits, invalidation, order, packet budget."""

from __future__ import annotations

from sidecar.gossip.broadcast import BroadcastQueue


def make(n: int = 10, mult: int = 2) -> BroadcastQueue:
    return BroadcastQueue(mult, lambda: n)


def test_each_broadcast_is_sent_the_retransmit_limit_then_dropped() -> None:
    q = make(n=10, mult=2)  # limit 2 * ceil(log10(11)) = 4
    q.queue("a", b"alive-a")
    sent = [q.get(2, 1000) for _ in range(6)]
    assert sent[:4] == [[b"alive-a"]] * 4
    assert sent[4:] == [[], []]
    assert len(q) == 0


def test_a_newer_broadcast_with_the_same_key_replaces_the_older() -> None:
    q = make()
    q.queue("node-a", b"suspect-a")
    q.queue("node-b", b"alive-b")
    q.queue("node-a", b"dead-a")
    assert len(q) == 2
    assert sorted(q.get(2, 1000)) == [b"alive-b", b"dead-a"]


def test_fewest_transmits_first_then_newest_first() -> None:
    q = make()
    q.queue("old", b"o" * 10)
    assert q.get(0, 10) == [b"o" * 10]  # old: 1 transmit
    q.queue("new1", b"1" * 10)
    q.queue("new2", b"2" * 10)
    assert q.get(0, 10) == [b"2" * 10]
    assert q.get(0, 10) == [b"1" * 10]
    assert q.get(0, 10) == [b"2" * 10]  # all at 1 transmit now: the newest of them
    assert q.get(0, 25) == [b"1" * 10, b"o" * 10]


def test_only_what_fits_the_packet_is_taken() -> None:
    q = make()
    q.queue("big", b"x" * 100)
    q.queue("small", b"y" * 10)
    assert q.get(2, 50) == [b"y" * 10]
    assert q.get(2, 200) == [b"x" * 100, b"y" * 10]  # big has fewer transmits
    assert q.get(2, 11) == []


def test_on_done_runs_when_finished_or_replaced() -> None:
    q = make(n=1, mult=1)  # limit 1
    done: list[str] = []
    q.queue("a", b"a", lambda: done.append("a"))
    q.queue("b", b"b", lambda: done.append("b"))
    q.queue("b", b"b2")
    assert done == ["b"]
    q.get(0, 100)
    assert sorted(done) == ["a", "b"]


def test_the_queue_is_bounded_and_drops_the_most_sent_first() -> None:
    q = BroadcastQueue(10, lambda: 100, max_items=3)
    q.queue(1, b"1")
    q.get(0, 1)
    for key in (2, 3, 4):
        q.queue(key, str(key).encode())
    assert len(q) == 3
    assert sorted(q.get(0, 100)) == [b"2", b"3", b"4"]


def test_reset_empties_and_finishes() -> None:
    q = make()
    done: list[int] = []
    q.queue("a", b"a", lambda: done.append(1))
    q.reset()
    assert len(q) == 0 and done == [1]
    assert q.get(0, 100) == []


def test_a_broadcast_is_never_given_to_who_has_it_and_only_real_sends_count() -> None:
    q = make(n=10, mult=1)  # limit 1 * ceil(log10(11)) = 2
    q.queue("a", b"alive-a", known_by=["a", "b"])  # about a, heard from b
    assert q.get(2, 1000, to="a") == []
    assert q.get(2, 1000, to="b") == []
    assert q.get(2, 1000, to="c") == [b"alive-a"]
    assert q.get(2, 1000, to="c") == []  # c has it now
    assert len(q) == 1  # the skips cost nothing: one send left
    assert q.get(2, 1000, to="d") == [b"alive-a"]
    assert len(q) == 0


def test_whoever_sends_us_the_same_news_is_not_told_it_again() -> None:
    q = make()
    q.queue("a", b"alive-a-2")
    q.heard_from("a", b"alive-a-1", "c")  # older news: c may still need ours
    q.heard_from("a", b"alive-a-2", "d")
    q.heard_from("zzz", b"x", "d")  # nothing queued under that key
    assert q.get(2, 1000, to="d") == []
    assert q.get(2, 1000, to="c") == [b"alive-a-2"]


def test_news_everyone_we_could_tell_has_is_dropped() -> None:
    q = make()
    done: list[str] = []
    q.queue("a", b"alive-a", lambda: done.append("a"), known_by=["a"])
    q.queue("b", b"alive-b", known_by=["b"])
    q.drop_known_by_all([])  # nobody to tell right now: keep it for later
    q.drop_known_by_all(["a", "b"])
    assert len(q) == 2
    q.drop_known_by_all(["a"])
    assert len(q) == 1 and done == ["a"]
    assert q.get(2, 1000, to="a") == [b"alive-b"]


def test_news_whose_every_send_counts_goes_out_its_full_count_to_one_destination() -> None:
    q = make(n=1, mult=3)  # limit 3 * ceil(log10(2)) = 3
    done: list[str] = []
    q.queue("x", b"alive-x")
    q.queue("me", b"leave-me", lambda: done.append("me"), every_send_counts=True)
    assert q.get(2, 1000, to="a") == [b"leave-me", b"alive-x"]
    assert q.get(2, 1000, to="a") == [b"leave-me"]  # alive-x: "a" has it
    q.heard_from("me", b"leave-me", "a")
    q.drop_known_by_all(["a"])  # nothing marks it as had: only its own sends finish it
    assert done == [] and len(q) == 1
    assert q.get(2, 1000, to="a") == [b"leave-me"]
    assert done == ["me"] and len(q) == 0
