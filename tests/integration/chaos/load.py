"""The chaos run's load and its accounting: paced request and publish loops inside a host's namespace, the
phase each sample belongs to, and the summary (pure functions of what was recorded)."""

from __future__ import annotations

import bisect
import http.client
import json
import math
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from tests.integration.chaos.mesh import API, OUTBOUND, Node, enter_netns

STEADY = "steady"


class Phases:
    """Named spans of the run. A request belongs to the first fault it was in flight for: one that started in
    steady state a moment before a sidecar was killed under it is the kill's, not steady state's."""

    def __init__(self) -> None:
        self._starts: list[float] = []
        self._names: list[str] = []
        self.lock = threading.Lock()

    def enter(self, name: str, now: float | None = None) -> None:
        with self.lock:
            self._starts.append(time.monotonic() if now is None else now)
            self._names.append(name)

    def during(self, started: float, ended: float) -> str:
        """The first phase other than steady that [started, ended] overlaps; steady if none."""
        with self.lock:
            first = max(bisect.bisect_right(self._starts, started) - 1, 0)
            last = bisect.bisect_right(self._starts, ended)
            return next((name for name in self._names[first:last] if name != STEADY), STEADY)


@dataclass(frozen=True, slots=True)
class Sample:
    kind: str        # request | publish
    source: str      # the node whose sidecar the app called
    started: float
    latency: float
    outcome: str     # ok | hang | source-down | error:WHAT


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: list[Sample] = []
        self.accepted: dict[str, list[int]] = defaultdict(list)   # publisher → sequence numbers answered 202
        self.details: list[str] = []    # the first error answers, as the sidecar worded them

    def detail(self, text: str) -> None:
        with self.lock:
            if len(self.details) < 20:
                self.details.append(text)

    def add(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)

    def accept(self, publisher: str, n: int) -> None:
        with self.lock:
            self.accepted[publisher].append(n)


class Loop(threading.Thread):
    """Calls ``once`` at most ``rate`` times a second from inside ``node``'s namespace until ``stop`` is set."""

    def __init__(self, node: Node, rate: float, stop: threading.Event, recorder: Recorder, timeout: float) -> None:
        super().__init__(daemon=True, name=f"{type(self).__name__}-{node.name}")
        self.node = node
        self.interval = 1.0 / rate
        self.stop = stop
        self.recorder = recorder
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.count = 0

    def run(self) -> None:
        enter_netns(self.node.ns)
        next_at = time.monotonic()
        while not self.stop.is_set():
            generation, up = self.node.generation, self.node.up
            started = time.monotonic()
            try:
                outcome = self.once()
            except TimeoutError:
                outcome = "hang"
                self._drop()
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                outcome = f"error:{type(e).__name__}"
            if not up or not self.node.up or self.node.generation != generation:
                outcome = "source-down"   # its own sidecar was down or restarting: nothing of the mesh's doing
            elif outcome == "hang" or (outcome.startswith("error:") and " " not in outcome):
                self.recorder.detail(f"{started:.3f} {self.node.name} {self.kind} {outcome} after "
                                     f"{time.monotonic() - started:.3f}s")
            self.count += 1
            self.recorder.add(Sample(self.kind, self.node.name, started, time.monotonic() - started, outcome))
            next_at = max(next_at + self.interval, time.monotonic())
            self.stop.wait(next_at - time.monotonic())
        self._drop()

    kind = "request"

    def once(self) -> str:
        raise NotImplementedError

    def _exchange(self, port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
                  ) -> tuple[int, dict[str, str], bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.will_close:
            self._drop()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class RequestLoop(Loop):
    """GET requests to ``service`` through the node's outbound listener."""

    def __init__(self, node: Node, service: str, rate: float, stop: threading.Event, recorder: Recorder,
                 timeout: float) -> None:
        super().__init__(node, rate, stop, recorder, timeout)
        self.service = service

    def once(self) -> str:
        status, headers, body = self._exchange(OUTBOUND, "GET", f"/echo/{self.count}", None, {"Host": self.service})
        if status == 200:
            return "ok"
        self.recorder.detail(f"{time.monotonic():.3f} {self.node.name} {status} {body[:300]!r}")
        return f"error:{status} {headers.get('x-sidecar-error', 'app')}"


class PublishLoop(Loop):
    """Publishes ``{"publisher": NODE, "n": N}`` to ``topic`` through the node's app API, N counting up."""

    kind = "publish"

    def __init__(self, node: Node, topic: str, rate: float, stop: threading.Event, recorder: Recorder,
                 timeout: float) -> None:
        super().__init__(node, rate, stop, recorder, timeout)
        self.topic = topic

    def once(self) -> str:
        n = self.count   # every attempt gets its own number: one whose answer was lost may still arrive
        body = json.dumps({"type": "order", "payload": {"publisher": self.node.name, "n": n}}).encode()
        status, headers, answer = self._exchange(API, "POST", f"/v1/publish/{self.topic}", body,
                                            {"Content-Type": "application/json"})
        if status == 202:
            self.recorder.accept(self.node.name, n)
            return "ok"
        self.recorder.detail(f"{time.monotonic():.3f} {self.node.name} publish {status} {answer[:300]!r}")
        return f"error:{status} {headers.get('x-sidecar-error', '')}"


# ------------------------------------------------------------------------------------------ accounting


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100.0 * len(ordered)))) - 1]


