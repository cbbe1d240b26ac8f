"""A composite from YAML (a file, a built-in under ``configs/``, or a dict of the same shape): the format
read with line numbers, so every mistake is a ConfigError naming the source, the line and the key with a
suggestion; ``extends``; the built-ins; :func:`load_composite`; the JSON Schema editors check against.
composite.py holds what a composite is once read."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..limits import BoundedLoader, load_yaml, read_text
from ..registry import Registry, canonical_name, suggest
from .composite import (
    _TYPE_ALIASES,
    DEFAULT_CANONIZERS,
    DEFAULT_PARAMS,
    ENTRY_KEYS,
    LAYER_TYPES,
    MATCH_KEYS,
    OPTION_PARAMS,
    TOP_KEYS,
    Composite,
    Entry,
    _check_params,
    _kind_of_type,
    _line,
    _Mapping,
    _unknown_key,
)
from .passes.canonizers import CANONIZERS
from .rules import RULES


class _LineLoader(BoundedLoader):
    """yaml.SafeLoader (bounded: limits.py) that records line numbers and rejects duplicate keys."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    data = _Mapping()
    data.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in data:
            raise ConfigError(f"key '{key}' appears twice", source=getattr(loader, "source", None), line=line, key=str(key))
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = line
    return data


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    return load_yaml(read_text(path, "composite file"), str(path), _LineLoader)


def _as_tuple(value: Any, key: str, source: str, line: int | None) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ConfigError(f"match '{key}' must be a string or a list of strings, got {value!r}", source=source, line=line, key=key)
    return tuple(items)


def _parse_entry(raw: Any, index: int, source: str, inherited: bool) -> Entry:
    line = _line(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"rules[{index}] must be a mapping with 'match' and 'rule'", source=source, line=line)
    if "rule" not in raw:
        raise ConfigError(f"rules[{index}] has no 'rule'", source=source, line=line, key="rule", hint="add e.g. `rule: epsilon`")
    rule_name = raw["rule"]
    if not isinstance(rule_name, str):
        raise ConfigError(f"rules[{index}].rule must be a rule name", source=source, line=_line(raw, "rule"), key="rule")
    try:
        rule = RULES.resolve(rule_name)
    except ConfigError as exc:
        raise ConfigError(exc.message, source=source, line=_line(raw, "rule"), key="rule", hint=exc.hint) from exc
    cls = RULES.get(rule)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ENTRY_KEYS:
            continue
        if key not in cls.params:
            allowed = ENTRY_KEYS + tuple(cls.params)
            raise _unknown_key(key, allowed, f"rules[{index}] (rule '{rule}')", source, _line(raw, key))
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"rules[{index}]: '{key}' must be a finite number, got {item!r}", source=source, line=_line(raw, key), key=str(key))
        values[key] = value
    match = raw.get("match", {})
    if match is None:
        match = {}
    if not isinstance(match, dict):
        raise ConfigError(f"rules[{index}].match must be a mapping", source=source, line=_line(raw, "match"), key="match")
    types = names = first = None
    for key, value in match.items():
        key_line = _line(match, key)
        if key not in MATCH_KEYS:
            raise _unknown_key(key, MATCH_KEYS, f"rules[{index}].match", source, key_line)
        if key == "type":
            types = tuple(_layer_type(t, source, key_line) for t in _as_tuple(value, key, source, key_line))
        elif key == "name":
            names = _as_tuple(value, key, source, key_line)
        else:
            if not isinstance(value, bool):
                raise ConfigError(f"match 'first' must be true or false, got {value!r}", source=source, line=key_line, key="first")
            first = value
    if types and not any(_kind_of_type(t) in cls.kinds for t in types):
        servers = [name for name in RULES.names() if any(_kind_of_type(t) in RULES.get(name).kinds for t in types)]
        raise ConfigError(
            f"rules[{index}]: rule '{rule}' does not apply to type {list(types)} (it serves {', '.join(cls.kinds)})",
            source=source,
            line=_line(raw, "rule"),
            key="rule",
            hint=f"rules for {'/'.join(types)}: {', '.join(servers)}",
        )
    entry = Entry(rule=rule, values=values, types=types, names=names, first=first, source=source, line=line, inherited=inherited)
    try:  # validate the rule's own values now, so errors point here and not at run time
        cls(**{**{k: DEFAULT_PARAMS[k] for k in cls.inherits if k in DEFAULT_PARAMS}, **values})
    except ConfigError as exc:
        key_line = _line(raw, exc.key) if exc.key else line
        raise ConfigError(exc.message, source=source, line=key_line, key=exc.key, hint=exc.hint) from exc
    return entry


