"""Automatic gossip key rotation across five real `sidecar run` processes: every member switches to each
epoch's key and drops the old one, twice, while no member is ever seen suspect, dead or gone and the catalog
stays whole; then a member killed with SIGKILL and started again with its original config rejoins."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
import time
from typing import Any

from sidecar.gossip.keyring import fingerprint
from sidecar.gossip.rotation import derive_key
from tests.harness import SidecarProcess, http, members_by_state, wait_for

EVERY = 4.0      # seconds per epoch: two rotations and a restart fit well inside a minute
CLUSTER = "rot"
NAMES = [f"node-{i}" for i in range(5)]


def gossip_port() -> int:
    """A port free for both UDP and TCP, so the restarted member comes back at its old address."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
                return port
    raise AssertionError("no port free for both UDP and TCP")


def keys_of(process: SidecarProcess) -> dict[str, Any]:
    return dict(http("GET", process.admin + "/keys").json())


class Watch:
    """Polls /members and /v1/catalog on every process until stopped; keeps whatever looked wrong."""

    def __init__(self, processes: list[SidecarProcess], service: str, limit: float = 50.0) -> None:
        self.processes = processes
        self.service = service
        self.limit = limit
        self.bad_states: list[tuple[str, str, str]] = []    # (observer, member, state)
        self.missing: list[str] = []                        # observers whose catalog lacked the service
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit   # bounded whatever the test does
        while not self._stop.is_set() and time.monotonic() < deadline:
            for p in self.processes:
                states = members_by_state(p)
                self.bad_states += [(p.name, m, s) for m, s in states.items() if s != "alive"]
                if set(states) != set(NAMES):
                    self.bad_states.append((p.name, "*", f"members {sorted(states)}"))
                if self.service not in http("GET", p.api + "/v1/catalog").json():
                    self.missing.append(p.name)
            self.polls += 1
            self._stop.wait(0.1)


def test_five_sidecars_rotate_keys_without_losing_a_member(start_sidecar, sidecars) -> None:  # type: ignore[no-untyped-def]
    root = base64.b64encode(os.urandom(32)).decode()
    gossip = {"profile": "local", "encrypt_keys": [root], "rotate_every": f"{EVERY:g}s"}
    seed = start_sidecar({"node": {"name": NAMES[0], "cluster": CLUSTER}, "gossip": gossip,
                          "services": [{"name": "orders", "port": 9001}]}, name=NAMES[0])
    join = [seed.listeners["gossip"]]
    victim_port = gossip_port()
    processes = [seed]
    for name in NAMES[1:]:
        listen = {"listen": f"127.0.0.1:{victim_port}"} if name == NAMES[-1] else {}
        processes.append(start_sidecar({"node": {"name": name, "cluster": CLUSTER},
                                        "gossip": {**gossip, **listen, "join": join}}, name=name))
    wait_for(lambda: all(members_by_state(p) == dict.fromkeys(NAMES, "alive") for p in processes), 30,
             what="5 members alive everywhere")
    wait_for(lambda: all("orders" in http("GET", p.api + "/v1/catalog").json() for p in processes), 15,
             what="the seed's service in every catalog")

    def settled() -> str | None:
        """The one primary every member uses, with nothing else to switch or remove; else None."""
        views = [keys_of(p) for p in processes]
        primaries = {v["primary"] for v in views}
        if len(primaries) == 1 and all(v["rotation"]["phase"] == "steady" for v in views):
            return primaries.pop()  # type: ignore[no-any-return]
        return None

    first = wait_for(settled, 20, what="every member settled on one epoch key")
    seen = [first]
    with Watch(processes, "orders") as watch:
        for _ in range(2):   # two rotations in a row, each: new primary everywhere, old key gone everywhere
            old = seen[-1]

            def rotated(old: str = old) -> str | None:
                views = [keys_of(p) for p in processes]
                new = {v["primary"] for v in views}
                if len(new) == 1 and old not in new and all(old not in v["keys"] for v in views):
                    return new.pop()  # type: ignore[no-any-return]
                return None

            seen.append(wait_for(rotated, EVERY * 3 + 10, interval=0.1, what=f"rotation away from {old}"))
    assert watch.polls >= 10, "the watch must have looked while the keys rotated"
    assert watch.bad_states == [], f"membership lost during rotation: {watch.bad_states[:10]}"
    assert watch.missing == [], f"the catalog lost the service during rotation on {sorted(set(watch.missing))}"
    assert len(set(seen)) == 3
    # no packet was ever sealed with a key its receiver did not hold yet
    assert [http("GET", p.admin + "/gossip").json()["refused"].get("key", 0) for p in processes] == [0] * 5

    # each primary was an epoch key every member derived on its own; only its fingerprint was ever shown
    status = keys_of(seed)["rotation"]
    assert status["source"] == "derived" and status["every"] == "4s"
    root_raw = base64.b64decode(root)
    epochs = range(status["epoch"] - 8, status["epoch"] + 1)
    derived = {fingerprint(derive_key(root_raw, CLUSTER, e)): derive_key(root_raw, CLUSTER, e) for e in epochs}
    assert set(seen[1:]) <= set(derived), "primaries are the HKDF epoch keys"
    assert fingerprint(root_raw) in keys_of(seed)["keys"], "the configured key stays, so members can rejoin"
    for p in processes:
        text = p.log_text()
        assert root not in text and not any(base64.b64encode(k).decode() in text for k in derived.values())
        assert "gossip key now primary" in text and "gossip key removed" in text
        metrics = http("GET", p.admin + "/metrics").body.decode()
        rotations = next(line for line in metrics.splitlines()
                         if line.startswith("sidecar_gossip_key_rotations_total"))
        assert float(rotations.split()[-1]) >= 2

    # a member killed without a goodbye and started again with its original config rejoins and follows
    victim = processes[-1]
    victim.kill()
    victim.listeners.clear()
    victim.start(timeout=30)
    others = processes[:-1]

    def rejoined() -> bool:
        everyone = all(members_by_state(p) == dict.fromkeys(NAMES, "alive") for p in processes)
        primaries = {keys_of(p)["primary"] for p in processes}
        return everyone and len(primaries) == 1 and "orders" in http("GET", victim.api + "/v1/catalog").json()

    wait_for(rejoined, 30, interval=0.2, what="the restarted member alive everywhere, on the cluster's key")
    before = keys_of(others[0])["primary"]
    wait_for(lambda: {keys_of(p)["primary"] for p in processes} - {before} and
             len({keys_of(p)["primary"] for p in processes}) == 1, EVERY * 3 + 10, interval=0.1,
             what="the next rotation, the restarted member included")
    assert all(members_by_state(p) == dict.fromkeys(NAMES, "alive") for p in processes)
