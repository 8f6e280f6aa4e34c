"""Automatic gossip key rotation: a pure core (wall time passed in) that says which key to fetch, install,
use or remove, from this node's keyring and what every member reports holding.

Theory of operation
-------------------
Time is cut in epochs of ``rotate_every``: ``epoch = floor(wall / rotate_every)``, the same on every member
(clocks agree to well under an epoch). Each epoch has one key: derived (HKDF-SHA256 of the first configured
key, salted with the cluster name, the epoch in the info; every member computes it on its own) or fetched
(``rotate_command`` prints it; it gets the epoch in ``SIDECAR_GOSSIP_EPOCH`` and must print the same key on
every member). The *target* is the key of the newest epoch this node has.

Every member advertises the fingerprints of the keys it holds, primary first (:func:`encode_report`, carried in
its gossip metadata); a member without the field is *unknown* and counts as holding nothing we can check. A
member must be heard from when it is alive or suspect (a suspect member may well be alive, and switching under
it could turn the suspicion into a death); dead and departed members do not hold a rotation up. One tick
looks at what is, not at what was done, so a restart, a manual ``/keys`` change or a member that comes back
all land in the right row:

=====================================================  ============================  ==========================
what this node sees                                    what it does                  phase
=====================================================  ============================  ==========================
not joined yet                                         install the epoch's keys;     ``joining``
                                                       switch nothing
no key of the current epoch yet                        fetch it (derive / command)   ``fetching``
the target is not in the keyring                       install it                    ``installing``
target not primary; a member lacks it or is unknown    wait                          ``waiting-for-holders``
target not primary; every member holds it              use it (make it primary)      (next row)
target primary, old rotation keys; a member's          wait                          ``waiting-for-switch``
primary is another key
target primary, old rotation keys; every member's      remove the old keys           (next row)
primary is the target
target primary, no old rotation keys                   nothing                       ``steady``
=====================================================  ============================  ==========================

Only keys this core installed are ever removed: the configured ``encrypt_keys`` stay installed, so a member
that restarts or joins late with the original config can always reach the cluster (its first packets are
sealed with the configured key); once joined it holds the epoch's key too (it computes or fetches the
previous and current epochs' keys at start) and switches like everyone else. In derived mode keeping the
configured key costs nothing: whoever holds it can derive every epoch's key anyway.

A rotation that cannot finish (a member that does not rotate) leaves new keys installed each epoch; at most
``max_old`` of them are kept besides the primary and the target, the oldest that no member uses going first.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sidecar.gossip.keyring import fingerprint
from sidecar.tls.primitives import hkdf_sha256

REPORT_FIELD = "keys"     # the metadata field: fingerprints held, primary first
MAX_REPORTED = 8          # 8 fingerprints cost ~130 bytes of the 512-byte metadata
MAX_OLD = 2               # old rotation keys kept when rotations stall (besides the primary and the target)
FETCH_RETRY_BASE = 1.0    # seconds before retrying a failed fetch; doubles up to FETCH_RETRY_MAX
FETCH_RETRY_MAX = 60.0
_FINGERPRINT = re.compile(r"^[0-9a-f]{12}$")


class Phase(enum.Enum):
    JOINING = "joining"
    FETCHING = "fetching"
    INSTALLING = "installing"
    WAITING_FOR_HOLDERS = "waiting-for-holders"
    WAITING_FOR_SWITCH = "waiting-for-switch"
    STEADY = "steady"


# ------------------------------------------------------------------------------------------ epochs, keys


def epoch_of(wall: float, every: float) -> int:
    """The rotation epoch at wall time ``wall`` (seconds since 1970)."""
    return math.floor(wall / every)


def epoch_start(epoch: int, every: float) -> float:
    return epoch * every


def derive_key(root: bytes, cluster: str, epoch: int) -> bytes:
    """The epoch's key, the same length as ``root``: HKDF-SHA256, salt = the cluster, info = the epoch.

    Another cluster with the same root key gets other keys, and a key says nothing of its neighbours.
    """
    return hkdf_sha256(root, salt=b"sidecar gossip cluster " + cluster.encode(),
                       info=b"sidecar gossip key epoch " + str(epoch).encode(), length=len(root))


# ----------------------------------------------------------------------------------- what members report


def encode_report(ring: Sequence[bytes], prefer: Iterable[bytes] = ()) -> list[str]:
    """Fingerprints of ``ring`` (primary first) for the metadata; ``prefer`` (newest first) come right after the
    primary, so the cap never hides the keys a rotation is waiting on."""
    if not ring:
        return []
    ordered = [ring[0], *(k for k in prefer if k in ring and k != ring[0])]
    ordered += [k for k in ring if k not in ordered]
    return [fingerprint(k) for k in ordered[:MAX_REPORTED]]


def with_report(meta: bytes, report: Sequence[str]) -> bytes:
    """``meta`` (a JSON object, or empty) with the key report added."""
    try:
        fields = json.loads(meta) if meta else {}
    except ValueError:
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    fields[REPORT_FIELD] = list(report)
    return json.dumps(fields, separators=(",", ":")).encode()


def decode_report(meta: bytes) -> tuple[str, ...] | None:
    """The fingerprints a member reports (primary first); None when it reports none or nothing readable."""
    try:
        fields = json.loads(meta) if meta else None
    except ValueError:
        return None
    value = fields.get(REPORT_FIELD) if isinstance(fields, dict) else None
    if not isinstance(value, list) or not value or len(value) > MAX_REPORTED:
        return None
    if not all(isinstance(v, str) and _FINGERPRINT.match(v) for v in value):
        return None
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Peer:
    """Another member as the rotation sees it."""

    name: str
    live: bool                         # alive or suspect: it must be heard from
    keys: tuple[str, ...] | None       # fingerprints held, primary first; None: unknown

    @property
    def primary(self) -> str | None:
        return self.keys[0] if self.keys else None


# --------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run ``rotate_command`` for this epoch, then call ``key_ready`` or ``key_failed``."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Install:
    epoch: int
    key: bytes


@dataclass(frozen=True, slots=True)
class Use:
    epoch: int
    key: bytes
    previous: bytes
    members: int        # how many members (ourselves included) held it


@dataclass(frozen=True, slots=True)
class Remove:
    epoch: int
    key: bytes
    reason: str         # "rotated": everyone uses the target; "stalled": too many old keys


Command = Fetch | Install | Use | Remove


@dataclass(frozen=True, slots=True)
class RotationStatus:
    phase: Phase
    epoch: int
    target: str | None                 # fingerprint of the newest epoch key held
    target_epoch: int | None
    waiting_for: tuple[str, ...] = ()  # members holding the phase up ("name" or "name (unknown)")


@dataclass(slots=True)
class _Fetching:
    retry_at: dict[int, float] = field(default_factory=dict)
    failures: int = 0
    inflight: int | None = None
    last_error: str | None = None


class KeyRotationCore:
    """Decides, tick by tick, what the driver does to the keyring; see the module's table.

    ``derive`` (derived mode) gives an epoch's key at once; without it the core asks the driver to
    :class:`Fetch` it and waits for :meth:`key_ready` / :meth:`key_failed`.
    """

    def __init__(self, every: float, configured: Sequence[bytes], *,
                 derive: Callable[[int], bytes] | None = None, max_old: int = MAX_OLD) -> None:
        if every <= 0:
            raise ValueError("rotate_every must be positive")
        if not configured:
            raise ValueError("rotation needs at least one configured key")
        self.every = float(every)
        self.configured = frozenset(configured)
        self.max_old = max_old
        self._derive = derive
        self._keys: dict[int, bytes] = {}       # epoch → key, for the previous and current epochs
        self._installed: dict[bytes, int] = {}  # keys this core installed → their epoch
        self._fetch = _Fetching()
        self.status = RotationStatus(Phase.JOINING, 0, None, None)

    # ---------------------------------------------------------------------------------------- inputs

    def key_ready(self, epoch: int, key: bytes) -> None:
        """The driver fetched ``epoch``'s key."""
        self._keys[epoch] = key
        self._fetch.retry_at.pop(epoch, None)
        self._fetch.failures = 0
        self._fetch.last_error = None
        if self._fetch.inflight == epoch:
            self._fetch.inflight = None

    def key_failed(self, epoch: int, now: float, reason: str) -> None:
        """Fetching ``epoch``'s key failed; it is retried with exponential back-off."""
        self._fetch.failures += 1
        self._fetch.last_error = reason
        delay = min(FETCH_RETRY_BASE * 2 ** (self._fetch.failures - 1), FETCH_RETRY_MAX, self.every / 2)
        self._fetch.retry_at[epoch] = now + delay
        if self._fetch.inflight == epoch:
            self._fetch.inflight = None

    @property
    def fetch_error(self) -> str | None:
        return self._fetch.last_error

    def epoch_of_key(self, key: bytes) -> int | None:
        """The epoch of a key this core knows (fetched or installed), else None."""
        if key in self._installed:
            return self._installed[key]
        return next((e for e, k in self._keys.items() if k == key), None)

    def next_boundary(self, now: float) -> float:
        """When the next epoch starts (wall time)."""
        return epoch_start(epoch_of(now, self.every) + 1, self.every)

    # ------------------------------------------------------------------------------------------ tick

    def on_tick(self, now: float, ring: Sequence[bytes], peers: Sequence[Peer], ready: bool) -> list[Command]:
        """What to do now. ``ring``: this node's keys, primary first; ``peers``: every other member;
        ``ready``: joined (or alone by configuration). Apply the commands, then tick again: one step each time."""
        epoch = epoch_of(now, self.every)
        wanted = (epoch, epoch - 1) if not ready else (epoch,)
        out: list[Command] = []
        self._obtain(wanted, epoch, now, out)
        target_epoch = max((e for e in self._keys if e <= epoch), default=None)
        target = self._keys[target_epoch] if target_epoch is not None else None
        target_fp = fingerprint(target) if target is not None else None

        def status(phase: Phase, waiting: Iterable[str] = ()) -> list[Command]:
            self.status = RotationStatus(phase, epoch, target_fp, target_epoch, tuple(waiting))
            return out

        if not ready:
            for e in wanted:
                key = self._keys.get(e)
                if key is not None and key not in ring:
                    out.append(self._install(e, key))
            return status(Phase.JOINING)
        if target is None or target_epoch is None or target_fp is None:
            return status(Phase.FETCHING)
        if target not in ring:
            out.append(self._install(target_epoch, target))
            return status(Phase.INSTALLING)
        live = [p for p in peers if p.live]
        primary = ring[0]
        if primary != target:
            lacking = [_name(p) for p in live if p.keys is None or target_fp not in p.keys]
            if lacking:
                self._prune(ring, target, live, out)
                return status(Phase.WAITING_FOR_HOLDERS, lacking)
            out.append(Use(target_epoch, target, primary, len(live) + 1))
            return status(Phase.WAITING_FOR_SWITCH, [p.name for p in live if p.primary != target_fp])
        old = [k for k in ring if k in self._installed and k != target]
        if not old:
            return status(Phase.STEADY)
        switching = [_name(p) for p in live if p.primary != target_fp]
        if switching:
            self._prune(ring, target, live, out)
            return status(Phase.WAITING_FOR_SWITCH, switching)
        for key in old:
            out.append(Remove(self._installed.pop(key), key, "rotated"))
        return status(Phase.STEADY)

    # ------------------------------------------------------------------------------------- internals

    def _obtain(self, wanted: Sequence[int], epoch: int, now: float, out: list[Command]) -> None:
        for e in list(self._keys):
            if e < epoch - 1:
                del self._keys[e]
        for e in list(self._fetch.retry_at):
            if e < epoch - 1:
                del self._fetch.retry_at[e]
        for e in sorted(wanted, reverse=True):  # the current epoch first
            if e in self._keys:
                continue
            if self._derive is not None:
                self._keys[e] = self._derive(e)
            elif self._fetch.inflight is None and now >= self._fetch.retry_at.get(e, -math.inf):
                self._fetch.inflight = e
                out.append(Fetch(e))

    def _install(self, epoch: int, key: bytes) -> Install:
        if key not in self.configured:
            self._installed[key] = epoch
        return Install(epoch, key)

    def _prune(self, ring: Sequence[bytes], target: bytes, live: Sequence[Peer], out: list[Command]) -> None:
        """A stalled rotation must not grow the keyring without end: keep ``max_old`` old rotation keys."""
        in_use = {p.primary for p in live}
        old = sorted((self._installed[k], k) for k in ring[1:] if k in self._installed and k != target)
        for epoch, key in old[: max(0, len(old) - self.max_old)]:
            if fingerprint(key) not in in_use:
                del self._installed[key]
                out.append(Remove(epoch, key, "stalled"))


def _name(peer: Peer) -> str:
    return peer.name if peer.keys is not None else f"{peer.name} (unknown)"
