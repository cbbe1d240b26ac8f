"""The gradient and the ReLU-gradient rules, as zennit 0.5.1 defines them (``zennit/rules.py``).

These pass a (modified) gradient back instead of redistributing relevance:

- ``gradient``: the node's vector-Jacobian product ``J^T R``, what zennit does at every layer without
  a rule. It serves every kind, so the gradient composites are plain gradients except at the ReLUs.
- ``guided_backprop`` (Springenberg et al. 2015; zennit ``ReLUGuidedBackprop``): ``f'(x) * max(R, 0)``,
  for a ReLU the signal where both it and the ReLU's input are positive.
- ``deconvnet`` (Zeiler & Fergus 2014; zennit ``ReLUDeconvNet``): ``max(R, 0)``, the input not read.
- ``beta_smooth`` (Dombrowski et al. 2019; zennit ``ReLUBetaSmooth``): ``sigmoid(beta * x) * R``, the
  gradient of softplus with that beta in place of the ReLU's step.

With ``init="one-hot"`` the input's result is the modified gradient of the target logit that zennit's
``Gradient`` attributor returns for its composites of the same names (``init="value"``: that times the
logit). None of them conserves: the ledger books what a node did not hand down as the rule's share.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError
from .. import ops
from ..transposes import transpose, vjp
from .base import Ledger, Param, Rule


def _book(ledger: Ledger | None, relevance: torch.Tensor, handed: dict[str, torch.Tensor]) -> None:
    if ledger is not None:
        ledger.rule = ledger.per_sample(relevance) - sum(ledger.per_sample(r) for r in handed.values())


def _single_input(rule: Rule, node, values, inputs, relevance) -> torch.Tensor:
    """The one input of an element-wise activation, shaped like its output."""
    if len(inputs) != 1 or values[inputs[0]].shape != relevance.shape:
        raise ConfigError(
            f"rule '{rule.name}' at {node.describe()}: it serves element-wise activations of one input, "
            f"and {node.op} has {len(inputs)} inputs shaped otherwise",
            hint="give it to ReLUs only: match: {type: relu}",
        )
    return values[inputs[0]]


def _activation_backward(node, values, inputs, signal: torch.Tensor) -> dict[str, torch.Tensor]:
    """``f'(x) * signal`` for an element-wise activation (a ReLU's step directly, anything else by autograd)."""
    if ops.activation_of(node.target) == "relu" and len(inputs) == 1:
        return {inputs[0]: signal * (values[inputs[0]] > 0)}
    return vjp(node, values, inputs, signal)


class Gradient(Rule):
    name = "gradient"
    overwrites_z = False
    formula = "R_in = J^T R   (the plain gradient of the node: no division by z, no multiplication by the input)"
    kinds = ops.RULE_KINDS + ("elementwise",)

    def weighted(self, node, a, z, relevance, ledger=None):
        del z
        result = transpose(node, relevance, a, node.weight)
        _book(ledger, relevance, {"in": result})
        return result

    def proportional(self, node, values, inputs, z, relevance, ledger=None):
        result = vjp(node, values, inputs, relevance)
        _book(ledger, relevance, result)
        return result

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        result = _activation_backward(node, values, inputs, relevance) if node.kind == "elementwise" else vjp(node, values, inputs, relevance)
        _book(ledger, relevance, result)
        return result


class GuidedBackprop(Rule):
    name = "guided_backprop"
    formula = "R_in = f'(x) * max(R, 0)   (ReLU: R where both R and x are positive; GuidedBackprop, zennit)"
    kinds = ("elementwise",)

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        _single_input(self, node, values, inputs, relevance)
        result = _activation_backward(node, values, inputs, relevance.clamp(min=0))
        _book(ledger, relevance, result)
        return result


class DeconvNet(Rule):
    name = "deconvnet"
    formula = "R_in = max(R, 0)   (the input not read; DeconvNet, zennit)"
    kinds = ("elementwise",)

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        _single_input(self, node, values, inputs, relevance)
        result = {inputs[0]: relevance.clamp(min=0)}
        _book(ledger, relevance, result)
        return result


class BetaSmooth(Rule):
    name = "beta_smooth"
    formula = "R_in = sigmoid(beta_smooth * x) * R   (softplus' gradient for the ReLU's; BetaSmooth, zennit)"
    params = {"beta_smooth": Param(10.0, "the softplus beta: the larger, the closer to the ReLU's step", minimum=0.0)}
    kinds = ("elementwise",)

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        x = _single_input(self, node, values, inputs, relevance)
        result = {inputs[0]: torch.sigmoid(float(self.values["beta_smooth"]) * x) * relevance}
        _book(ledger, relevance, result)
        return result
