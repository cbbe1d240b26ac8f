"""Composites: which LRP rule each layer gets (reading one from YAML is composite_yaml.py's).

A composite is a list of entries, first match wins, read from YAML (a file or a
built-in under ``configs/``) or a dict of the same shape::

    name: epsilon_plus_flat
    canonizers: [fold_batchnorm]
    params: {epsilon: 1.0e-6, stabilizer: 1.0e-6}   # composite-wide defaults
    rules:
      - match: {first: true}          # the first conv/linear layer the input meets
        rule: flat
      - match: {type: conv}
        rule: zplus
      - match: {name: "classifier.*"} # glob on the layer path
        rule: epsilon
        epsilon: 0.25

``extends: NAME_OR_FILE`` inherits a composite: its rules come after ours, its
params and canonizers apply unless we set them. Every mistake is a ConfigError
naming the source, the line and the key, with a suggestion where one exists.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from . import ops
from ..errors import ConfigError
from .graph import Graph, Node
from ..registry import suggest
from .rules import RULES, Rule
from .rules.base import STABILIZER_MODE, ZERO_PARAMS_PARAM

TOP_KEYS = ("name", "description", "extends", "canonizers", "params", "rules")
ENTRY_KEYS = ("match", "rule")
MATCH_KEYS = ("type", "name", "first")
#: composite-wide options, passed to every rule that takes them (as zennit's composites pass zero_params);
#: unset, each rule keeps its own default
OPTION_PARAMS = {"stabilizer_mode": STABILIZER_MODE, "zero_params": ZERO_PARAMS_PARAM}
PARAM_KEYS = ("epsilon", "gamma", "low", "high", "stabilizer", *OPTION_PARAMS)
DEFAULT_PARAMS: dict[str, Any] = {"epsilon": 1e-6, "gamma": 0.25, "stabilizer": 1e-6, "low": 0.0, "high": 1.0}
DEFAULT_CANONIZERS = ("fold_batchnorm",)

#: layer types a ``match: {type: ...}`` may name, and the node kinds/conditions they stand for
LAYER_TYPES = (
    "activation", "add", "avgpool", "batchnorm", "conv", "conv1d", "conv2d", "conv3d", "conv_transpose", "gate",
    "layernorm", "linear", "product", "reduce", "relu", "scale", "softmax",
)
#: a product whose gate factor one of these made (squeeze-and-excitation, LSTM gates) is also of type `gate`
GATE_OPS = ("sigmoid", "hardsigmoid")
_TYPE_ALIASES = {
    "layer_norm": "layernorm",
    "groupnorm": "layernorm",
    "group_norm": "layernorm",
    "rmsnorm": "layernorm",
    "rms_norm": "layernorm",
    "matmul": "product",
    "bmm": "product",
    "se": "gate",
    "dense": "linear",
    "batchnorm1d": "batchnorm",
    "batchnorm2d": "batchnorm",
    "batchnorm3d": "batchnorm",
    "batch_norm": "batchnorm",
    "bn": "batchnorm",
    "convolution": "conv",
    "convtranspose1d": "conv_transpose",
    "convtranspose2d": "conv_transpose",
    "convtranspose3d": "conv_transpose",
    "sum": "add",
    "avg_pool": "avgpool",
    "adaptiveavgpool2d": "avgpool",
    "avgpool2d": "avgpool",
    "elementwise": "activation",
}


# --------------------------------------------------------------------------- line numbers of YAML mappings


def _line(mapping: Any, key: Any = None) -> int | None:
    if isinstance(mapping, _Mapping):
        if key is not None and key in mapping.lines:
            return mapping.lines[key]
        return mapping.line
    return None


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Entry:
    """One ``rules:`` entry: a matcher and the rule (with its explicit parameters)."""

    rule: str
    values: Mapping[str, Any]
    types: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None
    first: bool | None = None
    source: str = "<dict>"
    line: int | None = None
    inherited: bool = False

    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source

    def describe(self) -> str:
        parts = []
        if self.first is not None:
            parts.append(f"first: {str(self.first).lower()}")
        if self.types:
            parts.append("type: " + "|".join(self.types))
        if self.names:
            parts.append("name: " + "|".join(self.names))
        return "{" + ", ".join(parts) + "} -> " + self.rule

    def matches(self, node: Node, is_first: bool) -> bool:
        if self.first is not None and (node.kind not in ops.WEIGHTED_KINDS or is_first != self.first):
            return False
        if self.types is not None and not any(_type_matches(t, node) for t in self.types):
            return False
        if self.names is not None and not any(fnmatch.fnmatchcase(node.path, pattern) for pattern in self.names):
            return False
        return True


def _kind_of_type(layer_type: str) -> str:
    """The node kind a match type names (conv1d and conv_transpose are convs, gates are products, ReLUs
    and other activations element-wise)."""
    if layer_type in ("relu", "activation"):
        return "elementwise"
    return "conv" if layer_type.startswith("conv") else "product" if layer_type == "gate" else layer_type


def _takes_rule(node: Node) -> bool:
    """Whether a composite line can give ``node`` a rule: the rule kinds, and element-wise activations
    (which pass relevance on unchanged where no line gives them one)."""
    return node.kind in ops.RULE_KINDS or (node.kind == "elementwise" and ops.activation_of(node.target) is not None)


def _type_matches(layer_type: str, node: Node) -> bool:
    if layer_type == "conv":
        return node.kind == "conv"
    if layer_type == "conv_transpose":
        return node.kind == "conv" and node.is_transposed_conv
    if layer_type in ("conv1d", "conv2d", "conv3d"):
        return node.kind == "conv" and not node.is_transposed_conv and node.weight.ndim - 2 == int(layer_type[4])
    if layer_type == "gate":
        return node.kind == "product" and node.gate_op in GATE_OPS
    if layer_type in ("relu", "activation"):
        activation = ops.activation_of(node.target) if node.kind == "elementwise" else None
        return activation == "relu" if layer_type == "relu" else activation is not None
    return node.kind == layer_type


@dataclass(frozen=True)
class Assigned:
    """The rule a node gets, and why (the entry that matched, or None for the fallback)."""

    node: str
    rule: Rule
    entry: Entry | None

    @property
    def fallback(self) -> bool:
        return self.entry is None


@dataclass
class Composite:
    name: str
    entries: list[Entry]
    params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    canonizers: tuple[str, ...] = DEFAULT_CANONIZERS
    description: str = ""
    source: str = "<dict>"
    explicit: frozenset = frozenset()  # params some file or dict set (not defaults), e.g. to keep user's zbox bounds

    def with_params(self, **params: Any) -> "Composite":
        """A copy with some composite-wide params changed (validated)."""
        merged = dict(self.params)
        merged.update(_check_params(params, "<params>", None))
        return dataclasses.replace(self, params=merged, explicit=self.explicit | set(params))

    def make_rule(self, entry: Entry) -> Rule:
        cls = RULES.get(entry.rule)
        values = {key: self.params[key] for key in cls.inherits if key in self.params}
        values.update(entry.values)
        try:
            _check_bounds(values)
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(exc.message, source=entry.source, line=entry.line, key=exc.key, hint=exc.hint) from exc

    def fallback_rule(self, node: Node) -> Rule:
        if node.kind in ops.WEIGHTED_KINDS + ("batchnorm", "layernorm"):  # an unfolded batch-norm: the affine map it is
            return self._default_rule("epsilon")
        if node.kind == "product":  # a gate's signal takes all (SE nets); factors that cannot be told apart split evenly
            return self._default_rule("signal")
        if node.kind == "softmax":
            return RULES.get("taylor")()
        return self._default_rule("norm")

    def _default_rule(self, name: str) -> Rule:
        """Rule ``name`` with the composite-wide params it inherits (its stabiliser, the options set)."""
        cls = RULES.get(name)
        return cls(**{key: self.params[key] for key in cls.inherits if key in self.params})

    def assign(self, graph: Graph) -> dict[str, Assigned]:
        """The rule for every rule-bearing node of ``graph`` (first matching entry, else a fallback)."""
        first = first_layers(graph)
        rules: dict[str, Rule] = {}
        assigned: dict[str, Assigned] = {}
        used: set[int] = set()
        for node in graph.nodes:
            if not _takes_rule(node):
                continue
            chosen = None
            for index, entry in enumerate(self.entries):
                if not entry.matches(node, node.name in first):
                    continue
                if node.kind not in RULES.get(entry.rule).kinds:
                    continue  # e.g. a name glob over a block: gamma applies to its convs, not its add
                chosen = (index, entry)
                break
            if chosen is None:
                if node.kind == "elementwise":
                    continue  # no fallback: an activation passes relevance on unchanged
                assigned[node.name] = Assigned(node.name, self.fallback_rule(node), None)
                continue
            index, entry = chosen
            used.add(index)
            if index not in rules:
                rules[index] = self.make_rule(entry)
            assigned[node.name] = Assigned(node.name, rules[index], entry)
        for index, entry in enumerate(self.entries):
            if entry.names is not None and not entry.inherited and not any(
                entry.matches(node, node.name in first) for node in graph.nodes if _takes_rule(node)
            ):
                paths = sorted({n.path for n in graph.nodes if n.kind in ops.RULE_KINDS})
                hint = suggest(entry.names[0], paths)
                raise ConfigError(
                    f"rules[{index}]: match name {list(entry.names)} matches no layer of this model "
                    f"(layers: {', '.join(paths[:12])}{', ...' if len(paths) > 12 else ''})",
                    source=entry.source,
                    line=entry.line,
                    key="name",
                    hint=hint or "names are module paths such as 'features.0'; globs like 'classifier.*' work",
                )
        return assigned

    def to_dict(self) -> dict[str, Any]:
        """The resolved composite (extends applied), in the YAML shape."""
        rules = []
        for entry in self.entries:
            match: dict[str, Any] = {}
            if entry.first is not None:
                match["first"] = entry.first
            if entry.types:
                match["type"] = entry.types[0] if len(entry.types) == 1 else list(entry.types)
            if entry.names:
                match["name"] = entry.names[0] if len(entry.names) == 1 else list(entry.names)
            rules.append({"match": match, "rule": entry.rule, **dict(entry.values)})
        return {
            "name": self.name,
            "canonizers": list(self.canonizers),
            "params": dict(self.params),
            "rules": rules,
        }


def first_layers(graph: Graph) -> set[str]:
    """The conv/linear nodes the input meets first: those with no conv/linear node upstream."""
    behind_weighted: dict[str, bool] = {graph.input: False}
    first: set[str] = set()
    for node in graph.nodes:
        upstream = [behind_weighted.get(ref, False) for ref in node.refs]
        weighted_upstream = any(upstream)
        if node.kind in ops.WEIGHTED_KINDS:
            if not weighted_upstream and node.refs:
                first.add(node.name)
            behind_weighted[node.name] = True
        else:
            behind_weighted[node.name] = weighted_upstream
    return first


# --------------------------------------------------------------------------- parsing and validation


def _number(value: Any, key: str, source: str, line: int | None, minimum: float | None = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"'{key}' must be a number, got {value!r}", source=source, line=line, key=key)
    if not math.isfinite(value):  # YAML's .nan/.inf: NaN slips past every comparison and blanks the heatmaps
        raise ConfigError(f"'{key}' must be a finite number, got {value!r}", source=source, line=line, key=key)
    if minimum is not None and value < minimum:
        raise ConfigError(f"'{key}' must be >= {minimum:g}, got {value!r}", source=source, line=line, key=key)
    return float(value)


def _check_params(params: Any, source: str, mapping: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise ConfigError("'params' must be a mapping", source=source, line=_line(mapping, "params"), key="params")
    checked: dict[str, Any] = {}
    for key, value in params.items():
        line = _line(params, key)
        if key not in PARAM_KEYS:
            raise _unknown_key(key, PARAM_KEYS, "params", source, line)
        if key in OPTION_PARAMS:
            try:
                value = OPTION_PARAMS[key].check("*", key, value)
            except ConfigError as exc:
                raise ConfigError(exc.message.replace("rule '*': ", ""), source=source, line=line, key=key, hint=exc.hint) from exc
            checked[key] = list(value) if isinstance(value, tuple) else value  # YAML/JSON-shaped in to_dict
        elif key in ("low", "high"):
            items = value if isinstance(value, list) else [value]
            if hasattr(value, "shape"):  # a tensor from Python code
                if not bool(torch.isfinite(torch.as_tensor(value)).all()):
                    raise ConfigError(f"'{key}' must hold finite numbers", source=source, line=line, key=key)
                checked[key] = value
                continue
            for item in items:
                _number(item, key, source, line, minimum=None)
            checked[key] = [float(v) for v in value] if isinstance(value, list) else float(value)
        else:
            checked[key] = _number(value, key, source, line)
    return checked


def _check_bounds(values: dict[str, Any]) -> None:
    """z^B's input box must not be upside down: ``low`` above ``high`` (anywhere, per channel) would
    swap the roles of positive and negative weights without a word."""
    if "low" not in values or "high" not in values:
        return
    try:
        low = torch.as_tensor(values["low"], dtype=torch.float64)
        high = torch.as_tensor(values["high"], dtype=torch.float64)
        upside_down = bool((low > high).any())
    except (TypeError, ValueError, RuntimeError):  # not numbers, or lists that do not broadcast
        return  # the rule's own validation names what is wrong
    if upside_down:
        raise ConfigError(
            f"the input bounds are upside down: low {_shown_bound(values['low'])} is above high {_shown_bound(values['high'])}",
            key="low",
            hint="low is the smallest input value the model sees, high the largest (after normalisation)",
        )


def _shown_bound(value: Any) -> str:
    return str(value.tolist() if hasattr(value, "tolist") else value)


# --------------------------------------------------------------------------- built-ins and loading


class _Mapping(dict):
    """A dict that remembers the line of itself and of each key."""

    line: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


def _unknown_key(key: Any, allowed: tuple[str, ...], where: str, source: str, line: int | None) -> ConfigError:
    hint = suggest(str(key), list(allowed))
    return ConfigError(
        f"unknown key '{key}' in {where} (allowed: {', '.join(allowed)})",
        source=source,
        line=line,
        key=str(key),
        hint=hint,
    )