def _layer_type(value: str, source: str, line: int | None) -> str:
    key = canonical_name(value)
    key = _TYPE_ALIASES.get(key, key)
    if key not in LAYER_TYPES:
        raise ConfigError(
            f"unknown layer type '{value}' (known: {', '.join(LAYER_TYPES)})",
            source=source,
            line=line,
            key="type",
            hint=suggest(key, list(LAYER_TYPES) + sorted(_TYPE_ALIASES)),
        )
    return key


def _parse(raw: Any, source: str, base_dir: Path | None, seen: tuple[str, ...], inherited: bool = False) -> Composite:
    if not isinstance(raw, dict):
        raise ConfigError("a composite must be a mapping with a 'rules' list", source=source, line=_line(raw))
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown_key(key, TOP_KEYS, "the composite", source, _line(raw, key))
    base: Composite | None = None
    if "extends" in raw:
        parent = raw["extends"]
        if not isinstance(parent, str):
            raise ConfigError("'extends' must name a built-in composite or a file", source=source, line=_line(raw, "extends"), key="extends")
        try:
            base = _load(parent, base_dir, seen, inherited=True)
        except ConfigError as exc:
            if exc.source:
                raise
            raise ConfigError(exc.message, source=source, line=_line(raw, "extends"), key="extends", hint=exc.hint) from exc
    rules_raw = raw.get("rules", [] if base else None)
    if rules_raw is None:
        raise ConfigError("the composite has no 'rules' list", source=source, line=_line(raw), key="rules",
                          hint="add `rules:` with entries like `- {match: {type: conv}, rule: zplus}`, or `extends: epsilon_plus`")
    if not isinstance(rules_raw, list):
        raise ConfigError("'rules' must be a list of entries", source=source, line=_line(raw, "rules"), key="rules")
    entries = [_parse_entry(item, i, source, inherited) for i, item in enumerate(rules_raw)]
    params = dict(base.params) if base else dict(DEFAULT_PARAMS)
    explicit = set(base.explicit) if base else set()
    if "params" in raw:
        params.update(_check_params(raw["params"], source, raw))
        explicit |= set(raw["params"])
    canonizers = base.canonizers if base else DEFAULT_CANONIZERS
    if "canonizers" in raw:
        value = raw["canonizers"] or []
        if not isinstance(value, list):
            raise ConfigError("'canonizers' must be a list", source=source, line=_line(raw, "canonizers"), key="canonizers")
        resolved = []
        for item in value:
            try:
                resolved.append(CANONIZERS.resolve(str(item)))
            except ConfigError as exc:
                raise ConfigError(exc.message, source=source, line=_line(raw, "canonizers"), key="canonizers", hint=exc.hint) from exc
        canonizers = tuple(resolved)
    name = raw.get("name") or (base.name + "+" if base else Path(source).stem)
    if base:
        entries = entries + base.entries
    return Composite(
        name=str(name),
        entries=entries,
        params=params,
        canonizers=canonizers,
        description=str(raw.get("description", base.description if base else "")),
        source=source,
        explicit=frozenset(explicit),
    )


