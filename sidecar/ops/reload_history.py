"""The versions of the running configuration, for ``GET /config/history`` and ``POST /config/rollback``.

Pure: times are passed in. A version is a configuration that ran: the one the process started with
(``start``), one a reload applied (``reload``), one restored by hand (``rollback``) or by a failed canary
(``canary``). Refused and invalid reloads are not versions (they changed nothing; they are logged). The
store keeps the newest ``limit`` versions (``reload.history``); numbers only grow, so a number names one
version for the life of the process.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.diff import Change
from sidecar.config.model import Config

SOURCES = ("start", "reload", "rollback", "canary")


@dataclass(slots=True)
class CanaryState:
    """A version under watch: ``watching`` until the window ends (``passed``), or ``rolled-back`` with the reason,
    or ``superseded`` by another reload before the end, or ``rollback-failed``."""

    window: float
    max_error_rate: float
    baseline: tuple[int, int]          # (requests, errors) in the window before the reload
    state: str = "watching"
    observed: tuple[int, int] = (0, 0)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"window": f"{self.window:g}s", "maxErrorRate": self.max_error_rate, "state": self.state,
                "baseline": _counts_json(self.baseline), "observed": _counts_json(self.observed),
                "reason": self.reason}


def _counts_json(counts: tuple[int, int]) -> dict[str, Any]:
    requests, errors = counts
    return {"requests": requests, "errors": errors, "errorRate": round(errors / requests, 6) if requests else 0.0}


@dataclass(slots=True)
class Version:
    number: int
    at_ms: int
    source: str
    config: Config
    changes: tuple[Change, ...]
    applied: tuple[str, ...] = ()
    restores: int | None = None          # rollback and canary: the version whose configuration this is
    canary: CanaryState | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self, current: bool) -> dict[str, Any]:
        return {"version": self.number, "timestamp": self.at_ms, "source": self.source, "current": current,
                "applied": list(self.applied), "restores": self.restores,
                "changes": [c.to_json() for c in self.changes],
                "canary": None if self.canary is None else self.canary.to_json(), "notes": list(self.notes)}


class History:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("history limit must be at least 1")
        self.limit = limit
        self._versions: deque[Version] = deque()
        self._next = 1

    def __len__(self) -> int:
        return len(self._versions)

    def record(self, source: str, config: Config, changes: tuple[Change, ...], at_ms: int,
               applied: tuple[str, ...] = (), restores: int | None = None) -> Version:
        """A new current version; the oldest beyond the limit are forgotten."""
        if source not in SOURCES:
            raise ValueError(f"unknown version source {source!r}; one of {', '.join(SOURCES)}")
        version = Version(self._next, at_ms, source, config, changes, applied, restores)
        self._next += 1
        self._versions.append(version)
        self._trim()
        return version

    def resize(self, limit: int) -> None:
        """``reload.history`` changed: keep the newest ``limit``."""
        if limit < 1:
            raise ValueError("history limit must be at least 1")
        self.limit = limit
        self._trim()

    def _trim(self) -> None:
        while len(self._versions) > self.limit:
            self._versions.popleft()

    @property
    def current(self) -> Version | None:
        return self._versions[-1] if self._versions else None

    def get(self, number: int) -> Version | None:
        return next((v for v in self._versions if v.number == number), None)

    def numbers(self) -> list[int]:
        return [v.number for v in self._versions]

    def to_json(self) -> dict[str, Any]:
        """Newest first."""
        current = self.current
        return {"current": None if current is None else current.number, "limit": self.limit,
                "versions": [v.to_json(v is current) for v in reversed(self._versions)]}
