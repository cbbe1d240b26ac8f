"""Mixture-of-experts blocks, captured densely with the router's choice held constant.

transformers' sparse MoE blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, ...) loop over the experts that received
tokens (``for expert in expert_hit``: a count only known at run time), which ``torch.export`` cannot capture. The
math does not need the loop: the block's output is ``sum_e w_e(x) * expert_e(x)`` with ``w_e`` the routing weight
of expert e for the token (0 where the router did not choose it). While the model is captured, each such block is
swapped for :class:`DenseExperts`, which computes exactly that, every expert on every token; the captured graph's
outputs are checked against the model's own, and the block is put back.

Relevance treats the routing weights as constants (AttnLRP's treatment of gates, and LXT's of MoE routers): the
weights pass :func:`held`, an identity the graph builder marks as carrying no relevance, so each expert's output
is a scaling of a live activation by a constant and all relevance goes through the experts. The router, its
softmax and its top-k are then off the relevance's path and need no rules.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F


@torch.library.custom_op("lrpcli::held", mutates_args=())
def _held_op(x: torch.Tensor) -> torch.Tensor:
    """An identity torch.export keeps as one node (lrpcli::held), so that the builder can see it."""
    return x.clone()


@_held_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def held(x: torch.Tensor) -> torch.Tensor:
    """The captured graph's form of lrpcli::held: the value, unchanged (its kind "meta": no relevance)."""
    return x


class DenseExperts(torch.nn.Module):
    """A sparse MoE block computed densely: router softmax, top-k (renormalised where the block does so), the
    routing weights scattered to one weight per expert and held, every expert on every token weighted by them,
    plus a shared expert with its sigmoid gate where the block has one. Returns what the block returns:
    the hidden states and the router logits."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.gate = block.gate
        self.experts = block.experts
        self.top_k = int(getattr(block, "top_k", None) or getattr(block, "num_experts_per_tok"))
        # Mixtral renormalises the top-k weights always; Qwen2/3-MoE and OLMoE say so in norm_topk_prob
        self.normalise = bool(getattr(block, "norm_topk_prob", True))
        self.shared_expert = getattr(block, "shared_expert", None)
        self.shared_expert_gate = getattr(block, "shared_expert_gate", None)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, width = hidden_states.shape
        x = hidden_states.reshape(-1, width)
        router_logits = self.gate(x)
        probabilities = F.softmax(router_logits, dim=1, dtype=torch.float)
        top, chosen = torch.topk(probabilities, self.top_k, dim=-1)
        if self.normalise:
            top = top / top.sum(dim=-1, keepdim=True)
        weights = torch.zeros_like(probabilities).scatter(1, chosen, top).to(x.dtype)
        weights = torch.ops.lrpcli.held(weights)
        out = None
        for index, expert in enumerate(self.experts):
            part = weights[:, index : index + 1] * expert(x)
            out = part if out is None else out + part
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out.reshape(batch, length, width), router_logits


def is_sparse_block(module: torch.nn.Module) -> bool:
    """A transformers sparse MoE block of the Mixtral kind: a linear router ``gate``, a list of ``experts``,
    and top-k routing."""
    return (
        type(module).__name__.endswith("SparseMoeBlock")
        and isinstance(getattr(module, "gate", None), torch.nn.Linear)
        and isinstance(getattr(module, "experts", None), torch.nn.ModuleList)
        and isinstance(getattr(module, "top_k", None) or getattr(module, "num_experts_per_tok", None), int)
    )


@contextlib.contextmanager
def dense_experts(model: Any) -> Iterator[list[str]]:
    """Swap every sparse MoE block of ``model`` (an nn.Module) for :class:`DenseExperts` while the block is
    open; yields the swapped blocks' paths. The model is as it was afterwards, whatever happens."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module, str]] = []
    if isinstance(model, torch.nn.Module):
        for path, module in list(model.named_modules()):
            for name, child in list(module.named_children()):
                if is_sparse_block(child):
                    swapped.append((module, name, child, f"{path}.{name}" if path else name))
    try:
        for parent, name, child, _ in swapped:
            setattr(parent, name, DenseExperts(child))
        yield [path for _, _, _, path in swapped]
    finally:
        for parent, name, child, _ in swapped:
            setattr(parent, name, child)