def builtin_dir() -> Path:
    """Where the built-in composite YAML files live (package data, or the repo's configs/)."""
    package = Path(__file__).resolve().parent.parent  # lrpcli/
    for candidate in (package / "configs", package.parent / "configs"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise ConfigError("the built-in composites are missing from this installation", hint="reinstall lrpcli")


def builtin_names() -> list[str]:
    return sorted(path.stem for path in builtin_dir().glob("*.yaml"))


BUILTINS: Registry[Path] = Registry("composite")


def _builtins() -> Registry[Path]:
    if not len(BUILTINS):
        for path in sorted(builtin_dir().glob("*.yaml")):
            BUILTINS.register(path.stem, path, aliases=(path.stem.replace("lrp_0", "lrp0"),) if "lrp_0" in path.stem else ())
    return BUILTINS


def _is_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec or Path(spec).is_file()


def _load(spec: Any, base_dir: Path | None, seen: tuple[str, ...], inherited: bool = False) -> Composite:
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, dict):
        return _parse(spec, "<dict>", base_dir, seen, inherited)
    if isinstance(spec, Path) or (isinstance(spec, str) and _is_path(spec)):
        path = Path(spec)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(f"composite file not found: {path}", hint="give a path to a .yaml file or a built-in name (`lrp composites`)")
        key = str(path.resolve())
        if key in seen:
            raise ConfigError(f"'extends' loops back to {path}", source=str(path), key="extends")
        return _parse(_read_yaml(path), str(path), path.parent, seen + (key,), inherited)
    if isinstance(spec, str):
        registry = _builtins()
        name = registry.resolve(spec)
        path = registry.get(name)
        if f"builtin:{name}" in seen:
            raise ConfigError(f"'extends' loops back to built-in '{name}'", key="extends")
        return _parse(_read_yaml(path), f"<built-in {name}>", path.parent, seen + (f"builtin:{name}",), inherited)
    raise ConfigError(f"a composite must be a built-in name, a YAML path or a dict, not {type(spec).__name__}")


def load_composite(spec: Any, **params: Any) -> Composite:
    """Load a composite from a built-in name, a YAML path, a dict or a Composite.

    ``params`` override the composite-wide params (epsilon, gamma, low, high, stabilizer).
    """
    composite = _load(spec, None, ())
    return composite.with_params(**params) if params else composite


def json_schema() -> dict[str, Any]:
    """A JSON Schema for composite files, built from the registries (so it never goes stale)."""
    number = {"type": "number", "minimum": 0}
    bound = {"oneOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}, "minItems": 1}]}
    one_or_many = lambda item: {"oneOf": [item, {"type": "array", "items": item, "minItems": 1}]}  # noqa: E731

    def choice(spec: Any) -> dict[str, Any]:  # a named option: one name, or a list of names (zero_params: [bias])
        names = {"enum": list(spec.choices)}
        return {"oneOf": [names, {"type": "array", "items": names, "uniqueItems": True}]} if spec.many else names

    param_schema = {"epsilon": number, "gamma": number, "stabilizer": number, "low": bound, "high": bound}
    param_schema.update({key: {**choice(spec), "description": spec.help} for key, spec in OPTION_PARAMS.items()})
    match = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "type": one_or_many({"enum": list(LAYER_TYPES)}),
            "name": one_or_many({"type": "string", "minLength": 1}),
            "first": {"type": "boolean"},
        },
    }
    entries = []
    for name in RULES.names():
        cls = RULES.get(name)
        properties: dict[str, Any] = {"match": match, "rule": {"const": name}}
        for key, spec in cls.params.items():
            if spec.choices is not None:
                properties[key] = choice(spec)
            elif key in ("low", "high"):
                properties[key] = dict(bound)
            else:
                properties[key] = {"type": "number", "minimum": spec.minimum} if spec.minimum is not None else {"type": "number"}
            properties[key]["description"] = spec.help
        entries.append({"type": "object", "required": ["rule"], "additionalProperties": False, "properties": properties, "description": cls.formula})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "lrpcli composite",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "extends": {"type": "string", "description": "a built-in composite or a YAML file"},
            "canonizers": {"type": "array", "items": {"enum": CANONIZERS.names()}},
            "params": {"type": "object", "additionalProperties": False, "properties": param_schema},
            "rules": {"type": "array", "items": {"oneOf": entries}},
        },
    }
