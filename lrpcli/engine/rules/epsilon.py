"""Rules for any linear node: epsilon, LRP-0 (z), norm (the proportional split) and pass.

They serve weighted layers (conv, linear, batch-norm) and parameter-free linear ops
(adds, pooling, sums, scaling) alike: ``R_in = a * J^T (R / stabilise(z))``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ...errors import ConfigError
from ..graph import Ref
from ..transposes import transpose, vjp
from .base import STABILIZER_MODE, ZERO_PARAMS_PARAM, Param, Rule, divide
from .transformer import layernorm_relevance


class Epsilon(Rule):
    name = "epsilon"
    formula = "R_j = a_j * sum_k w_jk R_k / (z_k + eps*sign(z_k))"
    params = {
        "epsilon": Param(1e-6, "added to the denominator with the sign of z", minimum=0.0),
        "stabilizer_mode": STABILIZER_MODE,
        "zero_params": ZERO_PARAMS_PARAM,
    }
    inherits = ("epsilon", "stabilizer_mode", "zero_params")
    kinds = ("conv", "linear", "batchnorm", "add", "avgpool", "reduce", "scale", "layernorm")
    #: which parameter is added to the denominator (z and norm call it "stabilizer")
    denominator_param: ClassVar[str] = "epsilon"

    spares_z = True

    def weighted(self, node, a, z, relevance, ledger=None, reuse_z=True):
        """``reuse_z=False``: ``z`` is read, not overwritten (several seeds walked on one recorded forward)."""
        stabiliser = self.stabiliser(node, self.denominator_param)
        z = self.unbiased(node, a, z)
        s = divide(relevance, z, stabiliser, reuse=reuse_z and ledger is None)
        if ledger is not None:
            ledger.record(s, z, self.bias_of(node), stabiliser)
        del relevance, z  # the walk handed over the only references: free them before the transpose
        return transpose(node, s, a, node.weight).mul_(a)

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        """A layer/group/RMS norm, linear once 1/sigma is held constant (AttnLRP Prop. 3.4, CP-LRP)."""
        stabiliser = self.stabiliser(node, self.denominator_param)
        return layernorm_relevance(self, node, values, inputs, z, relevance, ledger, stabiliser, self.zero_bias)

    def proportional(self, node, values, inputs, z, relevance, ledger=None):
        """Parameter-free nodes have no bias parameter to leave out: ``zero_params`` does not apply."""
        stabiliser = self.stabiliser(node, self.denominator_param)
        s = divide(relevance, z, stabiliser)
        if _elementwise_scale(node, values, inputs, z):
            # z = c * x element by element, so a * dz/da * s = z * s: no transpose, and x is not read (a dropped
            # value is not recomputed); the same numbers up to rounding (issue 28: a language model's walk passes
            # ~9 such nodes a layer: norm weights, rotary cos/sin, attention scaling)
            if ledger is not None:
                ledger.record(s, z, None, stabiliser)
            return {inputs[0]: s.mul_(z) if s is not relevance else s * z}
        grads = vjp(node, values, inputs, s)
        result = {name: values[name] * grad for name, grad in grads.items()}
        if ledger is not None:  # constants added by the op (x + c) act as a bias
            ledger.record(s, z, None, stabiliser)
            handed = sum(ledger.per_sample(r) for r in result.values())
            ledger.bias = ledger.per_sample(s * z) - handed
        return result


def _elementwise_scale(node, values, inputs, z) -> bool:
    """Whether ``node`` multiplies (divides, negates) its one live input by a constant element by element."""
    if node.kind != "scale" or node.op not in ("mul", "div", "neg") or len(inputs) != 1:
        return False
    if node.op == "div" and not (isinstance(node.args[0], Ref) and node.args[0].name == inputs[0]):
        return False  # a held value divided by the activation: z is no multiple of it
    shape_of = getattr(values, "stand_in", None)
    x = shape_of(inputs[0]) if shape_of is not None else values[inputs[0]]
    return isinstance(x, torch.Tensor) and isinstance(z, torch.Tensor) and x.shape == z.shape and x.dtype == z.dtype


class Z(Epsilon):
    name = "z"
    formula = "R_j = a_j * sum_k w_jk R_k / z_k   (LRP-0; R/0 := 0)"
    params = {
        "stabilizer": Param(0.0, "added to the denominator with the sign of z", minimum=0.0),
        "stabilizer_mode": STABILIZER_MODE,
        "zero_params": ZERO_PARAMS_PARAM,
    }
    inherits = ("stabilizer_mode", "zero_params")  # not the stabilizer: LRP-0 stays LRP-0 in any composite
    denominator_param = "stabilizer"


class Norm(Epsilon):
    name = "norm"
    formula = "R_j = a_j * sum_k dz_k/da_j R_k / (z_k + stab*sign(z_k))   (proportional split, pooling and sums)"
    params = {"stabilizer": Param(1e-6, "added to the denominator with the sign of z", minimum=0.0), "stabilizer_mode": STABILIZER_MODE}
    inherits = ("stabilizer", "stabilizer_mode")
    denominator_param = "stabilizer"


class Pass(Rule):
    name = "pass"
    overwrites_z = False
    formula = "R_j = R_j   (relevance passes unchanged; input and output shapes must match)"
    # a softmax inside the model too: its input gets its output's relevance; and activations (zennit's Pass, the
    # default for an activation without a line, said by name)
    kinds = Epsilon.kinds + ("softmax", "elementwise")

    def weighted(self, node, a, z, relevance, ledger=None):
        self._check(node, a, relevance)
        if ledger is not None and node.kind == "batchnorm" and node.bias is not None:
            # not conservative: the input of y = scale * x + shift also gets the shift's share, R * shift / y under
            # LRP-0, booked as the bias's and as made by the rule ("other"), so the conservation check names it
            shape = (1, -1) + (1,) * (z.ndim - 2)
            ledger.bias = ledger.per_sample(divide(relevance, z, 0.0) * node.bias.reshape(shape))
        return relevance

    def propagate(self, node, values, inputs, z, relevance, ledger=None):
        self._check(node, values[inputs[0]], relevance)
        return {inputs[0]: relevance}

    def proportional(self, node, values, inputs, z, relevance, ledger=None):
        matching = [name for name in inputs if values[name].shape == relevance.shape]
        if not matching:
            self._check(node, values[inputs[0]], relevance)
        return {matching[0]: relevance}

    def _check(self, node, a, relevance):
        if a.shape != relevance.shape:
            raise ConfigError(
                f"rule 'pass' at {node.describe()}: input shape {tuple(a.shape)} differs from output shape "
                f"{tuple(relevance.shape)}, so relevance cannot pass unchanged",
                hint="use 'epsilon' or 'norm' for this layer",
            )
