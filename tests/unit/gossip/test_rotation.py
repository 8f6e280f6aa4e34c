"""The key rotation core: epochs and derivation by table, the metadata report, and the state machine driven by
a simulated membership (stale views, restarts, late joiners, members that do not rotate), checking at every
step the one property that matters: every live member holds every live member's primary key."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidecar.gossip.keyring import fingerprint
from sidecar.gossip.rotation import (
    MAX_REPORTED,
    Command,
    Fetch,
    Install,
    KeyRotationCore,
    Peer,
    Phase,
    Remove,
    Use,
    decode_report,
    derive_key,
    encode_report,
    epoch_of,
    with_report,
)

ROOT = bytes(range(32))
EVERY = 10.0
T0 = 1_700_000_000.0  # an epoch boundary: 170_000_000 * 10


def fp(key: bytes) -> str:
    return fingerprint(key)


def derived(epoch: int, cluster: str = "prod") -> bytes:
    return derive_key(ROOT, cluster, epoch)


# ------------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize(("wall", "every", "epoch"), [
    (0.0, 10.0, 0), (9.999, 10.0, 0), (10.0, 10.0, 1), (T0, EVERY, 170_000_000), (T0 - 0.001, EVERY, 169_999_999),
    (86_400 * 3 + 5, 86_400.0, 3), (7.5, 2.5, 3), (-1.0, 10.0, -1),
])
def test_epoch_of(wall: float, every: float, epoch: int) -> None:
    assert epoch_of(wall, every) == epoch


@pytest.mark.parametrize("size", [16, 24, 32])
def test_derived_keys_are_hkdf_sha256_of_the_root_with_cluster_and_epoch(size: int) -> None:
    root = ROOT[:size]
    expected = HKDF(algorithm=hashes.SHA256(), length=size, salt=b"sidecar gossip cluster prod",
                    info=b"sidecar gossip key epoch 42").derive(root)
    assert derive_key(root, "prod", 42) == expected
    assert len(expected) == size
    assert derive_key(root, "prod", 42) == derive_key(root, "prod", 42)  # every member computes the same
    assert len({derive_key(root, c, e) for c in ("prod", "staging") for e in (41, 42, 43)}) == 6
    assert root not in {derive_key(root, "prod", e) for e in range(5)}


def test_report_round_trips_through_metadata_and_keeps_other_fields() -> None:
    ring = [derived(2), ROOT, derived(1)]
    report = encode_report(ring)
    assert report == [fp(derived(2)), fp(ROOT), fp(derived(1))]
    meta = with_report(b'{"inbound":15006}', report)
    assert json.loads(meta)["inbound"] == 15006
    assert decode_report(meta) == tuple(report)
    assert b"=" not in meta and ROOT.hex() not in meta.decode()  # fingerprints only, never a key


@pytest.mark.parametrize("meta", [
    b"", b"{bad", b"[]", b'"x"', b'{"inbound":1}', b'{"keys":[]}', b'{"keys":"abc"}', b'{"keys":[1]}',
    b'{"keys":["ABCDEF012345"]}', b'{"keys":["abc"]}', json.dumps({"keys": ["a" * 12] * (MAX_REPORTED + 1)}).encode(),
    b"\xff\xfe",
])
def test_an_unreadable_report_is_unknown_never_an_error(meta: bytes) -> None:
    assert decode_report(meta) is None


def test_report_is_capped_and_keeps_the_primary_and_preferred_keys_first() -> None:
    configured = [bytes([i]) * 16 for i in range(12)]
    ring = [*configured, derived(7)]
    report = encode_report(ring, prefer=[derived(7)])
    assert len(report) == MAX_REPORTED
    assert report[:2] == [fp(configured[0]), fp(derived(7))]
    assert with_report(b"not json", report).startswith(b'{"keys":')


# ------------------------------------------------------------------------------------- one core, tables


def peers(*specs: tuple[str, bool, list[bytes] | None]) -> list[Peer]:
    return [Peer(n, live, tuple(fp(k) for k in keys) if keys is not None else None) for n, live, keys in specs]


def apply(ring: list[bytes], commands: list[Command]) -> list[bytes]:
    for c in commands:
        if isinstance(c, Install):
            assert c.key not in ring
            ring.append(c.key)
        elif isinstance(c, Use):
            ring.remove(c.key)
            ring.insert(0, c.key)
        elif isinstance(c, Remove):
            assert c.key != ring[0], "the primary is never removed"
            ring.remove(c.key)
    return ring


def derived_core(**kw: int) -> KeyRotationCore:
    return KeyRotationCore(EVERY, [ROOT], derive=lambda e: derived(e), **kw)


def test_before_joining_the_previous_and_current_keys_are_installed_and_nothing_switches() -> None:
    core = derived_core()
    e = epoch_of(T0 + 3, EVERY)
    cmds = core.on_tick(T0 + 3, [ROOT], [], ready=False)
    assert cmds == [Install(e, derived(e)), Install(e - 1, derived(e - 1))]
    assert core.status.phase is Phase.JOINING
    assert core.on_tick(T0 + 3, [ROOT, derived(e), derived(e - 1)], [], ready=False) == []


def test_alone_it_installs_uses_and_removes_in_three_ticks() -> None:
    core = derived_core()
    e = epoch_of(T0, EVERY)
    ring = apply([ROOT], core.on_tick(T0, [ROOT], [], ready=False))
    ring = apply(ring, core.on_tick(T0, ring, [], ready=True))
    assert ring[0] == derived(e)
    ring = apply(ring, core.on_tick(T0, ring, [], ready=True))
    assert ring == [derived(e), ROOT]  # the previous epoch's key gone, the configured key kept
    assert core.status.phase is Phase.STEADY and core.status.target == fp(derived(e))
    assert core.on_tick(T0 + 1, ring, [], ready=True) == []


@pytest.mark.parametrize(("others", "switches", "waiting"), [
    ([("b", True, "both"), ("c", True, "both")], True, ()),
    ([("b", True, "both"), ("c", True, "old")], False, ("c",)),
    ([("b", True, "both"), ("c", True, None)], False, ("c (unknown)",)),            # no report: unknown
    ([("b", True, "both"), ("c", False, "old")], True, ()),                         # dead or left: not waited for
    ([("b", True, "old"), ("c", True, "old")], False, ("b", "c")),
])
def test_the_new_key_becomes_primary_only_when_every_live_member_holds_it(
        others: list[tuple[str, bool, str | None]], switches: bool, waiting: tuple[str, ...]) -> None:
    core = derived_core()
    e = epoch_of(T0, EVERY)
    old, new = derived(e - 1), derived(e)
    holdings = {"both": [old, new, ROOT], "old": [old, ROOT], None: None}
    ring = [old, ROOT]
    core.on_tick(T0 - 5, ring, [], ready=True)  # the previous epoch, settled on `old`
    ring = apply(ring, core.on_tick(T0, ring, peers(*[(n, live, holdings[h]) for n, live, h in others]), True))
    assert ring == [old, ROOT, new] and core.status.phase is Phase.INSTALLING
    cmds = core.on_tick(T0, ring, peers(*[(n, live, holdings[h]) for n, live, h in others]), True)
    assert (cmds == [Use(e, new, old, 1 + sum(live for _, live, _ in others))]) is switches
    if not switches:
        assert cmds == [] and core.status.phase is Phase.WAITING_FOR_HOLDERS
        assert core.status.waiting_for == waiting


def test_the_old_key_goes_only_when_every_live_member_uses_the_new_one() -> None:
    core = derived_core()
    e = epoch_of(T0, EVERY)
    old, new = derived(e - 1), derived(e)
    core.on_tick(T0 - 5, [ROOT], [], ready=False)   # installs old (e-1) as this core's key
    ring = [new, old, ROOT]
    core.on_tick(T0, [old, ROOT, new], peers(("b", True, [old, new])), True)
    switching = peers(("b", True, [old, new]), ("c", True, [new, old]), ("d", True, [new]))
    assert core.on_tick(T0, ring, switching, True) == []
    assert core.status.phase is Phase.WAITING_FOR_SWITCH and core.status.waiting_for == ("b",)
    done = peers(("b", True, [new, old]), ("c", True, [new, old]), ("d", False, [old]))
    assert core.on_tick(T0, ring, done, True) == [Remove(e - 1, old, "rotated")]


def test_the_configured_keys_and_manual_keys_are_never_removed() -> None:
    manual = b"m" * 32
    core = KeyRotationCore(EVERY, [ROOT, b"x" * 16], derive=lambda e: derived(e))
    ring = [ROOT, b"x" * 16, manual]
    for _ in range(6):
        ring = apply(ring, core.on_tick(T0, ring, [], True))
    assert ring == [derived(epoch_of(T0, EVERY)), ROOT, b"x" * 16, manual]


def test_a_member_ahead_in_time_waits_for_the_others_then_everyone_catches_up() -> None:
    core = derived_core()
    e = epoch_of(T0, EVERY)
    ring = [derived(e - 1), ROOT]
    core.on_tick(T0 - 1, ring, [], True)
    # a peer whose clock is a little ahead already installed the next key and even reports it
    ahead = peers(("b", True, [derived(e - 1), derived(e)]))
    assert core.on_tick(T0 - 1, ring, ahead, True) == []  # our epoch is still e-1: nothing to do
    ring = apply(ring, core.on_tick(T0, ring, ahead, True))
    assert core.on_tick(T0, ring, ahead, True) == [Use(e, derived(e), derived(e - 1), 2)]


def test_a_stalled_rotation_keeps_a_bounded_keyring() -> None:
    core = derived_core(max_old=2)
    ring = [ROOT]
    never = peers(("old-version", True, None))   # a member that does not rotate holds every switch
    for i in range(10):
        for _ in range(3):
            ring = apply(ring, core.on_tick(T0 + i * EVERY, ring, never, True))
    assert ring[0] == ROOT  # nothing switched under the member that cannot follow
    e = epoch_of(T0, EVERY) + 9
    assert ring == [ROOT, derived(e - 2), derived(e - 1), derived(e)]
    assert core.status.waiting_for == ("old-version (unknown)",)


def test_fetched_keys_are_asked_for_one_at_a_time_and_failures_back_off() -> None:
    core = KeyRotationCore(EVERY, [ROOT])
    e = epoch_of(T0, EVERY)
    assert core.on_tick(T0, [ROOT], [], ready=False) == [Fetch(e)]
    assert core.on_tick(T0 + 0.1, [ROOT], [], ready=False) == []  # one fetch in flight
    core.key_failed(e, T0 + 0.2, "rotate_command exited with status 1: vault sealed")
    assert core.fetch_error and "vault sealed" in core.fetch_error
    assert core.on_tick(T0 + 0.3, [ROOT], [], ready=False) == [Fetch(e - 1)]  # the other epoch meanwhile
    core.key_failed(e - 1, T0 + 0.4, "again")
    assert core.on_tick(T0 + 1.0, [ROOT], [], ready=False) == []       # backing off
    assert core.on_tick(T0 + 1.25, [ROOT], [], ready=False) == [Fetch(e)]
    key = b"k" * 32
    core.key_ready(e, key)
    assert core.fetch_error is None
    cmds = core.on_tick(T0 + 1.3, [ROOT], [], ready=True)
    assert cmds == [Install(e, key)]
    assert core.on_tick(T0 + 1.3, [ROOT, key], [], ready=True) == [Use(e, key, ROOT, 1)]


def test_a_command_that_prints_the_same_key_twice_does_not_remove_it() -> None:
    core = KeyRotationCore(EVERY, [ROOT])
    e = epoch_of(T0, EVERY)
    key = b"k" * 32
    core.on_tick(T0, [ROOT], [], ready=False)
    core.key_ready(e, key)
    core.on_tick(T0, [ROOT], [], ready=False)
    core.key_ready(e - 1, key)  # the command ignored SIDECAR_GOSSIP_EPOCH
    ring = [ROOT]
    for _ in range(4):
        ring = apply(ring, core.on_tick(T0, ring, [], ready=True))
    assert ring == [key, ROOT] and core.status.phase is Phase.STEADY


def test_wrong_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        KeyRotationCore(0, [ROOT])
    with pytest.raises(ValueError, match="configured key"):
        KeyRotationCore(EVERY, [])


# ---------------------------------------------------------------------------- a simulated membership


class SimMember:
    def __init__(self, name: str, derive: Callable[[int], bytes], skew: float = 0.0, now: float = T0 - 3.0) -> None:
        self.name = name
        self.derive = derive
        self.skew = skew
        self.live = False
        self.rotates = True
        self.start(now)

    def start(self, now: float) -> None:
        """A fresh process with the original config (only the configured key), prepared as the driver does
        before its gossip starts: the previous and current epochs' keys installed."""
        self.core = KeyRotationCore(EVERY, [ROOT], derive=self.derive)
        self.ring = apply([ROOT], self.core.on_tick(now + self.skew, [ROOT], [], ready=False))
        self.live = True
        self.joined = False

    def report(self) -> tuple[str, ...] | None:
        return tuple(encode_report(self.ring)) if self.rotates else None


