"""`make bench`: every benchmark in turn, each against a real peer in the same run, printing ratios.

``python -m bench`` runs them all; ``python -m bench dns proxy`` runs the ones named.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    available = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.ispkg)
    chosen = argv or available
    unknown = [name for name in chosen if name not in available]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    failures = 0
    for name in chosen:
        print(f"\n## bench/{name}\n", flush=True)
        module = importlib.import_module(f"bench.{name}.__main__")
        code = module.main()
        failures += 1 if code else 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
