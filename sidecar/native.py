"""Whether the request path runs compiled (mypyc; setup.py lists the modules) or as plain Python, and which
compiled modules in a checkout are older than their source."""

from __future__ import annotations

from pathlib import Path

import sidecar.proxy.exchange as _probe

PACKAGE = Path(__file__).parent


def compiled() -> bool:
    """True when the request path was built to C (the listed modules load from extension files)."""
    return not (_probe.__file__ or "").endswith(".py")


def stale_modules(package: Path = PACKAGE) -> list[str]:
    """In a checkout, compiled modules whose source changed after they were built (run `make native`), as paths.

    The code is in one shared library (``_native__mypyc``); each module's own extension file is a small shim
    that a rebuild leaves alone when it has not changed, so the library's time is the build's time."""
    libraries = list(package.glob("_native__mypyc*.so"))
    if not libraries or not (package.parent / "setup.py").exists():   # an installed package is never stale
        return []
    built = max(library.stat().st_mtime for library in libraries)
    stale = []
    for shim in package.rglob("*.so"):
        source = shim.with_name(shim.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > built:
            stale.append(str(source.relative_to(package.parent)))
    return sorted(stale)
