"""The config diff and its classification: paths, keyed lists, secrets, the transaction's refusal."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sidecar.config.diff import ABSENT, Change, Plan, classify, diff
from sidecar.config.load import config_from_raw
from sidecar.config.model import Config

KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()


def config(**raw: Any) -> Config:
    return config_from_raw(raw)


def by_path(changes: tuple[Change, ...]) -> dict[str, Change]:
    return {c.path: c for c in changes}


def test_identical_configs_have_no_changes() -> None:
    raw = {"services": [{"name": "pay", "port": 3000}], "policies": {"*": {"timeout": "5s"}}}
    assert diff(config(**raw), config(**raw)) == ()
    assert Plan(()).parts == () and not Plan(()).refused


def test_a_leaf_change_is_one_change_by_dotted_path() -> None:
    old = config(policies={"*": {"retries": {"attempts": 0}}})
    new = config(policies={"*": {"retries": {"attempts": 2}}})
    [change] = diff(old, new)
    assert (change.path, change.old, change.new, change.op) == ("policies.*.retries.attempts", 0, 2, "change")
    assert change.live and change.part == "policies" and not change.secret
    assert change.to_text() == "policies.*.retries.attempts: 0 -> 2"


def test_a_named_policy_added_shows_every_key_it_brings() -> None:
    new = config(policies={"*": {}, "echo": {"timeout": "3s"}})
    [change] = diff(Config(), new)
    assert change.path == "policies.echo" and change.op == "add" and change.old is ABSENT
    assert change.new["timeout"] == "3s"
    assert change.to_json()["op"] == "add" and "old" not in change.to_json()


def test_services_and_upstreams_are_compared_by_name_and_port_not_position() -> None:
    old = config(services=[{"name": "a", "port": 1}, {"name": "b", "port": 2}],
                 upstreams=[{"service": "x", "local_port": 9191}, {"service": "y", "local_port": 9192}])
    new = config(services=[{"name": "b", "port": 3}],
                 upstreams=[{"service": "y", "local_port": 9192}, {"service": "z", "local_port": 9193}])
    changes = by_path(diff(old, new))
    assert set(changes) == {"services[a]", "services[b].port", "upstreams[9191]", "upstreams[9193]"}
    assert changes["services[a]"].op == "remove" and changes["services[a]"].to_text().startswith("services[a]: removed")
    assert (changes["services[b].port"].old, changes["services[b].port"].new) == (2, 3)
    assert changes["upstreams[9193]"].op == "add" and changes["upstreams[9193]"].part == "upstreams"


def test_other_lists_compare_by_position_and_scalar_lists_as_a_whole() -> None:
    old = config(authorization={"rules": [{"to": "pay", "from": ["checkout"]}]})
    new = config(authorization={"rules": [{"to": "pay", "from": ["checkout", "ops"]}, {"to": "inv"}]})
    changes = by_path(diff(old, new))
    assert set(changes) == {"authorization.rules[0].from", "authorization.rules[1]"}
    assert changes["authorization.rules[0].from"].to_text() == \
        'authorization.rules[0].from: ["checkout"] -> ["checkout", "ops"]'
    assert changes["authorization.rules[1]"].op == "add"


def test_secrets_never_show_but_their_change_does() -> None:
    old = config(gossip={"encrypt_keys": [KEY_A]})
    new = config(gossip={"encrypt_keys": [KEY_B]})
    [change] = diff(old, new)
    assert change.secret and change.path == "gossip.encrypt_keys"
    text = change.to_text()
    assert KEY_A not in text and KEY_B not in text and "<redacted>" in text and "(secret changed)" in text
    assert KEY_A not in str(change.to_json()) and KEY_B not in str(change.to_json())
    assert not change.live and "POST /keys/install" in change.reason


@pytest.mark.parametrize(("path", "part"), [
    ("services[pay].check.interval", "services"),
    ("upstreams[9191]", "upstreams"),
    ("policies.echo.retries.attempts", "policies"),
    ("authorization.default", "authorization"),
    ("subscriptions[0].path", "subscriptions"),
    ("logging.level", "logging"),
    ("telemetry.tracing.sample_ratio", "tracing"),
    ("telemetry.access_log.enabled", "access_log"),
    ("reload.canary_window", "reload"),
    ("admin.listen", None),
    ("inbound.listen", None),
    ("node.name", None),
    ("node.data_dir", None),
    ("tls.cert", None),
    ("tls", None),
    ("gossip.join", None),
    ("dns.ttl", None),
    ("telemetry.retention", None),
    ("messaging.max_attempts", None),
    ("messaging.max_dead_letter_bytes", None),
    ("messaging.topics.orders.publishers", "topic_scopes"),
    ("messaging.default", "topic_scopes"),
    ("something.new", None),
    ("servicesx", None),   # a prefix matches whole segments only
])
def test_classification_by_path(path: str, part: str | None) -> None:
    assert classify(path)[0] == part


def test_a_listener_change_refuses_the_whole_reload_with_the_reason() -> None:
    old = config(admin={"listen": "127.0.0.1:9901"}, logging={"level": "info"})
    new = config(admin={"listen": "127.0.0.1:9902"}, logging={"level": "debug"})
    plan = Plan(diff(old, new))
    assert plan.refused and plan.parts == ("logging",)
    assert [c.path for c in plan.restart] == ["admin.listen"]
    refusal = plan.refusal()
    assert "needs a restart for 1 change" in refusal and "nothing changed" in refusal
    assert 'admin.listen: "127.0.0.1:9901" -> "127.0.0.1:9902": a listener address' in refusal


def test_parts_come_in_rule_order_once_each() -> None:
    old = config()
    new = config(logging={"level": "debug"}, services=[{"name": "a", "port": 1}, {"name": "b", "port": 2}],
                 authorization={"default": "deny"})
    assert Plan(diff(old, new)).parts == ("services", "authorization", "logging")


def test_long_values_are_cut_in_text_but_whole_in_json() -> None:
    new = config(services=[{"name": "a", "port": 1, "tags": [f"tag-{i}" for i in range(40)]}])
    [change] = diff(Config(), new)
    assert len(change.to_text()) < 200 and change.to_text().endswith("...")
    assert change.path == "services[a]" and len(change.to_json()["new"]["tags"]) == 40
