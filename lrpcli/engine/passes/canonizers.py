"""Canonizers: graph passes that make a captured graph ready for LRP rules.

Each takes a Graph and returns a new one (graphs are never changed in place), and
adds a line to ``graph.notes`` when it changed something the user should know.

- ``fold_batchnorm``: a batch-norm right after a conv/linear/transposed conv (and used
  only by it) is folded into that layer's weight and bias, which the rules use; exact in
  eval mode, and what zennit's MergeBatchNorm canonizers do. The forward still computes
  the layer and then the batch-norm, as the model does (see ``graph.Folded``). A
  batch-norm that cannot be folded (first in the net, after an add) is a node of its own.
- ``drop_dropout``: dropout (identity in eval) and identity nodes are removed.
- ``strip_softmax``: a trailing softmax/log-softmax is removed so the logits are
  explained.
- ``decompose_attention`` and ``classify_products`` (in ``transformer_passes.py``):
  attention as products and a softmax; normalisers held constant, gates marked.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Callable

import torch

from .. import ops
from ..graph import Folded, Graph, Node, Ref, map_leaves
from ..transposes import conv_spec
from ...registry import Registry
from .transformer import classify_products, collapse_elementwise, decompose_attention

Canonizer = Callable[[Graph], Graph]

CANONIZERS: Registry[Canonizer] = Registry("canonizer")

#: run on every graph, whatever the composite lists
ALWAYS = ("drop_dropout", "strip_softmax", "decompose_attention", "collapse_elementwise", "classify_products")


def _rewire(nodes: list[Node], old: str, new: str) -> list[Node]:
    """Make every node that reads ``old`` read ``new`` instead."""

    def swap(leaf):
        return Ref(new) if isinstance(leaf, Ref) and leaf.name == old else leaf

    def rename(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(new if name == old else name for name in names)

    return [
        dataclasses.replace(
            node, args=map_leaves(node.args, swap), kwargs=map_leaves(node.kwargs, swap), held=rename(node.held), gates=rename(node.gates)
        )
        for node in nodes
    ]


def _remove(graph: Graph, node: Node, replacement: str) -> Graph:
    nodes = [n for n in graph.nodes if n.name != node.name]
    nodes = _rewire(nodes, node.name, replacement)
    output = replacement if graph.output == node.name else graph.output
    return graph.replace(nodes=nodes, output=output)


def fold_batchnorm(graph: Graph) -> Graph:
    users = graph.consumers()
    by_name = {node.name: node for node in graph.nodes}
    folded: list[str] = []
    for bn in list(graph.nodes):
        if bn.kind != "batchnorm" or not isinstance(bn.args[0], Ref):
            continue
        layer = by_name.get(bn.args[0].name)
        if layer is None or layer.kind not in ("conv", "linear") or users.get(layer.name) != [bn.name] or layer.folded:
            continue  # (a second batch-norm in a row stays a node of its own, with its own rule)
        fold = _folding(layer, bn)
        if fold is None:
            continue
        new_layer = dataclasses.replace(layer, args=(layer.args[0], *fold.merged(), *layer.args[3:]), folded=fold)
        graph = graph.replace(nodes=[new_layer if n.name == layer.name else n for n in graph.nodes])
        graph = _remove(graph, bn, layer.name)
        by_name = {node.name: node for node in graph.nodes}
        users = graph.consumers()
        folded.append(f"{bn.module or bn.name} -> {layer.module or layer.name}")
    if folded:
        graph = graph.replace(notes=graph.notes + [f"folded batch-norm into the preceding layer: {', '.join(folded)}"])
    return graph


def _folding(layer: Node, bn: Node) -> Folded | None:
    """How ``bn`` (per channel: dim 1 of ``layer``'s output) folds into ``layer``, or None where its channels are
    not the layer's output channels. Those are dim 0 of a conv's or linear's weight; a transposed conv's weight
    is (in, out / groups, *kernel), so its output channel ``g * out / groups + j`` is column ``j`` of group
    ``g``'s rows."""
    scale, shift = bn.args[1], bn.args[2]
    weight = layer.weight
    groups = None
    if layer.kind == "conv" and layer.is_transposed_conv:
        spec = conv_spec(layer)
        if spec is None:
            return None
        groups = spec[5]
        channels = weight.shape[1] * groups
    else:
        channels = weight.shape[0]
    if scale.numel() != channels:
        return None  # e.g. a batch-norm over another axis than the linear's features
    return Folded(weight, layer.bias, scale, shift, transposed_groups=groups)


def drop_dropout(graph: Graph) -> Graph:
    removed: dict[str, str] = {}  # a dropped node -> what its readers read now (dropout after dropout: Wav2Vec2-BERT)
    for node in list(graph.nodes):
        if node.kind == "elementwise" and ops.op_name(node.target) in ops.DROPOUT_OPS and isinstance(node.args[0], Ref):
            source = node.args[0].name
            while source in removed:
                source = removed[source]
            removed[node.name] = source
            graph = _remove(graph, node, source)
    return graph


def strip_softmax(graph: Graph) -> Graph:
    stripped = []
    while True:
        last = next((n for n in graph.nodes if n.name == graph.output), None)
        if last is None or last.kind != "softmax" or not isinstance(last.args[0], Ref):
            break
        stripped.append(last.op)
        graph = _remove(graph, last, last.args[0].name)
    if stripped:
        graph = graph.replace(
            notes=graph.notes + [f"the model ends in {stripped[0]}; explaining the logits before it"]
        )
    return graph


CANONIZERS.register("fold_batchnorm", fold_batchnorm, aliases=("merge_batchnorm", "fold_bn"))
CANONIZERS.register("drop_dropout", drop_dropout)
CANONIZERS.register("strip_softmax", strip_softmax)
CANONIZERS.register("decompose_attention", decompose_attention)
CANONIZERS.register("collapse_elementwise", collapse_elementwise)
CANONIZERS.register("classify_products", classify_products)


def canonize(graph: Graph, names: list[str] | tuple[str, ...]) -> Graph:
    """Run the always-on canonizers and then ``names`` (in order, each once)."""
    done: list[str] = []
    for name in list(ALWAYS) + list(names):
        key = CANONIZERS.resolve(name)
        if key in done:
            continue
        graph = CANONIZERS.get(key)(graph)
        done.append(key)
    return graph


def keep_pool_indices(graph: Graph) -> Graph:
    """Rewrite ``max_poolNd`` as ``max_poolNd_with_indices`` and a ``[0]``, so the forward pass keeps
    the winners' indices and the backward walk can route relevance to them without recomputing the pool.

    Internal (not a user-facing canonizer): the result computes exactly what the model computes.
    """
    taken = {node.name for node in graph.nodes} | {graph.input}
    nodes: list[Node] = []
    for node in graph.nodes:
        name = ops.op_name(node.target)
        with_indices = getattr(torch.ops.aten, f"{name}_with_indices", None) if name in ("max_pool2d", "max_pool3d") else None
        if with_indices is None or node.kwargs or not isinstance(node.args[0], Ref):
            nodes.append(node)
            continue
        pooled_name = f"{node.name}_with_indices"
        while pooled_name in taken:
            pooled_name += "_"
        taken.add(pooled_name)
        pooled = dataclasses.replace(node, name=pooled_name, target=with_indices.default, op=f"{name}_with_indices")
        nodes += [pooled, dataclasses.replace(node, target=operator.getitem, args=(Ref(pooled_name), 0), kwargs={})]
    return graph.replace(nodes=nodes)


def prune_dead(graph: Graph) -> Graph:
    """Drop nodes the output does not depend on (e.g. sizes computed for removed ops)."""
    needed = {graph.output}
    by_name = {node.name: node for node in graph.nodes}
    for node in reversed(graph.nodes):
        if node.name in needed:
            needed.update(node.refs)
    return graph.replace(nodes=[n for n in graph.nodes if n.name in needed and n.name in by_name])


