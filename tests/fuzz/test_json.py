"""JSON from outside: ServiceMessage bodies at the API (InvalidArgument only) and catalog states from
peers (SyncDecodeError only)."""

from __future__ import annotations

import json
import zlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import fuzz_settings, inputs
from tests.fuzz.targets import catalog_state, message_json

_SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20),
)
_JSON: st.SearchStrategy[Any] = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = ["type", "payload", "metadata", "id", "service", "timestamp"]


@st.composite
def message_bodies(draw: st.DrawFn) -> bytes:
    body = draw(st.fixed_dictionaries({}, optional={name: _JSON for name in _FIELDS}))
    return json.dumps(body).encode()  # NaN and Infinity included, as Python's json writes and reads them


_INSTANCE_KEYS = ["id", "name", "version", "host", "port", "tags", "capabilities", "status", "lastHeartbeat",
                  "node", "messagesPath"]


@st.composite
def catalog_documents(draw: st.DrawFn) -> bytes:
    instance = st.fixed_dictionaries({}, optional={key: _JSON for key in _INSTANCE_KEYS})
    state = st.tuples(_JSON | st.text(max_size=5), _JSON | st.integers(), st.lists(instance | _JSON, max_size=3),
                      st.lists(st.lists(_JSON | st.text(max_size=3), max_size=4), max_size=2)).map(
        lambda t: list(t[: draw(st.integers(2, 4))]))
    doc = [draw(st.sampled_from([1, 1, 1, 2, "1"])), draw(st.lists(state, max_size=3))]
    return zlib.compress(json.dumps(doc).encode())


@fuzz_settings(300)
@given(inputs("message_json"))
def test_message_bytes(data: bytes) -> None:
    message_json(data)


@fuzz_settings(300)
@given(message_bodies())
def test_message_documents(data: bytes) -> None:
    message_json(data)


@fuzz_settings(300)
@given(inputs("catalog_state"))
def test_catalog_state_bytes(data: bytes) -> None:
    catalog_state(data)


@fuzz_settings(300)
@given(catalog_documents())
def test_catalog_state_documents(data: bytes) -> None:
    catalog_state(data)


@fuzz_settings(200)
@given(inputs("message_json"))
def test_catalog_state_of_any_json_text(data: bytes) -> None:
    catalog_state(zlib.compress(data))
