"""Explanation methods that are not LRP composites, evaluated next to them for comparison.

Gradient x input (the plain derivative of the captured graph) and seeded random relevance
(the chance level of every metric).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ConfigError, UsageError
from ..registry import Registry


#: explanation methods that are not LRP composites, to compare against
BASELINES: Registry[str] = Registry("baseline")
BASELINES.register(
    "gradient_x_input",
    "the gradient of the target logit times the input (autograd on the captured graph)",
    aliases=("gradient_input", "input_x_gradient", "gxi", "grad_x_input"),
)
BASELINES.register("random", "seeded uniform random relevance in [0, 1)")


def resolve_baseline(name: str) -> str:
    """The canonical baseline name; UsageError with a suggestion on a miss."""
    try:
        return BASELINES.resolve(name)
    except ConfigError as exc:
        raise UsageError(f"unknown baseline '{name}' (known: {', '.join(BASELINES.names())})", hint=exc.hint) from None


def gradient_x_input(explainer: Any, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient of the target logit times the input, by autograd through the captured graph.

    The graph is the one LRP walks (trailing softmax stripped, batch-norm folded), but no LRP
    rule is involved: this is the plain derivative of the model's function.
    """
    graph, _ = explainer.prepare(x)
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        outputs = graph(leaf)
        outputs = outputs.reshape(outputs.shape[0], -1)
        selected = outputs.gather(1, targets.reshape(-1, 1).to(outputs.device)).sum()
        (gradient,) = torch.autograd.grad(selected, leaf)
    return (gradient * x).detach()


def random_relevance(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random relevance in [0, 1) (seeded): the chance level of every metric."""
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
