from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.load import build_section
from sidecar.config.model import AuthorizationConfig
from sidecar.mesh.authorization import Authorizer

RULES: list[dict[str, Any]] = [
    {"to": "payment-service", "from": ["checkout"], "methods": ["POST"], "paths": ["/pay*"]},
    {"to": "payment-service", "from": ["admin-*"], "methods": ["GET"]},
    {"to": "*", "from": ["intruder"], "action": "deny"},
    {"to": "inventory", "from": ["*"], "methods": ["GET", "HEAD"]},
]


@pytest.mark.parametrize(("default", "caller", "target", "method", "path", "allowed", "rule"), [
    ("allow", "checkout", "payment-service", "POST", "/pay", True, "authorization.rules[0]"),
    ("allow", "checkout", "payment-service", "post", "/payments/1", True, "authorization.rules[0]"),
    ("allow", "checkout", "payment-service", "GET", "/pay", False, "authorization.rules[0]"),
    ("allow", "checkout", "payment-service", "POST", "/refund", False, "authorization.rules[0]"),
    ("allow", "admin-ui", "payment-service", "GET", "/anything", True, "authorization.rules[1]"),
    ("allow", "orders", "payment-service", "POST", "/pay", False, "authorization.rules[0]"),
    ("allow", "intruder", "inventory", "GET", "/", False, "authorization.rules[2]"),
    ("allow", "orders", "inventory", "GET", "/items", True, "authorization.rules[3]"),
    ("allow", "orders", "inventory", "DELETE", "/items", False, "authorization.rules[3]"),
    ("allow", "orders", "shipping", "POST", "/ship", True, "authorization.default"),
    ("deny", "orders", "shipping", "POST", "/ship", False, "authorization.default"),
    ("deny", "checkout", "payment-service", "POST", "/pay", True, "authorization.rules[0]"),
    # HEAD is a GET without the body: rules written for GET cover it
    ("allow", "admin-ui", "payment-service", "HEAD", "/anything", True, "authorization.rules[1]"),
    ("allow", "checkout", "payment-service", "HEAD", "/pay", False, "authorization.rules[0]"),
])
def test_decisions(default: str, caller: str, target: str, method: str, path: str, allowed: bool, rule: str) -> None:
    authorizer = Authorizer(build_section(AuthorizationConfig, {"default": default, "rules": RULES}))
    decision = authorizer.decide(caller, target, method, path)
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason
    assert decision.reason


def test_a_get_deny_rule_refuses_head() -> None:
    authorizer = Authorizer(build_section(AuthorizationConfig, {"rules": [
        {"to": "app", "methods": ["GET"], "paths": ["/secret"], "action": "deny"}]}))
    assert not authorizer.decide("anyone", "app", "HEAD", "/secret").allowed
    assert not authorizer.decide("anyone", "app", "head", "/secret").allowed
    assert authorizer.decide("anyone", "app", "POST", "/secret").allowed
