"""What every run kind is told, whatever its inputs: which outputs to explain (TargetSpec), with which
composites (CompositeChoice, the -c values), on which device and in which dtype; and how a failed input is
reported (Failure, non_finite_reasons)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError
from ..limits import BoundedLoader
from ..registry import suggest


DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TargetSpec:
    """Which output units to explain per input: the prediction, one unit, the top k, or all."""

    mode: str = "pred"  # "pred", "index", "topk", "all"
    index: int | None = None
    k: int = 1

    @classmethod
    def parse(cls, target: str | int | None, top_k: int | None = None, classes: list[str] | None = None) -> "TargetSpec":
        if top_k is not None:
            if top_k < 1:
                raise UsageError(f"--top-k must be at least 1, got {top_k}")
            if target not in (None, "pred"):
                raise UsageError("--top-k and --target exclude each other")
            return cls("topk", k=top_k)
        if target is None or str(target).lower() in ("pred", "prediction", "predicted"):
            return cls("pred")
        text = str(target)
        if text.lower() == "all":
            return cls("all")
        if text.lstrip("-").isdigit():
            return cls("index", index=int(text))
        if classes and text in classes:
            return cls("index", index=classes.index(text))
        if classes:
            raise UsageError(f"--target '{text}' is not a class name", hint=suggest(text, classes) or f"classes: {', '.join(classes[:20])}")
        raise UsageError(f"--target '{text}' is not a class index, and no class names are known", hint="use an index, pred, all, or give --classes")

    @property
    def single(self) -> bool:
        """One target per input (file names carry no class suffix)."""
        return self.mode in ("pred", "index") or (self.mode == "topk" and self.k == 1)

    def choose(self, outputs: torch.Tensor) -> list[list[int]]:
        scores = outputs if outputs.ndim == 2 else outputs.reshape(outputs.shape[0], -1)
        classes = scores.shape[1]
        if self.mode == "pred":
            return [[int(i)] for i in scores.argmax(1)]
        if self.mode == "index":
            if not 0 <= int(self.index) < classes:
                raise UsageError(f"--target {self.index} is out of range: the model has {classes} outputs (0..{classes - 1})")
            return [[int(self.index)] for _ in range(scores.shape[0])]
        if self.mode == "all":
            return [list(range(classes)) for _ in range(scores.shape[0])]
        k = min(self.k, classes)
        return [[int(i) for i in row] for row in scores.topk(k, dim=1).indices]


def walk_start(init: str, contrast: str | int | None, classes: list[str] | None) -> Any:
    """What ``Explainer.explain(init=...)`` is given for ``--init`` and ``--contrast CLASS``: the name, or a
    :class:`~lrpcli.engine.explainer.Contrast` ("the target rather than CLASS") with that class's index."""
    if contrast is None:
        return init
    from ..engine.explainer import Contrast

    try:
        spec = TargetSpec.parse(contrast, None, classes)
    except UsageError as exc:
        raise UsageError(exc.message.replace("--target", "--contrast"), hint=exc.hint) from None
    if spec.mode != "index":
        raise UsageError(f"--contrast {contrast}: give one class (a name or an index) to explain the target against")
    return Contrast(int(spec.index), init)


@dataclass
class Failure:
    input: str
    message: str


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here", hint="use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device '{name}'", hint="use auto, cpu or cuda") from exc


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype '{name}' (known: {', '.join(DTYPES)})", hint=suggest(name, list(DTYPES)))
    return DTYPES[name]


def non_finite_reasons(result, targets: list[int]) -> list[str]:
    """Per row of an explain result: '' when its logits and relevance are finite, else why not and what to do."""
    rows = result.outputs.shape[0]
    logits = torch.isfinite(result.outputs.detach().reshape(rows, -1)).all(1).tolist()
    counts = (~torch.isfinite(result.relevance.detach().reshape(rows, -1))).sum(1).tolist()
    size = result.relevance[0].numel() if rows else 0
    reasons = []
    for finite, count, target in zip(logits, counts, targets):
        if not finite:
            reasons.append("the model's outputs are NaN or infinite for this input; check the model's weights and the input scaling (mean/std)")
        elif count:
            reasons.append(
                f"relevance for target {target} has {count} NaN/inf value(s) of {size}; "
                "a larger epsilon or stabilizer (-p epsilon=..., -p stabilizer=...) may avoid it"
            )
        else:
            reasons.append("")
    return reasons


@dataclass(frozen=True)
class CompositeChoice:
    """One ``-c`` value: a composite name or file, with parameters for this column only."""

    spec: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "CompositeChoice":
        """``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE...]`` (values in YAML: ``low=[-2,-2,-2]``)."""
        import yaml

        text = str(text).strip()
        name, sep, rest = text.rpartition(":")
        if not sep or "=" not in rest or not name:
            return cls(text)
        params: dict[str, Any] = {}
        for item in split_top_level(rest):
            key, eq, raw = item.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"-c {text}: expected NAME:KEY=VALUE[,KEY=VALUE], got {item!r}", hint="e.g. -c epsilon:epsilon=0.25")
            try:
                params[key.strip()] = yaml.load(raw, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader, bounded
            except yaml.YAMLError as exc:
                raise UsageError(f"-c {text}: bad value in {item!r}: {exc}") from exc
        return cls(name.strip(), params)

    def label(self, composite_name: str) -> str:
        if not self.params:
            return composite_name
        return f"{composite_name} ({', '.join(f'{k}={short_value(v)}' for k, v in self.params.items())})"


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: ``epsilon=0.25,low=[-2,-2]`` -> two items."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item for item in (i.strip() for i in items) if item]


def short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(short_value(v) for v in value) + "]"
    return str(value)