@dataclass(frozen=True, slots=True)
class PhaseRow:
    phase: str
    requests: int
    errors: int
    hangs: int
    source_down: int
    p50: float
    p99: float
    worst: float
    kinds: dict[str, int]

    @property
    def error_ratio(self) -> float:
        counted = self.requests - self.source_down
        return (self.errors + self.hangs) / counted if counted else 0.0


def by_phase(samples: list[Sample], phases: Phases, kind: str = "request") -> dict[str, PhaseRow]:
    """Per phase: requests, errors (hangs apart), requests whose own sidecar was down, latencies (seconds) of
    the requests that had a sidecar to talk to."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.kind == kind:
            groups[phases.during(s.started, s.started + s.latency)].append(s)
    rows = {}
    for phase, group in groups.items():
        counted = [s for s in group if s.outcome != "source-down"]
        latencies = [s.latency for s in counted]
        errors = Counter(s.outcome for s in counted if s.outcome.startswith("error:"))
        rows[phase] = PhaseRow(phase, len(group), sum(errors.values()), sum(1 for s in counted if s.outcome == "hang"),
                               len(group) - len(counted), percentile(latencies, 50), percentile(latencies, 99),
                               max(latencies, default=0.0), dict(errors))
    return rows


@dataclass(frozen=True, slots=True)
class Delivery:
    service: str
    expected: int        # messages answered 202
    delivered: int       # of those, how many arrived at least once
    lost: list[str]      # publisher-n of the missing ones (first few)
    duplicates: int      # arrivals beyond the first, of any message
    unconfirmed: int     # arrivals of messages whose publish got no 202 (its answer was lost: at least once)
    out_of_order: list[str]   # publishers whose first arrivals broke publish order


def deliveries(service: str, accepted: dict[str, list[int]], arrivals: list[tuple[str, str, dict[str, Any]]]
               ) -> Delivery:
    seen: dict[tuple[str, int], int] = Counter()
    order: dict[str, list[int]] = defaultdict(list)
    for svc, _, payload in arrivals:
        if svc != service:
            continue
        key = (payload["publisher"], payload["n"])
        if key not in seen:
            order[key[0]].append(key[1])
        seen[key] += 1
    wanted = {(p, n) for p, ns in accepted.items() for n in ns}
    lost = sorted(wanted - set(seen))
    return Delivery(service, len(wanted), len(wanted) - len(lost), [f"{p}-{n}" for p, n in lost[:10]],
                    sum(c - 1 for c in seen.values()), len(set(seen) - wanted),
                    [p for p, ns in order.items() if ns != sorted(ns)])
