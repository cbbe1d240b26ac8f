"""The kind of every node of a built graph, decided again from its targets, arguments and the dtypes it
computes: the decisions builder.py makes during capture, for a graph that was not captured here (the
disk cache's entries, whose kinds are never read)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from . import ids, ops
from .builder import _unsupported_hint, constant_product
from .graph import Graph, Node, Ref, channel_affine
from .passes.norms import normalize


#: the kind of lrpcli's own ops (the op table knows ATen's)
_OWN_KINDS = {id(channel_affine): "batchnorm", id(normalize): "layernorm"}


def _base_kind(target: Any) -> str | None:
    return _OWN_KINDS.get(id(target)) or ops.kind_of(target)


def _op_fits(node: Node) -> bool:
    """Is the node's op name (shown in messages, read by some rules) one the capture gives its target?"""
    target, op = node.target, node.op
    if id(target) in _OWN_KINDS:
        return ops.kind_of_name(op) == _OWN_KINDS[id(target)]
    if target is torch.ops.aten.linear.default:
        return op in ("linear", "addmm", "mm", "matmul")
    if target is torch.ops.aten.reshape.default:
        return op in ("reshape", "view")
    name = ops.op_name(target)
    return op in (name, name + "_") if isinstance(target, torch._ops.OpOverload) else op == name


def _structural_kind(node: Node, kind: str, meta: set[str], id_views: set[str]) -> str | None:
    """The capture's checks of a weighted, scale, norm or embedding node, on the form it leaves them in
    (graph._Builder._normalise_weighted, _check_scale, _normalise_norm, _check_embedding)."""
    args = node.args
    if kind == "linear":
        if node.target is torch.ops.aten.linear.default:
            x, weight, bias = (tuple(args) + (None, None))[:3]
            fits = isinstance(x, Ref) and isinstance(weight, torch.Tensor) and not isinstance(bias, Ref) and not node.kwargs
            return "linear" if fits else None
        if node.op in ("mm", "matmul") and len(args) >= 2 and (
            (isinstance(args[0], Ref) and isinstance(args[1], Ref)) or constant_product(args[0], args[1])
        ):
            return "product"
        return None
    if kind == "conv":
        padded = tuple(args) + (None,) * max(0, 3 - len(args))
        return "conv" if isinstance(padded[0], Ref) and not isinstance(padded[1], Ref) and not isinstance(padded[2], Ref) else None
    if kind == "batchnorm":
        fits = node.target is channel_affine and len(args) == 3 and isinstance(args[0], Ref)
        return "batchnorm" if fits and all(isinstance(a, torch.Tensor) or a is None for a in args[1:]) else None
    if kind == "scale":
        refs = [a for a in args if isinstance(a, Ref) and a.name not in meta]
        if len(refs) > 1 and node.op in ("mul", "div"):
            return "product"
        if len(refs) > 1 or (len(refs) == 1 and not isinstance(args[0], Ref) and node.op == "div"):
            return None
        return "scale"
    if kind == "layernorm":
        fits = node.target is normalize and args and isinstance(args[0], Ref)
        return "layernorm" if fits and not any(isinstance(a, Ref) for a in args[1:]) else None
    if kind == "embedding":
        weight, ids = (tuple(args) + (None, None))[:2]
        if isinstance(weight, Ref) or not isinstance(ids, Ref):
            return None
        if ids.name not in id_views:
            meta.add(node.name)
            return "meta"
        return "embedding"
    return kind


def derive_kinds(graph: Graph, integral: dict[str, bool]) -> Graph:
    """``graph`` with every node's kind, held inputs and hint decided again, from its targets, arguments
    and the dtypes it computes (``integral``: node or input name -> holds integers or booleans): the
    decisions graph._Builder makes during capture, never read from a file."""
    meta: set[str] = set(graph.extra_inputs)
    id_views = set(graph.explained)
    derived = []
    for node in graph.nodes:
        deps = node.refs
        kind = _base_kind(node.target)
        carried = ids.carries(ops.op_name(node.target), node.args, list(deps), id_views, meta, integral.get(node.name, False))
        if all(dep in meta for dep in deps):
            kind = "meta"  # arithmetic on sizes only
        elif carried == "map":
            kind = "elementwise"  # an id to another in its place
        elif kind != "embedding" and not carried and all(
            dep in meta or integral.get(dep, False) for dep in deps
        ):
            kind = "meta"  # computed from token ids or masks only
        if kind == "meta":
            meta.add(node.name)
        elif kind is not None:
            kind = _structural_kind(node, kind, meta, id_views)
        if carried and kind in ("route", "elementwise"):
            id_views.add(node.name)
        held: tuple[str, ...] = ()
        if kind != "embedding" and not integral.get(node.name):
            held = tuple(dict.fromkeys(ref for ref in deps if integral.get(ref)))
        hint = (node.hint or _unsupported_hint(node.op)) if kind is None else None
        derived.append(dataclasses.replace(node, kind=kind, held=held, hint=hint, gates=(), gate_op=""))
    return graph.replace(nodes=derived)
