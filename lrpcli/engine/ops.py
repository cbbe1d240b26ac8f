"""The one table that says what each ATen op is, for LRP.

Graphs reach us from three routes (torch.export, TorchScript conversion, saved
ExportedPrograms) and each spells ops a little differently (``conv2d`` vs
``convolution``, ``relu_`` vs ``relu``). Every spelling is normalised here, so
rules and the engine only ever see a *kind*:

==============  ==========================================================
kind            relevance
==============  ==========================================================
conv, linear    LRP rules (weighted linear layers)
batchnorm       an affine per-channel layer (folded away by a canonizer, or a rule)
add             add/sub of activations (residual joins): proportional split
avgpool         avg / adaptive-avg pooling: proportional split
reduce          mean / sum reductions: proportional split
scale           mul / div by a constant: proportional split
route           shape ops, cat, slicing, max-pool, max/amax: relevance moves with the values
elementwise     relu-like nonlinearities, dropout, identity: relevance passes unchanged (activations
                may get a rule: GuidedBackprop, DeconvNet, BetaSmooth, the gradient)
layernorm       layer / group / RMS norm: rules see it with 1/sigma held constant
product         products of two activations (mul, matmul, bmm, einsum): uniform or gated split
softmax         softmax inside the model (a trailing one is stripped): AttnLRP's Taylor rule or constant
attention       scaled_dot_product_attention: a canonizer decomposes it into products and a softmax
embedding       a lookup of the input ids: the walk ends there, relevance summed over the hidden dim
meta            sizes and asserts: no relevance
==============  ==========================================================

Ops that only compute a normaliser (var, sqrt, rsqrt, ...) are held constant by the
rules that read them and need no kind of their own; ``graph.check_supported`` only
asks for a kind where relevance can arrive.
"""

from __future__ import annotations

import operator

import torch

WEIGHTED_KINDS = ("conv", "linear")
PROPORTIONAL_KINDS = ("add", "avgpool", "reduce", "scale")
#: kinds with rules beyond the linear ones (AttnLRP / CP-LRP)
TRANSFORMER_KINDS = ("layernorm", "product", "softmax")
#: kinds a composite can assign a rule to (the others are fixed)
RULE_KINDS = WEIGHTED_KINDS + ("batchnorm",) + PROPORTIONAL_KINDS + TRANSFORMER_KINDS

_KIND_BY_NAME: dict[str, str] = {}


def _add(kind: str, names: str) -> None:
    for name in names.split():
        _KIND_BY_NAME[name] = kind


_add("conv", "conv1d conv2d conv3d convolution _convolution conv_transpose1d conv_transpose2d conv_transpose3d")
_add("linear", "linear addmm mm matmul")
_add("batchnorm", "batch_norm _native_batch_norm_legit_no_training native_batch_norm")
_add("add", "add sub")
_add(
    "avgpool",
    "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d "
    "_adaptive_avg_pool2d _adaptive_avg_pool3d "
    # (bi/tri)linear interpolation: each output a weighted average of its neighbours with constant weights, as an
    # average pool's is, so the same proportional split (for LRP-0: gradient x input; MobileViT's resize)
    "upsample_linear1d upsample_bilinear2d upsample_trilinear3d "
    # nn.Fold (MobileViT-v2's patches folded back): a sum of the (overlapping) patches, split proportionally as a
    # sum is; a route would hand each overlapping patch the whole sum's relevance (for LRP-0: gradient x input)
    "col2im",
)
_add("reduce", "mean sum")
_add("scale", "mul div neg complex_mul")  # complex_mul: a complex constant's rotation in real pairs (graph.py)
_add(
    "route",
    "view reshape _unsafe_view flatten unflatten permute transpose t squeeze unsqueeze contiguous "
    "clone expand expand_as repeat cat concat concatenate stack split split_with_sizes chunk unbind "
    "slice select narrow index_select max_pool1d max_pool2d max_pool3d max_pool1d_with_indices "
    "max_pool2d_with_indices max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d "
    "adaptive_max_pool3d alias detach lift_fresh_copy _to_copy to type_as pad constant_pad_nd "
    "index masked_fill where roll swapaxes swapdims movedim reshape_as view_as flip "
    "amax amin max min "  # max over time (text CNNs): like max-pooling, the winners take the relevance
    "gather "  # values picked by constant (or held) indices: relevance goes back to where each came from
    # writes into an activation (functionalised: patterns.writes_live_values): the written region's relevance goes
    # to the value written, the rest to the base; repeat_interleave's copies sum back (transposes.py)
    "copy slice_scatter select_scatter index_put repeat_interleave "
    "masked_scatter "  # a held mask's places take the source's values in order (Gemma3's image features): a write
    "upsample_nearest1d upsample_nearest2d upsample_nearest3d "  # nearest interpolation copies values: a route
    "im2col "  # nn.Unfold (ConvBERT's span convolution): sliding windows copied out, zero-padded
    "as_strided",  # overlapping windows of a view (Longformer's sliding chunks): copies, whose relevance sums back
)
#: ops whose value depends only on another tensor's shape, dtype and device, not its values: constants
FACTORY_OPS = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like", "empty_like"}
_add(
    "elementwise",
    "relu leaky_relu rrelu gelu silu sigmoid tanh hardtanh relu6 elu selu celu softplus mish "
    "hardswish hardsigmoid dropout feature_dropout alpha_dropout feature_alpha_dropout identity "
    "prelu "
    "clamp acos "  # clamp(x, a, b) is hardtanh's shape (DBRX's q/k/v clip); acos of a similarity (YOSO's LSH kernel)
    "square",  # ReLU² (Primer; Nemotron, Persimmon, Arcee, BitNet): x*x split in two equal halves gives x all, the identity
)
_add("softmax", "softmax log_softmax _softmax _log_softmax")
_add("layernorm", "layer_norm native_layer_norm group_norm native_group_norm rms_norm _fused_rms_norm")
_add("product", "bmm baddbmm einsum")
_add("attention", "scaled_dot_product_attention _native_multi_head_attention")
_add("embedding", "embedding")
_add(
    "meta",
    "sym_size sym_numel sym_stride size numel dim _assert_scalar _assert_tensor_metadata "
    "sym_constrain_range_for_size sym_constrain_range _assert_async "
    "held "  # routing weights held constant (experts.py): computed, but carrying no relevance
    # a tensor made from another's shape and dtype only (RecurrentGemma's zeros_like(x) for its scan's outputs):
    # a constant; the sizes a fixed new_zeros(...) takes are folded at capture (builder._fresh_constant)
    "zeros_like ones_like full_like empty_like new_zeros new_ones new_full new_empty",
)

