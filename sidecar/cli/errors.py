"""How a command fails: the two exceptions ``sidecar.cli.commands.main`` turns into an exit code and one line."""

from __future__ import annotations


class UsageError(Exception):
    """Bad usage: exit 2."""


class CommandFailed(Exception):
    """The command could not do its job (e.g. the admin port is unreachable): exit 1, message only."""
