"""The CLI's help formatter reads the terminal width as argparse's own does (through shutil), without shutil."""

from __future__ import annotations

import argparse

import pytest

from sidecar.cli.commands import build_parser, help_formatter


@pytest.mark.parametrize("columns", ["60", "133", "0", "-3", "wide", None])
def test_the_width_is_argparse_s_own(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert help_formatter("sidecar")._width == argparse.HelpFormatter("sidecar")._width


def test_every_parser_of_the_command_line_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert parser.formatter_class is help_formatter
    assert {p.formatter_class for p in subcommands.choices.values()} == {help_formatter}
    assert max(len(line) for line in parser.format_help().splitlines()) <= 48
