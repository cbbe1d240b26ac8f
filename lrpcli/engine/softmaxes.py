"""A softmax written out by hand, ``exp(x - logsumexp(x, dim, keepdim=True))`` (Reformer's attentions), as the
``softmax(x, dim)`` it is, so that it gets the composite's softmax rule (AttnLRP's, or CP-LRP's held weights) instead
of stopping at ``exp``. The two differ only in rounding; ``logsumexp`` keeps any other readers it has.
"""

from __future__ import annotations

import torch

from . import ops


def _logsumexp_softmax(exp: torch.fx.Node) -> tuple[torch.fx.Node, int] | None:
    """``(x, dim)`` where ``exp`` is ``exp(x - logsumexp(x, [dim], keepdim=True))``; else None."""
    if exp.op != "call_function" or ops.op_name(exp.target) != "exp" or not isinstance(exp.args[0], torch.fx.Node):
        return None
    difference = exp.args[0]
    if difference.target is not torch.ops.aten.sub.Tensor or len(difference.args) != 2 or difference.kwargs:
        return None
    x, total = difference.args
    if not (isinstance(total, torch.fx.Node) and total.op == "call_function" and ops.op_name(total.target) == "logsumexp"):
        return None
    dims, keepdim = (list(total.args[1:3]) + [None, False])[:2]
    dims = [dims] if isinstance(dims, int) else dims
    if total.args[0] is not x or not keepdim or not isinstance(dims, (list, tuple)) or len(dims) != 1:
        return None
    return x, dims[0]


def fold_written_softmaxes(gm: torch.fx.GraphModule) -> None:
    """Each ``exp(x - logsumexp(x, dim, keepdim=True))`` as ``softmax(x, dim)``."""
    for exp in list(gm.graph.nodes):
        found = _logsumexp_softmax(exp)
        if found is None:
            continue
        difference = exp.args[0]
        with gm.graph.inserting_before(exp):
            softmax = gm.graph.call_function(torch.ops.aten.softmax.int, found)
        softmax.meta.update(exp.meta)  # the module, the value's shape and dtype
        exp.replace_all_uses_with(softmax)
        gm.graph.erase_node(exp)
        total = difference.args[1]
        if not difference.users:
            gm.graph.erase_node(difference)
            if not total.users:  # a logsumexp read elsewhere stays
                gm.graph.erase_node(total)
