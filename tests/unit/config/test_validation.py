"""Every validation rule, with the message a person reads: ``dotted.path: rule (got VALUE)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config.load import config_from_raw, config_to_raw, interpolate, load
from sidecar.config.values import Duration, HostPort
from sidecar.errors import ConfigError


def problems_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_raw(raw, env or {})
    return caught.value.problems


@pytest.mark.parametrize(("raw", "expected"), [
    ({"nodes": {}}, "nodes: unknown key; did you mean 'node'? (got {})"),
    ({"gossip": {"jion": []}}, "gossip.jion: unknown key; did you mean 'join'? (got [])"),
    ({"node": {"name": ["a"]}}, 'node.name: must be a string (got ["a"])'),
    ({"node": {"name": "Bad_Name"}}, "node.name: must be a DNS label"),
    ({"dns": {"ttl": "5x"}}, 'dns.ttl: must be a duration like 250ms, 5s, 1m, 24h or a number of seconds (got "5x")'),
    ({"dns": {"ttl": -1}}, "dns.ttl: must not be negative (got -1)"),
    ({"dns": {"ttl": True}}, "dns.ttl: must be a duration"),
    ({"dns": {"listen": "localhost"}}, 'dns.listen: must be host:port (the port is missing) (got "localhost")'),
    ({"dns": {"listen": "127.0.0.1:99999"}}, 'dns.listen: port must be in [0, 65535] (got "127.0.0.1:99999")'),
    ({"dns": {"listen": "::1:53"}}, "dns.listen: must be host:port; write an IPv6 host in brackets"),
    ({"dns": {"listen": "bad host:53"}}, "dns.listen: host must be an IP address or a DNS name"),
    ({"admin": {"listen": 9901}}, "admin.listen: must be host:port (got 9901)"),
    ({"gossip": {"join": "a:1"}}, 'gossip.join: must be a list (got "a:1")'),
    ({"gossip": {"join": ["a:b"]}}, 'gossip.join[0]: must be host:port with a numeric port (got "a:b")'),
    ({"gossip": {"profile": "lab"}}, 'gossip.profile: must be one of lan, wan, local (got "lab")'),
    ({"gossip": {"encrypt_keys": ["not base64!"]}}, "gossip.encrypt_keys[0]: must be base64 (got <redacted>)"),
    ({"gossip": {"encrypt_keys": ["YWJj"]}}, "gossip.encrypt_keys[0]: must decode to 16, 24 or 32 bytes for AES"),
    ({"gossip": {"probe_interval": "0s"}}, 'gossip.probe_interval: must be greater than 0 (got "0s")'),
    ({"services": [{"port": 3000}]}, "services[0].name: is required"),
    ({"services": [{"name": "a", "port": "x"}]}, 'services[0].port: must be an integer (got "x")'),
    ({"services": [{"name": "a", "port": 70000}]}, "services[0].port: must be a port in [1, 65535] (got 70000)"),
    ({"services": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]},
     'services[1].name: duplicate service name, also services[0] (got "a")'),
    ({"services": [{"name": "a", "port": 1, "check": {"http": "/h", "tcp": True}}]},
     'services[0].check: needs exactly one of http, tcp, grpc or ttl (got ["http", "tcp"])'),
    ({"services": [{"name": "a", "port": 1, "check": {}}]},
     "services[0].check: needs exactly one of http, tcp, grpc or ttl"),
    ({"services": [{"name": "a", "port": 1, "check": {"grpc": "pkg.Service", "ttl": "15s"}}]},
     'services[0].check: needs exactly one of http, tcp, grpc or ttl (got ["grpc", "ttl"])'),
    ({"services": [{"name": "a", "port": 1, "check": {"grpc": "pkg/Service"}}]},
     'services[0].check.grpc: must be a gRPC service name like pkg.Service, or "" for the whole server '
     '(got "pkg/Service")'),
    ({"services": [{"name": "a", "port": 1, "check": {"grpc": 5}}]}, "services[0].check.grpc: must be"),
    ({"services": [{"name": "a", "port": 1, "check": {"http": "health"}}]},
     "services[0].check.http: must be a path like /health or an http:// URL"),
    ({"services": [{"name": "a", "port": 1, "check": {"tcp": True, "interval": "1s", "timeout": "2s"}}]},
     'services[0].check.timeout: must not be longer than interval (1s) (got "2s")'),
    ({"services": [{"name": "a", "port": 1, "check": {"ttl": "10s", "success_before_healthy": 0}}]},
     "services[0].check.success_before_healthy: must be at least 1 (got 0)"),
    ({"services": [{"name": "a", "port": 1, "messages_path": "messages"}]},
     "services[0].messages_path: must be a path starting with '/'"),
    ({"upstreams": [{"service": "a", "local_port": 9000}, {"service": "b", "local_port": 9000}]},
     "upstreams[1].local_port: local port already used, also upstreams[0] (got 9000)"),
    ({"upstreams": [{"service": "a", "local_port": 9000, "protocol": "udp"}]},
     'upstreams[0].protocol: must be one of http, tcp (got "udp")'),
    ({"policies": {"*": {"retries": {"budget": {"ratio": 1.5}}}}},
     "policies.*.retries.budget.ratio: must be in [0, 1] (got 1.5)"),
    ({"policies": {"*": {"retries": {"retry_on": ["sometimes"]}}}}, "policies.*.retries.retry_on: entries must be"),
    ({"policies": {"*": {"retries": {"backoff": {"base": "1s", "max": "100ms"}}}}},
     'policies.*.retries.backoff.base: must not be longer than max (100ms) (got "1s")'),
    ({"policies": {"*": {"retries": {"per_try_timeout": "0s"}}}},
     'policies.*.retries.per_try_timeout: must be greater than 0 (got "0s")'),
    ({"policies": {"pay": {"retries": {"per_try_timeout": "soon"}}}},
     'policies.pay.retries.per_try_timeout: must be a duration like 250ms'),
    ({"policies": {"*": {"load_balancer": "random"}}},
     'policies.*.load_balancer: must be one of round_robin, least_request, ewma (got "random")'),
    ({"policies": {"Not A Service": {}}}, 'policies.Not A Service: the key must be "*" or a service name'),
    ({"policies": {"*": {"outlier_detection": {"max_ejection_percent": 101}}}},
     "policies.*.outlier_detection.max_ejection_percent: must be in [0, 100] (got 101)"),
    ({"authorization": {"default": "maybe"}}, 'authorization.default: must be one of allow, deny (got "maybe")'),
    ({"authorization": {"rules": [{"to": "a", "methods": ["FETCH"]}]}},
     "authorization.rules[0].methods: unknown HTTP method 'FETCH'"),
    ({"telemetry": {"tracing": {"exporter": "otlp"}}},
     "telemetry.tracing.endpoint: is required when exporter is otlp (got null)"),
    ({"telemetry": {"tracing": {"sample_ratio": 2}}}, "telemetry.tracing.sample_ratio: must be in [0, 1] (got 2)"),
    ({"tls": {"ca": "/nonexistent/ca.pem"}},
     'tls.ca: file does not exist or cannot be read (got "/nonexistent/ca.pem")'),
    ({"admin": {"token_file": "/nonexistent/token"}}, "admin.token_file: file does not exist or cannot be read"),
    ({"admin": {"listen": "127.0.0.1:7000"}, "api": {"listen": "127.0.0.1:7000"}},
     'api.listen: the same address as admin.listen (got "127.0.0.1:7000")'),
    ({"logging": {"level": "loud"}}, 'logging.level: must be one of debug, info, warning, error (got "loud")'),
    ({"node": None}, "node: must be a mapping, not empty (got null)"),
    ({"subscriptions": [{"topic": "t", "path": "/x", "bulk": {"enabled": True, "max_messages": 0}}]},
     "subscriptions[0].bulk.max_messages: must be in [1, 1000] (got 0)"),
    ({"subscriptions": [{"topic": "t", "path": "/x", "bulk": {"enabled": "x"}}]},
     'subscriptions[0].bulk.enabled: must be true or false (got "x")'),
])
def test_each_rule_has_its_message(raw: dict[str, Any], expected: str) -> None:
    problems = problems_of(raw)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of({
        "node": {"name": "x", "clustr": "a"},
        "dns": {"ttl": "soon"},
        "services": [{"name": "a", "port": 0}, {"name": "a", "port": 1}],
        "gossip": {"profile": "lab"},
    })
    assert sorted(p.split(":")[0] for p in problems) == sorted([
        "node.clustr", "dns.ttl", "gossip.profile", "services[0].port", "services[1].name"])


def test_a_valid_config_builds_with_documented_defaults() -> None:
    config = config_from_raw({"node": {"name": "node-a"}, "services": [{"name": "pay", "port": 3000}]})
    assert config.admin.listen == HostPort("127.0.0.1", 9901)
    assert config.api.listen == HostPort("127.0.0.1", 3500)
    assert config.outbound.listen == HostPort("127.0.0.1", 15001)
    assert config.inbound.listen == HostPort("0.0.0.0", 15006)
    assert config.dns.listen == HostPort("127.0.0.1", 8600)
    assert config.gossip.listen == HostPort("0.0.0.0", 7946)
    assert config.node.effective_data_dir == "data/node-a"
    assert config.tls is None
    assert config.services[0].messages_path == "/messages"
    tuning = config.gossip.tuning()
    assert (tuning.probe_interval, tuning.probe_timeout, tuning.indirect_checks, tuning.suspicion_mult,
            tuning.suspicion_max_timeout_mult, tuning.retransmit_mult, tuning.gossip_interval,
            tuning.gossip_nodes, tuning.push_pull_interval, tuning.awareness_max_multiplier) == (
        1, 0.5, 3, 4, 6, 4, 0.2, 3, 30, 8)


def test_spec_example_is_valid(tmp_path: Path) -> None:
    for name in ("ca.pem", "node.pem", "node-key.pem"):
        (tmp_path / name).write_text("placeholder")
    raw = {
        "node": {"name": "node-a", "cluster": "prod", "data_dir": "data/node-a"},
        "admin": {"listen": "127.0.0.1:9901", "token_file": None},
        "inbound": {"listen": "0.0.0.0:15006", "advertise": None},
        "dns": {"listen": "127.0.0.1:8600", "domain": "mesh", "ttl": "5s", "upstreams": []},
        "gossip": {"listen": "0.0.0.0:7946", "advertise": None, "join": [], "encrypt_keys": [], "profile": "lan"},
        "tls": {"trust_domain": "mesh.local", "ca": str(tmp_path / "ca.pem"), "cert": str(tmp_path / "node.pem"),
                "key": str(tmp_path / "node-key.pem")},
        "services": [{"name": "payment-service", "version": "1.0.0", "port": 3000, "tags": ["financial", "payments"],
                      "capabilities": ["stripe", "paypal"], "messages_path": "/messages",
                      "check": {"http": "/health", "interval": "5s", "timeout": "1s", "deregister_after": "1m"}}],
        "upstreams": [{"service": "inventory", "local_port": 9191, "protocol": "http"}],
        "policies": {"*": {
            "timeout": "15s",
            "retries": {"attempts": 2, "per_try_timeout": None, "retry_on": ["connect-failure", "reset", 503],
                        "backoff": {"base": "25ms", "max": "250ms"}, "budget": {"ratio": 0.2, "min_per_second": 10}},
            "circuit_breaker": {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024,
                                "max_retries": 3},
            "outlier_detection": {"consecutive_failures": 5, "interval": "10s", "base_ejection_time": "30s",
                                  "max_ejection_percent": 10},
            "load_balancer": "ewma"}},
        "authorization": {"default": "allow", "rules": [
            {"to": "payment-service", "from": ["checkout"], "methods": ["POST"], "paths": ["/pay*"]}]},
        "subscriptions": [{"topic": "orders", "path": "/events/orders"}],
        "telemetry": {"retention": "15m", "max_samples": 100000,
                      "tracing": {"exporter": "none", "endpoint": None, "sample_ratio": 1.0}},
    }
    config = config_from_raw(raw)
    assert config.authorization.rules[0].from_ == ["checkout"]
    assert config.policy_for("anything").retries.retry_on == ["connect-failure", "reset", "503"]
    assert config.policy_for("anything").retries.per_try_timeout is None
    assert config.services[0].check is not None and config.services[0].check.deregister_after == 60


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("5s", 5), ("1m", 60), ("24h", 86400), ("1h30m", 5400), (7, 7), (0.5, 0.5), ("2.5", 2.5)])
def test_durations(text: Any, seconds: float) -> None:
    assert Duration.from_text(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5x", "", "ms", "-1s", "1 s", "s5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        Duration.from_text(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "250ms"), (5, "5s"), (60, "1m"), (86400, "24h"), (90, "90s")])
def test_duration_to_text(seconds: float, text: str) -> None:
    assert Duration(seconds).to_text() == text


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:80", HostPort("127.0.0.1", 80)), ("[::1]:53", HostPort("::1", 53)),
    ("example.com:1", HostPort("example.com", 1)), ("0.0.0.0:0", HostPort("0.0.0.0", 0))])
def test_host_port(text: str, expected: HostPort) -> None:
    assert HostPort.from_text(text) == expected
    assert HostPort.from_text(expected.to_text()) == expected


def test_named_policy_overrides_only_its_keys() -> None:
    config = config_from_raw({"policies": {"*": {"timeout": "3s", "retries": {"attempts": 4}},
                                           "pay": {"retries": {"per_try_timeout": "1s"}}}})
    pay = config.policy_for("pay")
    assert pay.timeout == 3 and pay.retries.attempts == 4 and pay.retries.per_try_timeout == 1
    assert config.policy_for("other").retries.per_try_timeout is None


def test_per_try_timeout_is_unset_by_default_and_null_unsets_it() -> None:
    """SPEC: ``per_try_timeout: null``, a try may use the whole timeout. A named policy can unset the one "*" sets,
    and a per-try timeout longer than a named policy's shorter timeout is accepted (the timeout then bounds)."""
    assert config_from_raw({}).policy_for("any").retries.per_try_timeout is None
    config = config_from_raw({"policies": {"*": {"retries": {"per_try_timeout": "2s"}},
                                           "slow": {"timeout": "30s", "retries": {"per_try_timeout": None}},
                                           "fast": {"timeout": "1s"}}})
    assert config.policy_for("other").retries.per_try_timeout == 2
    assert config.policy_for("slow").retries.per_try_timeout is None
    assert config.policy_for("fast").retries.per_try_timeout == 2 and config.policy_for("fast").timeout == 1
    assert config_to_raw(config_from_raw({}))["policies"]["*"]["retries"]["per_try_timeout"] is None


