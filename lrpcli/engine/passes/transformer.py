"""Graph passes for attention, normalisation and gating (always run; see ``canonizers.py``).

- ``classify_products``: a product of two activations is one of three things.
  A *normaliser* (``x / sqrt(var(x) + eps)``, ``x * rsqrt(mean(x**2))``: a hand-written
  LayerNorm or RMSNorm) is held constant, so the node becomes a plain scaling; this is
  the rule AttnLRP and CP-LRP give LayerNorm (Prop. 3.4), and with it the proportional
  rules for ``sub`` and ``mean`` reproduce the closed-form LayerNorm rule. A *gated*
  product (one factor a sigmoid, hard-sigmoid or softmax output: squeeze-and-excitation,
  attention weights times values) keeps the gate's name in ``node.gates`` so that rules
  can hold it. Anything else stays a product (``Q K^T``), or, for a division by an
  activation that is no normaliser, an unsupported op.
- ``decompose_attention``: ``scaled_dot_product_attention`` becomes the scores product
  ``q k^T * scale``, its mask, a softmax and the product with ``v``, so the product and
  softmax rules apply to each part and ``lrp inspect`` shows them.
"""

from __future__ import annotations

import dataclasses
import math
import operator

import torch

from .. import ops
from ..graph import Graph, Node, Ref

