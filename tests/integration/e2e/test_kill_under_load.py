"""kill -9 of a backend's sidecar under load, with real `sidecar run` processes on loopback: the caller's
requests that meet the dead instance are retried on another one, and new requests soon stop meeting it, until
gossip declares it dead.

The state is one the chaos run (tests/integration/chaos) can leave a source in after a partition and packet
loss: of the three ``backend`` instances the caller knows, one is ejected (its ejection outlives the fault that
caused it) and the victim is healthy; the third is healthy too, or degraded (its node demoted itself, or its
check says 429). The victim cannot be ejected in turn (the default ``max_ejection_percent`` of 10 allows one
ejected host out of three) and stays in the catalog until it is declared dead; every try that meets it is
refused at once. A retry must go to the third instance, degraded or not, rather than back to the one that just
refused; and new requests should leave the victim alone rather than each pay a retry (a fast refusal must not
make it look cheap to the balancer).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FakeApp, LoadThreads, SidecarProcess, http, make_certs, members_by_state, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WORKERS = 4
PACE = 0.1          # seconds between a worker's requests: about 40 requests a second in all
ERROR_BOUND = 0.02  # the chaos run's bound on the error ratio during a fault
# requests whose try met the dead instance: the ones in flight when it died, and one probe at the end of each
# connect hold (0.25 s doubling: 5 in the ~6 s it takes to be declared dead)
MET_BOUND = 12
# the ejection of the instance made to fail first must outlast the whole kill phase (about 5 s to declare a
# member dead with the local gossip profile)
POLICY = {"outlier_detection": {"base_ejection_time": "60s"}}


def backend_config(name: str, certs: dict[str, str], port: int, join: list[str]) -> dict[str, Any]:
    check = {"http": "/health", "interval": "250ms", "timeout": "250ms"}
    # each instance is tagged with its node's name, so that a request can name one (TAG.backend.service.mesh)
    return {"node": {"name": name, "cluster": "test"}, "tls": certs, "policies": {"*": POLICY},
            "services": [{"name": "backend", "port": port, "check": check, "tags": [name]}],
            "gossip": {"profile": "local", "join": join}}


class Requests(LoadThreads):
    """GETs to ``backend`` through the caller's outbound listener, each worker on its own keep-alive connection;
    every answer kept as (start time, status, body)."""

    max_seconds = 60.0
    pace = PACE

    def __init__(self, outbound: str) -> None:
        self.host, port = outbound.rsplit(":", 1)
        self.port = int(port)
        self.answers: list[tuple[float, int, bytes]] = []
        super().__init__()

    def loops(self) -> list[Callable[[], None]]:
        return [self._worker() for _ in range(WORKERS)]

    def _worker(self) -> Callable[[], None]:
        local = threading.local()

        def get() -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = HTTPConnection(self.host, self.port, timeout=10)
            started = time.monotonic()
            try:
                conn.request("GET", "/work", headers={"Host": "backend"})
                response = conn.getresponse()
                answer = (started, response.status, response.read())
            except (OSError, HTTPException) as e:
                conn.close()
                local.conn = None
                answer = (started, 0, repr(e).encode())
            with self.lock:
                self.answers.append(answer)
        return get


def endpoints(caller: SidecarProcess) -> dict[str, dict[str, Any]]:
    view = http("GET", caller.admin + "/clusters").json().get("backend", {"endpoints": []})
    return {e["node"]: e for e in view["endpoints"]}


def statuses(caller: SidecarProcess) -> dict[str, str]:
    return {i["node"]: i["status"] for i in http("GET", caller.api + "/v1/catalog/backend").json()}


@pytest.mark.parametrize("third", ["degraded", "healthy"])
def test_a_killed_instance_that_cannot_be_ejected_costs_no_failures(start_sidecar, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                   third: str) -> None:
    certs = make_certs(tmp_path / "certs", ["frontend", "backend"])
    apps = [FakeApp(f"backend-{i}") for i in range(3)]
    for app in apps:
        app.__enter__()
    try:
        caller = start_sidecar({"node": {"name": "caller", "cluster": "test"}, "tls": certs["frontend"],
                                "policies": {"*": POLICY}, "gossip": {"profile": "local"}}, name="caller")
        seed = [caller.listeners["gossip"]]
        victim, other, ejected = (start_sidecar(backend_config(name, certs["backend"], app.port, seed), name=name)
                                  for name, app in zip(("n3", "n4", "n5"), apps, strict=True))
        wait_for(lambda: statuses(caller) == dict.fromkeys(("n3", "n4", "n5"), "healthy"), 30, interval=0.2,
                 what="three healthy backend instances in the caller's catalog")

        # n5's app answers 503 until the caller ejects it (5 consecutive gateway errors); it then recovers, but
        # its ejection stands for base_ejection_time. The requests name n5 by its tag: a request for "backend"
        # reaches it only when the balancer picks it, and peak EWMA stops picking a host whose latency estimate is
        # the highest (a failure never lowers it), so one slow 503 on a loaded machine keeps it out of the picks,
        # and unejected, for tens of seconds
        apps[2].answer_status = 503

        def n5_ejected() -> bool:
            http("GET", f"http://{caller.listeners['outbound']}/work", headers={"Host": "n5.backend.service.mesh"})
            return bool(endpoints(caller).get("n5", {}).get("ejected"))
        wait_for(n5_ejected, 20, interval=0.01, what="n5 ejected by the caller")
        apps[2].answer_status = 200
        if third == "degraded":
            apps[1].health_status = 429     # still usable, when no healthy instance is left
            wait_for(lambda: statuses(caller).get("n4") == "degraded", 20, interval=0.1, what="n4 degraded")
        before = endpoints(caller)
        assert not before["n3"]["ejected"] and before["n5"]["ejected"], before
        assert statuses(caller) == {"n3": "healthy", "n4": third, "n5": "healthy"}

        with Requests(caller.listeners["outbound"]) as load:
            wait_for(lambda: len(load.answers) >= 40, 20, interval=0.05, what=f"load running ({load.failures[:3]})")
            killed = time.monotonic()
            victim.kill()
            wait_for(lambda: members_by_state(caller).get("n3") == "dead", 30, interval=0.1,
                     what="n3 declared dead by the caller")
            declared = time.monotonic()
            count = len(load.answers)
            wait_for(lambda: len(load.answers) >= count + 20, 20, interval=0.05, what="load after n3 left")
        assert not load.failures, load.failures

        after = [a for a in load.answers if a[0] >= killed]
        failed = len([a for a in after if a[1] != 200])
        reasons = Counter(body[:120].decode(errors="replace") for _, status, body in after if status != 200)
        # every request with a failed try is in the caller's ring of failed or retried requests
        recent = http("GET", caller.admin + "/debug/failures?limit=256").json()["failures"]
        met = [f for f in recent if any(t["node"] == "n3" and t["outcome"] != "response" for t in f["tries"])]
        counters = http("GET", caller.admin + "/clusters").json()["backend"]["counters"]
        print(f"\nkill -9 of n3 ({third} n4, ejected n5): {len(after)} requests in {time.monotonic() - killed:.1f}s "
              f"(n3 declared dead after {declared - killed:.1f}s), {failed} failed, {len(met)} met n3; retries "
              f"{counters['retries']}, denied {counters['retriesDenied']}, ejections refused "
              f"{counters['ejectionsRefused']}")
        assert len(after) >= 80, len(after)
        assert failed <= ERROR_BOUND * len(after), (f"{failed} of {len(after)} failed: {dict(reasons)}; "
                                                    f"{[f['says'] for f in recent[:2]]}")
        assert len(met) <= MET_BOUND, f"{len(met)} requests met the dead n3: {[f['says'] for f in met[:2]]}"
        assert other.ready() and ejected.ready()
    finally:
        for app in apps:
            app.__exit__()