class SimCluster:
    """Members whose views of each other's reports lag by a random number of steps (stale, never invented)."""

    def __init__(self, n: int, seed: int, lag: float = 0.5) -> None:
        self.rng = random.Random(seed)
        self.lag = lag
        self.members = [SimMember(f"m{i}", derived, skew=self.rng.uniform(-0.3, 0.3)) for i in range(n)]
        self.views: dict[str, dict[str, tuple[str, ...] | None]] = {m.name: {} for m in self.members}
        self.now = T0 - 3.0

    def step(self, dt: float = 0.1) -> None:
        self.now += dt
        for m in self.members:  # reports spread: each view catches up with some probability
            for o in self.members:
                if o is not m and self.rng.random() > self.lag:
                    self.views[m.name][o.name] = o.report()
        for m in self.rng.sample(self.members, len(self.members)):
            if not m.live or not m.rotates:
                continue
            m.joined = m.joined or self.rng.random() < 0.5
            view = [Peer(o.name, o.live, self.views[m.name].get(o.name)) for o in self.members if o is not m]
            apply(m.ring, m.core.on_tick(self.now + m.skew, list(m.ring), view, m.joined))
            self.check()

    def check(self) -> None:
        live = [m for m in self.members if m.live]
        for a in live:
            for b in live:
                assert a.ring[0] in b.ring, f"{b.name} cannot read {a.name} (primary {fp(a.ring[0])})"

    def converged(self, epoch: int) -> bool:
        live = [m for m in self.members if m.live]
        return all(m.ring == [derived(epoch), ROOT] for m in live)

    def run_until(self, predicate: Callable[[], bool], steps: int) -> int:
        for i in range(steps):
            if predicate():
                return i
            self.step()
        raise AssertionError(f"not converged after {steps} steps: " +
                             ", ".join(f"{m.name}={[fp(k) for k in m.ring]}" for m in self.members))


