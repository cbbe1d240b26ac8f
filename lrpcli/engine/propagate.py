"""The walk: run the prepared graph forward once, keeping what the rules need (:func:`record`), then walk
it backward from the output's relevance, each node's rule turning the relevance of its output into that
of its inputs (:func:`propagate`). Explainer (explainer.py) prepares the graph and calls these."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch

from . import ids, ops
from ..errors import UnsupportedOpError
from .composite import Assigned
from .graph import Graph, Node, Ref, map_leaves
from .rules import Ledger
from .transposes import vjp


@dataclass
class LayerRelevance:
    """Relevance totals (per sample) at one node: what reached its output, what it handed down."""

    node: str
    module: str
    module_type: str
    kind: str
    op: str
    rule: str  # the rule's name; "route" for shape/pooling ops, "pass" for element-wise ones
    relevance_out: torch.Tensor  # (batch,)
    relevance_in: torch.Tensor  # (batch,)
    bias: torch.Tensor | None = None  # (batch,) what biases (and constants) absorbed
    stabilizer: torch.Tensor | None = None  # (batch,) what epsilon / stabilisers absorbed
    rule_share: torch.Tensor | None = None  # (batch,) what a non-conservative rule took (softmax's Taylor rule)

    @property
    def absorbed(self) -> torch.Tensor:
        return self.relevance_out - self.relevance_in

    @property
    def other(self) -> torch.Tensor:
        """Loss not explained by biases, stabilisers or the rule itself (e.g. relevance at z = 0)."""
        explained = torch.zeros_like(self.absorbed)
        for part in (self.bias, self.stabilizer, self.rule_share):
            if part is not None:
                explained = explained + part
        return self.absorbed - explained



# --------------------------------------------------------------------------- the forward pass

#: element-wise ops cheap and deterministic enough to recompute in the backward walk instead of keeping
RECOMPUTABLE = {
    "relu", "leaky_relu", "relu6", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu",
    "softplus", "mish", "hardswish", "hardsigmoid", "prelu",
}


class Recorded(dict):
    """Node outputs of the forward pass, by name, for the backward walk.

    Outputs of element-wise activations (ReLU, ...) are dropped as soon as the forward
    pass is done with them and recomputed from their input when a rule asks for them:
    the pre-activation is kept anyway (rules divide by it), so this keeps what is held
    close to what autograd saves for a plain gradient.
    """

    def __init__(self) -> None:
        super().__init__()
        #: dropped outputs: the node that recomputes each, and a zero-memory stand-in of its shape and dtype
        self.recomputable: dict[str, tuple[Node, torch.Tensor]] = {}

    def read_only(self) -> "ReadOnlyWalk":
        """A view for one walk that leaves these values as they are, so that further walks (other seeds) can
        start from the same recorded forward: no copy of it is made (see :class:`ReadOnlyWalk`)."""
        return ReadOnlyWalk(self)

    def take(self, name: str) -> tuple[Any, bool]:
        """A value the walk is done with after this step, and whether the walk owns it (may overwrite it): a
        consuming walk removes it from here, so it does."""
        return self.pop(name), True

    def drop(self, name: str, node: Node) -> None:
        value = super().pop(name)
        self.recomputable[name] = (node, torch.zeros((), dtype=value.dtype, device=value.device).expand(value.shape))

    def stand_in(self, name: str) -> Any:
        """The value, or for a dropped one that is not back yet its zero-memory stand-in
        (for transposes that only read the input's shape, e.g. a max-pool's)."""
        if dict.__contains__(self, name) or name not in self.recomputable:
            return self[name]
        return self.recomputable[name][1]

    def __missing__(self, name: str) -> Any:
        if name not in self.recomputable:
            raise KeyError(name)
        value = self[name] = self.recomputable[name][0].call(self)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def pop(self, name: str, *default: Any) -> Any:
        self.recomputable.pop(name, None)
        return super().pop(name, *default)


class ReadOnlyWalk(Recorded):
    """One walk's view of a recorded forward that must stay as it is (N seeds walked on one forward,
    Explainer.explain_starts): reads fall through to the recorded values; what the walk recomputes (a dropped
    activation, attention weights) is held here and freed as the walk passes it, as a consuming walk frees it;
    ``pop`` of a recorded value hands it out and keeps it, and :meth:`take` says the walk does not own it, so
    that a rule that would overwrite it gets a copy of that one value (a layer's worth, for one step)."""

    def __init__(self, recorded: Recorded) -> None:
        super().__init__()
        self.recorded = recorded
        self.recomputable = recorded.recomputable  # shared: read here, never changed

    def __missing__(self, name: str) -> Any:
        if dict.__contains__(self.recorded, name):
            return dict.__getitem__(self.recorded, name)
        if name not in self.recomputable:
            raise KeyError(name)
        value = self[name] = self.recomputable[name][0].call(self)  # this walk's own, freed when it is passed
        return value

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or dict.__contains__(self.recorded, name)

    def pop(self, name: str, *default: Any) -> Any:
        if dict.__contains__(self, name):
            return dict.pop(self, name)
        if dict.__contains__(self.recorded, name):
            return dict.__getitem__(self.recorded, name)
        if default:
            return default[0]
        raise KeyError(name)

    def take(self, name: str) -> tuple[Any, bool]:
        own = dict.__contains__(self, name)
        return self.pop(name), own


#: the parts of a decomposed attention (transformer_passes): the T x T scores, masked scores and weights are
#: recomputed from q and k when the walk reaches them, as flash attention's backward does, instead of kept
ATTENTION_PARTS = {"attention_scores", "apply_mask", "causal_fill", "attention_weights"}

#: cheap, deterministic ops whose outputs are dropped after the forward pass where all their readers follow within
#: SHORT_SPAN nodes: the walk recomputes them when it gets there (from kept values, or a short chain of dropped
#: ones) and frees them a few steps later. An eager attention's scores, scaled, masked, softmaxed and copied (five
#: T x T tensors per layer), a rotary embedding's halves and sums, a norm's x^2 and scaled x, a gated MLP's product
#: are all such; autograd keeps none of them (issue 28: the recorded forward held 3x what autograd saves for a 26M
#: Llama's gradient). Long-lived values (the residual stream) are kept: recomputing them would save nothing.
SHORT_LIVED = RECOMPUTABLE | {
    "mul", "div", "neg", "add", "sub", "pow", "rsqrt", "sqrt", "mean", "softmax", "_softmax", "matmul", "bmm",
    "cat", "clone", "contiguous", "expand", "reshape", "view", "_unsafe_view", "slice", "transpose", "permute",
    "unsqueeze", "squeeze", "_to_copy", "to", "alias",
}
SHORT_SPAN = 12
#: the longest chain of dropped values a recomputation may walk back through
MAX_CHAIN = 12


def _recomputable(graph: Graph) -> dict[str, int]:
    """Nodes whose outputs can be dropped after the forward pass, mapped to the index of their last reader:
    element-wise activations of one input, the attention parts between q, k and the weights, and short-lived
    values of cheap ops (:data:`SHORT_LIVED`)."""
    last_reader: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for ref in node.refs:
            last_reader[ref] = index
    droppable = {}
    for index, node in enumerate(graph.nodes):
        if node.name == graph.output or node.name not in last_reader or node.kind == "meta":
            continue
        name = ops.op_name(ops.out_of_place(node.target))
        activation = node.kind == "elementwise" and name in RECOMPUTABLE and len(node.refs) == 1
        short = name in SHORT_LIVED and node.folded is None and last_reader[node.name] - index <= SHORT_SPAN
        if activation or short or name in ATTENTION_PARTS:
            droppable[node.name] = last_reader[node.name]
    return droppable


def record(graph: Graph, x: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> Recorded:
    """Run ``graph`` forward on ``x``, keeping what the backward walk needs."""
    droppable = _recomputable(graph)
    drop_after: dict[int, list[str]] = {}
    for name, index in droppable.items():
        drop_after.setdefault(index, []).append(name)
    by_name = {node.name: node for node in graph.nodes}
    values = Recorded()
    values.update(graph.inputs(x, extras))
    chain: dict[str, int] = {}  # dropped value -> how many dropped values its recomputation goes back through
    for index, node in enumerate(graph.nodes):
        values[node.name] = node.call(values)
        for name in drop_after.get(index, ()):
            dropped, value = by_name[name], values[name]
            refs = dropped.refs
            # every input at hand when the walk recomputes it: kept, or itself recomputable within MAX_CHAIN
            if not all(dict.__contains__(values, s) or s in values.recomputable for s in refs):
                continue
            depth = 1 + max((chain.get(s, 0) for s in refs), default=0)
            if depth > MAX_CHAIN or not isinstance(value, torch.Tensor):
                continue
            if any(s not in values.recomputable and _same_storage(value, values[s]) for s in refs):
                continue  # a view of a kept value: dropping it frees nothing
            values.drop(name, dropped)
            chain[name] = depth
    return values


# --------------------------------------------------------------------------- the backward walk


def _activation_inputs(node: Node, values: Recorded, meta: set[str]) -> list[str]:
    seen: list[str] = []
    for ref in node.refs:
        if ref in meta or ref in seen or ref in node.held:
            continue
        if ref in values.recomputable or isinstance(values.get(ref), (torch.Tensor, tuple, list)):
            seen.append(ref)
    return seen


def _total(relevance: Any, batch: int, batch_dim: int = 0) -> torch.Tensor:
    """Per-sample totals of a node's relevance, whichever dim holds the samples (a merged batch*heads dim too)."""
    if isinstance(relevance, dict):
        parts = [_total(r, batch, batch_dim) for r in relevance.values()]
        return sum(parts[1:], parts[0])
    if relevance.ndim == 0:
        return relevance.reshape(1)
    return relevance.movedim(min(batch_dim, relevance.ndim - 1), 0).reshape(batch, -1).sum(dim=1)


def _same_storage(a: Any, b: Any) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


#: a linear layer's rule runs on the rows (tokens) that hold relevance alone where they are at most this share
LIVE_ROWS_SHARE = 0.5


class LiveRows:
    """Which rows (tokens, dim -2) of a linear layer's output hold relevance, where they are few.

    A language model's generated token is explained from one row of the LM head's input: up to the last
    attention, every token-wise layer (the LM head, the last MLP, the last o-projection) holds relevance in that
    row alone, and a dense walk divides and multiplies zeros there (issue 28). The walk runs such a layer's rule
    on the live rows alone and puts the result back in place; its totals (the ledger) are the same, since the
    other rows hold nothing. Walking backward, relevance spreads over the rows (attention mixes them) and does
    not gather again, so once a layer's rows are mostly live, the walk stops looking (the check is a pass over
    the relevance: kept off the dense layers)."""

    def __init__(self) -> None:
        self.looking = True

    def of(self, node: Node, rule: Any, a: Any, relevance: Any) -> torch.Tensor | None:
        """The live rows' indices, or None: walk this layer densely (most rows hold relevance, or its rule or
        shape does not allow a row at a time)."""
        if (
            not self.looking
            or node.target is not torch.ops.aten.linear.default
            or not isinstance(relevance, torch.Tensor)
            or relevance.ndim < 3
            or a.shape[:-1] != relevance.shape[:-1]
            or node.batch_dim is None
            or node.batch_dim % relevance.ndim == relevance.ndim - 2
            or not rule.rows_independent
        ):
            return None
        alive = relevance.any(-1).reshape(-1, relevance.shape[-2]).any(0)
        count = int(alive.sum())
        if count > LIVE_ROWS_SHARE * alive.numel():
            self.looking = False
            return None
        return alive.nonzero().squeeze(1) if count else None  # no relevance at all: the rules' own way (the ledger's zeros)


def _node_relevance(
    node: Node,
    assigned: Assigned | None,
    values: Recorded,
    inputs: list[str],
    pending: dict[str, Any],
    ledger: Ledger | None,
    returned: torch.Tensor | None = None,
    live: LiveRows | None = None,
) -> dict[str, Any]:
    """Relevance of each activation input of ``node``, taking the relevance of its output from ``pending``."""
    kind = node.kind
    if kind in ("conv", "linear", "batchnorm"):
        # popped inline, so that the rule holds the only references to the output and its relevance and can
        # free them as soon as it has divided one by the other (a layer's worth of memory at the peak)
        # The rule may also overwrite the output (alpha-beta turns it into z-): nothing else reads it by now (its
        # readers come later in the graph and were walked first), except the outputs handed back to the caller.
        # A read-only walk (several seeds on one forward) keeps the recorded z: a rule that overwrites z gets a copy.
        source = node.args[0].name
        z, own = values.take(node.name)
        rule = assigned.rule
        relevance, a = pending.pop(node.name), values[source]
        rows = live.of(node, rule, a, relevance) if live is not None else None
        if rows is not None:  # a copy of the live rows: z may be overwritten
            partial = rule.weighted(node, a.index_select(-2, rows), z.index_select(-2, rows), relevance.index_select(-2, rows), ledger=ledger)
            del z, relevance
            return {source: partial.new_zeros(a.shape).index_copy_(-2, rows, partial)}
        if (not own and rule.overwrites_z) or (returned is not None and _same_storage(z, returned)):
            if rule.spares_z:  # it can leave z as it is, at no more cost than overwriting a copy
                return {source: rule.weighted(node, a, z, relevance, ledger=ledger, reuse_z=False)}
            z = z.clone()
        return {source: rule.weighted(node, a, z, relevance, ledger=ledger)}
    relevance = pending.pop(node.name)
    if kind in ops.PROPORTIONAL_KINDS:
        return assigned.rule.proportional(node, values, inputs, values[node.name], relevance, ledger=ledger)
    if kind in ops.TRANSFORMER_KINDS:
        return assigned.rule.propagate(node, values, inputs, values[node.name], relevance, ledger=ledger)
    if kind == "embedding":  # the input ids: a token's relevance is its embedding's, summed over the hidden dim
        return {inputs[0]: relevance.sum(dim=-1)}
    if ids.on_ids(node, values, inputs, relevance):  # routes and maps that carry the ids to a lookup (ids.py)
        return ids.back(node, values, inputs, relevance)
    if kind == "elementwise":
        if assigned is not None:  # an activation a composite line gave a rule (GuidedBackprop, the gradient, ...)
            return assigned.rule.propagate(node, values, inputs, values[node.name], relevance, ledger=ledger)
        if len(inputs) == 1 and values.stand_in(inputs[0]).shape == relevance.shape:
            return {inputs[0]: relevance}
        return vjp(node, values, inputs, relevance)
    if kind == "route":
        if node.target is operator.getitem and isinstance(values[inputs[0]], (tuple, list)):
            return {inputs[0]: {node.args[1]: relevance}}  # one part of a multi-output op
        if isinstance(relevance, dict):  # the parts of this op's tuple output (None: no relevance reached it)
            relevance = [relevance.get(i) for i in range(len(values[node.name]))]
        return vjp(node, values, [name for name in inputs if isinstance(values.stand_in(name), torch.Tensor)], relevance)
    raise UnsupportedOpError(node.op, node.name, node.module, node.module_type, hint=node.hint)


def _reads_constants(node: Node, meta: set[str]) -> bool:
    """Whether a route node moves constant values too (a concatenated class token, a padded border)."""
    found: list[bool] = []

    def visit(leaf: Any) -> Any:
        if (isinstance(leaf, torch.Tensor) and leaf.numel() > 0) or (isinstance(leaf, Ref) and leaf.name in meta):
            found.append(True)
        return leaf

    map_leaves(node.args, visit)
    return bool(found)


def _accumulate(store: dict[str, Any], name: str, relevance: Any) -> None:
    current = store.get(name)
    if current is None:
        store[name] = relevance
    elif isinstance(current, dict):
        for index, part in relevance.items():
            current[index] = current[index] + part if index in current else part
    else:
        store[name] = current + relevance


def _ancestors(graph: Graph, name: str) -> set[str]:
    """Every node ``name``'s output is computed from (the input included)."""
    by_name = {node.name: node for node in graph.nodes}
    found: set[str] = set()
    stack = list(by_name[name].refs)
    while stack:
        ref = stack.pop()
        if ref in found:
            continue
        found.add(ref)
        if ref in by_name:
            stack.extend(by_name[ref].refs)
    return found


def propagate(
    graph: Graph,
    assigned: dict[str, Assigned],
    values: dict[str, Any],
    initial: torch.Tensor,
    record: bool = False,
    kept: dict[str, torch.Tensor] | None = None,
    watched: dict[str, str] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, dict[str, LayerRelevance] | None]:
    """Walk ``graph`` backward from ``initial`` (relevance of the output), freeing values as it goes.

    Returns the input's relevance (a tuple, one per input, where the graph explains several) and, with ``record``, the per-node totals in graph order. ``kept``
    receives the relevance of the token embeddings (its "embedding" key) where the ids are looked up.
    ``masks``: node name -> a tensor the relevance reaching that node's output is multiplied by before its
    rule runs (Concept Relevance Propagation: keep chosen channels, one mask per row); ``kept`` still gets
    what arrived, unmasked. Below a masked node only relevance that went through it counts: what a branch
    around it (a residual's other path) hands to the nodes it reads from is dropped.
    """
    meta = {node.name for node in graph.nodes if node.kind == "meta"}
    relevance: dict[str, Any] = {graph.output: initial}
    layers: dict[str, LayerRelevance] = {}
    returned = values.get(graph.output)  # the caller's outputs: rules get a copy if a layer's output is (a view of) them
    batch = initial.shape[0]
    batch_dims = {node.name: node.batch_dim for node in graph.nodes} if record else {}
    below = {name: _ancestors(graph, name) for name in masks} if masks else {}
    live = LiveRows()
    for node in reversed(graph.nodes):
        if relevance.get(node.name) is None or node.kind == "meta":
            relevance.pop(node.name, None)
            if node.kind != "meta":
                values.pop(node.name, None)
            continue
        inputs = _activation_inputs(node, values, meta)
        ledger = Ledger(batch, node.batch_dim or 0, features_last=node.kind == "linear") if record else None
        # per-sample totals need each tensor's sample dim; where attention code has mixed the samples into
        # another dim (seq*batch), the node is left out of the per-layer record (such nodes only move values)
        countable = record and node.batch_dim is not None and all(batch_dims.get(name, 0) is not None for name in inputs)
        total_out = _total(relevance[node.name], batch, node.batch_dim) if countable else None
        if kept is not None and watched and node.name in watched and isinstance(relevance[node.name], torch.Tensor):
            kept[f"layer:{watched[node.name]}"] = relevance[node.name]
        if masks and node.name in masks:
            relevance[node.name] = relevance[node.name] * masks[node.name]
            if countable:
                total_out = _total(relevance[node.name], batch, node.batch_dim)
        if kept is not None and node.kind == "embedding":
            previous = kept.get("embedding")
            kept["embedding"] = relevance[node.name] if previous is None else previous + relevance[node.name]
        outgoing = _node_relevance(node, assigned.get(node.name), values, inputs, relevance, ledger, returned, live)
        total_in = (
            sum((_total(p, batch, batch_dims.get(name, 0)) for name, p in outgoing.items()), torch.zeros_like(total_out))
            if countable
            else None
        )
        absorbed = not outgoing
        for name in list(outgoing):  # popped, so that the next step's rule holds the only reference
            part = outgoing.pop(name)
            if below and any(name in nodes and node.name != masked and node.name not in nodes for masked, nodes in below.items()):
                continue  # around a masked node: not relevance that went through it
            _accumulate(relevance, name, part)
        if countable and node.held and absorbed and ledger.bias is None:
            ledger.bias = total_out - total_in  # every live input held (a recurrent gate times a bias): absorbed
        if countable and node.kind == "route" and _reads_constants(node, meta):
            ledger.bias = total_out - total_in  # e.g. a ViT's class token, concatenated: a constant's share
        if record and total_out is not None:
            rule = assigned[node.name].rule.name if node.name in assigned else ("route" if node.kind == "route" else "pass")
            layers[node.name] = LayerRelevance(
                node=node.name,
                module=node.module,
                module_type=node.module_type,
                kind=node.kind or "",
                op=node.op,
                rule=rule,
                relevance_out=total_out,
                relevance_in=total_in,
                bias=ledger.bias,
                stabilizer=ledger.stabilizer,
                rule_share=ledger.rule,
            )
        values.pop(node.name, None)
    result = relevance.get(graph.input)
    if graph.more_inputs:  # several explained inputs: one relevance each (None where none reached it)
        result = tuple(relevance.get(name) for name in graph.explained)
    if record:
        layers = dict(reversed(list(layers.items())))
    return result, (layers if record else None)
