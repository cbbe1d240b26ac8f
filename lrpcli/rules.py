"""LRP rules: one class per rule, semantics as zennit 0.5.1 defines them.

A rule turns the relevance ``R`` of a node's output into relevance of its inputs.
For a weighted linear node (conv, linear, batch-norm as an affine map) with input
``a``, weight ``W``, bias ``b`` and recorded output ``z = W a + b`` every rule has the
efficient form of Montavon et al.:

    z' = rho(W) a' + rho(b)    (a modified forward; epsilon and LRP-0 reuse z)
    s  = R / stabilise(z')     (divide)
    c  = rho(W)^T s            (the op's transpose)
    R_in = a' * c              (multiply)

Parameter-free linear nodes (residual adds, average pooling, sums, scaling) use the
proportional rule (``norm``), i.e. the same with ``rho(W) = W``.
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .errors import ConfigError
from .graph import Node, channel_affine
from .registry import Registry


# --------------------------------------------------------------------------- numeric helpers


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1 (zennit's Stabilizer)."""
    if epsilon == 0:
        return z
    sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    return z + epsilon * sign  # epsilon stays a Python float: no rounding to float32 in float64 runs


def divide(relevance: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``R / stabilise(z)``; where the denominator is exactly 0 the result is 0 (only possible for epsilon 0)."""
    denominator = stabilise(z, epsilon)
    if epsilon != 0:
        return relevance / denominator
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where(denominator == 0, torch.zeros_like(relevance), relevance / safe)


def positive(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def negative(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


def _ntuple(value: Any, n: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == n else list(value) * n
    return [value] * n


def _conv_spec(node: Node) -> tuple | None:
    """Normalised (stride, padding, dilation, transposed, output_padding, groups) of a conv node, or None."""
    dims = node.weight.ndim - 2
    name = node.op
    args = list(node.args) + [None] * 8
    kw = node.kwargs
    if name in ("conv1d", "conv2d", "conv3d"):
        stride, padding, dilation, groups = (
            kw.get("stride", args[3] if args[3] is not None else 1),
            kw.get("padding", args[4] if args[4] is not None else 0),
            kw.get("dilation", args[5] if args[5] is not None else 1),
            kw.get("groups", args[6] if args[6] is not None else 1),
        )
        transposed, output_padding = False, 0
    elif name in ("convolution", "_convolution"):
        stride, padding, dilation, transposed, output_padding, groups = args[3:9]
    elif name.startswith("conv_transpose"):
        stride, padding, output_padding, groups, dilation = (
            args[3] if args[3] is not None else 1,
            args[4] if args[4] is not None else 0,
            args[5] if args[5] is not None else 0,
            args[6] if args[6] is not None else 1,
            args[7] if args[7] is not None else 1,
        )
        transposed = True
    else:
        return None
    if isinstance(padding, str):
        return None
    return (
        _ntuple(stride, dims),
        _ntuple(padding, dims),
        _ntuple(dilation, dims),
        bool(transposed),
        _ntuple(output_padding, dims),
        int(groups),
    )


def forward(node: Node, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The node's op with substituted input, weight and bias."""
    return node.call_with(a, weight, bias)


def transpose(node: Node, s: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight^T s``: the op's transpose (vector-Jacobian product w.r.t. the input), shaped like ``a``."""
    if node.target is torch.ops.aten.linear.default:
        return s @ weight
    if node.target is channel_affine:
        return s * weight.reshape((1, -1) + (1,) * (s.ndim - 2))
    spec = _conv_spec(node) if node.kind == "conv" else None
    if spec is not None:
        stride, padding, dilation, transposed, output_padding, groups = spec
        return torch.ops.aten.convolution_backward(
            s, a, weight, None, stride, padding, dilation, transposed, output_padding, groups, [True, False, False]
        )[0]
    with torch.enable_grad():
        leaf = a.detach().requires_grad_()
        (grad,) = torch.autograd.grad(forward(node, leaf, weight, None), leaf, s)
    return grad


def vjp(node: Node, values: dict[str, Any], inputs: list[str], grad_outputs: Any) -> dict[str, torch.Tensor]:
    """Vector-Jacobian product of a parameter-free node w.r.t. its activation inputs.

    Moves relevance "with the values" for shape ops, cat, slicing and max-pool (the
    gradient routes to the winners), and gives the transpose for proportional rules.
    """
    with torch.enable_grad():
        leaves = {name: values[name].detach().requires_grad_() for name in inputs}
        output = node.call(ChainMap(leaves, values))
        outputs = list(output) if isinstance(output, (tuple, list)) else [output]
        if not isinstance(grad_outputs, (tuple, list)):
            grad_outputs = [grad_outputs]
        pairs = [
            (out, grad)
            for out, grad in zip(outputs, grad_outputs)
            if isinstance(out, torch.Tensor) and grad is not None and out.requires_grad
        ]
        if not pairs:
            return {}
        grads = torch.autograd.grad(
            [out for out, _ in pairs], list(leaves.values()), [grad for _, grad in pairs], allow_unused=True
        )
    return {name: grad for name, grad in zip(leaves, grads) if grad is not None}


class Ledger:
    """Where the relevance a node did not hand down went, per sample: biases or stabilisers.

    Rules fill it only when the engine records per-layer totals (the conservation
    check); everything else a node lost is "other" (e.g. relevance at z = 0).
    """

    def __init__(self) -> None:
        self.bias: torch.Tensor | None = None
        self.stabilizer: torch.Tensor | None = None

    @staticmethod
    def _per_sample(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1).sum(dim=1)

    def _add(self, name: str, value: torch.Tensor) -> None:
        current = getattr(self, name)
        setattr(self, name, value if current is None else current + value)

    def record(self, s: torch.Tensor, z_mod: torch.Tensor, bias: torch.Tensor | None, epsilon: float, weight: float = 1.0) -> None:
        """For R = s * stabilise(z_mod): the share of R the (modified) bias and the stabiliser took."""
        if epsilon:
            self._add("stabilizer", weight * self._per_sample(s * (stabilise(z_mod, epsilon) - z_mod)))
        if bias is not None:
            shape = (1, -1) + (1,) * (s.ndim - 2)
            self._add("bias", weight * self._per_sample(s * bias.reshape(shape)))


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    minimum: float | None = None


class Rule:
    """Base class: a rule is configured once (``Rule(**params)``) and applied per node."""

    name: ClassVar[str]
    formula: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    #: composite-level params this rule takes as defaults (zennit's constructor arguments)
    inherits: ClassVar[tuple[str, ...]] = ()
    #: whether the rule needs weights (conv/linear/batchnorm) to mean anything
    weighted_only: ClassVar[bool] = True

    def __init__(self, **values: Any):
        unknown = set(values) - set(self.params)
        if unknown:
            raise ConfigError(f"rule '{self.name}' takes no parameter(s) {sorted(unknown)}")
        self.values = {key: spec.default for key, spec in self.params.items()}
        self.values.update(values)
        for key, spec in self.params.items():
            value = self.values[key]
            if spec.minimum is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"rule '{self.name}': {key} must be a number, got {value!r}", key=key)
            if value < spec.minimum:
                raise ConfigError(f"rule '{self.name}': {key} must be >= {spec.minimum:g}, got {value!r}", key=key)
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks; raise ConfigError."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{self.name}({args})"

    def weighted(
        self, node: Node, a: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor, ledger: Ledger | None = None
    ) -> torch.Tensor:
        """Relevance of the input ``a`` of a weighted node with output ``z``."""
        raise NotImplementedError

    def proportional(
        self,
        node: Node,
        values: dict[str, Any],
        inputs: list[str],
        z: torch.Tensor,
        relevance: torch.Tensor,
        ledger: Ledger | None = None,
    ) -> dict[str, torch.Tensor]:
        """Relevance of the inputs of a parameter-free linear node (add, avg-pool, sum, scale)."""
        raise NotImplementedError(f"rule '{self.name}' needs a layer with weights")


def _split_sign(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positive and negative parts of ``a``; the negative part is None when ``a`` >= 0 (e.g. after ReLU)."""
    if bool((a >= 0).all()):
        return a, None
    return a.clamp(min=0), a.clamp(max=0)


class Epsilon(Rule):
    name = "epsilon"
    formula = "R_j = a_j * sum_k w_jk R_k / (z_k + eps*sign(z_k))"
    params = {"epsilon": Param(1e-6, "added to the denominator with the sign of z", minimum=0.0)}
    inherits = ("epsilon",)
    weighted_only = False
    #: which parameter is added to the denominator (z and norm call it "stabilizer")
    denominator_param: ClassVar[str] = "epsilon"

    @property
    def _epsilon(self) -> float:
        return float(self.values[self.denominator_param])

    def weighted(self, node, a, z, relevance, ledger=None):
        s = divide(relevance, z, self._epsilon)
        if ledger is not None:
            ledger.record(s, z, node.bias, self._epsilon)
        return a * transpose(node, s, a, node.weight)

    def proportional(self, node, values, inputs, z, relevance, ledger=None):
        s = divide(relevance, z, self._epsilon)
        grads = vjp(node, values, inputs, s)
        result = {name: values[name] * grad for name, grad in grads.items()}
        if ledger is not None:  # constants added by the op (x + c) act as a bias
            ledger.record(s, z, None, self._epsilon)
            handed = sum(Ledger._per_sample(r) for r in result.values())
            ledger.bias = Ledger._per_sample(s * z) - handed
        return result


class Z(Epsilon):
    name = "z"
    formula = "R_j = a_j * sum_k w_jk R_k / z_k   (LRP-0; R/0 := 0)"
    params = {"stabilizer": Param(0.0, "added to the denominator with the sign of z", minimum=0.0)}
    inherits = ()
    denominator_param = "stabilizer"


class Norm(Epsilon):
    name = "norm"
    formula = "R_j = a_j * sum_k dz_k/da_j R_k / (z_k + stab*sign(z_k))   (proportional split, pooling and sums)"
    params = {"stabilizer": Param(1e-6, "added to the denominator with the sign of z", minimum=0.0)}
    inherits = ("stabilizer",)
    denominator_param = "stabilizer"


class Pass(Rule):
    name = "pass"
    formula = "R_j = R_j   (relevance passes unchanged; input and output shapes must match)"
    weighted_only = False

    def weighted(self, node, a, z, relevance, ledger=None):
        self._check(node, a, relevance)
        return relevance

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


class ZPlus(Rule):
    name = "zplus"
    formula = "R_j = sum_k (a_j w_jk)^+ R_k / sum_j (a_j w_jk)^+   (alpha=1, beta=0; z+ = W+ a+ + W- a- + b+)"
    params = {"stabilizer": Param(1e-6, "added to the denominator", minimum=0.0)}
    inherits = ("stabilizer",)

    def weighted(self, node, a, z, relevance, ledger=None):
        eps = float(self.values["stabilizer"])
        w_pos, w_neg = positive(node.weight), negative(node.weight)
        a_pos, a_neg = _split_sign(a)
        z_pos = forward(node, a_pos, w_pos, positive(node.bias))
        if a_neg is not None:
            z_pos = z_pos + forward(node, a_neg, w_neg, None)
        s = divide(relevance, z_pos, eps)
        if ledger is not None:
            ledger.record(s, z_pos, positive(node.bias), eps)
        result = a_pos * transpose(node, s, a, w_pos)
        if a_neg is not None:
            result = result + a_neg * transpose(node, s, a, w_neg)
        return result


class AlphaBeta(Rule):
    name = "alpha_beta"
    formula = "R_j = sum_k (alpha (a_j w_jk)^+ / sum (a w)^+  -  beta (a_j w_jk)^- / sum (a w)^-) R_k, alpha - beta = 1"
    params = {
        "alpha": Param(2.0, "weight of positive contributions", minimum=0.0),
        "beta": Param(1.0, "weight of negative contributions", minimum=0.0),
        "stabilizer": Param(1e-6, "added to the denominators", minimum=0.0),
    }
    inherits = ("stabilizer",)

    def validate(self):
        alpha, beta = float(self.values["alpha"]), float(self.values["beta"])
        if abs((alpha - beta) - 1.0) > 1e-12:
            raise ConfigError(
                f"rule 'alpha_beta': alpha - beta must be 1 (got alpha={alpha}, beta={beta})",
                key="beta",
                hint=f"use beta = {alpha - 1:g} for alpha = {alpha:g}",
            )

    def weighted(self, node, a, z, relevance, ledger=None):
        alpha, beta = float(self.values["alpha"]), float(self.values["beta"])
        eps = float(self.values["stabilizer"])
        w_pos, w_neg = positive(node.weight), negative(node.weight)
        a_pos, a_neg = _split_sign(a)

        def part(w_for_pos, w_for_neg, bias, weight):
            z_part = forward(node, a_pos, w_for_pos, bias)
            if a_neg is not None:
                z_part = z_part + forward(node, a_neg, w_for_neg, None)
            s = divide(relevance, z_part, eps)
            if ledger is not None:
                ledger.record(s, z_part, bias, eps, weight)
            r = a_pos * transpose(node, s, a, w_for_pos)
            if a_neg is not None:
                r = r + a_neg * transpose(node, s, a, w_for_neg)
            return r

        result = alpha * part(w_pos, w_neg, positive(node.bias), alpha)
        if beta != 0:
            result = result - beta * part(w_neg, w_pos, negative(node.bias), -beta)
        return result


class Gamma(Rule):
    name = "gamma"
    formula = "R_j = a_j sum_k (w_jk + gamma w_jk^+) R_k / sum_j a_j (w_jk + gamma w_jk^+)   (zennit's sign-aware form)"
    params = {
        "gamma": Param(0.25, "how much positive contributions are favoured", minimum=0.0),
        "stabilizer": Param(1e-6, "added to the denominators", minimum=0.0),
    }
    inherits = ("gamma", "stabilizer")

    def weighted(self, node, a, z, relevance, ledger=None):
        gamma, eps = float(self.values["gamma"]), float(self.values["stabilizer"])
        weight, bias = node.weight, node.bias
        w_up = weight + gamma * weight.clamp(min=0)  # favours positive weights
        w_down = weight + gamma * weight.clamp(max=0)  # favours negative weights
        b_up = None if bias is None else bias + gamma * bias.clamp(min=0)
        b_down = None if bias is None else bias + gamma * bias.clamp(max=0)
        a_pos, a_neg = _split_sign(a)

        # where z > 0: positive contributions a+ w_up and a- w_down; where z < 0: the negative ones
        z_up = forward(node, a_pos, w_up, b_up)
        z_down = forward(node, a_pos, w_down, b_down)
        if a_neg is not None:
            z_up = z_up + forward(node, a_neg, w_down, None)
            z_down = z_down + forward(node, a_neg, w_up, None)
        s_up = (z > 0).to(z.dtype) * divide(relevance, z_up, eps)
        s_down = (z < 0).to(z.dtype) * divide(relevance, z_down, eps)
        if ledger is not None:
            ledger.record(s_up, z_up, b_up, eps)
            ledger.record(s_down, z_down, b_down, eps)
        result = a_pos * (transpose(node, s_up, a, w_up) + transpose(node, s_down, a, w_down))
        if a_neg is not None:
            result = result + a_neg * (transpose(node, s_up, a, w_down) + transpose(node, s_down, a, w_up))
        return result


class Flat(Rule):
    name = "flat"
    formula = "R_j = sum_k 1 * R_k / sum_j 1   (uniform over the receptive field; inputs and weights set to 1)"
    params = {"stabilizer": Param(1e-6, "added to the denominator", minimum=0.0)}
    inherits = ("stabilizer",)

    def _weight(self, node: Node) -> torch.Tensor:
        return torch.ones_like(node.weight)

    def _bias(self, node: Node) -> torch.Tensor | None:
        return None

    def weighted(self, node, a, z, relevance, ledger=None):
        eps = float(self.values["stabilizer"])
        ones = torch.ones_like(a[:1]).expand_as(a)
        weight = self._weight(node)
        z_mod = forward(node, ones, weight, self._bias(node))
        s = divide(relevance, z_mod, eps)
        if ledger is not None:
            ledger.record(s, z_mod, self._bias(node), eps)
        return transpose(node, s, a, weight)


class WSquare(Flat):
    name = "wsquare"
    formula = "R_j = sum_k w_jk^2 R_k / sum_j w_jk^2   (inputs set to 1; zennit squares the bias too)"

    def _weight(self, node):
        return node.weight**2

    def _bias(self, node):
        return None if node.bias is None else node.bias**2


def _bound(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A z^B bound (number, per-channel list, or tensor) broadcast to ``like``'s shape."""
    if isinstance(value, torch.Tensor):
        tensor = value.to(device=like.device, dtype=like.dtype)
    else:
        tensor = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    if tensor.numel() == 1:
        tensor = tensor.reshape(())
    if tensor.ndim == 1 and like.ndim >= 2:
        if tensor.numel() != like.shape[1]:
            raise ConfigError(
                f"rule 'zbox': {tensor.numel()} bound values given for an input with {like.shape[1]} channels/features",
                hint="give one number, or one value per input channel",
            )
        tensor = tensor.reshape((1, -1) + (1,) * (like.ndim - 2))
    return tensor.expand_as(like)


class ZBox(Rule):
    name = "zbox"
    formula = "R_j = sum_k (a_j w_jk - l_j w_jk^+ - h_j w_jk^-) R_k / sum_j (...)   (z^B, inputs bounded by [low, high])"
    params = {
        "low": Param(0.0, "lowest possible input value (number or one per channel)"),
        "high": Param(1.0, "highest possible input value (number or one per channel)"),
        "stabilizer": Param(1e-6, "added to the denominator", minimum=0.0),
    }
    inherits = ("low", "high", "stabilizer")

    def validate(self):
        for key in ("low", "high"):
            value = self.values[key]
            items = value if isinstance(value, (list, tuple)) else [value]
            if isinstance(value, torch.Tensor):
                continue
            if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                raise ConfigError(f"rule 'zbox': {key} must be a number or a list of numbers, got {value!r}", key=key)

    def weighted(self, node, a, z, relevance, ledger=None):
        eps = float(self.values["stabilizer"])
        low, high = _bound(self.values["low"], a), _bound(self.values["high"], a)
        weight, bias = node.weight, node.bias
        w_pos, w_neg = positive(weight), negative(weight)
        z_box = forward(node, a, weight, bias) - forward(node, low, w_pos, positive(bias)) - forward(
            node, high, w_neg, negative(bias)
        )
        s = divide(relevance, z_box, eps)
        if ledger is not None:
            ledger.record(s, z_box, None, eps)
        return a * transpose(node, s, a, weight) - low * transpose(node, s, a, w_pos) - high * transpose(
            node, s, a, w_neg
        )


RULES: Registry[type[Rule]] = Registry("rule")
RULES.register("z", Z, aliases=("lrp_0", "lrp0", "zero"))
RULES.register("epsilon", Epsilon, aliases=("eps",))
RULES.register("gamma", Gamma)
RULES.register("alpha_beta", AlphaBeta, aliases=("alphabeta",))
RULES.register("zplus", ZPlus, aliases=("z_plus", "z+"))
RULES.register("flat", Flat)
RULES.register("wsquare", WSquare, aliases=("w_square", "w2"))
RULES.register("zbox", ZBox, aliases=("z_box", "zb", "box"))
RULES.register("pass", Pass, aliases=("passthrough",))
RULES.register("norm", Norm)


def make_rule(name: str, **values: Any) -> Rule:
    """Instantiate a rule by (any accepted spelling of) its name."""
    return RULES.get(name)(**values)
