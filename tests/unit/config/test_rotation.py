"""gossip.rotate_every and rotate_command: the rules, with the message a person reads."""

from __future__ import annotations

import pytest

from sidecar.config.load import config_from_raw
from sidecar.errors import ConfigError

KEY = "MDEyMzQ1Njc4OWFiY2RlZg=="


@pytest.mark.parametrize(("gossip", "expected"), [
    ({"rotate_every": "1h"}, 'gossip.rotate_every: needs encrypt_keys, the key the rotation starts from (got "1h")'),
    ({"encrypt_keys": [KEY], "rotate_every": "500ms"}, 'gossip.rotate_every: must be at least 1s (got "500ms")'),
    ({"encrypt_keys": [KEY], "rotate_every": "0s"}, 'gossip.rotate_every: must be greater than 0 (got "0s")'),
    ({"encrypt_keys": [KEY], "rotate_command": "vault read -field=key secret/gossip"},
     "gossip.rotate_command: is used only with rotate_every, which is not set (got <redacted>)"),
])
def test_rotation_settings_are_checked(gossip: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_raw({"gossip": gossip}, {})
    assert expected in caught.value.problems


def test_a_valid_rotation_config() -> None:
    config = config_from_raw({"gossip": {"encrypt_keys": [KEY], "rotate_every": "24h",
                                         "rotate_command": "vault read -field=key secret/gossip"}}, {})
    assert config.gossip.rotate_every == 86_400
