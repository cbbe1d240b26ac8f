"""The conservation check: does the relevance the output holds reach the input, and
where does it leak?

For every sample, the relevance total at each layer boundary is compared with the
target's logit (the initial relevance). What a layer did not hand down is split into
what its bias took, what its stabiliser (epsilon) took, what a non-conservative rule
took by design (``rule_share``: AttnLRP's softmax rule and its Taylor bias term), and
the rest ("other": e.g. relevance at z = 0).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..engine.explainer import Explainer

#: rules that conserve exactly on bias-free nets: for these the whole gap counts
EXACT_RULES = ("z", "pass")


@dataclass
class LayerCheck:
    node: str
    layer: str
    type: str
    rule: str
    relevance_out: float
    relevance_in: float
    absorbed: float
    bias: float
    stabilizer: float
    other: float
    rule_share: float = 0.0  # what a non-conservative rule took by design (softmax's Taylor rule)


@dataclass
class SampleCheck:
    sample: str
    target: int
    logit: float  # the initial relevance total (the target logit with init="value")
    input_relevance: float
    gap: float  # logit - input relevance
    explained: float  # what biases, stabilisers and non-conservative rules took, over all layers
    unexplained: float  # gap - explained
    counted: float  # the part of the gap the tolerance applies to
    error: float  # |counted| (absolute) or |counted| / scale (relative)
    passed: bool
    worst_layer: str
    layers: list[LayerCheck] = field(default_factory=list)


@dataclass
class ConservationReport:
    composite: str
    tolerance: float
    relative: bool
    count: str  # "all" or "unexplained"
    dtype: str
    samples: list[SampleCheck]

    @property
    def passed(self) -> bool:
        return all(sample.passed for sample in self.samples)

    @property
    def failed(self) -> list[SampleCheck]:
        return [sample for sample in self.samples if not sample.passed]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def default_tolerance(dtype: torch.dtype) -> float:
    """1e-5 in float32, 1e-10 in float64 (relative), looser for half precision."""
    if dtype == torch.float64:
        return 1e-10
    if dtype in (torch.float16, torch.bfloat16):
        return 1e-2
    return 1e-5


def default_count(rules: list[str], stabilizers_zero: bool) -> str:
    """Exact rule families count the whole gap; rules that absorb by design only the unexplained part."""
    return "all" if all(rule in EXACT_RULES or (rule == "norm" and stabilizers_zero) for rule in rules) else "unexplained"


def _float(value: torch.Tensor | None, index: int) -> float:
    return 0.0 if value is None else float(value[index])


def check_conservation(
    explainer: Explainer,
    x: torch.Tensor,
    names: list[str] | None = None,
    target: Any = None,
    *,
    tolerance: float | None = None,
    relative: bool = True,
    count: str | None = None,
    init: str = "value",
    inputs: dict[str, torch.Tensor] | None = None,
) -> ConservationReport:
    """Explain ``x`` and check, per sample, the input relevance total against the logit.

    ``x`` may be token ids (int64): the per-token relevances are summed; ``inputs`` are the
    model's further inputs (an attention mask)."""
    result = explainer.explain(x, target, init=init, layer_relevance=True, inputs=inputs)
    _, assigned = explainer.prepare(x, inputs)
    rules = sorted({a.rule.name for a in assigned.values()})
    stabilizers_zero = all(float(a.rule.values.get("stabilizer", 0.0) or 0.0) == 0.0 for a in assigned.values())
    count = count or default_count(rules, stabilizers_zero)
    dtype = result.outputs.dtype  # (x holds token ids for a text model)
    tolerance = default_tolerance(dtype) if tolerance is None else tolerance
    layers = [layer for layer in result.layers.values()]
    initial = result.initial.reshape(x.shape[0], -1).sum(1).double()
    reached = result.relevance.reshape(x.shape[0], -1).sum(1).double()
    magnitude = result.relevance.reshape(x.shape[0], -1).abs().sum(1).double()
    samples = []
    for i in range(x.shape[0]):
        layer_checks = [
            LayerCheck(
                node=layer.node,
                layer=layer.module or layer.node,
                type=layer.module_type or layer.kind,
                rule=layer.rule,
                relevance_out=_float(layer.relevance_out, i),
                relevance_in=_float(layer.relevance_in, i),
                absorbed=_float(layer.absorbed, i),
                bias=_float(layer.bias, i),
                stabilizer=_float(layer.stabilizer, i),
                other=_float(layer.other, i),
                rule_share=_float(layer.rule_share, i),
            )
            for layer in layers
        ]
        gap = float(initial[i] - reached[i])
        explained = sum(check.bias + check.stabilizer + check.rule_share for check in layer_checks)
        unexplained = gap - explained
        counted = gap if count == "all" else unexplained
        scale = max(abs(float(initial[i])), float(magnitude[i]), 1e-30)
        error = abs(counted) / scale if relative else abs(counted)
        key = (lambda c: abs(c.absorbed)) if count == "all" else (lambda c: abs(c.other))
        worst = max(layer_checks, key=key) if layer_checks else None
        samples.append(
            SampleCheck(
                sample=names[i] if names else str(i),
                target=int(result.targets[i]),
                logit=float(initial[i]),
                input_relevance=float(reached[i]),
                gap=gap,
                explained=explained,
                unexplained=unexplained,
                counted=counted,
                error=error,
                passed=bool(error <= tolerance) and math.isfinite(error),
                worst_layer=worst.layer if worst is not None else "",
                layers=layer_checks,
            )
        )
    return ConservationReport(
        composite=explainer.composite.name,
        tolerance=tolerance,
        relative=relative,
        count=count,
        dtype=str(dtype).replace("torch.", ""),
        samples=samples,
    )


def merge(reports: list[ConservationReport]) -> ConservationReport:
    """Reports of several batches as one."""
    first = reports[0]
    return ConservationReport(
        composite=first.composite,
        tolerance=first.tolerance,
        relative=first.relative,
        count=first.count,
        dtype=first.dtype,
        samples=[sample for report in reports for sample in report.samples],
    )


def junit_xml(report: ConservationReport, suite: str = "lrp check-conservation") -> str:
    """One test case per sample; a failure names the layer where most relevance leaked."""
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(report.samples)),
        failures=str(len(report.failed)),
        errors="0",
    )
    for sample in report.samples:
        case = ET.SubElement(root, "testcase", classname=f"conservation.{report.composite}", name=sample.sample)
        if not sample.passed:
            kind = "relative" if report.relative else "absolute"
            failure = ET.SubElement(
                case,
                "failure",
                message=(
                    f"{kind} gap {sample.error:.3g} > tolerance {report.tolerance:g} "
                    f"(logit {sample.logit:.6g}, input relevance {sample.input_relevance:.6g}); "
                    f"most lost at layer {sample.worst_layer}"
                ),
                type="ConservationError",
            )
            failure.text = "\n".join(
                f"{c.layer} [{c.type}, {c.rule}]: in {c.relevance_in:.6g} out {c.relevance_out:.6g} "
                f"bias {c.bias:.3g} stabilizer {c.stabilizer:.3g} rule {c.rule_share:.3g} other {c.other:.3g}"
                for c in sample.layers
            )
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
