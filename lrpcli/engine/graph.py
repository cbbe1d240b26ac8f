"""The graph IR: every model, however it arrives, becomes one :class:`Graph`.

A topologically ordered list of :class:`Node` s, each an ATen op with its *kind* (see ``ops.py``), its
constant arguments (weights inlined as tensors) and the module it came from. The engine runs this graph
forward and walks it backward; canonizers rewrite it. capture.py makes one from a model, builder.py from
an fx GraphModule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch

from ..errors import ModelError, UnsupportedOpError


class Ref(NamedTuple):
    """A reference, inside a node's args, to another node's output."""

    name: str


def channel_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Batch-norm in eval mode, as the affine map it is: ``x * weight + bias`` per channel (dim 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = x * weight.reshape(shape)
    return out if bias is None else out + bias.reshape(shape)


def complex_mul(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``view_as_real(view_as_complex(x) * view_as_complex(factor))`` in real arithmetic: pairs (re, im) in the
    last dim of ``x`` times a constant complex ``factor`` given as pairs too. A rotary embedding written with
    complex numbers (Llama 4) rotates each pair by constant angles: a linear map of x, whose rules are real."""
    re, im = x.unbind(-1)
    factor_re, factor_im = factor.unbind(-1)
    return torch.stack((re * factor_re - im * factor_im, re * factor_im + im * factor_re), dim=-1)


