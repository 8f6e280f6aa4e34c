"""The command line: ``sidecar run|wait-ready|validate|certs|keys|members|catalog|clusters|explain|reload|inject|demo``.

``commands`` builds the parser and dispatches; each command that is more than a few lines has its own module
(``views``, ``explain``, ``reload``, ``inject``), imported only when it runs; ``admin`` is what the commands
that talk to a running sidecar's admin port share. Exit codes: 0 success, 2 bad usage or bad config, 1 failure
at run time; errors are one line each on stderr, never a traceback.
"""

from sidecar.cli.commands import main

__all__ = ["main"]
