"""Authorization as a pure function of (caller, target, method, path) and the rules.

Order of evaluation, first match wins:
1. ``action: deny`` rules whose ``to``, ``from``, ``methods`` and ``paths`` all match → refused;
2. ``action: allow`` rules that match → allowed;
3. if any allow rule names the target (``to`` equal or ``*``), the caller matched none of them → refused;
4. otherwise ``authorization.default``.
Globs (``*``, ``?``, ``[..]``) work in every field; methods compare case-insensitively, and a HEAD request
matches rules written for GET (it is a GET without the body: ``deny GET /secret`` must also refuse ``HEAD /secret``).
``path`` is the canonical path (:mod:`sidecar.proxy.paths`), which is also what the app receives.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from sidecar.config.model import AuthorizationConfig, AuthorizationRule


@dataclass(frozen=True, slots=True)
class AccessDecision:
    allowed: bool
    rule: str | None  # "authorization.rules[2]" or "authorization.default"
    reason: str


def _match(patterns: list[str], value: str) -> bool:
    return any(p == "*" or fnmatch.fnmatchcase(value, p) for p in patterns)


def _method_matches(patterns: list[str], method: str) -> bool:
    upper = [m.upper() for m in patterns]
    method = method.upper()
    return _match(upper, method) or (method == "HEAD" and _match(upper, "GET"))


def _rule_matches(rule: AuthorizationRule, caller: str, target: str, method: str, path: str) -> bool:
    return (_match([rule.to], target) and _match(rule.from_, caller)
            and _method_matches(rule.methods, method) and _match(rule.paths, path))


class Authorizer:
    def __init__(self, config: AuthorizationConfig) -> None:
        self.config = config
        numbered = list(enumerate(config.rules))
        self._deny = [(i, r) for i, r in numbered if r.action == "deny"]
        self._allow = [(i, r) for i, r in numbered if r.action == "allow"]

    def decide(self, caller: str, target: str, method: str, path: str) -> AccessDecision:
        """``caller`` is the calling service's name from its SPIFFE ID."""
        for i, rule in self._deny:
            if _rule_matches(rule, caller, target, method, path):
                return AccessDecision(False, f"authorization.rules[{i}]",
                                      f"{caller} → {target} {method} {path} matches deny rule authorization.rules[{i}]")
        for i, rule in self._allow:
            if _rule_matches(rule, caller, target, method, path):
                return AccessDecision(True, f"authorization.rules[{i}]", f"allowed by authorization.rules[{i}]")
        naming = [i for i, rule in self._allow if _match([rule.to], target)]
        if naming:
            listed = ", ".join(f"authorization.rules[{i}]" for i in naming)
            return AccessDecision(False, f"authorization.rules[{naming[0]}]", f"{caller} → {target} {method} {path} "
                                  f"matches none of the rules for {target} ({listed})")
        allowed = self.config.default == "allow"
        return AccessDecision(allowed, "authorization.default",
                              f"no rule names {target}; authorization.default is {self.config.default}")


class Decisions:
    """:class:`Authorizer` with a bounded cache of its answers (a pure function of its four inputs)."""

    __slots__ = ("_cache", "_max", "authorizer")

    def __init__(self, authorizer: Authorizer, max_entries: int = 8192) -> None:
        self.authorizer = authorizer
        self._cache: dict[tuple[str, str, str, str], AccessDecision] = {}
        self._max = max_entries

    def decide(self, caller: str, service: str, method: str, path: str) -> AccessDecision:
        key = (caller, service, method, path)
        found = self._cache.get(key)
        if found is None:
            found = self.authorizer.decide(caller, service, method, path)
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = found
        return found

