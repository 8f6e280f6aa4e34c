"""YAML files → a validated :class:`Config`, and back to plain data for ``/config``.

``load(paths)`` reads each file, merges them in order (later files override keys of earlier ones,
lists are replaced whole), substitutes ``${VAR}`` and ``${VAR:-default}``, builds the typed objects and
checks every rule. Every problem found is reported at once, each as ``dotted.path: rule (got VALUE)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import yaml

from sidecar.config.crosscheck import SECTION_CHECKS, check_own_listeners, check_raw, show
from sidecar.config.model import (
    Config,
)
from sidecar.config.redact import REDACTED as REDACTED  # re-exported: sidecar.config.diff
from sidecar.config.redact import redact as redacted_value
from sidecar.config.values import Duration, HostPort
from sidecar.errors import ConfigError

# the value part of a problem, replaced for secret fields: a secret is never echoed, the path and rule say enough
_GOT = re.compile(r"\(got .*\)\s*$", re.DOTALL)
T = TypeVar("T")

# ------------------------------------------------------------------------------------------- reading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            repeated = key in seen
        except TypeError:  # a list or mapping as a key: PyYAML would fail later with a bare TypeError
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a scalar (got a {type(key).__name__})", key_node.start_mark) from None
        if repeated:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice in one mapping", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str) -> Any:
    """Parse one file; syntax errors become ConfigError naming the file, line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the file ({e.strerror})"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    return parse_yaml(text, path)