#: ops whose relevance is routed without a rule: no dropout/identity semantics needed
DROPOUT_OPS = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "identity"}
#: element-wise activations: the ``elementwise`` ops that compute something. They pass relevance on unchanged
#: unless a composite gives them a rule (the ReLU-gradient rules, ``gradient``: rules/gradient.py)
ACTIVATION_OPS = frozenset(name for name, kind in _KIND_BY_NAME.items() if kind == "elementwise") - DROPOUT_OPS


#: ATen's alias ops (same math, another name: ``torch.multiply`` in ConvBERT) -> the name lrpcli's rules use
ALIASES = {"multiply": "mul", "subtract": "sub", "divide": "div", "true_divide": "div"}


def op_name(target) -> str:
    """The op's base name: ``aten.relu_.default`` -> ``relu_``; python functions by __name__; aliases by ALIASES."""
    if isinstance(target, torch._ops.OpOverload):
        name = target.overloadpacket.__name__
    elif isinstance(target, torch._ops.OpOverloadPacket):
        name = target.__name__
    else:
        return getattr(target, "__name__", str(target))
    return ALIASES.get(name, name)


def out_of_place(target):
    """The out-of-place twin of an in-place ATen op (``relu_`` -> ``relu``), else ``target``.

    The engine keeps every node's output for the backward walk, so an op must never
    overwrite its input.
    """
    if not isinstance(target, torch._ops.OpOverload):
        return target
    name = op_name(target)
    if not name.endswith("_") or name.endswith("__") or name.startswith("_"):
        return target
    packet = getattr(torch.ops.aten, name[:-1], None)
    if packet is None:
        return target
    return getattr(packet, target._overloadname, target)


def is_inplace(target) -> bool:
    return out_of_place(target) is not target


def kind_of(target) -> str | None:
    """The kind of an op (see module docstring), or None if unsupported."""
    if target is operator.getitem:
        return "route"
    if getattr(target, "__module__", None) in ("_operator", "operator") or op_name(target).startswith("sym_"):
        return "meta"
    if target in (torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min, torch.sym_not):
        return "meta"
    name = op_name(out_of_place(target))
    return _KIND_BY_NAME.get(name)


def activation_of(target) -> str | None:
    """The base name of an element-wise activation op (``relu_`` -> ``relu``), or None for anything else."""
    name = op_name(out_of_place(target))
    return name if name in ACTIVATION_OPS else None


def kind_of_name(name: str) -> str | None:
    """The kind of an op given by its base name (``batch_norm`` -> ``batchnorm``), or None."""
    return _KIND_BY_NAME.get(name)


def supported_op_names() -> dict[str, list[str]]:
    """Every op name the table knows, grouped by kind (for help texts and errors)."""
    grouped: dict[str, list[str]] = {}
    for name, kind in _KIND_BY_NAME.items():
        grouped.setdefault(kind, []).append(name)
    return {kind: sorted(names) for kind, names in sorted(grouped.items())}
