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

import weakref
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from .errors import ConfigError
from .graph import Node
from .registry import Registry
from .transposes import transpose, vjp


# --------------------------------------------------------------------------- numeric helpers


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1 (zennit's Stabilizer), as a new tensor."""
    if epsilon == 0:
        return z
    step = torch.tensor(epsilon, dtype=z.dtype, device=z.device)  # in z's dtype: no rounding to float32 in float64 runs
    out = z + 0.0  # turns -0.0 into +0.0, so both zeros get +epsilon
    torch.copysign(step, out, out=out)  # one fast kernel (torch.where is several times slower on CPU)
    return out.add_(z)


_SLICE = 1 << 18  # elements per slice of stabilise_'s sign temporary (1 MiB in float32)


def stabilise_(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """:func:`stabilise`, written into ``z`` (bit for bit the same numbers). For a ``z`` its owner no longer
    needs: the sign temporary is made a slice at a time, so it never costs a whole layer's worth of memory."""
    if epsilon == 0:
        return z
    step = torch.tensor(epsilon, dtype=z.dtype, device=z.device)
    z.add_(0.0)  # -0.0 -> +0.0, so both zeros get +epsilon
    for part in z.view(-1).split(_SLICE) if z.is_contiguous() else (z,):
        part.add_(torch.copysign(step, part))
    return z


def divide(relevance: torch.Tensor, z: torch.Tensor, epsilon: float, reuse: bool = False) -> torch.Tensor:
    """``R / stabilise(z)``; where the denominator is exactly 0 the result is 0 (only possible for epsilon 0).

    ``reuse``: ``z`` is the caller's own and not needed afterwards, so the result is written into it."""
    if epsilon != 0:
        same = z.shape == relevance.shape and z.dtype == relevance.dtype
        denominator = stabilise_(z, epsilon) if reuse and same else stabilise(z, epsilon)
        if same:
            return torch.div(relevance, denominator, out=denominator)  # reuses the buffer: one tensor less at the peak
        return relevance / denominator
    safe = torch.where(z == 0, torch.ones_like(z), z)
    return torch.where(z == 0, torch.zeros_like(relevance), relevance / safe)


def positive(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def negative(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


def forward(node: Node, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The node's op with substituted input, weight and bias."""
    return node.call_with(a, weight, bias)


class Derived:
    """Tensors a rule derives from a node's parameters (W+, W + gamma W+, a flat rule's denominator),
    computed once per model instead of once per batch.

    Keyed weakly by the node's weight tensor, so entries go when the prepared graph
    goes, and checked against the weight's and bias' versions, so in-place changes
    to the weights are seen.
    """

    def __init__(self) -> None:
        self._store: dict[int, tuple[weakref.ref, dict]] = {}  # id(weight) -> (weak ref to it, entries)

    def _entries(self, weight: torch.Tensor) -> dict:
        key = id(weight)
        held = self._store.get(key)
        if held is None or held[0]() is not weight:
            held = self._store[key] = (weakref.ref(weight, lambda _, key=key: self._store.pop(key, None)), {})
        return held[1]

    def get(self, node: Node, key: Any, make: Callable[[], Any]) -> Any:
        bias = node.bias
        version = (node.weight._version, None if bias is None else (id(bias), bias._version))
        entries = self._entries(node.weight)
        hit = entries.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():  # usable by autograd fallbacks too
            value = make()
        entries[key] = (version, value)
        return value


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
        self.derived = Derived()

    def modified(self, node: Node, key: str) -> torch.Tensor | None:
        """A modified parameter of ``node`` (see :data:`MODIFIERS`), computed once per model."""
        return self.derived.get(node, key, lambda: MODIFIERS[key](node))

    def validate(self) -> None:
        """Cross-parameter checks; raise ConfigError."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{self.name}({args})"

    def weighted(
        self, node: Node, a: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor, ledger: Ledger | None = None
    ) -> torch.Tensor:
        """Relevance of the input ``a`` of a weighted node with output ``z``.

        The walk hands over the only references to ``z`` and ``relevance``: a rule may free or overwrite them."""
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
    """Positive and negative parts of ``a``; the negative part is None when ``a`` >= 0 (e.g. after ReLU),
    which saves the rules their negative-input forward and transpose."""
    if bool(a.min() >= 0):  # one pass (a >= 0).all() would take two
        return a, None
    return a.clamp(min=0), a.clamp(max=0)


#: parameter modifications rules use, by key (``Rule.modified`` caches them per model)
MODIFIERS: dict[str, Callable[[Node], torch.Tensor | None]] = {
    "w+": lambda node: positive(node.weight),
    "w-": lambda node: negative(node.weight),
    "b+": lambda node: positive(node.bias),
    "b-": lambda node: negative(node.bias),
}


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
        s = divide(relevance, z, self._epsilon, reuse=ledger is None)
        if ledger is not None:
            ledger.record(s, z, node.bias, self._epsilon)
        del relevance, z  # the walk handed over the only references: free them before the transpose
        return transpose(node, s, a, node.weight).mul_(a)

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
        del z  # not needed: free it (the walk handed over the only reference)
        eps = float(self.values["stabilizer"])
        w_pos, b_pos = self.modified(node, "w+"), self.modified(node, "b+")
        a_pos, a_neg = _split_sign(a)
        z_pos = forward(node, a_pos, w_pos, b_pos)
        if a_neg is not None:
            z_pos = z_pos + forward(node, a_neg, self.modified(node, "w-"), None)
        s = divide(relevance, z_pos, eps, reuse=ledger is None)
        if ledger is not None:
            ledger.record(s, z_pos, b_pos, eps)
        del z_pos, relevance
        result = transpose(node, s, a, w_pos).mul_(a_pos)
        if a_neg is not None:
            result.add_(transpose(node, s, a, self.modified(node, "w-")).mul_(a_neg))
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
        a_pos, a_neg = _split_sign(a)
        if a_neg is not None:
            del z  # not needed: free it (the walk handed over the only reference)
            return self._signed_inputs(node, a, a_pos, a_neg, relevance, alpha, beta, eps, ledger)
        # Inputs a >= 0 (after ReLU): one modified forward, since W a + b = (W+ a + b+) + (W- a + b-) gives
        # z- = z - z+ (as precise as computing it: the float32 error stays at the level of the direct form).
        # Both quotients are made (in place) before the transposes, so that the relevance is freed first; all of
        # this stays in this frame, as a helper's caller would hold z and the relevance until it returned.
        reuse = ledger is None
        w_pos, b_pos = self.modified(node, "w+"), self.modified(node, "b+")
        z_pos = forward(node, a, w_pos, b_pos)
        z_neg = z.sub_(z_pos) if beta != 0 else None  # in place: the walk hands over the only reference to z
        del z
        s_pos = divide(relevance, z_pos, eps, reuse=reuse)
        if ledger is not None:
            ledger.record(s_pos, z_pos, b_pos, eps, alpha)
        del z_pos
        s_neg = None
        if z_neg is not None:
            s_neg = divide(relevance, z_neg, eps, reuse=reuse)
            if ledger is not None:
                ledger.record(s_neg, z_neg, self.modified(node, "b-"), eps, -beta)
            del z_neg
        del relevance
        result = transpose(node, s_pos.mul_(alpha), a, w_pos)
        del s_pos
        if s_neg is not None:
            result.add_(transpose(node, s_neg.mul_(-beta), a, self.modified(node, "w-")))
        return result.mul_(a)

    def _signed_inputs(self, node, a, a_pos, a_neg, relevance, alpha, beta, eps, ledger):
        """Inputs of both signs: each share's denominator needs its own pair of modified forwards."""

        def part(w_for_pos, w_for_neg, bias, weight):
            """This sign's share: ``weight * (a+ W_for_pos^T s + a- W_for_neg^T s)`` with s = R / z_sign."""
            z_part = forward(node, a_pos, self.modified(node, w_for_pos), bias) + forward(node, a_neg, self.modified(node, w_for_neg), None)
            s = divide(relevance, z_part, eps, reuse=ledger is None)
            if ledger is not None:
                ledger.record(s, z_part, bias, eps, weight)
            del z_part
            s.mul_(weight)
            r = transpose(node, s, a, self.modified(node, w_for_pos)).mul_(a_pos)
            return r.add_(transpose(node, s, a, self.modified(node, w_for_neg)).mul_(a_neg))

        result = part("w+", "w-", self.modified(node, "b+"), alpha)
        if beta != 0:
            result.add_(part("w-", "w+", self.modified(node, "b-"), -beta))
        return result


class Gamma(Rule):
    name = "gamma"
    formula = "R_j = a_j sum_k (w_jk + gamma w_jk^+) R_k / sum_j a_j (w_jk + gamma w_jk^+)   (zennit's sign-aware form)"
    params = {
        "gamma": Param(0.25, "how much positive contributions are favoured", minimum=0.0),
        "stabilizer": Param(1e-6, "added to the denominators", minimum=0.0),
    }
    inherits = ("gamma", "stabilizer")

    def _up_down(self, node: Node, key: str) -> torch.Tensor | None:
        """W + gamma W+ ("w_up", favours positive weights), W + gamma W- ("w_down"), and the biases alike."""
        gamma = float(self.values["gamma"])

        def make():
            param = node.weight if key.startswith("w") else node.bias
            if param is None:
                return None
            return param + gamma * (param.clamp(min=0) if key.endswith("up") else param.clamp(max=0))

        return self.derived.get(node, key, make)

    def weighted(self, node, a, z, relevance, ledger=None):
        gamma, eps = float(self.values["gamma"]), float(self.values["stabilizer"])
        a_pos, a_neg = _split_sign(a)
        b_up, b_down = self._up_down(node, "b_up"), self._up_down(node, "b_down")
        # where z > 0 the positive contributions count (a+ with w_up, a- with w_down); where z < 0 the negative ones.
        # Usually no relevance sits outside z > 0 (below a ReLU whose upper layer's rule multiplies by the
        # activation): then neither the z < 0 share nor masks are needed, since s is 0 wherever R is.
        masked = bool(((z <= 0) & (relevance != 0)).any())
        up, down = (z > 0, z < 0) if masked else (None, None)
        needs_down = masked and bool((down & (relevance != 0)).any())
        if a_neg is None:
            # one modified forward gives both denominators: with a >= 0, W a + b = (W+ a + b+) + (W- a + b-), so
            # z_up = z + gamma z+ and z_down = z + gamma (z - z+), where z+ = W+ a + b+
            z_plus = forward(node, a, self.modified(node, "w+"), self.modified(node, "b+"))
            z_down = torch.sub(z, z_plus).mul_(gamma).add_(z) if needs_down else None
            z_up = z_plus.mul_(gamma).add_(z)
            del z_plus
        else:
            w_up, w_down = self._up_down(node, "w_up"), self._up_down(node, "w_down")
            z_up = forward(node, a_pos, w_up, b_up) + forward(node, a_neg, w_down, None)
            z_down = forward(node, a_pos, w_down, b_down) + forward(node, a_neg, w_up, None) if needs_down else None
        del z  # the walk handed over the only reference: free what is no longer needed, step by step
        s_up = divide(relevance, z_up, eps, reuse=ledger is None)
        if up is not None:
            s_up.masked_fill_(~up, 0.0)
        if ledger is not None:
            ledger.record(s_up, z_up, b_up, eps)
        del z_up, up
        s_down = None
        if z_down is not None:
            s_down = divide(relevance, z_down, eps, reuse=ledger is None).masked_fill_(~down, 0.0)
            if ledger is not None:
                ledger.record(s_down, z_down, b_down, eps)
            del z_down
        del relevance, down
        result = self._transposed(node, a, a_pos, a_neg, s_up, "w_up", "w_down")
        del s_up
        if s_down is not None:
            result.add_(self._transposed(node, a, a_pos, a_neg, s_down, "w_down", "w_up"))
        return result

    def _transposed(self, node, a, a_pos, a_neg, s, for_pos, for_neg):
        """``a+ * W_for_pos^T s + a- * W_for_neg^T s``."""
        result = transpose(node, s, a, self._up_down(node, for_pos)).mul_(a_pos)
        if a_neg is not None:
            result.add_(transpose(node, s, a, self._up_down(node, for_neg)).mul_(a_neg))
        return result


class Flat(Rule):
    name = "flat"
    formula = "R_j = sum_k 1 * R_k / sum_j 1   (uniform over the receptive field; inputs and weights set to 1)"
    params = {"stabilizer": Param(1e-6, "added to the denominator", minimum=0.0)}
    inherits = ("stabilizer",)

    def _weight(self, node: Node) -> torch.Tensor:
        return self.derived.get(node, "ones", lambda: torch.ones_like(node.weight))

    def _bias(self, node: Node) -> torch.Tensor | None:
        return None

    def weighted(self, node, a, z, relevance, ledger=None):
        del z  # not needed: free it (the walk handed over the only reference)
        eps = float(self.values["stabilizer"])
        weight, bias = self._weight(node), self._bias(node)
        # the denominator is the same for every sample: computed once per input shape, for a batch of one
        key = ("z", tuple(a.shape[1:]), a.dtype, a.device)
        z_mod = self.derived.get(node, key, lambda: forward(node, torch.ones_like(a[:1]), weight, bias))
        s = divide(relevance, z_mod, eps)
        if ledger is not None:
            ledger.record(s, z_mod.expand_as(s), bias, eps)
        del relevance  # the walk handed over the only reference
        return transpose(node, s, a, weight)


class WSquare(Flat):
    name = "wsquare"
    formula = "R_j = sum_k w_jk^2 R_k / sum_j w_jk^2   (inputs set to 1; zennit squares the bias too)"

    def _weight(self, node):
        return self.derived.get(node, "w^2", lambda: node.weight**2)

    def _bias(self, node):
        return self.derived.get(node, "b^2", lambda: None if node.bias is None else node.bias**2)


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
        w_pos, w_neg = self.modified(node, "w+"), self.modified(node, "w-")

        def bounds_term():
            """l W+ + h W- (with b+ and b-): the same for every sample, so computed once per input shape."""
            low, high = _bound(self.values["low"], a[:1]), _bound(self.values["high"], a[:1])
            return forward(node, low, w_pos, self.modified(node, "b+")) + forward(node, high, w_neg, self.modified(node, "b-"))

        z_box = z.sub_(self.derived.get(node, ("bounds", tuple(a.shape[1:]), a.dtype, a.device), bounds_term))  # z is ours
        s = divide(relevance, z_box, eps, reuse=ledger is None)
        if ledger is not None:
            ledger.record(s, z_box, None, eps)
        del z_box, z, relevance
        low, high = _bound(self.values["low"], a), _bound(self.values["high"], a)
        return a * transpose(node, s, a, node.weight) - low * transpose(node, s, a, w_pos) - high * transpose(
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