@pytest.mark.parametrize("seed", range(8))
def test_five_members_rotate_every_epoch_and_can_always_read_each_other(seed: int) -> None:
    sim = SimCluster(5, seed)
    e = epoch_of(T0, EVERY)
    for epoch in (e, e + 1, e + 2):
        sim.run_until(lambda epoch=epoch: sim.now >= epoch * EVERY + 0.5, 200)   # type: ignore[misc]
        sim.run_until(lambda epoch=epoch: sim.converged(epoch), 60)                # type: ignore[misc]
    assert all(m.core.status.phase is Phase.STEADY for m in sim.members)


@pytest.mark.parametrize("seed", range(6))
def test_a_member_restarted_mid_rotation_or_joining_late_catches_up(seed: int) -> None:
    sim = SimCluster(5, seed)
    e = epoch_of(T0, EVERY)
    sim.run_until(lambda: sim.converged(e - 1), 60)
    victim = sim.members[seed % 5]
    sim.run_until(lambda: sim.now >= e * EVERY + 0.05, 100)
    victim.live = False                  # killed right at the boundary, mid-rotation
    sim.run_until(lambda: sim.converged(e), 60)   # the others finish without it (it is dead to them)
    victim.start(sim.now)                # back with only the configured key, which everyone kept
    sim.check()
    sim.run_until(lambda: sim.converged(e), 60)
    late = SimMember("late", derived, now=sim.now)
    sim.members.append(late)
    sim.views["late"] = {}
    sim.check()
    sim.run_until(lambda: sim.converged(e), 60)
    sim.run_until(lambda: sim.now >= (e + 1) * EVERY + 0.5, 200)
    sim.run_until(lambda: sim.converged(e + 1), 60)


def test_a_member_that_does_not_rotate_holds_every_switch_until_it_does() -> None:
    sim = SimCluster(4, seed=3)
    holdout = sim.members[2]
    holdout.rotates = False
    e = epoch_of(T0, EVERY)
    for _ in range(100):
        sim.step()
    assert all(m.ring[0] == ROOT for m in sim.members)  # nobody switched away from what it reads
    assert all("m2 (unknown)" in m.core.status.waiting_for for m in sim.members if m is not holdout)
    holdout.rotates = True   # upgraded in place (a rolling enable of rotate_every)
    sim.run_until(lambda: sim.converged(e), 80)
