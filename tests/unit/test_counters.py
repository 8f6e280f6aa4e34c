"""bench.counters' arithmetic: callgrind's totals read by event name, idle time subtracted, per unit."""

from __future__ import annotations

import pytest

from bench.counters import Counts, Row, Software, net_per_unit, parse_dump, report

DUMP = """# callgrind format
version: 1
events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim
summary: 1000 10 20 7 3 4 1 2 5 100 9 50 6

fn=(1) main
0 1000 10 20 7 3 4 1 2 5 100 9 50 6
totals: 9 9 9 9 9 9 9 9 9 9 9 9 9
"""


def test_parse_dump_sums_read_and_write_misses_and_both_branch_kinds() -> None:
    assert parse_dump(DUMP) == Counts(instructions=1000, i1_misses=7, d1_misses=7, ll_misses=8, branches=150,
                                      mispredicts=15)


def test_parse_dump_follows_the_event_order_of_the_file() -> None:
    text = "events: Bcm Ir\nsummary: 3 500\n"
    assert parse_dump(text) == Counts(instructions=500, mispredicts=3)


def test_parse_dump_without_summary_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="summary"):
        parse_dump("events: Ir\n")


def test_idle_cost_is_subtracted_pro_rata_then_divided() -> None:
    busy = Counts(instructions=10_000, ll_misses=30)
    idle = Counts(instructions=1_000, ll_misses=100)   # over 2 s; the busy window lasted 4 s
    assert net_per_unit(busy, 100, 4.0, idle, 2.0) == Counts(instructions=80, ll_misses=0)


def test_no_request_done_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        net_per_unit(Counts(), 0, 1.0, Counts(), 1.0)


def test_a_setup_of_several_processes_is_reported_per_process_too() -> None:
    pair = Row("sidecar-pair", "request", Counts(instructions=300_000), 1000, Software(),
               (Counts(instructions=140_000), Counts(instructions=160_000)))
    single = Row("haproxy-tls2", "request", Counts(instructions=100_000), 1000, Software())
    text = report([single, pair], "haproxy-tls2", 4)
    assert "sidecar-pair: instructions per process, the caller's side first: 140,000 + 160,000" in text
    assert "haproxy-tls2: instructions per process" not in text
