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

import weakref
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ...errors import ConfigError
from ..graph import Node


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

    def record(self, s: torch.Tensor, z_mod: torch.Tensor, bias: torch.Tensor | None, epsilon: float, weight: float = 1.0) -> None:
        """For R = s * stabilise(z_mod): the share of R the (modified) bias and the stabiliser took."""
        if epsilon:
            self._add("stabilizer", weight * self.per_sample(s * (stabilise(z_mod, epsilon) - z_mod)))
        if bias is not None:  # a linear layer's bias runs along the last dim (tokens x features), a conv's along dim 1
            shape = (-1,) if self.features_last else (1, -1) + (1,) * (s.ndim - 2)
            self._add("bias", weight * self.per_sample(s * bias.reshape(shape)))


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
    #: the node kinds the rule can serve (a composite entry skips other kinds it matches)
    kinds: ClassVar[tuple[str, ...]] = ("conv", "linear", "batchnorm")

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
