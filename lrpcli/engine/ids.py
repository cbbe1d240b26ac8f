"""Token ids on their way to the embedding lookups: which ops carry them there (decided at capture) and how
relevance goes back along those ops (in the walk).

A token's relevance is what the lookups of its id receive, summed over the hidden dim. Models do not always
look the input ids up directly: MusicGen reshapes and selects its codebook, XLM and Flaubert slice the last
positions, CPM-Ant concatenates a constant prompt before them, Gemma3 overwrites image-token ids in a copy,
CANINE hashes each character into bucket ids ((id + 1) * prime % buckets). Each of these either moves ids to
other places (a route: the relevance of a place goes back to the id that was copied there) or maps each id to
another in its place (the relevance stays in place). Any other op on the ids (a count, a comparison, a
position computed from them) makes something that carries no relevance, whose lookups are constants."""

from __future__ import annotations

from collections import ChainMap
from typing import Any

import torch

from ..errors import ModelError

#: routes that keep ids as ids (builder.py's views of the input; an embedding of them is a lookup of the input)
VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unsqueeze", "squeeze", "expand", "contiguous", "clone", "_to_copy", "to", "alias", "detach"}

#: routes that move or copy ids, beside constants: MusicGen's select, XLM's slice, CPM-Ant's cat, Gemma3's index_put
ROUTES = VIEWS | {
    "unflatten", "permute", "transpose", "t", "slice", "select", "narrow", "index", "index_select", "gather",
    "expand_as", "repeat", "repeat_interleave", "cat", "concat", "concatenate", "stack", "flip", "roll", "movedim",
    "where", "masked_fill", "index_put", "constant_pad_nd", "pad", "lift_fresh_copy", "type_as",
}

#: element-wise integer ops that map each id to another in its place (CANINE's hash buckets)
MAPS = {
    "add", "sub", "rsub", "mul", "remainder", "fmod", "floor_divide", "bitwise_and", "bitwise_or", "bitwise_xor",
    "clamp", "clamp_min", "clamp_max", "abs", "neg",
}

#: the argument of a route that holds indices, not the values moved: ids there are read, not carried
_INDEX_ARG = {"index": 1, "index_put": 1, "index_select": 2, "gather": 2, "where": 0, "masked_fill": 1}


def carries(op: str, args: tuple, deps: list[str], id_views: set[str], meta: set[str], integral: bool) -> str | None:
    """How an op carries the ids to a lookup: "route" (moves them, beside constants and values computed from
    sizes or ids), "map" (each id to another in place; ``integral``: its output holds integers, not booleans)
    or None (it reads them otherwise, or not at all). Capture (builder.py) and the disk cache's kinds (kinds.py)
    both ask this."""
    carried = [dep for dep in deps if dep in id_views]
    if not carried or any(dep not in id_views and dep not in meta for dep in deps):
        return None
    position = _INDEX_ARG.get(op)
    if position is not None and position < len(args) and _names(args[position]) & set(carried):
        return None  # ids used as indices (a table's values picked by them): not ids any more
    if op in ROUTES:
        return "route"
    if op in MAPS and integral and len(set(carried)) == 1:
        return "map"
    return None


def _names(arg: Any) -> set[str]:
    if isinstance(arg, (list, tuple)):
        return set().union(*(_names(a) for a in arg)) if arg else set()
    name = getattr(arg, "name", None)
    return {name} if isinstance(name, str) else set()


def on_ids(node: Any, values: Any, inputs: list[str], relevance: Any) -> bool:
    """Is this walked node one that carries ids (its live inputs and its output hold integers, its output's
    relevance is a tensor)? Ids cast to floats (numbers a model computes with) move as any value does."""
    if node.kind not in ("route", "elementwise") or not inputs or not isinstance(relevance, torch.Tensor):
        return False
    for name in inputs + [node.name]:
        value = values.stand_in(name)
        if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            return False
    return True


def back(node: Any, values: Any, inputs: list[str], relevance: torch.Tensor) -> dict[str, torch.Tensor]:
    """The relevance of the ids a node reads, from that of the ids it makes: in place for a map; for a route,
    each place's relevance goes back to the id copied there (a constant's places keep theirs: a constant's share).

    The route is run on stand-ins whose values name their places (negative numbers far from any id), so that its
    output says where each of its ids came from, whatever the op."""
    if node.kind == "elementwise":
        return {inputs[0]: relevance.sum_to_size(values[inputs[0]].shape)}
    ids = {name: values[name] for name in inputs}
    dtypes = [v.dtype for v in ids.values()] + [values.stand_in(node.name).dtype]
    base = -(1 << (min(torch.iinfo(d).bits for d in dtypes) - 2))  # fits every dtype on the way (int64 -> int32)
    stand_ins, starts, start = {}, {}, 0
    for name, value in ids.items():
        places = torch.arange(start, start + value.numel(), device=value.device).reshape(value.shape)
        stand_ins[name], starts[name] = (base - places).to(value.dtype), start
        start += value.numel()
    source = (base - node.call(ChainMap(stand_ins, values)).long()).reshape(-1)
    flat = relevance.reshape(-1)
    result = {}
    for name, value in ids.items():
        picked = (source >= starts[name]) & (source < starts[name] + value.numel())
        gathered = flat.new_zeros(value.numel()).index_add_(0, source[picked] - starts[name], flat[picked])
        result[name] = gathered.reshape(value.shape)
    return result


def unreached(graph: Any) -> ModelError:
    """The error for token ids that got no relevance: they reach the output only through ops that carry none
    (a lookup of ids computed from them otherwise than ``carries`` allows is a constant's). Names the first
    such lookup and the op that made its ids, or else the first op that reads the ids."""
    carriers = {graph.input}
    readers: dict[str, Any] = {}  # meta nodes reading what carries the ids
    by_name = {node.name: node for node in graph.nodes}
    for node in graph.nodes:
        if not carriers.intersection(node.refs):
            continue
        if node.kind in ("route", "elementwise", "embedding"):
            carriers.add(node.name)
        elif node.kind == "meta" and node.op not in ("sym_size", "sym_numel", "_assert_tensor_metadata"):
            readers[node.name] = node
    lookups = [node for node in graph.nodes if node.op == "embedding" and node.kind == "meta"]
    for lookup in lookups:
        stack, seen = list(lookup.refs), set()
        while stack:
            name = stack.pop()
            if name in seen or name not in by_name:
                continue
            seen.add(name)
            if name in readers:
                return ModelError(
                    f"the token ids get no relevance: the lookup {lookup.describe()} reads ids that "
                    f"{readers[name].describe()} computed from them, an op that carries no relevance",
                    hint=_HINT,
                )
            stack.extend(by_name[name].refs)
    first = f": the first that reads them is {next(iter(readers.values())).describe()}" if readers else ""
    return ModelError(f"the token ids get no relevance: they reach the output only through ops that carry none{first}", hint=_HINT)


_HINT = (
    "lrpcli collects a token's relevance at the embedding lookups of its id, reached through reshapes, slices, "
    "selections, concatenations and element-wise maps of the ids; explain the model on its input embeddings instead "
    "(a wrapper whose forward takes inputs_embeds)"
)
