"""Test-only reference for AttnLRP and CP-LRP: the rules as a *modified gradient* times input.

Independent of lrpcli: the model is captured with ``torch.export`` and its ATen graph is
re-run by a ``torch.fx.Interpreter`` in which some ops are swapped for versions with the
same forward value and a modified gradient (research/transformers-lrp.md §1, right column;
§7 item 1). One backward pass from the target logit then gives the relevance as
``x * x.grad`` (or ``(E * E.grad).sum(-1)`` at the token-id embeddings).

Seeding: the gradient at the output is 1 at the target and 0 elsewhere, so the relevance
at the output is the target logit itself (R_out = out * grad_out) and, for a bias-free
model whose rules are all conservative (CP-LRP), ``sum(R_in) == logit``. (LXT's
``logit.backward(logit)`` seeds with the logit instead: its relevances are ours times the
logit.)

Rules, per ATen op (a = an *activation*: a tensor that depends on the input through a path
no rule has detached; constants and parameters are never activations):

==================================  =====================================  ===========================
op                                  ``attnlrp``                            ``cp``
==================================  =====================================  ===========================
gelu silu tanh sigmoid relu ...     identity: grad = out / x               same
activation modules written as       the whole module collapsed to one      same
several ops (HF gelu_new, ...)      identity (one activation input)
layer_norm group_norm rms_norm      std / rsqrt detached, centring kept    same
sqrt rsqrt var std norm, pow(,-.5)  of an activation: output detached      same
div(a, a')                          divisor detached                       same
softmax (inside the model)          plain gradient (Prop. 3.1)             output detached
matmul bmm mm einsum (a, a')        output gradient / 2 (Prop. 3.3)        same (attention never
                                                                           reaches it: softmax is
                                                                           detached)
mul(a, a')                          output gradient / 2 (Prop. 3.2)        gate (an operand made by
                                                                           an activation) detached
mul(signal, sigmoid|hardsigmoid)    gate detached: signal takes all        same
scaled_dot_product_attention        grad of q, k x 1/4, of v x 1/2         q, k detached
embedding (of the input ids)        relevance sink (embedding_relevance)   same
everything else (linear, conv,      plain gradient (= LRP-epsilon,         same
add, mean, cat, shapes, masks)      epsilon -> 0)
==================================  =====================================  ===========================

Ops that multiply two activations in a way no rule covers (``linear``/``conv``/``addmm``
with an activation as weight, ``addcmul``, ...) raise ``NotImplementedError``: an oracle must
not give a silent wrong answer.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree

__all__ = ["modified_gradient_relevance", "embedding_relevance", "MODES"]

MODES = ("attnlrp", "cp")

#: zero guard for the identity rule's out / x (sign-safe: 0 counts as positive)
TINY = 1e-12

_ELEMENTWISE = {
    "relu", "leaky_relu", "rrelu", "gelu", "silu", "tanh", "sigmoid", "hardsigmoid", "hardswish",
    "hardtanh", "relu6", "elu", "selu", "celu", "softplus", "mish", "prelu", "threshold", "logsigmoid",
}
_GATES = {"sigmoid", "hardsigmoid", "act:Sigmoid", "act:Hardsigmoid"}
_STATISTICS = {"sqrt", "rsqrt", "var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm"}
_SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax"}
_BILINEAR = {"matmul", "bmm", "mm"}
_UNCOVERED_PRODUCTS = {
    "linear", "addmm", "baddbmm", "addbmm", "addmv", "addcmul", "addcdiv", "conv1d", "conv2d", "conv3d",
    "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "mv", "dot",
    "vdot", "bilinear", "outer", "ger", "kron", "prod", "cross", "tensordot",
}
#: ops that move values without computing: a gate stays a gate through them
_ROUTE = {
    "view", "reshape", "_unsafe_view", "expand", "expand_as", "unsqueeze", "squeeze", "permute", "transpose",
    "t", "clone", "contiguous", "flatten", "unflatten", "slice", "select", "dropout", "alias", "to", "_to_copy",
    "type_as", "repeat", "getitem", "lift_fresh_copy",
}
_NOT_ACTIVATION_MODULES = {"MultiheadAttention", "Softmax", "Softmin", "LogSoftmax", "Softmax2d", "GLU"}
_ACTIVATION_MODULE_PREFIXES = ("torch.nn.modules.activation.", "transformers.activations.")


# --------------------------------------------------------------------------- gradient tools


def _live(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Forward: exactly ``t``. Backward: the gradient times ``factor``."""
    if not _live(t) or factor == 1:
        return t
    return t.detach() + (t - t.detach()) * factor


