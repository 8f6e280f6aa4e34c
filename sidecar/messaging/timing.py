"""Debug timestamps of a message's way between sidecars, to see where publish → delivery latency goes.

With the environment variable ``SIDECAR_MESSAGING_TIMING`` naming a folder, each sidecar appends one line per
message and stage, ``STAGE MESSAGE_ID WALL_MS``, to ``NODE.timing`` there: ``sent`` (the publisher's sidecar posts
the batch to the subscriber's), ``stored`` (the subscriber's inbox commit is on disk), ``to-app`` (the subscriber's
sidecar posts it to its app). ``bench.messaging --timing`` joins them with its own publish, 202 and arrival times.
Unset (the default) it costs one attribute test per batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TextIO

ENV = "SIDECAR_MESSAGING_TIMING"


class Timing:
    def __init__(self, folder: str | None, node: str) -> None:
        self._out: TextIO | None = None
        if folder:
            self._out = open(os.path.join(folder, f"{node}.timing"), "a", buffering=1 << 16)  # noqa: SIM115

    @property
    def on(self) -> bool:
        return self._out is not None

    def mark(self, stage: str, ids: Iterable[str], now: float) -> None:
        if self._out is not None:
            at = round(now * 1000, 3)
            self._out.write("".join(f"{stage} {message_id} {at}\n" for message_id in ids))
            self._out.flush()   # read while the sidecar runs

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
