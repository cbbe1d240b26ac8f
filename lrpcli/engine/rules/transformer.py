"""Rules for products of activations and softmax: AttnLRP (Achtibat et al. 2024) and CP-LRP (Ali et al. 2022).

- ``uniform``: a product of n activations (``Q K^T``, ``A V``, a gate times a signal) splits
  its relevance equally: the epsilon rule divided by n (AttnLRP Props. 3.2 and 3.3). Since
  ``sum_i x_i dz/dx_i = n z`` for such a product, it conserves.
- ``signal``: the product's gate factors (a sigmoid, hard-sigmoid or softmax output, see
  ``transformer_passes.py``) are held constant and the other factor takes all the relevance:
  squeeze-and-excitation as Pahde et al. 2023 canonize it, attention as CP-LRP treats it.
  A product whose factors cannot be told apart (no gate, or two) is split uniformly.
- ``taylor``: softmax inside the model, AttnLRP's Prop. 3.1: ``R_in = x * (R - s * sum R)``,
  a first-order Taylor expansion at x; not conservative (the ledger's ``rule`` share).
- ``constant``: softmax held constant (CP-LRP's attention weights): its input gets nothing.

LayerNorm and its kin are served by the epsilon rules (``epsilon.py``) with 1/sigma held
constant (``norms.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..transposes import vjp
from .base import STABILIZER_MODE, Ledger, Param, Rule, Stabiliser, divide


def _split(rule: Rule, node, values, factors: list[str], z, relevance, ledger: Ledger | None) -> dict[str, torch.Tensor]:
    """``R_i = x_i * d z/d x_i^T (R / (n * stabilise(z)))`` for each of the n ``factors``."""
    stabiliser = rule.stabiliser(node, "epsilon")
    s = divide(relevance, z, stabiliser)
    if ledger is not None:
        ledger.record(s, z, None, stabiliser)
    if len(factors) > 1:
        s = s / len(factors)
    grads = vjp(node, values, factors, s)
    return {name: values[name] * grad for name, grad in grads.items()}


class Uniform(Rule):
    name = "uniform"
    formula = "R_i = x_i * dz/dx_i^T R / (n (z + eps*sign(z)))   (products of n activations: equal shares; AttnLRP)"
    params = {"epsilon": Param(1e-6, "added to the denominator with the sign of z", minimum=0.0), "stabilizer_mode": STABILIZER_MODE}
    inherits = ("epsilon", "stabilizer_mode")
    kinds = ("product",)

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        return _split(self, node, values, inputs, z, relevance, ledger)


class Signal(Uniform):
    name = "signal"
    formula = "R_x = x * dz/dx^T R / (z + eps*sign(z)), gate held constant   (the gated signal takes all; CP-LRP, SE nets)"

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        signals = [name for name in inputs if name not in node.gates]
        return _split(self, node, values, signals or inputs, z, relevance, ledger)


class Taylor(Rule):
    name = "taylor"
    formula = "R_in = x * (R - s * sum(R))   (softmax s = softmax(x); AttnLRP Prop. 3.1; -inf inputs get 0)"
    kinds = ("softmax",)

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        if node.op not in ("softmax", "_softmax"):
            from ...errors import ModelError

            raise ModelError(
                f"{node.op} inside the model at {node.describe()} has no LRP rule",
                hint="only softmax inside a model is covered (a trailing log_softmax is stripped)",
            )
        x = values[inputs[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
        finite = torch.where(torch.isneginf(x), torch.zeros_like(x), x)  # masked positions: 0 * ... = 0, not NaN
        result = finite * (relevance - z * relevance.sum(dim=dim, keepdim=True))
        if ledger is not None:
            ledger.rule = ledger.per_sample(relevance) - ledger.per_sample(result)
        return {inputs[0]: result.to(x.dtype) if result.dtype != x.dtype else result}


class Constant(Rule):
    name = "constant"
    formula = "R_in = 0   (the output is held constant: CP-LRP's attention weights)"
    kinds = ("softmax",)

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        if ledger is not None:
            ledger.rule = ledger.per_sample(relevance)
        return {}


def layernorm_relevance(
    rule: Any, node, values, inputs, z, relevance, ledger: Ledger | None, epsilon: "float | Stabiliser", zero_bias: bool = False
) -> dict[str, torch.Tensor]:
    """The epsilon rule on a normalisation with 1/sigma held constant: ``R_in = x * J^T (R / stabilise(y))``;
    ``zero_bias``: the denominator is ``y - b`` (the bias neither takes nor gives relevance)."""
    from ..passes import norms

    x = values[inputs[0]]
    weight, bias = node.args[1], node.args[2]
    shape = None if bias is None else (1, -1) + (1,) * (z.ndim - 2) if node.kwargs["variant"] == "group" else bias.shape
    if zero_bias and bias is not None:
        z, bias = z - bias.reshape(shape), None
    s = divide(relevance, z, epsilon)
    if ledger is not None:
        ledger.record(s, z, None, epsilon)
        if bias is not None:
            ledger.bias = ledger.per_sample(s * bias.reshape(shape))
    return {inputs[0]: x * norms.transpose(x, s, weight, **node.kwargs)}