def test_env_interpolation() -> None:
    problems: list[str] = []
    env = {"PORT": "3000", "NAME": "pay"}
    data = interpolate({"a": "${PORT}", "b": "x-${NAME}-y", "c": "${MISSING:-fallback}", "d": "$${PORT}",
                        "e": ["${NAME}"]}, env, problems)
    assert data == {"a": 3000, "b": "x-pay-y", "c": "fallback", "d": "${PORT}", "e": ["pay"]}
    assert problems == []
    config = config_from_raw({"services": [{"name": "${NAME}", "port": "${PORT}"}]}, env)
    assert config.services[0].port == 3000 and config.services[0].name == "pay"


def test_missing_env_var_names_the_key() -> None:
    problems = problems_of({"node": {"cluster": "${CLUSTER}"}})
    assert problems[0] == 'node.cluster: environment variable CLUSTER is not set (got "${CLUSTER}")'


def test_files_merge_in_order(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    prod = tmp_path / "prod.yaml"
    base.write_text("node: {name: a, cluster: dev}\ndns: {ttl: 5s}\ngossip: {join: [x:1, y:2]}\n")
    prod.write_text("node: {cluster: prod}\ngossip: {join: [z:3]}\n")
    config = load([str(base), str(prod)], env={})
    assert (config.node.name, config.node.cluster, config.dns.ttl) == ("a", "prod", 5)
    assert [j.host for j in config.gossip.join] == ["z"]


def test_yaml_syntax_error_names_the_place(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("node:\n  name: a\n  cluster: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load([str(path)], env={})
    assert caught.value.problems[0].startswith(f"{path}:")
    assert "invalid YAML" in caught.value.problems[0]


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("node: {name: a}\nnode: {name: b}\n")
    with pytest.raises(ConfigError) as caught:
        load([str(path)], env={})
    assert "key 'node' is given twice" in caught.value.problems[0]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as caught:
        load([str(path)], env={})
    assert "the top level must be a mapping" in caught.value.problems[0]


def test_secrets_are_redacted() -> None:
    config = config_from_raw({"gossip": {"encrypt_keys": ["MDEyMzQ1Njc4OWFiY2RlZg=="]}})
    raw = config_to_raw(config)
    assert raw["gossip"]["encrypt_keys"] == ["<redacted>"]
    assert "MDEyMzQ1Njc4OWFiY2RlZg" not in str(raw)
    assert config_to_raw(config, redact=False)["gossip"]["encrypt_keys"] == ["MDEyMzQ1Njc4OWFiY2RlZg=="]


def test_topic_scopes_name_the_key_at_fault() -> None:
    from sidecar.config.load import config_from_raw
    from sidecar.errors import ConfigError

    config = config_from_raw({"messaging": {"default": "deny", "topics": {
        "orders": {"publishers": ["checkout"], "subscribers": ["payments", "audit"]}, "news": {}}}})
    assert config.messaging.default == "deny"
    assert config.messaging.topics["orders"].subscribers == ["payments", "audit"]
    assert config.messaging.topics["news"].publishers == ["*"]
    try:
        config_from_raw({"messaging": {"default": "maybe", "max_dead_letter_bytes": 0, "topics": {
            "bad topic": {}, "orders": {"publishers": ["Not_A_Service"], "readers": []}}}})
    except ConfigError as e:
        text = "\n".join(e.problems)
    else:
        raise AssertionError("invalid topic scopes were accepted")
    assert 'messaging.default: must be one of allow, deny (got "maybe")' in text
    assert "messaging.max_dead_letter_bytes: must be at least 1 (got 0)" in text
    assert "messaging.topics.bad topic: the key must be a topic name" in text
    assert "messaging.topics.orders.publishers: entries must be service names" in text
    assert "messaging.topics.orders.readers:" in text
