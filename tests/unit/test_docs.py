"""The documentation holds together: every link in README.md and docs/*.md resolves, the README stays a front
door, and the configuration reference names every key the code accepts."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import model
from sidecar.config.values import Duration, HostPort

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
# [text](target) and ![alt](target); an optional "title" after the target is allowed
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(text: str) -> list[str]:
    """The targets of the inline links of a markdown text, outside code blocks and code spans."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return _LINK.findall(prose)


def link_problem(page: Path, target: str) -> str | None:
    """Why ``target`` (a link on ``page``) is broken, or None when it resolves."""
    if target.startswith(("http://", "https://")):
        return "a URL with an anchor (anchors are not checked)" if "#" in target else None
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):
        return "neither a relative path nor an http(s) URL"
    if "#" in target:
        return "a path with an anchor (anchors are not checked)"
    if not (page.parent / target).resolve().is_file():
        return "no such file"
    return None


def test_the_link_finder_sees_links_and_skips_code() -> None:
    text = ("See [the tour](docs/tour.md) and ![a picture](docs/x.png \"title\").\n"
            "`[not](a-link.md)` and\n```sh\n[neither](b.md)\n```\n[site](https://example.org/page)\n")
    assert links(text) == ["docs/tour.md", "docs/x.png", "https://example.org/page"]


@pytest.mark.parametrize(("target", "broken"), [
    ("docs/tour.md", False), ("docs/no-such-page.md", True), ("docs/tour.md#a-section", True),
    ("https://example.org/", False), ("https://example.org/#part", True), ("mailto:someone@example.org", True),
])
def test_link_problem(tmp_path: Path, target: str, broken: bool) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "tour.md").write_text("# Tour\n")
    assert (link_problem(tmp_path / "README.md", target) is not None) is broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    problems = [f"{target}: {why}" for target in links(page.read_text(encoding="utf-8"))
                if (why := link_problem(page, target)) is not None]
    assert not problems, f"{page.relative_to(ROOT)}: broken links: {problems}"


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move the depth to docs/"
    for command in ("make demo", "make test"):
        assert command in text
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"README.md does not link docs/{page.name}"


# ------------------------------------------------------------------------------- the configuration reference

_SCALARS = (HostPort, Duration)


def _concrete(tp: Any) -> list[Any]:
    """The types a field may hold, ``None`` left out (``X | None`` → ``[X]``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [arg for arg in typing.get_args(tp) if arg is not type(None)]
    return [tp]


def config_keys(cls: type[Any], prefix: str = "") -> Iterator[str]:
    """Every leaf key of a config section, as the reference writes it: ``services[].check.http``; the keys of a
    policy (``policies.NAME``) relative to it, as its table lists them; other maps' entries as ``KEY.NAME.leaf``."""
    hints = typing.get_type_hints(cls, vars(model))
    for f in dataclasses.fields(cls):
        key = prefix + f.metadata.get("key", f.name)
        for tp in _concrete(hints[f.name]):
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            if dataclasses.is_dataclass(tp) and tp not in _SCALARS:
                yield from config_keys(tp, key + ".")
            elif origin is list and dataclasses.is_dataclass(args[0]) and args[0] not in _SCALARS:
                yield from config_keys(args[0], key + "[].")
            elif origin is dict and dataclasses.is_dataclass(args[1]):
                # policies.NAME: its own table, relative keys; other maps by name: messaging.topics.NAME.publishers
                yield from config_keys(args[1], "" if key == "policies" else key + ".NAME.")
            else:
                yield key


def test_config_keys_walks_the_model() -> None:
    keys = set(config_keys(model.Config))
    assert {"node.name", "services[].check.http", "retries.budget.ratio", "authorization.rules[].from",
            "gossip.probe_interval", "tls.issuer.renew_at", "admin.listen"} <= keys
    assert "admin.listen.host" not in keys


def test_the_configuration_reference_names_every_key() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(key for key in set(config_keys(model.Config)) if f"`{key}`" not in text)
    assert not missing, f"docs/configuration.md does not describe {missing}"
