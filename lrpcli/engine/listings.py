"""What ``lrp composites`` lists: each built-in composite's rules per layer type and its parameters
(``lrp rules`` is ``rules.rules_text``). Both are written to ``rules/*.txt`` by ``python -m
lrpcli.engine.rules``, so the CLI prints them without importing torch."""

from __future__ import annotations

from typing import Any

import torch

from .composite_yaml import builtin_names, load_composite


def jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def composites_text() -> str:
    """What ``lrp composites`` prints; the CLI prints the copy in ``rules/composites.txt`` (no torch to import;
    tests/test_registry.py holds the two equal, ``python -m lrpcli.engine.rules`` writes it again)."""
    lines = []
    for name in builtin_names():
        summary = composite_summary(name)
        lines.append(f"{name}: {summary['description']}")
        lines += [f"    {rule}" for rule in summary["rules"]]
        params = ", ".join(f"{k}={v}" for k, v in summary["params"].items())
        lines.append(f"    params: {params}; canonizers: {', '.join(summary['canonizers']) or '-'}")
    return "\n".join(lines) + "\n"


def composite_summary(composite: Any) -> dict[str, Any]:
    """A built-in's rules per layer type and its parameters (for `lrp composites`)."""
    comp = load_composite(composite)
    return {
        "name": comp.name,
        "description": comp.description,
        "params": {k: jsonable(v) for k, v in comp.params.items()},
        "rules": [entry.describe() for entry in comp.entries],
        "canonizers": list(comp.canonizers),
    }
