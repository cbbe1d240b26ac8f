"""What will happen before it happens: which rule each layer gets, and why.

``inspect_model`` captures and canonizes the graph exactly as ``explain`` does and
returns, per layer, its path, type, output shape, parameter count, the rule with its
parameters and the composite line that chose it. Ops that only move relevance
(reshapes, pooling by max, activations) are folded into the row of the layer before
them. Problems a run would hit are reported as warnings instead of raised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..engine import ops
from ..engine.passes.canonizers import canonize, prune_dead
from ..engine.composite import Composite
from ..engine.explainer import Explainer
from ..engine.listings import jsonable
from ..errors import LrpError


@dataclass
class LayerInfo:
    node: str
    module: str
    type: str  # module type (Conv2d) or op kind for functional ops
    kind: str
    op: str
    output_shape: list[int]
    parameters: int
    rule: str | None
    rule_params: dict[str, Any]
    matched_by: str  # "<source>:<line> {match} -> rule", or "fallback"
    routed_after: list[str] = field(default_factory=list)  # route/element-wise ops folded into this row


@dataclass
class InspectReport:
    composite: str
    source: str  # how the graph was captured
    input_shape: list[int]
    layers: list[LayerInfo]
    warnings: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)




def inspect_model(model: Any, example: torch.Tensor, composite: Any = "epsilon_plus_flat") -> InspectReport:
    """The rule-per-layer report for ``model`` on inputs shaped like ``example``."""
    explainer = Explainer(model, composite)
    comp: Composite = explainer.composite
    raw = explainer.captured(example)
    graph = prune_dead(canonize(raw, comp.canonizers))
    warnings: list[str] = []
    for node in graph.unsupported():
        warnings.append(f"no rule for op '{node.op}' at {node.describe()}: a run would stop here" + (f" ({node.hint})" if node.hint else ""))
    try:
        assigned = comp.assign(graph)
    except LrpError as exc:
        warnings.append(str(exc))
        assigned = {}
    shapes: dict[str, list[int]] = {}
    if not warnings:
        with torch.no_grad():
            values = graph.to(example.device, example.dtype).run(example)
        shapes = {name: list(value.shape) for name, value in values.items() if isinstance(value, torch.Tensor)}

    layers: list[LayerInfo] = []
    relevant = graph.relevant()  # nodes no relevance reaches (a mask built from the ids, a normaliser) are not layers
    for node in graph.nodes:
        if node.name not in relevant:
            continue
        if node.kind in ("route", "elementwise", "meta") and node.name not in assigned:  # an activation with a rule is a layer
            if node.kind != "meta" and layers:
                layers[-1].routed_after.append(node.op)
            continue
        choice = assigned.get(node.name)
        parameters = 0
        if node.kind in ops.WEIGHTED_KINDS + ("batchnorm",):
            parameters = sum(int(t.numel()) for t in (node.weight, node.bias) if isinstance(t, torch.Tensor))
        if choice is None:
            matched = "no rule"
        elif choice.entry is None:
            matched = "fallback"
            if node.kind in ops.WEIGHTED_KINDS:
                warnings.append(f"layer {node.path} ({node.module_type or node.kind}) matches no composite line: falls back to {choice.rule!r}")
        else:
            matched = f"{choice.entry.where()} {choice.entry.describe()}"
        if node.kind == "batchnorm" and choice is not None and choice.rule.name == "pass":
            warnings.append(
                f"layer {node.path} ({node.module_type or 'BatchNorm'}) gets 'pass', which does not conserve relevance: "
                "its input also gets the share of the batch-norm's shift, and the layer before divides by its own "
                "output, not the batch-norm's; give it 'epsilon' (as the built-in composites do)"
            )
        layers.append(
            LayerInfo(
                node=node.name,
                module=node.path,
                type=node.kind if node.kind in ("add", "reduce", "scale") else (node.module_type or node.kind or node.op),
                kind=node.kind or "unsupported",
                op=node.op,
                output_shape=shapes.get(node.name, []),
                parameters=parameters,
                rule=choice.rule.name if choice else None,
                rule_params={k: jsonable(v) for k, v in choice.rule.values.items()} if choice else {},
                matched_by=matched,
            )
        )
    used = {layer.matched_by for layer in layers}
    for entry in comp.entries:
        label = f"{entry.where()} {entry.describe()}"
        if label not in used:
            warnings.append(f"composite line {label} matches no layer of this model")
    notes = [n for n in graph.notes]
    return InspectReport(
        composite=comp.name,
        source=graph.source,
        input_shape=list(example.shape[1:]),
        layers=layers,
        warnings=warnings,
        notes=notes,
    )