def parse_yaml(text: str, path: str) -> Any:
    """Parse YAML text as one config file named ``path`` in messages (a file, or a request body)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except RecursionError:  # PyYAML's composer and constructor recurse once per nesting level
        raise ConfigError([f"{path}: invalid YAML: nested too deeply"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys (got {show(data)})"])
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of ``override`` win; mappings merge recursively; anything else (lists too) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, env: Mapping[str, str] | None, problems: list[str], path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``.

    A value that is a single reference is parsed again as a YAML scalar, so ``port: ${PORT}`` is a number.
    ``env`` None: a document that is not expanded (a request body); each reference in it is a problem.
    """
    if isinstance(data, dict):
        return {k: interpolate(v, env, problems, _join(path, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, problems, f"{path}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "$" not in data:
        return data

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if env is None:
            problems.append(f"{path}: ${{{name}}} is not expanded here: a document sent to the sidecar is read"
                            f" without its environment; send it expanded (got {show(data)})")
            return ""
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set (got {show(data)})")
        return ""

    result = _ENV_REF.sub(substitute, data)
    if _ENV_REF.fullmatch(data) and data != "$$":
        try:
            scalar = yaml.safe_load(result)
        except yaml.YAMLError:
            return result
        if isinstance(scalar, str | int | float | bool) or scalar is None:
            return scalar
    return result


def escape(data: Any) -> Any:
    """``data`` with every ``$`` in its strings written ``$$``: an expanded document that reads the same once sent
    (``interpolate`` turns ``$$`` back into ``$`` and sees no reference)."""
    if isinstance(data, dict):
        return {k: escape(v) for k, v in data.items()}
    if isinstance(data, list):
        return [escape(v) for v in data]
    return data.replace("$", "$$") if isinstance(data, str) else data


def load(paths: Sequence[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, merge, interpolate and validate; raise ConfigError listing every problem."""
    raw: dict[str, Any] = {}
    for path in paths:
        raw = deep_merge(raw, read_yaml(path))
    return config_from_raw(raw, os.environ if env is None else env)


def load_sent(text: str, source: str) -> Config:
    """:func:`load` for one document sent to the process (``POST /reload?dry_run=true`` with a body): never expanded
    against the process's environment, which holds what the configuration does not name (cloud credentials,
    tokens) and which whoever may post a body cannot read otherwise; ``$$`` is still a ``$``, and a ``${VAR}``
    is a problem saying to send the document expanded (``sidecar reload --dry-run FILE`` does, from its own
    environment)."""
    return config_from_raw(parse_yaml(text, source), sent=True)


# ------------------------------------------------------------------------------------------ building


class _Invalid:
    """Marks a value that had a problem; the problem itself is already in the list."""


_INVALID = _Invalid()


def config_from_raw(raw: Mapping[str, Any], env: Mapping[str, str] | None = None, *, sent: bool = False) -> Config:
    """``sent``: a document sent to the process, whose ``${VAR}`` references are refused (:func:`load_sent`)."""
    problems: list[str] = []
    data = interpolate(dict(raw), None if sent else (env or {}), problems)
    data = _merge_policy_defaults(data)
    config = _build(Config, data, "", problems)
    if isinstance(data, dict):
        check_raw(data, problems)
    if isinstance(config, Config):
        check_own_listeners(config, problems)
    if problems:
        raise ConfigError(problems)
    assert isinstance(config, Config)
    return config


def _merge_policy_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A named policy overrides only the keys it gives; the rest come from "*"."""
    policies = data.get("policies")
    if not isinstance(policies, dict):
        return data
    star = policies.get("*")
    default: dict[str, Any] = star if isinstance(star, dict) else {}
    merged = {"*": policies.get("*", {})}
    for name, policy in policies.items():
        if name != "*":
            merged[name] = deep_merge(default, policy) if isinstance(policy, dict) else policy
    return {**data, "policies": merged}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in names:
        return names[tp]
    if get_origin(tp) is list:
        return "a list"
    if get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _build(tp: Any, value: Any, path: str, problems: list[str], meta: Mapping[str, Any] | None = None) -> Any:
    meta = meta or {}
    if meta.get("secret") and value is not None:
        found: list[str] = []
        built = _build(tp, value, path, found, {k: v for k, v in meta.items() if k != "secret"})
        problems.extend(_GOT.sub(f"(got {REDACTED})", problem) for problem in found)
        return built
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _build(args[0], value, path, problems, meta)
    if value is None:
        problems.append(f"{path}: must be {_type_name(tp)}, not empty (got null)")
        return _INVALID
    if tp is HostPort or tp is Duration:
        return _build_scalar(tp, value, path, problems, meta)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: must be a list (got {show(value)})")
            return _INVALID
        (item_tp,) = get_args(tp)
        item_meta = {k: v for k, v in meta.items() if k != "check"}
        items = [_build(item_tp, v, f"{path}[{i}]", problems, item_meta) for i, v in enumerate(value)]
        if any(i is _INVALID for i in items):
            return _INVALID
        rule = meta["check"](items) if "check" in meta else None
        if rule:
            problems.append(f"{path}: {rule} (got {show(value)})")
            return _INVALID
        return items
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: must be a mapping (got {show(value)})")
            return _INVALID
        _, item_tp = get_args(tp)
        entries = {str(k): _build(item_tp, v, _join(path, str(k)), problems, meta) for k, v in value.items()}
        return _INVALID if any(v is _INVALID for v in entries.values()) else entries
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            problems.append(f"{path}: must be one of {', '.join(map(str, choices))} (got {show(value)})")
            return _INVALID
        return value
    return _build_scalar(tp, value, path, problems, meta)


def _build_scalar(tp: Any, value: Any, path: str, problems: list[str], meta: Mapping[str, Any]) -> Any:
    try:
        if tp is Duration:
            result: Any = Duration.from_text(value)
        elif tp is HostPort:
            result = HostPort.from_text(value, meta.get("default_port"))
        elif tp is bool:
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            result = value
        elif tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("must be an integer")
            result = value
        elif tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("must be a number")
            result = float(value)
        elif tp is str:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ValueError("must be a string")
            result = str(value)
        else:  # pragma: no cover - a field type the loader does not know is a bug in model.py
            raise TypeError(f"config field type {tp!r} is not supported")
    except ValueError as e:
        problems.append(f"{path}: {e} (got {show(value)})")
        return _INVALID
    check = meta.get("check")
    if check is not None:
        rule = check(result)
        if rule:
            problems.append(f"{path}: {rule} (got {show(value)})")
            return _INVALID
    if meta.get("file") and not (os.path.isfile(result) and os.access(result, os.R_OK)):
        problems.append(f"{path}: file does not exist or cannot be read (got {show(value)})")
        return _INVALID
    return result


def _build_dataclass(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{path or 'config'}: must be a mapping (got {show(value)})")
        return _INVALID
    hints = get_type_hints(tp)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(tp)}
    kwargs: dict[str, Any] = {}
    invalid = False
    for key, item in value.items():
        if key not in fields:
            import difflib  # only for a config with a mistake in it
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
            problems.append(f"{_join(path, str(key))}: unknown key{hint} (got {show(item)})")
            invalid = True
            continue
        f = fields[key]
        built = _build(hints[f.name], item, _join(path, str(key)), problems, f.metadata)
        if built is _INVALID:
            invalid = True
        else:
            kwargs[f.name] = built
    for key, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and key not in value:
            problems.append(f"{_join(path, key)}: is required")
            invalid = True
    if invalid:
        return _INVALID
    built = tp(**kwargs)
    hook = SECTION_CHECKS.get(tp)
    if hook is not None:
        found: list[str] = []
        hook(built, path, found)
        problems.extend(_hide_secrets(problem, built) for problem in found)
    return built


def _hide_secrets(problem: str, section: Any) -> str:
    """A cross-check's problem with the section's secret values (as given or as JSON shows them) replaced by
    their redacted form."""
    for f in dataclasses.fields(section):
        kind = f.metadata.get("secret")
        value = getattr(section, f.name)
        for item in (value if isinstance(value, list) else [value]) if kind else []:
            shown = redacted_value(item, kind)
            if isinstance(item, str) and item and shown != item:
                for form in {item, json.dumps(item)[1:-1]}:
                    problem = problem.replace(form, str(shown))
    return problem


# --------------------------------------------------------------------------------------------- dumping


def config_to_raw(value: Any, redact: bool = True) -> Any:
    """Plain data in the YAML's own shape, secrets shown as ``sidecar.config.redact`` says."""
    if isinstance(value, HostPort | Duration):
        return value.to_text()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if redact and f.metadata.get("secret") and item:
                out[f.metadata.get("key", f.name)] = redacted_value(item, f.metadata["secret"])
            else:
                out[f.metadata.get("key", f.name)] = config_to_raw(item, redact)
        return out
    if isinstance(value, list):
        return [config_to_raw(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: config_to_raw(v, redact) for k, v in value.items()}
    return value


def build_section(cls: type[T], raw: Any, path: str = "") -> T:
    """One section built and checked on its own (the app API registers services with it)."""
    problems: list[str] = []
    built = _build(cls, raw, path, problems)
    if problems or isinstance(built, _Invalid):
        raise ConfigError(problems or [f"{path or 'value'}: is invalid"])
    return cast(T, built)
