"""What the cyclic garbage collector would find: for tests that the sidecar's objects are freed by reference counting
as they are let go (``sidecar run`` collects rarely: sidecar.app.tune_gc)."""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from collections.abc import Iterable, Iterator


def sidecar_garbage() -> Counter[str]:
    """What a full collection finds unreachable, of the sidecar's own types (by type name); the collector's debug
    flags are restored after, and what was found is freed."""
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)   # keep what the collection finds in gc.garbage instead of freeing it
    try:
        gc.collect()
        return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                       if type(o).__module__.startswith("sidecar."))
    finally:
        gc.garbage.clear()
        gc.set_debug(flags)
        gc.collect()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection meanwhile (only explicit ones): every cycle made is still there when counted."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def alive(types: Iterable[type]) -> Counter[str]:
    """The objects of ``types`` that exist now (in use, or unreachable and not yet collected), by type name."""
    wanted = tuple(types)
    return Counter(type(o).__qualname__ for o in gc.get_objects() if isinstance(o, wanted))
