"""The batcher's batches: full ones go at once, a partial one when its interval is over or a flush or close asks,
and what is put while the sink works is gathered like the rest rather than handed over as it stands."""

from __future__ import annotations

import threading
import time

from sidecar.telemetry.batcher import Batcher
from tests.harness import wait_for


class Sink:
    """Keeps each batch; its first delivery waits at a gate until the test opens it."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.times: list[float] = []
        self.entered = threading.Event()
        self.returned = threading.Event()
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, batch: list[int]) -> None:
        self.batches.append(list(batch))
        self.times.append(time.monotonic())
        self.entered.set()
        self.gate.wait(10)
        self.returned.set()


def put(batcher: Batcher[int], items: range) -> None:
    for item in items:
        assert batcher.put(item)


def first_batch_held(sink: Sink, interval: float) -> Batcher[int]:
    """A batcher of 8 whose first full batch (0 to 7) is in the sink, waiting at its gate."""
    batcher: Batcher[int] = Batcher(sink, name="test", max_batch=8, interval=interval)
    put(batcher, range(8))
    wait_for(sink.entered.is_set, 5, what="the first full batch in the sink")
    return batcher


def test_what_is_put_while_the_sink_works_waits_for_a_full_batch() -> None:
    sink = Sink(hold_first=True)
    batcher = first_batch_held(sink, 30.0)
    try:
        put(batcher, range(8, 11))          # while the sink works
        sink.gate.set()
        wait_for(sink.returned.is_set, 5, what="the sink done with the first batch")
        assert batcher.pending() == 3       # gathered, not handed over as a batch of three
        put(batcher, range(11, 16))
        wait_for(lambda: len(sink.batches) == 2, 5, what="the second batch")
        assert sink.batches == [list(range(8)), list(range(8, 16))]
    finally:
        batcher.close(5)


def test_a_partial_batch_goes_when_its_interval_is_over() -> None:
    sink = Sink()
    batcher: Batcher[int] = Batcher(sink, name="test", max_batch=8, interval=0.2)
    try:
        started = time.monotonic()
        put(batcher, range(3))
        wait_for(lambda: sink.batches, 5, what="the partial batch")
        assert sink.batches == [[0, 1, 2]]
        assert sink.times[0] - started >= 0.2
    finally:
        batcher.close(5)


def test_what_is_left_after_the_full_batches_goes_after_an_interval() -> None:
    sink = Sink(hold_first=True)
    batcher = first_batch_held(sink, 0.2)
    try:
        put(batcher, range(8, 19))          # a full batch and three more while the sink works
        sink.gate.set()
        wait_for(lambda: len(sink.batches) == 3, 5, what="the full batch, then the three left")
        assert sink.batches == [list(range(8)), list(range(8, 16)), [16, 17, 18]]
        assert sink.times[2] - sink.times[1] >= 0.2
    finally:
        batcher.close(5)


def test_a_flush_takes_a_partial_batch_at_once_and_close_takes_everything() -> None:
    sink = Sink()
    batcher: Batcher[int] = Batcher(sink, name="test", max_batch=8, interval=30.0)
    put(batcher, range(3))
    assert batcher.flush(5)
    assert sink.batches == [[0, 1, 2]]
    put(batcher, range(3, 23))
    assert batcher.close(5)
    assert sink.batches == [[0, 1, 2], list(range(3, 11)), list(range(11, 19)), list(range(19, 23))]
    assert batcher.delivered == 23 and not batcher.put(23)
