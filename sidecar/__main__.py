"""argv → command. Nothing else."""

from __future__ import annotations

import sys


def main() -> None:
    from sidecar.cli import main as cli_main

    sys.exit(cli_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
