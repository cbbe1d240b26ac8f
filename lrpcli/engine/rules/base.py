"""The base of every LRP rule: numeric helpers, cached parameter modifications, the ledger.

LRP rules: one class per rule, semantics as zennit 0.5.1 defines them.

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

import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ...errors import ConfigError
from ...registry import suggest
from ..graph import Node


# --------------------------------------------------------------------------- numeric helpers


@functools.lru_cache(maxsize=64)
def _step(epsilon: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """epsilon as a 0-dim tensor in z's dtype (no rounding to float32 in float64 runs), made once: read only."""
    return torch.tensor(epsilon, dtype=dtype, device=device)


def stabilise(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1 (zennit's Stabilizer), as a new tensor."""
    if epsilon == 0:
        return z
    step = _step(epsilon, z.dtype, z.device)
    out = z + 0.0  # turns -0.0 into +0.0, so both zeros get +epsilon
    torch.copysign(step, out, out=out)  # one fast kernel (torch.where is several times slower on CPU)
    return out.add_(z)


_SLICE = 1 << 18  # elements per slice of stabilise_'s sign temporary (1 MiB in float32)


def stabilise_(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """:func:`stabilise`, written into ``z`` (bit for bit the same numbers). For a ``z`` its owner no longer
    needs: the sign temporary is made a slice at a time, so it never costs a whole layer's worth of memory."""
    if epsilon == 0:
        return z
    step = _step(epsilon, z.dtype, z.device)
    z.add_(0.0)  # -0.0 -> +0.0, so both zeros get +epsilon
    for part in z.view(-1).split(_SLICE) if z.is_contiguous() else (z,):
        part.add_(torch.copysign(step, part))
    return z


def divide(relevance: torch.Tensor, z: torch.Tensor, epsilon: "float | Stabiliser", reuse: bool = False) -> torch.Tensor:
    """``R / stabilise(z)``; where the denominator is exactly 0 the result is 0 (for epsilon 0, or a mode that can
    reach 0: ``norm_scale`` on an all-zero sample, ``unsigned`` at z = -epsilon).

    ``epsilon``: a number (the sign mode) or a :class:`Stabiliser`. ``reuse``: ``z`` is the caller's own and not
    needed afterwards, so the result is written into it."""
    stabiliser = Stabiliser.ensure(epsilon)
    if stabiliser.epsilon != 0 and stabiliser.mode in ("sign", "clip"):  # these never give a zero denominator
        same = z.shape == relevance.shape and z.dtype == relevance.dtype
        denominator = stabiliser.apply_(z) if reuse and same else stabiliser(z)
        if same:
            return torch.div(relevance, denominator, out=denominator)  # reuses the buffer: one tensor less at the peak
        return relevance / denominator
    z = stabiliser(z)
    safe = torch.where(z == 0, torch.ones_like(z), z)
    return torch.where(z == 0, torch.zeros_like(relevance), relevance / safe)


#: how a stabiliser makes a denominator safe, by name; the rules' ``stabilizer_mode``
STABILIZER_MODES: dict[str, str] = {
    "sign": "z + eps*sign(z), sign(0) = +1 (the default; zennit's Stabilizer)",
    "clip": "sign(z) * max(|z|, eps) (zennit's Stabilizer(clip=True))",
    "norm_scale": "z + eps*rms(z)*sign(z), rms over each sample's z (zennit's Stabilizer(norm_scale=True))",
    "norm_scale_clip": "sign(z) * max(|z|, eps*rms(z)) (zennit's Stabilizer(clip=True, norm_scale=True))",
    "unsigned": "z + eps (LXT's epsilon rule)",
}
#: the parameters ``zero_params`` may leave out of a rule
ZERO_PARAMS: dict[str, str] = {"bias": "the bias neither takes nor gives relevance (zennit's zero_params, captum's set_bias_to_zero)"}


def options_text() -> str:
    """The rule options shared by many rules, explained once under ``lrp rules``."""
    lines = ["", "stabilizer_mode (the rules with epsilon or stabilizer): how eps makes the denominator z safe"]
    lines += [f"  {name:<16} {text}" for name, text in STABILIZER_MODES.items()]
    lines += ["zero_params (the rules for layers with weights): parameters left out of the modified forward"]
    lines += [f"  [{name}]{'':<{13 - len(name)}} {text}" for name, text in ZERO_PARAMS.items()]
    lines += ["Both also go under a composite's params, for every rule that takes them."]
    return "\n".join(lines)


@dataclass(frozen=True)
class Stabiliser:
    """What makes a rule's denominator safe: ``epsilon`` applied as ``mode`` says (:data:`STABILIZER_MODES`).

    ``batch_dim``: the dim that holds the samples, so that ``norm_scale`` takes each sample's own norm."""

    epsilon: float
    mode: str = "sign"
    batch_dim: int = 0

    @classmethod
    def ensure(cls, value: "float | Stabiliser") -> "Stabiliser":
        return value if isinstance(value, Stabiliser) else cls(float(value))

    def _step(self, z: torch.Tensor) -> torch.Tensor | float:
        """epsilon, or (norm_scale) epsilon times each sample's root mean square of z, shaped to broadcast."""
        if not self.mode.startswith("norm_scale"):
            return self.epsilon
        dims = tuple(d for d in range(z.ndim) if d != min(self.batch_dim, z.ndim - 1))
        return z.square().mean(dim=dims, keepdim=True).sqrt_().mul_(self.epsilon) if dims else z.abs() * self.epsilon

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """The stabilised denominator, as a new tensor (``z`` itself for epsilon 0)."""
        if self.epsilon == 0:
            return z
        if self.mode == "sign":
            return stabilise(z, self.epsilon)
        step = self._step(z)
        if self.mode == "unsigned":
            return z + step
        signs = z + 0.0  # -0.0 -> +0.0: sign(0) = +1, as zennit's (z == 0) + sign(z)
        if self.mode.endswith("clip"):
            return torch.copysign(z.abs().clamp_(min=step) if isinstance(step, float) else torch.maximum(z.abs(), step), signs)
        return torch.copysign(torch.as_tensor(step, dtype=z.dtype, device=z.device).expand_as(z), signs).add_(z)

    def apply_(self, z: torch.Tensor) -> torch.Tensor:
        """:meth:`__call__`, written into ``z`` (the sign mode without a whole temporary)."""
        if self.mode == "sign":
            return stabilise_(z, self.epsilon)
        return z.copy_(self(z))


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

    def __init__(self, batch: int | None = None, batch_dim: int = 0, features_last: bool = False) -> None:
        self.bias: torch.Tensor | None = None
        self.stabilizer: torch.Tensor | None = None
        self.rule: torch.Tensor | None = None  # what a non-conservative rule itself took (softmax's Taylor rule)
        self.batch = batch  # samples per batch, and the dim of the node's output that holds them
        self.batch_dim = batch_dim
        self.features_last = features_last  # the node is a linear layer: its bias broadcasts along the last dim

    def per_sample(self, t: torch.Tensor) -> torch.Tensor:
        """Totals per sample of a tensor shaped like the node's output (samples at ``batch_dim``)."""
        if self.batch is None:
            return t.reshape(t.shape[0], -1).sum(dim=1)
        return t.movedim(min(self.batch_dim, t.ndim - 1), 0).reshape(self.batch, -1).sum(dim=1)

    def _add(self, name: str, value: torch.Tensor) -> None:
        current = getattr(self, name)
        setattr(self, name, value if current is None else current + value)

    def record(
        self, s: torch.Tensor, z_mod: torch.Tensor, bias: torch.Tensor | None, epsilon: "float | Stabiliser", weight: float = 1.0
    ) -> None:
        """For R = s * stabilise(z_mod) (the stabiliser as the divide had it): the share of R the (modified) bias and
        the stabiliser took. ``bias`` is None where the rule left the bias out."""
        stabiliser = Stabiliser.ensure(epsilon)
        if stabiliser.epsilon:
            self._add("stabilizer", weight * self.per_sample(s * (stabiliser(z_mod) - z_mod)))
        if bias is not None:  # a linear layer's bias runs along the last dim (tokens x features), a conv's along dim 1
            shape = (-1,) if self.features_last else (1, -1) + (1,) * (s.ndim - 2)
            self._add("bias", weight * self.per_sample(s * bias.reshape(shape)))


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] | None = None  #: the names the value may take
    many: bool = False  #: with choices: a list of them (a single name counts as a list of one)

    def check(self, rule: str, key: str, value: Any) -> Any:
        """The value, checked against ``choices`` (a tuple of names where ``many``); ConfigError naming the allowed ones."""
        if self.choices is None:
            return value
        items = [value] if self.many and isinstance(value, str) else value if self.many else [value]
        if not isinstance(items, (list, tuple)):
            items = [items]
        allowed = ", ".join(self.choices)
        for item in items:
            if not isinstance(item, str) or item not in self.choices:
                hint = suggest(str(item), list(self.choices)) if isinstance(item, str) else None
                what = f"a list of {allowed}" if self.many else f"one of {allowed}"
                raise ConfigError(f"rule '{rule}': {key} takes {what}, got {value!r}", key=key, hint=hint or f"allowed: {allowed}")
        return tuple(dict.fromkeys(items)) if self.many else value


STABILIZER_MODE = Param("sign", "how the stabiliser makes the denominator safe: " + " | ".join(STABILIZER_MODES), choices=tuple(STABILIZER_MODES))
ZERO_PARAMS_PARAM = Param([], "parameters left out of the rule: [bias] (the bias neither takes nor gives relevance)", choices=tuple(ZERO_PARAMS), many=True)


class Rule:
    """Base class: a rule is configured once (``Rule(**params)``) and applied per node."""

    name: ClassVar[str]
    formula: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    #: composite-level params this rule takes as defaults (zennit's constructor arguments)
    inherits: ClassVar[tuple[str, ...]] = ()
    #: the node kinds the rule can serve (a composite entry skips other kinds it matches)
    kinds: ClassVar[tuple[str, ...]] = ("conv", "linear", "batchnorm")
    #: whether ``weighted`` may write into the ``z`` it is handed (to save a layer's worth of memory): a walk that
    #: keeps the recorded forward for further seeds hands such a rule a copy of z (propagate.ReadOnlyWalk)
    overwrites_z: ClassVar[bool] = True
    #: whether ``weighted`` takes ``reuse_z=False`` and then leaves ``z`` as it is (the walk need not copy it)
    spares_z: ClassVar[bool] = False
    #: whether ``weighted`` on a linear layer treats each row (token) of its input on its own, so that the walk may
    #: hand it only the rows that hold relevance (propagate.live_rows); z^B's per-input bounds do not
    row_wise: ClassVar[bool] = True

    def __init__(self, **values: Any):
        unknown = set(values) - set(self.params)
        if unknown:
            raise ConfigError(f"rule '{self.name}' takes no parameter(s) {sorted(unknown)}")
        self.values = {key: spec.default for key, spec in self.params.items()}
        self.values.update(values)
        for key, spec in self.params.items():
            value = self.values[key] = spec.check(self.name, key, self.values[key])
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

    def stabiliser(self, node: Node, key: str = "stabilizer") -> Stabiliser:
        """The stabiliser of this rule's denominators at ``node``: parameter ``key`` in the rule's stabilizer_mode."""
        return Stabiliser(float(self.values[key]), self.values.get("stabilizer_mode", "sign"), node.batch_dim or 0)

    @property
    def rows_independent(self) -> bool:
        """Whether a row of a linear layer's input gets the same relevance computed alone as with the others: not
        where the stabiliser scales with a whole sample's z (``norm_scale``)."""
        return self.row_wise and not str(self.values.get("stabilizer_mode", "sign")).startswith("norm_scale")

    @property
    def zero_bias(self) -> bool:
        """``zero_params: [bias]``: the bias is left out of the modified forward, so it neither takes nor gives."""
        return "bias" in self.values.get("zero_params", ())

    def bias_of(self, node: Node, key: str | None = None) -> torch.Tensor | None:
        """The node's bias (``key``: a modified one, see :data:`MODIFIERS`), or None where the rule leaves it out."""
        if self.zero_bias:
            return None
        return node.bias if key is None else self.modified(node, key)

    def unbiased(self, node: Node, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The node's output ``z``, or where the rule leaves the bias out, ``W a`` computed again (not ``z - b``,
        which would lose the digits the bias cancels)."""
        if not self.zero_bias or node.bias is None:
            return z
        return forward(node, a, node.weight, None)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{self.name}({args})"

    def weighted(
        self, node: Node, a: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor, ledger: Ledger | None = None
    ) -> torch.Tensor:
        """Relevance of the input ``a`` of a weighted node with output ``z``.

        The walk hands over the only references to ``z`` and ``relevance``: a rule may free them, and overwrite
        them where its class says ``overwrites_z`` (``relevance`` always)."""
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

    def propagate(
        self,
        node: Node,
        values: dict[str, Any],
        inputs: list[str],
        z: torch.Tensor,
        relevance: torch.Tensor,
        ledger: Ledger | None = None,
    ) -> dict[str, torch.Tensor]:
        """Relevance of the inputs of a normalisation, product or softmax node (``kinds`` says which)."""
        raise NotImplementedError(f"rule '{self.name}' does not serve {node.kind} nodes")


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
