"""The Prometheus text exposition format (version 0.0.4), written here rather than by ``prometheus_client``.

Families are built at scrape time by collectors (objects with ``collect()``) and rendered once. The output is
what ``prometheus_client.generate_latest`` writes for the same families (its parser and ``promtool`` read it
back in the tests): a counter's HELP, TYPE and samples are named ``NAME_total``; a histogram has
``NAME_bucket{le=...}`` (cumulative), ``NAME_count`` and ``NAME_sum``; labels are sorted by name; values are
written as Go's ``strconv.FormatFloat`` would (``1.0``, ``+Inf``, ``1.5e+06``). The library itself cost an idle
sidecar ~1.6 MiB resident (79 modules, among them ``wsgiref`` and ``http.server``) for these few dozen lines.

``ProcessCollector`` gives the standard ``process_*`` families (CPU, memory, start time, file descriptors)
from ``/proc/self``, named under a namespace as prometheus_client's collector of that name does.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricFamily:
    """One metric family: a name, its type, HELP text, label names and the samples added to it."""

    __slots__ = ("documentation", "kind", "labels", "name", "samples")

    def __init__(self, name: str, kind: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.kind = kind  # counter | gauge | histogram
        self.documentation = documentation
        self.labels = tuple(labels)
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def add_metric(self, values: Sequence[str], value: float) -> None:
        suffix = "_total" if self.kind == "counter" else ""
        self.samples.append((self.name + suffix, dict(zip(self.labels, values, strict=True)), value))

    def add_histogram(self, values: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float) -> None:
        """``buckets`` are cumulative ``(le, count)`` pairs ending with ``+Inf``, as the request store keeps them."""
        labels = dict(zip(self.labels, values, strict=True))
        for bound, count in buckets:
            self.samples.append((f"{self.name}_bucket", {**labels, "le": bound}, count))
        self.samples.append((f"{self.name}_count", labels, buckets[-1][1] if buckets else 0))
        self.samples.append((f"{self.name}_sum", labels, sum_value))


def counter(name: str, documentation: str, labels: Iterable[str] = ()) -> MetricFamily:
    """A counter family; ``name`` without ``_total`` (a trailing one is dropped), the samples get it."""
    return MetricFamily(name.removesuffix("_total"), "counter", documentation, tuple(labels))


def gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> MetricFamily:
    return MetricFamily(name, "gauge", documentation, tuple(labels))


def histogram(name: str, documentation: str, labels: Iterable[str] = ()) -> MetricFamily:
    return MetricFamily(name, "histogram", documentation, tuple(labels))


class Collector(Protocol):
    def collect(self) -> Iterable[MetricFamily]: ...


class Registry:
    """The collectors of one process, read in the order they were registered."""

    def __init__(self) -> None:
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self.collectors.append(collector)

    def collect(self) -> Iterable[MetricFamily]:
        for collector in self.collectors:
            yield from collector.collect()


def render(registry: Registry) -> bytes:
    out: list[str] = []
    for family in registry.collect():
        name = family.name + "_total" if family.kind == "counter" else family.name
        out.append(f"# HELP {name} {_escape_help(family.documentation)}\n# TYPE {name} {family.kind}\n")
        for sample, labels, value in family.samples:
            if labels:
                pairs = ",".join(f'{key}="{_escape_label(labels[key])}"' for key in sorted(labels))
                out.append(f"{sample}{{{pairs}}} {go_float(value)}\n")
            else:
                out.append(f"{sample} {go_float(value)}\n")
    return "".join(out).encode()


def go_float(value: float) -> str:
    """``value`` as Prometheus (Go) writes a float: ``3.0``, ``+Inf``, ``NaN``, ``1.5e+06`` (Go's exponent)."""
    number = float(value)
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if math.isnan(number):
        return "NaN"
    text = repr(number)
    dot = text.find(".")
    if number > 0 and dot > 6:  # Go switches to an exponent sooner than Python's repr
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class ProcessCollector:
    """``NAMESPACE_process_{cpu_seconds_total,virtual_memory_bytes,resident_memory_bytes,start_time_seconds,
    open_fds,max_fds}`` from ``/proc/self``; nothing where ``/proc`` cannot be read."""

    def __init__(self, namespace: str) -> None:
        self.prefix = f"{namespace}_process_"
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._page = resource.getpagesize()
        self._boot = _boot_time()

    def collect(self) -> Iterable[MetricFamily]:
        if self._boot is None:
            return []
        out: list[MetricFamily] = []
        try:
            with open("/proc/self/stat", "rb") as stat:
                fields = stat.read().split(b")")[-1].split()  # after the command name, which may hold spaces
            out.append(self._one(gauge, "virtual_memory_bytes", "Virtual memory size in bytes.", float(fields[20])))
            out.append(self._one(gauge, "resident_memory_bytes", "Resident memory size in bytes.",
                                 float(fields[21]) * self._page))
            out.append(self._one(gauge, "start_time_seconds", "Start time of the process since unix epoch in "
                                 "seconds.", float(fields[19]) / self._ticks + self._boot))
            out.append(self._one(counter, "cpu_seconds", "Total user and system CPU time spent in seconds.",
                                 (float(fields[11]) + float(fields[12])) / self._ticks))
            out.append(self._one(gauge, "open_fds", "Number of open file descriptors.",
                                 float(len(os.listdir("/proc/self/fd")))))
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            out.append(self._one(gauge, "max_fds", "Maximum number of open file descriptors.", float(soft)))
        except (OSError, IndexError, ValueError):
            pass
        return out

    def _one(self, make: Callable[[str, str], MetricFamily], name: str, documentation: str,
             value: float) -> MetricFamily:
        family = make(self.prefix + name, documentation)
        family.add_metric([], value)
        return family


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None
