"""The chaos run's verdicts are only as good as its accounting: loss, duplicates, disorder and phases are seen."""

from __future__ import annotations

from tests.integration.chaos.load import Phases, Sample, by_phase, deliveries, percentile


def test_deliveries_find_the_lost_the_duplicated_and_the_disordered() -> None:
    accepted = {"n1": [0, 1, 2, 3], "n2": [0, 1]}
    arrivals = [("backend", "n3", {"publisher": p, "n": n}) for p, n in
                [("n1", 0), ("n1", 1), ("n2", 1), ("n2", 0), ("n1", 1), ("n1", 3), ("n1", 4)]]
    arrivals.append(("ledger", "n5", {"publisher": "n1", "n": 2}))
    d = deliveries("backend", accepted, arrivals)
    assert (d.expected, d.delivered, d.lost) == (6, 5, ["n1-2"])
    assert d.duplicates == 1 and d.unconfirmed == 1 and d.out_of_order == ["n2"]
    assert deliveries("ledger", accepted, arrivals).lost == ["n1-0", "n1-1", "n1-3", "n2-0", "n2-1"]


def test_samples_fall_in_the_first_fault_they_were_in_flight_for() -> None:
    phases = Phases()
    phases.enter("steady", 100.0)
    phases.enter("partition", 110.0)
    phases.enter("steady", 120.0)
    phases.enter("kill-subscriber", 130.0)
    split, after = 105.0, 110.0
    samples = [Sample("request", "n1", split, 0.001, "ok"),
               Sample("request", "n1", after, 1.5, "error:504 DEADLINE_EXCEEDED"),
               Sample("request", "n2", after, 9.0, "hang"),
               Sample("request", "n2", after, 0.0, "source-down"),
               Sample("publish", "n1", after, 0.01, "ok"),
               # started in steady state, a sidecar killed under it: the kill's
               Sample("request", "n2", 129.999, 0.005, "error:IncompleteRead"),
               # started in the partition, answered after it healed: the partition's
               Sample("request", "n1", 119.5, 1.0, "ok"),
               # in flight across a whole fault: the first fault it saw
               Sample("request", "n1", 109.0, 30.0, "ok")]
    rows = by_phase(samples, phases)
    assert rows["steady"].requests == 1 and rows["steady"].error_ratio == 0
    part = rows["partition"]
    assert (part.requests, part.errors, part.hangs, part.source_down) == (5, 1, 1, 1)
    assert part.error_ratio == 0.5 and part.worst == 30.0
    kill = rows["kill-subscriber"]
    assert (kill.requests, kill.errors) == (1, 1) and kill.kinds == {"error:IncompleteRead": 1}
    assert by_phase(samples, phases, "publish")["partition"].requests == 1
    assert by_phase([Sample("request", "n1", 1.0, 0.1, "ok")], Phases())["steady"].requests == 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0 and percentile(values, 50) == 50.0 and percentile(values, 100) == 100.0
    assert percentile([], 99) == 0.0 and percentile([7.0], 99) == 7.0