def identity_rule(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Forward: exactly ``out`` (= f(x), same shape). Backward: grad * f(x) / x, so R_in = R_out."""
    out = out.detach()
    if not _live(x):
        return out
    xd = x.detach()
    denom = xd + TINY * torch.where(xd >= 0, 1.0, -1.0).to(xd.dtype)
    ratio = out / denom
    return out + (x - xd) * ratio


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", str(target))


def _module_entry(node: torch.fx.Node) -> tuple[str, str, str] | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    key, (path, typ) = list(stack.items())[-1]
    if not isinstance(typ, str):
        typ = f"{typ.__module__}.{typ.__qualname__}"
    return key, path, typ


def _activation_groups(gm: torch.fx.GraphModule) -> dict[str, tuple[list[str], str, int]]:
    """exit node -> (names of the group's outside inputs, module class name, op count).

    An activation module (torch.nn activations, transformers.activations) whose call became
    several ATen ops (HF ``NewGELUActivation`` = mul/pow/add/tanh/mul) is one element-wise
    function: it gets one identity rule, from its single activation input to its single exit.
    """
    members: dict[str, list[torch.fx.Node]] = {}
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        entry = _module_entry(node)
        if entry is None:
            continue
        key, _path, typ = entry
        short = typ.rsplit(".", 1)[-1]
        if typ.startswith(_ACTIVATION_MODULE_PREFIXES) and short not in _NOT_ACTIVATION_MODULES:
            members.setdefault(key, []).append(node)
            names[key] = short
    groups = {}
    for key, nodes in members.items():
        inside = set(nodes)
        exits = [n for n in nodes if any(user not in inside for user in n.users)]
        inputs = sorted({a.name for n in nodes for a in n.all_input_nodes if a not in inside})
        if len(exits) == 1:
            groups[exits[0].name] = (inputs, names[key], len(nodes))
    return groups


# --------------------------------------------------------------------------- interpreter


class _ModifiedGradient(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, mode: str, ids_input: bool):
        super().__init__(gm, garbage_collect_values=False)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.ids_input = ids_input
        self.kind: dict[str, str] = {}  # node -> what produced its value (through route ops)
        self.ids_alias: set[str] = set()  # the ids placeholder and views of it
        self.sinks: list[torch.Tensor] = []
        self.groups = _activation_groups(gm)
        self.by_name = {node.name: node for node in gm.graph.nodes}
        self._first_placeholder = True

    # parameters and buffers are constants, never activations
    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return value.detach() if isinstance(value, torch.Tensor) else value

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op == "placeholder":
            out = super().run_node(n)
            if self._first_placeholder and self.ids_input:
                self.ids_alias.add(n.name)
            self._first_placeholder = False
            return out
        if n.op != "call_function":
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        name = _op_name(n.target)
        if name in _ROUTE and n.all_input_nodes and n.all_input_nodes[0].name in self.ids_alias:
            self.ids_alias.add(n.name)
        out = self._call(n, name, args, kwargs)
        # provenance: route ops keep what produced their input
        if name in _ROUTE and n.all_input_nodes:
            self.kind[n.name] = self.kind.get(n.all_input_nodes[0].name, "")
        else:
            self.kind[n.name] = name
        group = self.groups.get(n.name)
        if group is not None:
            inputs, short, count = group
            live = [self.env[self.by_name[i]] for i in inputs]
            live = [v for v in live if _live(v)]
            if len(live) == 1 and isinstance(out, torch.Tensor) and live[0].shape == out.shape:
                out = identity_rule(live[0], out)
                if count > 1:
                    self.kind[n.name] = "act:" + short
        return out

    # -- the rules

    def _call(self, n: torch.fx.Node, name: str, args: tuple, kwargs: dict) -> Any:
        target = n.target
        if name == "embedding" and self.ids_input:
            out = target(*args, **kwargs)
            indices = n.args[1] if len(n.args) > 1 else n.kwargs.get("indices")
            if isinstance(indices, torch.fx.Node) and indices.name in self.ids_alias:
                sink = out.detach().requires_grad_(True)
                self.sinks.append(sink)
                return sink
            return out.detach()
        if name in _ELEMENTWISE and args and _live(args[0]):
            out = target(args[0].detach(), *args[1:], **kwargs)
            return identity_rule(args[0], out)
        if name in ("layer_norm", "native_layer_norm"):
            return _layer_norm(name, *args, **kwargs)
        if name in ("group_norm", "native_group_norm"):
            return _group_norm(name, *args, **kwargs)
        if name == "rms_norm":
            return _rms_norm(*args, **kwargs)
        if name in _STATISTICS or (name == "pow" and _is_statistic_power(args)):
            return _detach_tree(target(*args, **kwargs))
        if name in _SOFTMAX:
            out = target(*args, **kwargs)
            return out.detach() if self.mode == "cp" else out
        if name == "scaled_dot_product_attention":
            return self._sdpa(target, args, kwargs)
        if name in _BILINEAR and _live(args[0]) and _live(args[1]):
            return scale_grad(target(*args, **kwargs), 0.5)
        if name == "einsum":
            live = sum(_live(t) for t in args[1])
            return scale_grad(target(*args, **kwargs), 1.0 / live if live > 1 else 1.0)
        if name == "mul" and _live(args[0]) and len(args) > 1 and _live(args[1]):
            return self._mul(n, target, args, kwargs)
        if name == "div" and _live(args[0]) and len(args) > 1 and _live(args[1]):
            return target(args[0], args[1].detach(), *args[2:], **kwargs)
        if name in _UNCOVERED_PRODUCTS:
            live = [t for t in pytree.tree_leaves((args, kwargs)) if _live(t)]
            if len(live) > 1:
                raise NotImplementedError(f"the oracle has no rule for '{name}' of {len(live)} activations ({n.name})")
        return target(*args, **kwargs)

    def _mul(self, n, target, args, kwargs):
        a, b = args[0], args[1]
        kinds = [self.kind.get(x.name, "") if isinstance(x, torch.fx.Node) else "" for x in n.args[:2]]
        gate = [k in _GATES for k in kinds]
        if self.mode == "cp" and not any(gate):
            gate = [k in _ELEMENTWISE or k.startswith("act:") for k in kinds]
        if gate[0] != gate[1]:  # one gate: it is a constant, the signal takes all
            a, b = (a.detach(), b) if gate[0] else (a, b.detach())
            return target(a, b, *args[2:], **kwargs)
        return scale_grad(target(*args, **kwargs), 0.5)

    def _sdpa(self, target, args, kwargs):
        q, k, v = args[:3]
        if self.mode == "cp":
            q, k = q.detach(), k.detach()
        else:
            a_live = _live(q) or _live(k)
            qk_factor = 0.5 if (_live(q) and _live(k)) else 1.0
            av_factor = 0.5 if (a_live and _live(v)) else 1.0
            q, k = scale_grad(q, qk_factor * av_factor), scale_grad(k, qk_factor * av_factor)
            v = scale_grad(v, av_factor)
        return target(q, k, v, *args[3:], **kwargs)


def _detach_tree(value: Any) -> Any:
    return pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, value)


def _is_statistic_power(args: tuple) -> bool:
    return len(args) > 1 and isinstance(args[1], (int, float)) and args[1] in (-1, -0.5, 0.5) and _live(args[0])


def _normalise(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x - mean) / std with std a constant; also the mean and 1/std (detached)."""
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dims, keepdim=True)
    std = torch.sqrt(var + eps).detach()
    return centred / std, mean.detach(), (1.0 / std)


def _layer_norm(name, x, normalized_shape, weight=None, bias=None, eps=1e-5, *_rest, **_kw):
    dims = tuple(range(-len(normalized_shape), 0))
    y, mean, rstd = _normalise(x, dims, eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return (y, mean, rstd) if name == "native_layer_norm" else y


def _group_norm(name, x, *args, **kwargs):
    if name == "group_norm":
        groups = args[0] if args else kwargs["num_groups"]
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-5)
    else:  # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
        weight, bias, _n, _c, _hw, groups, eps = args[:7]
    shape = x.shape
    grouped = x.reshape(shape[0], groups, -1)
    y, mean, rstd = _normalise(grouped, (-1,), eps)
    y = y.reshape(shape)
    affine = (1, -1) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(affine)
    if bias is not None:
        y = y + bias.reshape(affine)
    return (y, mean.reshape(shape[0], groups), rstd.reshape(shape[0], groups)) if name == "native_group_norm" else y


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    dims = tuple(range(-len(normalized_shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x * torch.rsqrt((x * x).mean(dims, keepdim=True) + eps).detach()
    return y if weight is None else y * weight


# --------------------------------------------------------------------------- public API


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict):
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"cannot find the logits in a {type(output).__name__}")


class _LogitsOnly(torch.nn.Module):
    """``model(inp, **kwargs)`` reduced to its logits tensor (HF outputs also carry caches,
    which torch.export cannot return); tensor kwargs become inputs, the others constants."""

    def __init__(self, model: torch.nn.Module, names: list[str], constants: dict):
        super().__init__()
        self.model = model
        self.names = names
        self.constants = constants

    def forward(self, inp, *values):
        return _logits(self.model(inp, **dict(zip(self.names, values)), **self.constants))


def _run(model, inp: torch.Tensor, mode: str, ids_input: bool, model_kwargs: dict):
    tensors = {k: v for k, v in model_kwargs.items() if isinstance(v, torch.Tensor)}
    constants = {k: v for k, v in model_kwargs.items() if k not in tensors}
    if isinstance(model, torch.export.ExportedProgram):
        gm = model.module()
    else:
        model.eval()
        wrapped = _LogitsOnly(model, list(tensors), constants)
        gm = torch.export.export(wrapped, (inp, *tensors.values())).module()
    interp = _ModifiedGradient(gm, mode, ids_input)
    out = interp.run(inp, *tensors.values(), enable_io_processing=False)
    return _logits(out), interp


def _seed(logits: torch.Tensor, target) -> torch.Tensor:
    """1 at each sample's target (index into the sample's flattened output), 0 elsewhere."""
    batch = logits.shape[0]
    flat = logits.reshape(batch, -1)
    target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if target.numel() == 1:
        target = target.expand(batch)
    seed = torch.zeros_like(flat)
    seed[torch.arange(batch, device=logits.device), target] = 1.0
    return seed.reshape(logits.shape)


def modified_gradient_relevance(model, x: torch.Tensor, target, mode: str = "attnlrp", epsilon: float = 1e-6,
                                **model_kwargs) -> torch.Tensor:
    """Relevance of the float input ``x`` (same shape) for ``target`` (int or one per sample).

    The relevance at the output is the target logit (epsilon is accepted for API symmetry;
    the gradient form is the epsilon -> 0 limit of the epsilon rules).
    """
    del epsilon
    inp = x.detach().clone().requires_grad_(True)
    logits, _ = _run(model, inp, mode, False, model_kwargs)
    if not logits.requires_grad:  # every path to the output was detached by a rule
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(logits, inp, grad_outputs=_seed(logits, target), allow_unused=True)
    if grad is None:
        return torch.zeros_like(x)
    return (inp * grad).detach()


def embedding_relevance(model, ids: torch.Tensor, target, mode: str = "attnlrp", epsilon: float = 1e-6,
                        **model_kwargs) -> torch.Tensor:
    """Per-token relevance (batch, seq) of a token-id model: ``(E * E.grad).sum(-1)``, summed over
    every embedding lookup whose indices are the input ids (or a view of them). Other lookups
    (positions, token types, even ones computed from the ids) are constants: like biases, they
    keep their share. ``model_kwargs`` (e.g. ``attention_mask``) are passed to the model."""
    del epsilon
    logits, interp = _run(model, ids, mode, True, model_kwargs)
    if not interp.sinks:
        raise ValueError("no embedding lookup of the input ids was found in the model")
    if not logits.requires_grad:
        return torch.zeros(ids.shape, dtype=interp.sinks[0].dtype)
    grads = torch.autograd.grad(logits, interp.sinks, grad_outputs=_seed(logits, target), allow_unused=True)
    total = torch.zeros(ids.shape, dtype=interp.sinks[0].dtype)
    for sink, grad in zip(interp.sinks, grads):
        if grad is not None:
            total = total + (sink * grad).sum(-1).reshape(ids.shape)
    return total.detach()
