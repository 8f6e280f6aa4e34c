"""Gossip in plaintext beyond loopback, for real: a sidecar with the default gossip listener (0.0.0.0:7946)
in a network namespace of its own warns at start, on /ready and in /metrics; with keys, or on loopback, it
does not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.security.test_netns_admin import REASON, namespace, sidecar_in

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

KEY = "Z29zc2lwLWV4cG9zdXJlLXRlc3Qta2V5LTAxMjM0NTY="  # a fixed test key, used nowhere else
WARNING = "WITHOUT ENCRYPTION"


def get(ns: str, url: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "--max-time", "3", url],
                          capture_output=True, text=True, timeout=10).stdout


@pytest.mark.parametrize(("gossip", "exposed"), [
    ({}, True),  # the default: 0.0.0.0:7946, no keys
    ({"encrypt_keys": [KEY]}, False),
    ({"listen": "127.0.0.1:7946"}, False),
], ids=["default", "encrypted", "loopback"])
def test_plaintext_gossip_beyond_loopback_is_reported(tmp_path: Path, gossip: dict[str, Any], exposed: bool) -> None:
    with namespace() as (ns, _), sidecar_in(ns, tmp_path, {"gossip": gossip} if gossip else {}) as log:
        ready = json.loads(get(ns, "http://127.0.0.1:9901/ready"))
        metrics = get(ns, "http://127.0.0.1:9901/metrics")
        text = log.read_text()
    assert ready["status"] == "ready"
    if exposed:
        assert any(WARNING in w and "gossip.encrypt_keys" in w for w in ready["warnings"]), ready
        assert any(WARNING in line and "WARN" in line.upper() for line in text.splitlines()), text
        assert "sidecar_gossip_plaintext_exposed 1.0" in metrics
    else:
        assert "warnings" not in ready and WARNING not in text
        assert "sidecar_gossip_plaintext_exposed 0.0" in metrics