#: ops a normaliser's value passes through unchanged in meaning (eps added, square root, casts, broadcasts)
_NORMALISER_STEPS = {
    "add", "sub", "mul", "div", "sqrt", "rsqrt", "reciprocal", "pow", "clamp", "clamp_min", "maximum", "_to_copy", "to",
    "type_as", "expand", "expand_as", "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "detach", "alias",
    "contiguous", "clone", "lift_fresh_copy",
}
#: ops whose second tensor argument only gives a shape or dtype
_SHAPED_LIKE = {"expand_as", "type_as", "reshape_as", "view_as"}
#: ops that compute a spread statistic of a tensor directly
_SPREAD_OPS = {"var", "std", "var_mean", "std_mean", "linalg_vector_norm", "norm", "frobenius_norm"}
#: reductions that make a spread statistic when they reduce a square (or absolute value)
_REDUCTIONS = {"mean", "sum"}
#: producers that make a factor a gate, strongest first: a product's factor made by one of these is held by gated rules
_GATES = ({"sigmoid", "hardsigmoid", "softmax", "_softmax", "log_softmax"}, {"silu", "gelu"})
#: ops a gate passes through on its way to the product (broadcasts, casts)
_GATE_STEPS = {"expand", "expand_as", "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "contiguous", "clone", "_to_copy", "to", "alias", "permute", "transpose"}


def _op(node: Node) -> str:
    return ops.op_name(ops.out_of_place(node.target))


def is_normaliser(name: str, by_name: dict[str, Node], depth: int = 0) -> bool:
    """Whether ``name`` is a spread statistic of some tensor (var, std, a norm, mean of squares),
    possibly with eps added, square-rooted, inverted or broadcast."""
    node = by_name.get(name)
    if node is None or depth > 12:
        return False
    op = _op(node)
    if node.target is operator.getitem:
        return is_normaliser(node.args[0].name, by_name, depth + 1) if isinstance(node.args[0], Ref) else False
    if op in _SPREAD_OPS:
        return True
    refs = node.refs
    if op in _REDUCTIONS and len(refs) == 1:  # a mean of squares, or of a statistic (ConvNeXt V2's GRN)
        return _is_square(refs[0], by_name) or is_normaliser(refs[0], by_name, depth + 1)
    if op in _SHAPED_LIKE and refs:  # F.normalize: norm.clamp_min(eps).expand_as(x): x only lends its shape
        return is_normaliser(refs[0], by_name, depth + 1)
    if op in _NORMALISER_STEPS and refs:  # GRN's ||x|| / (mean ||x|| + eps): statistics combined stay one
        return all(is_normaliser(ref, by_name, depth + 1) for ref in dict.fromkeys(refs))
    return False


def _is_square(name: str, by_name: dict[str, Node]) -> bool:
    node = by_name.get(name)
    if node is None:
        return False
    op, refs = _op(node), node.refs
    if op == "pow":
        return len(node.args) > 1 and node.args[1] == 2
    if op == "mul":
        return len(refs) == 2 and refs[0] == refs[1]
    return op in ("square", "abs")


def gate_op(name: str, by_name: dict[str, Node]) -> str:
    """The op that made a product's factor, looking through broadcasts and casts ("" if none of the gate ops)."""
    node = by_name.get(name)
    for _ in range(12):
        if node is None:
            return ""
        op = _op(node)
        if any(op in names for names in _GATES):
            return op
        refs = node.refs
        if op not in _GATE_STEPS or len(refs) != 1:
            return ""
        node = by_name.get(refs[0])
    return ""


def gate_level(name: str, by_name: dict[str, Node]) -> int | None:
    """0 for a factor made by a sigmoid/hard-sigmoid/softmax, 1 for silu/gelu, None for no gate."""
    op = gate_op(name, by_name)
    return next((level for level, names in enumerate(_GATES) if op in names), None)


def classify_products(graph: Graph) -> Graph:
    by_name = {node.name: node for node in graph.nodes}
    nodes = []
    held_any = []
    for node in graph.nodes:
        if node.kind == "product" and _op(node) in ("mul", "div"):
            node = _classify_elementwise_product(node, by_name)
            if node.held:
                held_any.append(node.module or node.name)
        if node.kind == "product" and not node.gates:
            node = _mark_gates(node, by_name)
        elif node.kind == "scale" and node.module_type in RECURRENT_MODULES:
            node = _hold_recurrent_gate(node, by_name)
        nodes.append(node)
    graph = graph.replace(nodes=nodes)
    if held_any:
        graph = graph.replace(notes=graph.notes + [f"normalisers held constant (as in LayerNorm): {', '.join(sorted(set(held_any)))}"])
    return graph


#: modules whose fused op lrp writes out as cells (graph._RECURRENT); their gates never take relevance
RECURRENT_MODULES = ("LSTM", "GRU", "RNN")


def _hold_recurrent_gate(node: Node, by_name: dict[str, Node]) -> Node:
    """A recurrent cell's gate times a constant (GRU's reset gate times the bias at the first step, where
    the previous state is zero): the gate is held, as everywhere in the cell (Arras et al. 2017), so this
    term takes its share the way a bias does."""
    live = [ref for ref in dict.fromkeys(node.refs) if ref not in by_name or by_name[ref].kind != "meta"]
    if _op(node) == "mul" and len(live) == 1 and gate_level(live[0], by_name) == 0:
        return dataclasses.replace(node, held=tuple(dict.fromkeys(node.held + (live[0],))))
    return node


def _classify_elementwise_product(node: Node, by_name: dict[str, Node]) -> Node:
    first, second = (arg.name if isinstance(arg, Ref) else None for arg in node.args[:2])
    if _op(node) == "div":
        if second is not None and is_normaliser(second, by_name):
            return dataclasses.replace(node, kind="scale", held=(second,))
        return dataclasses.replace(
            node,
            kind=None,
            hint="a division by an activation that is no normaliser (var/std/norm of a tensor) has no LRP rule",
        )
    for factor in (second, first):
        if factor is not None and is_normaliser(factor, by_name):
            return dataclasses.replace(node, kind="scale", held=(factor,))
    return node


def _mark_gates(node: Node, by_name: dict[str, Node]) -> Node:
    factors = list(dict.fromkeys(node.refs))
    if len(factors) != 2:
        return node
    levels = [gate_level(name, by_name) for name in factors]
    for level in (0, 1):
        gated = [name for name, found in zip(factors, levels) if found == level]
        if len(gated) == 1:
            return dataclasses.replace(node, gates=tuple(gated), gate_op=gate_op(gated[0], by_name))
        if gated:
            return node  # both factors are gates of the same strength: nothing to tell apart
    return node


# --------------------------------------------------------------------------- activations written out

#: element-wise ops: an activation function written out of these (and constants) acts on each element alone
_ELEMENTWISE = {
    "mul", "add", "sub", "rsub", "div", "neg", "pow", "square", "sqrt", "rsqrt", "reciprocal", "exp", "expm1", "log",
    "log1p", "tanh", "sigmoid", "erf", "erfc", "relu", "gelu", "silu", "softplus", "hardtanh", "hardsigmoid",
    "hardswish", "mish", "elu", "leaky_relu", "clamp", "clamp_min", "clamp_max", "abs", "minimum", "maximum",
    "_to_copy", "to", "type_as", "sin", "cos",
    "where", "gt", "ge", "lt", "le",  # a piecewise activation chooses by the sign of its input (Apertus's xIELU)
}
_MAX_REGION = 24


class Inner:
    """A reference to a value inside a collapsed region (not a graph Ref: the walk never sees it)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Inner({self.name!r})"


def run_region(x: torch.Tensor, *, steps: tuple) -> torch.Tensor:
    """Replay a collapsed element-wise region on its one input ``x``; ``steps`` are (name, op, args, kwargs)."""
    values = {"": x}

    def resolve(obj):
        if isinstance(obj, Inner):
            return values[obj.name]
        if isinstance(obj, (tuple, list)):
            return type(obj)(resolve(item) for item in obj)
        if isinstance(obj, dict):
            return {key: resolve(item) for key, item in obj.items()}
        return obj

    for name, target, args, kwargs in steps:
        values[name] = target(*resolve(args), **resolve(kwargs))
    return values[steps[-1][0]]


def collapse_elementwise(graph: Graph) -> Graph:
    """An activation written out as several element-wise ops of one input (GPT-2's gelu_new
    ``0.5 x (1 + tanh(c (x + 0.044715 x^3))))``, SiLU as ``x * sigmoid(x)``, HardSwish) becomes one
    element-wise node, which passes relevance unchanged: AttnLRP's identity rule for the whole
    function (without it the product and the constant ``+ 1`` would split and absorb relevance)."""
    users = graph.consumers()
    by_name = {node.name: node for node in graph.nodes}
    replaced: dict[str, Node] = {}
    removed: set[str] = set()
    for node in graph.nodes:
        if node.name in removed or _op(node) not in ("mul", "add", "sub", "div", "where") or len(set(node.refs)) < 2:
            continue
        region = _region(node, by_name, users)
        if region is None:
            continue
        source, members = region
        order = [n for n in graph.nodes if n.name in members] + [node]
        replaced[node.name] = _collapsed(node, source, order)
        removed.update(members)
    if not replaced:
        return graph
    nodes = [replaced.get(n.name, n) for n in graph.nodes if n.name not in removed]
    names = sorted({n.module or n.name for n in replaced.values()})
    return graph.replace(nodes=nodes, notes=graph.notes + [f"activations written out as several ops pass relevance unchanged: {', '.join(names)}"])


def _is_elementwise(node: Node) -> bool:
    """Whether ``node`` acts on each element alone: the ops of _ELEMENTWISE, and min/max of two tensors
    (``aten.min.other``: xIELU's ``min(x, eps)``), not the reductions of the same names."""
    if _op(node) in ("min", "max"):
        return getattr(node.target, "_overloadname", "") == "other"
    return _op(node) in _ELEMENTWISE


def _region(join: Node, by_name: dict[str, Node], users: dict[str, list[str]]) -> tuple[str, set[str]] | None:
    """The element-wise nodes between ``join`` and its one activation input, if it has exactly one."""
    members: set[str] = set()
    sources: set[str] = set()
    frontier = list(dict.fromkeys(join.refs))
    while frontier:
        name = frontier.pop()
        if name in members or name in sources:
            continue
        node = by_name.get(name)
        if node is None or not _is_elementwise(node) or node.held:
            sources.add(name)
            continue
        members.add(name)
        frontier.extend(dict.fromkeys(node.refs))
        if len(members) > _MAX_REGION or len(sources) > 1:
            return None
    if len(sources) != 1:
        return None
    # a member read from outside the region cannot be removed: then the region is no function of one input
    for name in members:
        if any(user not in members and user != join.name for user in users.get(name, [])):
            return None
    return next(iter(sources)), members


def _collapsed(join: Node, source: str, order: list[Node]) -> Node:
    from ..graph import map_leaves

    def inner(leaf):
        if isinstance(leaf, Ref):
            return Inner("" if leaf.name == source else leaf.name)
        return leaf

    steps = tuple((n.name, n.target, map_leaves(n.args, inner), map_leaves(n.kwargs, inner)) for n in order)
    return dataclasses.replace(join, target=run_region, args=(Ref(source),), kwargs={"steps": steps}, kind="elementwise", op="elementwise")


# --------------------------------------------------------------------------- attention


def attention_scores(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``q k^T * scale`` (scale 1/sqrt(head dim) by default), as scaled_dot_product_attention computes it."""
    factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return torch.matmul(q, k.transpose(-2, -1)) * factor


def attention_weights(scores: torch.Tensor) -> torch.Tensor:
    """The softmax over the keys (its own function, so the engine knows it for a part of an attention)."""
    return torch.softmax(scores, dim=-1)


def causal_fill(scores: torch.Tensor) -> torch.Tensor:
    """Scores above the diagonal set to -inf (is_causal=True): those keys get no attention and no relevance."""
    rows, cols = scores.shape[-2:]
    hidden = torch.ones(rows, cols, dtype=torch.bool, device=scores.device).tril().logical_not_()
    return scores.masked_fill(hidden, float("-inf"))


def apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """An attention mask as scaled_dot_product_attention applies it: a boolean one sets its False
    positions to -inf, a float one is added (a constant add, which takes its share of relevance)."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask.logical_not(), float("-inf"))
    return scores + mask


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


def decompose_attention(graph: Graph) -> Graph:
    nodes: list[Node] = []
    taken = {node.name for node in graph.nodes} | {graph.input}
    done = []
    for node in graph.nodes:
        if node.kind != "attention":
            nodes.append(node)
            continue
        parts = _decompose_mha(node, taken) if node.op == "_native_multi_head_attention" else _decompose(node, taken)
        nodes.extend(parts)
        if parts[-1].kind is not None:
            done.append(node.module or node.name)
    if done:
        graph = graph.replace(notes=graph.notes + [f"attention decomposed into scores, softmax and values: {', '.join(done)}"])
    return graph.replace(nodes=nodes)


def _fresh(base: str, suffix: str, taken: set[str]) -> str:
    name = f"{base}_{suffix}"
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _decompose(node: Node, taken: set[str]) -> list[Node]:
    given = dict(zip(_SDPA_PARAMS, node.args))
    given.update({k: v for k, v in node.kwargs.items()})
    q, k, v = given.get("query"), given.get("key"), given.get("value")
    mask, causal, scale = given.get("attn_mask"), bool(given.get("is_causal", False)), given.get("scale")
    if given.get("enable_gqa"):
        return [dataclasses.replace(node, kind=None, hint="attention with enable_gqa=True is not supported yet")]

    def part(suffix: str, target, args, kind: str, op: str, **extra) -> Node:
        return dataclasses.replace(
            node, name=_fresh(node.name, suffix, taken), target=target, args=args, kwargs={}, kind=kind, op=op, **extra
        )

    scores = part("scores", attention_scores, (q, k, scale), "product", "q@k^T")
    chain = [scores]
    if causal:
        chain.append(part("causal", causal_fill, (Ref(chain[-1].name),), "elementwise", "causal_mask"))
    if mask is not None:  # a mask computed in the model (from the input) is held: it is never explained
        held = (mask.name,) if isinstance(mask, Ref) else ()
        chain.append(part("mask", apply_mask, (Ref(chain[-1].name), mask), "add", "attn_mask", held=held))
    weights = part("weights", attention_weights, (Ref(chain[-1].name),), "softmax", "softmax")
    chain.append(weights)
    out = dataclasses.replace(
        node,
        target=torch.ops.aten.matmul.default,
        args=(Ref(weights.name), v),
        kwargs={},
        kind="product",
        op="attn@v",
        gates=(weights.name,),
        gate_op="softmax",
    )
    return chain + [out]


# --------------------------------------------------------------------------- the fused multi-head attention


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * d) -> (batch, heads, tokens, d)."""
    return t.unflatten(-1, (heads, t.shape[-1] // heads)).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, d) -> (batch, tokens, heads * d)."""
    return t.transpose(1, 2).flatten(-2)


def first_of_pair(t: torch.Tensor) -> tuple[torch.Tensor, None]:
    """The (output, weights) pair the fused op returns, without the weights (need_weights=False)."""
    return t, None


_MHA_PARAMS = ("query", "key", "value", "embed_dim", "num_head", "qkv_weight", "qkv_bias", "proj_weight", "proj_bias", "mask", "need_weights")


def _decompose_mha(node: Node, taken: set[str]) -> list[Node]:
    """``_native_multi_head_attention`` (nn.MultiheadAttention's fast path in TorchScript) as its projections,
    the attention parts of :func:`_decompose` and the output projection; batch-first inputs."""
    given = dict(zip(_MHA_PARAMS, node.args))
    given.update(node.kwargs)
    q, k, v = given["query"], given["key"], given["value"]
    embed, heads = int(given["embed_dim"]), int(given["num_head"])
    weight, bias = given["qkv_weight"], given["qkv_bias"]
    if given.get("mask") is not None or given.get("need_weights", True) or not isinstance(weight, torch.Tensor):
        return [dataclasses.replace(node, kind=None, hint="the fused multi-head attention with a mask or need_weights=True is not supported yet")]

    def part(suffix, target, args, kind, op, **extra) -> Node:
        return dataclasses.replace(node, name=_fresh(node.name, suffix, taken), target=target, args=args, kwargs={}, kind=kind, op=op, **extra)

    chain: list[Node] = []
    heads_of = {}
    for index, (label, source) in enumerate((("q", q), ("k", k), ("v", v))):
        rows = slice(index * embed, (index + 1) * embed)
        projection = part(f"{label}_proj", torch.ops.aten.linear.default, (source, weight[rows], None if bias is None else bias[rows]), "linear", "linear", module_type="Linear")
        split = part(f"{label}_heads", split_heads, (Ref(projection.name), heads), "route", "split_heads")
        chain += [projection, split]
        heads_of[label] = Ref(split.name)
    sdpa = part("sdpa", torch.ops.aten.scaled_dot_product_attention.default, (heads_of["q"], heads_of["k"], heads_of["v"]), "attention", "scaled_dot_product_attention")
    attended = _decompose(sdpa, taken)
    merged = part("merge", merge_heads, (Ref(attended[-1].name),), "route", "merge_heads")
    out = part("out_proj", torch.ops.aten.linear.default, (Ref(merged.name), given["proj_weight"], given["proj_bias"]), "linear", "linear", module_type="Linear")
    pair = dataclasses.replace(node, target=first_of_pair, args=(Ref(out.name),), kwargs={}, kind="route", op="first_of_pair")
    return chain + attended + [merged, out, pair]