@dataclass(frozen=True)
class Folded:
    """A batch-norm folded into the conv/linear node before it (canonizers.fold_batchnorm).

    The node's args hold the merged weight and bias, which the rules use. Its forward runs the layer's own
    weight and bias and then the batch-norm's affine map, as the model does: recorded values, and the position
    a max-pool picks among exact ties, are the model's own, not the merged weights' rounding.
    """

    weight: torch.Tensor  # the layer's own
    bias: torch.Tensor | None
    scale: torch.Tensor  # the batch-norm as y = scale * x + shift, per channel (dim 1 of the output)
    shift: torch.Tensor
    #: a transposed conv's groups (its weight is (in, out / groups, *kernel)); None: output channels in dim 0
    transposed_groups: int | None = None

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged weight and bias: ``scale * (W a + b) + shift`` as one layer."""
        weight, scale = self.weight, self.scale
        if self.transposed_groups is None:
            merged = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        else:
            groups = self.transposed_groups
            per_group = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
            merged = (per_group * scale.reshape(groups, 1, weight.shape[1], *(1,) * (weight.ndim - 2))).reshape(weight.shape)
        bias = self.shift if self.bias is None else self.bias * scale + self.shift
        return merged, bias

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Folded":
        return dataclasses.replace(
            self, **{key: fn(getattr(self, key)) for key in ("weight", "bias", "scale", "shift") if getattr(self, key) is not None}
        )


@dataclass
class Node:
    """One op of the graph.

    For weighted kinds (conv, linear, batchnorm) ``args[0]`` is the input, ``args[1]``
    the weight and ``args[2]`` the bias (None when absent).
    """

    name: str
    target: Callable
    kind: str | None  # None: unsupported op
    args: tuple
    kwargs: dict
    module: str = ""  # module path, e.g. "features.0"; "" for the top level
    module_type: str = ""  # e.g. "Conv2d"
    op: str = ""  # op name as captured, for messages
    hint: str | None = None  # for unsupported nodes: what to do
    held: tuple[str, ...] = ()  # inputs held constant whatever the rule (a normaliser computed from statistics)
    gates: tuple[str, ...] = ()  # inputs of a product that gate the other (sigmoid, softmax): rules may hold them
    gate_op: str = ""  # the op that made the gate ("sigmoid", "softmax", ...): a composite's type `gate` is sigmoid-like
    batch_dim: int | None = 0  # the output's dim that holds the samples (attention code moves it); None: mixed in
    folded: Folded | None = None  # a batch-norm merged into this conv/linear: args hold the merged weight and bias

    @property
    def refs(self) -> list[str]:
        """Names of all nodes this one reads (activations and meta values). Kept until ``args`` or ``kwargs``
        is replaced: every walk of every seed asks for it (issue 28)."""
        cached = self.__dict__.get("_refs")
        if cached is None or cached[0] is not self.args or cached[1] is not self.kwargs:
            found: list[str] = []
            _walk(self.args, found)
            _walk(self.kwargs, found)
            cached = self.__dict__["_refs"] = (self.args, self.kwargs, tuple(found))
        return list(cached[2])

    @property
    def path(self) -> str:
        """The layer path a composite's ``name`` glob matches: the module path or the node name."""
        return self.module or self.name

    @property
    def weight(self) -> torch.Tensor:
        return self.args[1]

    @property
    def bias(self) -> torch.Tensor | None:
        return self.args[2]

    @property
    def is_transposed_conv(self) -> bool:
        name = self.op
        if name.startswith("conv_transpose"):
            return True
        if name in ("convolution", "_convolution"):
            return bool(self.args[6])
        return False

    def call(self, values: dict[str, Any]) -> Any:
        """Run the op on recorded values."""
        if self.folded is not None:
            return self._call_folded(values[self.args[0].name])
        return self.target(*_resolve(self.args, values), **_resolve(self.kwargs, values))

    def _call_folded(self, x: torch.Tensor) -> torch.Tensor:
        """The layer with its own weight and bias, then the batch-norm folded into it (see :class:`Folded`)."""
        folded = self.folded
        out = self.call_with(x, folded.weight, folded.bias)
        if self.kind == "linear" and out.ndim != 2:
            raise ModelError(
                f"the batch-norm after {self.describe()} normalises dim 1 of an output shaped {tuple(out.shape)}, "
                "not the linear layer's features (the last dim), so it cannot be folded into it",
                hint="explain with a composite whose canonizers leave out fold_batchnorm (canonizers: [])",
            )
        shape = (1, -1) + (1,) * (out.ndim - 2)  # channel_affine's arithmetic, in place on the layer's fresh output
        return out.mul_(folded.scale.reshape(shape)).add_(folded.shift.reshape(shape))

    def call_with(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Run a weighted op with a substituted input, weight and bias (the rules' modified forward)."""
        args = (x, weight, bias) + tuple(self.args[3:])
        return self.target(*args, **self.kwargs)

    def describe(self) -> str:
        where = f"{self.module} ({self.module_type})" if self.module else "top level"
        return f"node '{self.name}' [{self.op}] in {where}"


def _walk(obj: Any, found: list[str]) -> None:
    if isinstance(obj, Ref):
        found.append(obj.name)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _walk(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _walk(item, found)


def map_leaves(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Rebuild a node's (nested) args with ``fn`` applied to every leaf (Refs, tensors, numbers)."""
    if isinstance(obj, Ref):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_leaves(item, fn) for item in obj)
    if isinstance(obj, list):
        return [map_leaves(item, fn) for item in obj]
    if isinstance(obj, dict):
        return {key: map_leaves(item, fn) for key, item in obj.items()}
    return fn(obj)


def _resolve(obj: Any, values: dict[str, Any]) -> Any:
    return map_leaves(obj, lambda leaf: values[leaf.name] if isinstance(leaf, Ref) else leaf)


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    return map_leaves(obj, lambda leaf: fn(leaf) if isinstance(leaf, torch.Tensor) else leaf)


@dataclass
class Graph:
    """A captured model: the input, the ops in execution order, and the output."""

    input: str
    nodes: list[Node]
    output: str
    source: str  # "export", "torchscript" or "exported_program"
    input_shape: tuple[int, ...]  # example input shape (batch dim included)
    dynamic_batch: bool = True
    notes: list[str] = field(default_factory=list)  # what canonizers did, for the user
    extra_inputs: tuple[str, ...] = ()  # further inputs (an attention mask): given per batch, never explained
    #: further explained inputs after ``input`` (``explain(model, (x1, x2))``): each gets its own relevance
    more_inputs: tuple[str, ...] = ()

    @property
    def explained(self) -> tuple[str, ...]:
        """The inputs that get relevance, in the model's order."""
        return (self.input,) + self.more_inputs

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {name: [] for name in self.explained}
        for node in self.nodes:
            users.setdefault(node.name, [])
            for ref in node.refs:
                users.setdefault(ref, []).append(node.name)
        return users

    def replace(self, **changes) -> "Graph":
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Graph":
        """A copy whose constants live on ``device``, those in the model's floating dtype (the one most constant
        elements have: its weights') in ``dtype``, and its casts to the model's dtype cast to ``dtype``.

        Constants the model keeps in another floating dtype on purpose (rotary frequencies in float32 beside
        float64 weights, ModernBERT) stay in it, as do casts to it: the graph computes what the model does."""
        source = self.float_dtype() if dtype is not None else None

        def convert(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.is_floating_point() and tensor.dtype == source:
                return tensor.to(device=device, dtype=dtype)
            return tensor.to(device=device)

        def leaf(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return convert(value)
            return dtype if isinstance(value, torch.dtype) and value == source else value

        def move(node: Node) -> Node:
            args, folded = map_leaves(node.args, leaf), node.folded
            if folded is not None:  # merged again in the new dtype, from the layer's and the batch-norm's own tensors
                folded = folded.map(convert)
                args = (args[0], *folded.merged(), *args[3:])
            return dataclasses.replace(node, args=args, kwargs=map_leaves(node.kwargs, leaf), folded=folded)

        return self.replace(nodes=[move(node) for node in self.nodes])

    def float_dtype(self) -> torch.dtype | None:
        """The floating dtype most constant elements have (the model's weights'), or None without float constants."""
        counts: dict[torch.dtype, int] = {}

        def count(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                counts[value.dtype] = counts.get(value.dtype, 0) + value.numel()
            return value

        for node in self.nodes:
            map_leaves((node.args, node.kwargs), count)
        return max(counts, key=counts.get) if counts else None

    def relevant(self) -> set[str]:
        """Names of the nodes relevance can reach from the output (held inputs and meta values excluded)."""
        by_name = {node.name: node for node in self.nodes}
        reached = {self.output}
        for node in reversed(self.nodes):
            if node.name in reached and node.kind != "meta":
                reached.update(ref for ref in node.refs if ref not in node.held and ref in by_name)
        return reached

    def unsupported(self) -> list[Node]:
        """Nodes no rule covers, where relevance can reach them (a normaliser's sqrt cannot)."""
        relevant = self.relevant()
        return [node for node in self.nodes if node.kind is None and node.name in relevant]

    def check_supported(self) -> None:
        """Raise UnsupportedOpError for the first op no rule covers."""
        for node in self.unsupported():
            raise UnsupportedOpError(node.op, node.name, node.module, node.module_type, hint=node.hint)

    def run(self, x: Any, extras: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the graph forward, keeping every node's output (names -> values)."""
        values: dict[str, Any] = self.inputs(x, extras)
        for node in self.nodes:
            values[node.name] = node.call(values)
        return values

    def inputs(self, x: Any, extras: dict[str, Any] | None = None) -> dict[str, Any]:
        """The input(s) and the extra inputs, by graph name (extras are matched by name, else in order); ``x`` is
        a tuple of tensors where the graph explains several inputs."""
        extras = dict(extras or {})
        if len(extras) != len(self.extra_inputs):
            from ..errors import InputError

            raise InputError(
                f"the model takes the extra input(s) {', '.join(self.extra_inputs) or '(none)'}; got {', '.join(extras) or 'none'}",
                hint="pass them as inputs={name: tensor}, one row per sample",
            )
        xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        if len(xs) != len(self.explained):
            from ..errors import InputError

            raise InputError(f"the graph explains {len(self.explained)} input(s), got {len(xs)}", hint="give one tensor per explained input, in the model's order")
        values: dict[str, Any] = dict(zip(self.explained, xs))
        given = list(extras.values())
        for index, name in enumerate(self.extra_inputs):
            values[name] = extras[name] if name in extras else given[index]
        return values

    def __call__(self, x: Any, extras: dict[str, Any] | None = None) -> torch.Tensor:
        return self.run(x, extras)[self.output]
