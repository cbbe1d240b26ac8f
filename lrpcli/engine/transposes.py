"""Transposed passes: how relevance (or any gradient-like signal) flows back through an op.

Every LRP step ends in ``W^T s`` for its op. Doing that with autograd would build a
graph per step (and recompute the op), so the common ops get their transpose
directly: ``s @ W`` for linear layers, ``convolution_backward`` for convolutions, a
reshape for shape ops, ``max_poolNd_with_indices_backward`` with the indices the
forward pass kept, ``_adaptive_avg_poolNd_backward`` for pools. Anything else falls
back to autograd on a copy of the recorded values (the engine records them in
inference mode, which autograd cannot use as they are).
"""

from __future__ import annotations

import operator
from collections import ChainMap
from typing import Any, Callable

import torch

from ..errors import UnsupportedOpError
from .graph import Node, Ref, channel_affine
from .ops import op_name

aten = torch.ops.aten


def _ntuple(value: Any, n: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == n else list(value) * n
    return [value] * n


def conv_spec(node: Node) -> tuple | None:
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


def _autograd_copy(value: Any) -> Any:
    """A normal (non-inference) copy of a recorded value, so autograd may save it."""
    if isinstance(value, torch.Tensor) and value.is_inference():
        return value.clone()
    return value


def transpose(node: Node, s: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight^T s`` for a weighted node (conv, linear, channel affine), shaped like its input ``a``."""
    if node.target is aten.linear.default:
        return s @ weight
    if node.target is channel_affine:
        return s * weight.reshape((1, -1) + (1,) * (s.ndim - 2))
    spec = conv_spec(node) if node.kind == "conv" else None
    if spec is not None:
        stride, padding, dilation, transposed, output_padding, groups = spec
        return aten.convolution_backward(
            s, a, weight, None, stride, padding, dilation, transposed, output_padding, groups, [True, False, False]
        )[0]
    with torch.inference_mode(False), torch.enable_grad():
        leaf = _autograd_copy(a).detach().requires_grad_()
        (grad,) = torch.autograd.grad(node.call_with(leaf, _autograd_copy(weight), None), leaf, _autograd_copy(s))
    return grad


# --------------------------------------------------------------------------- parameter-free ops


def _shaped(values: Any, name: str) -> torch.Tensor:
    """A tensor with the shape and dtype of ``values[name]``, without recomputing a dropped activation."""
    stand_in = getattr(values, "stand_in", None)
    return stand_in(name) if stand_in is not None else values[name]


#: op name -> direct vector-Jacobian product (node, values, inputs, grad) -> {input: grad}, or None to fall back
_DIRECT: dict[str, Callable[..., dict[str, torch.Tensor] | None]] = {}


def _direct(*names: str):
    def register(function):
        for name in names:
            _DIRECT[name] = function
        return function

    return register


@_direct("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "contiguous", "clone",
         "alias", "detach", "lift_fresh_copy", "_to_copy", "to", "type_as")
def _reshape_back(node, values, inputs, grad):
    source = _shaped(values, inputs[0])
    if len(inputs) != 1 or grad.numel() != source.numel():
        return None
    dtype = source.dtype if source.is_floating_point() else grad.dtype  # the relevance of token ids stays float
    return {inputs[0]: grad.reshape(source.shape).to(dtype)}


@_direct("max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices")
def _max_pool_back(node, values, inputs, grad):
    if not isinstance(grad, (list, tuple)) or len(inputs) != 1 or node.kwargs or grad[0] is None:
        return None
    dims = int(node.op[len("max_pool")])
    backward = getattr(aten, f"max_pool{dims}d_with_indices_backward", None)
    if backward is None:
        return None
    x = _shaped(values, inputs[0])
    indices = values[node.name][1]
    args = list(node.args[1:]) + [None] * 5
    kernel = _ntuple(args[0], dims)
    stride = _ntuple(args[1] if args[1] not in (None, []) else kernel, dims)
    padding = _ntuple(args[2] if args[2] is not None else 0, dims)
    dilation = _ntuple(args[3] if args[3] is not None else 1, dims)
    ceil_mode = bool(args[4]) if args[4] is not None else False
    return {inputs[0]: backward(grad[0], x, kernel, stride, padding, dilation, ceil_mode, indices)}


@_direct("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool3d")
def _adaptive_avg_pool_back(node, values, inputs, grad):
    if len(inputs) != 1:
        return None
    x = _shaped(values, inputs[0])
    backward = aten._adaptive_avg_pool3d_backward if node.op.endswith("3d") else aten._adaptive_avg_pool2d_backward
    return {inputs[0]: backward(grad.contiguous(), x)}


@_direct("add", "sub")
def _add_back(node, values, inputs, grad):
    """``x + y`` / ``x - y``: a residual join, or an activation plus a (broadcast) constant."""
    if node.kwargs or len(node.args) != 2 or node.args[0] == node.args[1]:
        return None
    result = {}
    for position, arg in enumerate(node.args):
        if isinstance(arg, Ref) and arg.name in inputs:
            shape = _shaped(values, arg.name).shape
            part = grad if shape == grad.shape else grad.sum_to_size(shape)
            result[arg.name] = -part if node.op == "sub" and position == 1 else part
    return result if len(result) == len(inputs) else None


def _operand(values: Any, arg: Any) -> Any:
    return values[arg.name] if isinstance(arg, Ref) else arg


@_direct("mul")
def _mul_back(node, values, inputs, grad):
    """``a * b`` (either may be a constant or broadcast): each factor's gradient is the other times grad."""
    if node.kwargs or len(node.args) != 2 or node.args[0] == node.args[1]:
        return None
    result = {}
    for position, arg in enumerate(node.args):
        if isinstance(arg, Ref) and arg.name in inputs:
            other = _operand(values, node.args[1 - position])
            part = grad * other
            shape = _shaped(values, arg.name).shape
            result[arg.name] = part if part.shape == shape else part.sum_to_size(shape)
    return result if len(result) == len(inputs) else None


def _args(node: Node, values: Any) -> list:
    """The node's arguments after its first, sizes read from meta nodes resolved."""
    return [values[arg.name] if isinstance(arg, Ref) else arg for arg in node.args[1:]]


# Routes of a language model's attention (rotary halves, heads moved, keys repeated): the gradient directly,
# without autograd's graph and its copy of the input (the walk's Python time on small models; the same numbers).
@_direct("transpose", "swapaxes", "swapdims")
def _transpose_back(node, values, inputs, grad):
    if len(inputs) != 1 or node.kwargs or len(node.args) != 3 or not isinstance(node.args[0], Ref):
        return None
    dim0, dim1 = _args(node, values)
    return {inputs[0]: grad.transpose(dim0, dim1)}


@_direct("permute")
def _permute_back(node, values, inputs, grad):
    if len(inputs) != 1 or node.kwargs or len(node.args) != 2 or not isinstance(node.args[0], Ref):
        return None
    dims = [d % grad.ndim for d in _args(node, values)[0]]
    return {inputs[0]: grad.permute(sorted(range(len(dims)), key=dims.__getitem__))}


@_direct("slice")
def _slice_back(node, values, inputs, grad):
    if len(inputs) != 1 or node.kwargs or not isinstance(node.args[0], Ref):
        return None
    dim, start, end, step = (_args(node, values) + [0, None, None, 1][len(node.args) - 1 :])[:4]
    source = _shaped(values, inputs[0])
    start = 0 if start is None else start
    end = source.shape[dim] if end is None else end
    return {inputs[0]: aten.slice_backward(grad, source.shape, dim, start, end, step)}


@_direct("expand")
def _expand_back(node, values, inputs, grad):
    if len(inputs) != 1 or node.kwargs or not isinstance(node.args[0], Ref):
        return None
    return {inputs[0]: grad.sum_to_size(_shaped(values, inputs[0]).shape)}


@_direct("copy")
def _copy_back(node, values, inputs, grad):
    """``base.copy_(src)`` functionalised: every value of the output is ``src``'s (broadcast), none the base's."""
    base, src = node.args[:2]
    if node.kwargs or not isinstance(src, Ref) or base == src:
        return None
    result = {src.name: grad.sum_to_size(_shaped(values, src.name).shape)} if src.name in inputs else {}
    if isinstance(base, Ref) and base.name in inputs:
        result[base.name] = torch.zeros_like(grad)
    return result if len(result) == len(inputs) else None


@_direct("index_put")
def _index_put_back(node, values, inputs, grad):
    """``base[indices] = src``: a write, a route (autograd's vjp); an accumulating ``+=`` adds, which no route is."""
    accumulate = node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False)
    if accumulate:
        raise UnsupportedOpError(
            "index_put", node.name, node.module, node.module_type,
            hint="an accumulating index_put (x.index_put_(..., accumulate=True), x[i] += y with repeated indices) sums "
            "values, which lrpcli does not split; write it as an add of activations, or explain a sub-model before it",
        )
    return None


@_direct("neg")
def _neg_back(node, values, inputs, grad):
    if len(inputs) != 1 or node.kwargs or len(node.args) != 1:
        return None
    return {inputs[0]: -grad}


@_direct("cat", "concat", "concatenate")
def _cat_back(node, values, inputs, grad):
    """The gradient split back along the joined dim (legacy empty 1-D parts, which cat skips: autograd)."""
    if node.kwargs or not isinstance(node.args[0], (list, tuple)) or len(node.args) > 2:
        return None
    parts = [_shaped(values, part.name) if isinstance(part, Ref) else part for part in node.args[0]]
    if not all(isinstance(part, torch.Tensor) and part.ndim == grad.ndim for part in parts):
        return None
    dim = (_args(node, values)[0] if len(node.args) == 2 else 0) % grad.ndim
    pieces = grad.split([part.shape[dim] for part in parts], dim)
    result = {}
    for part, piece in zip(node.args[0], pieces):
        if isinstance(part, Ref) and part.name in inputs:
            result[part.name] = piece if part.name not in result else result[part.name] + piece
    return result if len(result) == len(inputs) else None


def _matmul_grads(a, b, grad, scale: float = 1.0, want: tuple[bool, bool] = (True, True)) -> tuple:
    """``(d/dA, d/dB)`` of ``scale * A @ B`` for matrices or batches of them (broadcast batch dims summed);
    None for a factor not in ``want`` (CP-LRP asks only for the values' share)."""
    grad_a = torch.matmul(grad, b.transpose(-2, -1)).sum_to_size(a.shape) if want[0] else None
    grad_b = torch.matmul(a.transpose(-2, -1), grad).sum_to_size(b.shape) if want[1] else None
    if scale != 1.0:
        grad_a = None if grad_a is None else grad_a.mul_(scale)
        grad_b = None if grad_b is None else grad_b.mul_(scale)
    return grad_a, grad_b


def _wanted(args, inputs) -> tuple[bool, bool]:
    return tuple(isinstance(arg, Ref) and arg.name in inputs for arg in args[:2])


@_direct("matmul", "bmm", "mm")
def _matmul_back(node, values, inputs, grad):
    """``A @ B`` of two activations (attention's scores, weights times values)."""
    if node.kwargs or len(node.args) != 2 or node.args[0] == node.args[1]:
        return None
    a, b = (_operand(values, arg) for arg in node.args)
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.ndim < 2 or b.ndim < 2:
        return None
    return _pick(node.args, inputs, _matmul_grads(a, b, grad, want=_wanted(node.args, inputs)))


@_direct("attention_scores")
def _attention_scores_back(node, values, inputs, grad):
    """``scale * q @ k^T`` (see transformer_passes.attention_scores)."""
    q_arg, k_arg, scale = node.args
    q, k = _operand(values, q_arg), _operand(values, k_arg)
    if q_arg == k_arg or q.ndim < 2:
        return None
    factor = scale if scale is not None else q.shape[-1] ** -0.5
    grad_q, grad_kt = _matmul_grads(q, k.transpose(-2, -1), grad, factor, want=_wanted((q_arg, k_arg), inputs))
    return _pick((q_arg, k_arg), inputs, (grad_q, None if grad_kt is None else grad_kt.transpose(-2, -1)))


@_direct("apply_mask")
def _apply_mask_back(node, values, inputs, grad):
    """Attention scores through their mask: filled positions get nothing, an added mask passes grad."""
    scores, mask = node.args
    if not isinstance(scores, Ref) or inputs != [scores.name]:
        return None
    mask = _operand(values, mask)
    return {scores.name: grad.masked_fill(mask.logical_not(), 0.0) if mask.dtype == torch.bool else grad}


@_direct("mean", "sum")
def _reduce_back(node, values, inputs, grad):
    """``mean``/``sum`` over some dims: the gradient spread back evenly over what was reduced."""
    if len(inputs) != 1 or node.kwargs or not isinstance(node.args[0], Ref) or len(node.args) < 2:
        return None
    x = _shaped(values, inputs[0])
    dims, keepdim = node.args[1], bool(node.args[2]) if len(node.args) > 2 else False
    if not isinstance(dims, (list, tuple)) or not dims or len(node.args) > 3:
        return None
    dims = sorted(d % x.ndim for d in dims)
    if not keepdim:
        for d in dims:
            grad = grad.unsqueeze(d)
    count = 1
    for d in dims:
        count *= x.shape[d]
    part = grad.expand(x.shape)
    return {inputs[0]: part / count if node.op == "mean" else part}


def _pick(args, inputs, grads) -> dict[str, torch.Tensor] | None:
    result = {arg.name: g for arg, g in zip(args, grads) if isinstance(arg, Ref) and arg.name in inputs and g is not None}
    return result if len(result) == len(inputs) else None


def vjp(node: Node, values: dict[str, Any], inputs: list[str], grad_outputs: Any) -> dict[str, torch.Tensor]:
    """Vector-Jacobian product of a parameter-free node w.r.t. its activation inputs.

    Moves relevance "with the values" for shape ops, cat, slicing and max-pool (the
    gradient routes to the winners), and gives the transpose for proportional rules.
    """
    grad_outputs = _in_dtype(grad_outputs, values, node.name)
    direct = _DIRECT.get(op_name(node.target))
    if direct is not None and node.target is not operator.getitem:
        result = direct(node, values, inputs, grad_outputs)
        if result is not None:
            return result
    return _autograd_vjp(node, values, inputs, grad_outputs)


def _in_dtype(grad: Any, values: Any, name: str) -> Any:
    """``grad`` in the floating dtype of the node's output. Relevance reaches a node in its reader's dtype: a
    float32 part of a float64 model (CodeGen computes attention scores in float32, then adds a float64 mask)
    hands back float64, which the float32 part's transposes cannot multiply with its own values."""
    if not isinstance(grad, torch.Tensor) or not grad.is_floating_point():
        return grad
    try:
        out = _shaped(values, name)
    except KeyError:
        return grad
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != grad.dtype:
        return grad.to(out.dtype)
    return grad


def _autograd_vjp(node: Node, values: dict[str, Any], inputs: list[str], grad_outputs: Any) -> dict[str, torch.Tensor]:
    with torch.inference_mode(False), torch.enable_grad():
        leaves = {name: _autograd_copy(values[name]).detach().requires_grad_() for name in inputs}
        others = {}
        for ref in node.refs:  # values[ref], not `ref in values`: a dropped activation is recomputed on access
            if ref not in leaves and ref not in others:
                try:
                    others[ref] = _autograd_copy(values[ref])
                except KeyError:
                    pass
        output = node.call(ChainMap(leaves, others))
        outputs = list(output) if isinstance(output, (tuple, list)) else [output]
        if not isinstance(grad_outputs, (tuple, list)):
            grad_outputs = [grad_outputs]
        pairs = [
            (out, _autograd_copy(grad))
            for out, grad in zip(outputs, grad_outputs)
            if isinstance(out, torch.Tensor) and grad is not None and out.requires_grad
        ]
        if not pairs:
            return {}
        grads = torch.autograd.grad(
            [out for out, _ in pairs], list(leaves.values()), [grad for _, grad in pairs], allow_unused=True
        )
    return {name: grad for name, grad in zip(leaves, grads) if grad is not None}
