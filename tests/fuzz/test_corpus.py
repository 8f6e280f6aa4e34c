"""Replays every seed and finding of ``corpus/<target>/`` through its parser (see ``targets.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import CORPUS, TARGETS, corpus_files

CASES = [(target, path) for target in sorted(TARGETS) for path in corpus_files(target)]


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_file_is_handled(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def test_every_target_has_a_corpus() -> None:
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == sorted(TARGETS)
    for target in TARGETS:
        assert len(corpus_files(target)) >= 10, target
