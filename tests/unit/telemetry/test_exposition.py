"""sidecar.telemetry.exposition writes what prometheus_client's generate_latest writes for the same families
(the reference implementation of the text format), and its process families read what /proc says."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import ProcessCollector as ReferenceProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from sidecar.telemetry.exposition import (
    MetricFamily,
    ProcessCollector,
    Registry,
    counter,
    gauge,
    go_float,
    histogram,
    render,
)

AWKWARD = 'back\\slash "quoted"\nnew line, ünïcode'


@pytest.mark.parametrize("value", [0, 1, 3, -2.5, 0.005, 0.1, 1e-7, 123456.0, 1234567.0, 1.5e6, 66375680.0,
                                   1796480250.53, 1e21, math.inf, -math.inf, math.nan])
def test_floats_are_written_as_go_writes_them(value: float) -> None:
    assert go_float(value) == floatToGoString(value)


def ours() -> list[MetricFamily]:
    requests = counter("sidecar_requests_total", "Requests.\nSecond line with a \\ backslash.", ["code", "a_label"])
    requests.add_metric(["200", AWKWARD], 3)
    requests.add_metric(["503", ""], 0.5)
    level = gauge("sidecar_level", "A level.")
    level.add_metric([], 1796480250.53)
    lags = histogram("sidecar_lag_seconds", "Lags.", ["where"])
    lags.add_histogram(["loop"], [("0.1", 1), ("1.0", 4), ("+Inf", 5)], 2.75)
    return [requests, level, lags]


def reference() -> list[Metric]:
    requests = CounterMetricFamily("sidecar_requests_total", "Requests.\nSecond line with a \\ backslash.",
                                   labels=["code", "a_label"])
    requests.add_metric(["200", AWKWARD], 3)
    requests.add_metric(["503", ""], 0.5)
    level = GaugeMetricFamily("sidecar_level", "A level.")
    level.add_metric([], 1796480250.53)
    lags = HistogramMetricFamily("sidecar_lag_seconds", "Lags.", labels=["where"])
    lags.add_metric(["loop"], [("0.1", 1), ("1.0", 4), ("+Inf", 5)], 2.75)
    return [requests, level, lags]


class Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class Ours:
    def __init__(self, families: list[MetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[MetricFamily]:
        return self.families


def test_the_text_is_what_prometheus_client_writes_for_the_same_families() -> None:
    registry = Registry()
    registry.register(Ours(ours()))
    expected = CollectorRegistry(auto_describe=False)
    expected.register(Fixed(reference()))
    assert render(registry) == generate_latest(expected)


def test_collectors_are_read_in_registration_order() -> None:
    registry = Registry()
    first, second = gauge("sidecar_first", "First."), gauge("sidecar_second", "Second.")
    registry.register(Ours([second]))
    registry.register(Ours([first]))
    text = render(registry).decode()
    assert text.index("sidecar_second") < text.index("sidecar_first")


def test_process_families_are_named_and_read_as_prometheus_clients() -> None:
    ours = {family.name: family for family in ProcessCollector("sidecar").collect()}
    reference = {family.name: family for family in ReferenceProcessCollector("sidecar", registry=None).collect()}
    assert {(f.name, f.kind, f.documentation) for f in ours.values()} == {
        (f.name, f.type, f.documentation) for f in reference.values()}
    for name in ("sidecar_process_start_time_seconds", "sidecar_process_max_fds"):
        assert ours[name].samples[0][2] == pytest.approx(reference[name].samples[0].value, abs=0.05)
    with open("/proc/self/status") as status:
        vm_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    resident = ours["sidecar_process_resident_memory_bytes"].samples[0][2]
    assert abs(resident - vm_rss) < 4 << 20
