"""YAML configuration: random bytes through read_yaml, and random config-shaped documents through
config_from_raw. Only ConfigError may come out."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config.model import Config
from sidecar.config.values import Duration, HostPort
from tests.fuzz.strategies import fuzz_settings, inputs
from tests.fuzz.targets import config_document, config_yaml

_JUNK: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["", "0", "-1", "5x", "1h30m", "${PORT}", "${NAME:-a}", "$$x", "${",
                                           "127.0.0.1:99999", "[::1]:53", "::1", "a" * 300, "\x00", "é"]),
)
_ANY: st.SearchStrategy[Any] = st.recursive(
    _JUNK, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


def _plausible(tp: Any, depth: int) -> st.SearchStrategy[Any]:
    """Values close to right for a field type (so validation goes deep), mixed with junk of any shape."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of(*[_plausible(arg, depth) for arg in get_args(tp)])
    if origin is Literal:
        return st.sampled_from(list(get_args(tp)))
    if origin is list:
        return st.lists(_plausible(get_args(tp)[0], depth + 1), max_size=3)
    if origin is dict:
        return st.dictionaries(st.sampled_from(["*", "web", "api", ""]), _plausible(get_args(tp)[1], depth + 1),
                               max_size=2)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _section(tp, depth + 1) if depth < 4 else st.just({})
    simple: dict[Any, st.SearchStrategy[Any]] = {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.integers(-3, 70000),
        float: st.floats(-2, 200, allow_nan=False),
        str: st.sampled_from(["web", "api", "/health", "mesh.local", "orders", "certs/ca.pem", "x"]),
        Duration: st.sampled_from(["250ms", "5s", "1m", "24h", 3, 0.5, "1h30m"]),
        HostPort: st.sampled_from(["127.0.0.1:0", "0.0.0.0:7946", "[::1]:8600", "localhost", "node-b:7946"]),
    }
    return simple.get(tp, _ANY)


def _section(cls: type, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    hints = get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): st.one_of(_plausible(hints[f.name], depth), _ANY)
              for f in dataclasses.fields(cls)}
    return st.fixed_dictionaries({}, optional=fields)


DOCUMENTS = _section(Config, 0)


@fuzz_settings(300)
@given(DOCUMENTS)
def test_random_config_documents_give_a_config_or_config_error(document: dict[str, Any]) -> None:
    # through YAML and back, as a file would come: what safe_dump writes, the strict loader reads
    config_document(yaml.safe_load(yaml.safe_dump(document)))


@fuzz_settings(200)
@given(DOCUMENTS, st.text(max_size=20))
def test_documents_with_unknown_keys(document: dict[str, Any], key: str) -> None:
    document[key or "x"] = {"nested": [key]}
    config_document(document)


@fuzz_settings(300)
@given(inputs("config_yaml"))
def test_random_bytes_through_read_yaml(data: bytes) -> None:
    config_yaml(data)
