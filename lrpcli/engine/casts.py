"""``x.type_as(y)`` reads only y's dtype: written as ``x.to(dtype)`` at capture, so a constant cast to a live
tensor's dtype stays a constant (Funnel's all-ones attention mask, ``ones(...).type_as(hidden)``, would otherwise
carry relevance into ``1 - mask``)."""

from __future__ import annotations

import torch

from . import ops


def write_out_type_as(gm: torch.fx.GraphModule) -> None:
    """Each ``type_as(x, y)`` with a known dtype for y as ``_to_copy(x, dtype=y's dtype)``."""
    aten = torch.ops.aten
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or ops.op_name(node.target) != "type_as" or len(node.args) != 2:
            continue
        template = node.args[1].meta.get("val") if isinstance(node.args[1], torch.fx.Node) else None
        if not isinstance(template, torch.Tensor):
            continue
        with gm.graph.inserting_before(node):
            cast = gm.graph.call_function(aten._to_copy.default, (node.args[0],), {"dtype": template.dtype})
        cast.meta.update(node.meta)
        node.replace_all_uses_with(cast)
        gm.graph.erase_node(node)
