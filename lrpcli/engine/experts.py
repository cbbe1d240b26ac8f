"""Mixture-of-experts blocks, captured densely with the router's choice held constant.

transformers' MoE blocks loop over the experts that received tokens (``for expert in expert_hit``, a per-expert
token count turned into a Python list): a count only known at run time, which ``torch.export`` cannot capture.
The math does not need the loop: the block's output is ``sum_e w_e(x) * expert_e(x)`` with ``w_e`` the routing
weight of expert e for the token (0 where the router did not choose it). While the model is captured, each such
block is swapped for a dense block of its family (:data:`FAMILIES`), which computes exactly that, every expert
on every token; the captured graph's outputs are checked against the model's own, and the block is put back.

Each family's router is computed as the block computes it, for the current batch: softmax then top-k (Mixtral,
Qwen2/3-MoE, OLMoE, ...), top-k then softmax (GraniteMoE, JetMoE, GPT-OSS), sigmoid with group-limited top-k
(DeepSeek-V3, dots1, GLM4-MoE: their own router modules), PhiMoE's sparsemixer, ERNIE's corrected choice, Llama 4's
sigmoid scores that scale the experts' input. Shared experts and biases are added as the block adds them.

Relevance treats the routing weights as constants (AttnLRP's treatment of gates, and LXT's of MoE routers): the
weights pass :func:`held`, an identity the graph builder marks as carrying no relevance, so each expert's output
is a scaling of a live activation by a constant and all relevance goes through the experts. The router, its
softmax and its top-k are then off the relevance's path and need no rules.

The price: every expert on every token is E/k times the sparse forward's expert compute and recorded activations
(8 experts top-2: 4x; DeepSeek-V3's 256 top-8: 32x). Blocks whose output for a token depends on the batch's other
tokens (capacity-limited routers: Switch Transformers, NLLB-MoE) or that have no dense form here (Doge's
product-key CDMoE) are refused by name (:data:`REFUSED`).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import ModelError


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


def _hold(x: torch.Tensor) -> torch.Tensor:
    """Routing weights held: through lrpcli::held, the identity the graph builder marks as carrying no relevance."""
    return torch.ops.lrpcli.held(x)


def _dense(weights: torch.Tensor, chosen: torch.Tensor, experts: int) -> torch.Tensor:
    """Top-k weights ``[tokens, k]`` of the experts ``chosen`` as one weight per expert ``[tokens, experts]``."""
    return torch.zeros(weights.shape[0], experts, dtype=weights.dtype, device=weights.device).scatter(1, chosen, weights)


def _mix(x: torch.Tensor, weights: torch.Tensor, expert: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``sum_e held(w)[:, e] * expert(e, x)``: every expert on every token, the routing weights held."""
    weights = _hold(weights)
    out = None
    for index in range(weights.shape[1]):
        part = weights[:, index : index + 1] * expert(index, x)
        out = part if out is None else out + part
    return out


class _Dense(torch.nn.Module):
    """A dense stand-in for one MoE block: the block's submodules and parameters under the same names (the
    captured graph's module paths stay the model's), the block itself kept for its settings."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        for name, child in block.named_children():
            setattr(self, name, child)
        for name, parameter in block.named_parameters(recurse=False):
            setattr(self, name, parameter)
        self.__dict__["block"] = block  # not a submodule: its children are already ours


def _module_experts(experts: torch.nn.ModuleList) -> Callable[[int, torch.Tensor], torch.Tensor]:
    return lambda index, x: experts[index](x)


class SoftmaxTopK(_Dense):
    """Mixtral's router and its kin: softmax over the experts, top-k, renormalised where the block does so;
    a shared expert with its sigmoid gate (Qwen2-MoE) or without (HunYuan) where the block has one.

    ``normalise``: True, False, or the name of the block's flag; ``router_attribute``: the name of the block's router;
    ``logits_out``: whether the block returns ``(hidden, router_logits)`` or the hidden states alone."""

    normalise: bool | str = "norm_topk_prob"
    router_attribute = "gate"
    logits_out = True

    def forward(self, hidden_states: torch.Tensor) -> Any:
        block = self.block
        batch, length, width = hidden_states.shape
        x = hidden_states.reshape(-1, width)
        router_logits = self._logits(hidden_states, x)
        probabilities = F.softmax(router_logits, dim=1, dtype=torch.float)
        top, chosen = torch.topk(probabilities, block.top_k, dim=-1)
        normalise = self.normalise if isinstance(self.normalise, bool) else bool(getattr(block, self.normalise))
        if normalise:
            top = top / top.sum(dim=-1, keepdim=True)
        out = _mix(x, _dense(top.to(x.dtype), chosen, len(self.experts)), _module_experts(self.experts))
        out = self._shared(hidden_states, x, out)
        out = out.reshape(batch, length, width)
        return (out, router_logits) if self.logits_out else out

    def _logits(self, hidden_states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.router_attribute)(x)

    def _shared(self, hidden_states: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        shared = getattr(self, "shared_expert", None)
        if shared is None:
            return out
        gate = getattr(self, "shared_expert_gate", None)
        return out + (torch.sigmoid(gate(x)) * shared(x) if gate is not None else shared(x))


class AlwaysNormalised(SoftmaxTopK):
    """Mixtral, MiniMax: the top-k weights always renormalised."""

    normalise = True


class Jamba(SoftmaxTopK):
    """Jamba: the router is ``router``, the top-k weights not renormalised."""

    normalise = False
    router_attribute = "router"


class HunYuan(SoftmaxTopK):
    """HunYuan-MoE: a gate module on the 3-d states, always renormalised, a shared MLP added, the states alone
    returned."""

    normalise = True
    logits_out = False

    def _logits(self, hidden_states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.gate(hidden_states)

    def _shared(self, hidden_states: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.shared_mlp(hidden_states).reshape(out.shape)


class Ernie(_Dense):
    """ERNIE 4.5 MoE: the choice made on the softmax plus a correction bias, the weights the softmax's at the
    chosen experts, divided by their sum clamped below at ``norm_min``; shared experts added."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.block
        batch, length, width = hidden_states.shape
        x = hidden_states.reshape(-1, width)
        router_logits = self.gate(x.float())
        probabilities = F.softmax(router_logits, dim=1, dtype=torch.float)
        _, chosen = torch.topk(self.moe_statics(probabilities), block.top_k, dim=-1)
        top = torch.gather(probabilities, -1, chosen)
        top = top / torch.clamp(top.sum(dim=-1, keepdim=True), min=block.norm_min)
        out = _mix(x, _dense(top.to(x.dtype), chosen, len(self.experts)), _module_experts(self.experts))
        if getattr(self, "shared_experts", None) is not None:
            out = out + self.shared_experts(x)
        return out.reshape(batch, length, width), router_logits


class PhiMoE(_Dense):
    """PhiMoE: the model's own sparsemixer (eval: the top expert among those within the jitter margin of the
    best, then the second; each weight a softmax over the masked scores)."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.block
        batch, length, width = hidden_states.shape
        x = hidden_states.reshape(-1, width)
        router_logits = self.gate(x)
        sparsemixer = sys.modules[type(block).__module__].sparsemixer
        top, chosen = sparsemixer(router_logits, jitter_eps=block.router_jitter_noise, training=False)
        out = _mix(x, _dense(top.to(x.dtype), chosen, len(self.experts)), _module_experts(self.experts))
        return out.reshape(batch, length, width), router_logits


class RouterModule(_Dense):
    """DeepSeek-V2/V3, dots1, GLM4-MoE, LongCat: the block's own router module returns ``(indices, weights)``
    (softmax or sigmoid scores, group-limited top-k, normalised and scaled as configured); shared experts added.
    The experts are mixed in the weights' precision, as the block does, and cast back."""

    router_attribute = "gate"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        chosen, top = getattr(self, self.router_attribute)(hidden_states)
        x = hidden_states.reshape(-1, shape[-1])
        out = _mix(x, _dense(top, chosen, len(self.experts)), _module_experts(self.experts)).to(x.dtype).reshape(shape)
        if getattr(self, "shared_experts", None) is not None:
            out = out + self.shared_experts(hidden_states)
        return out


class RouterAttribute(RouterModule):
    """LongCat-Flash: the router is ``router`` (its zero-compute experts are identities, mixed like the others)."""

    router_attribute = "router"


def _parallel_expert(block: Any) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """GraniteMoE/JetMoE's experts: one weight tensor per projection, ``[experts, out, in]``, a GLU between."""

    def expert(index: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, block.input_linear.weight[index]).chunk(2, dim=-1)
        return F.linear(block.activation(gate) * up, block.output_linear.weight[index])

    return expert


class TopKSoftmax(_Dense):
    """GraniteMoE (and its Shared and Hybrid kin), JetMoE: top-k of the router's logits, softmax over those k;
    experts in fused weight tensors; JetMoE adds a bias. Returns ``(hidden, router_logits)``."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, width = hidden_states.shape
        x = hidden_states.reshape(-1, width)
        router_logits = self.router.layer(x).float()
        top, chosen = router_logits.topk(self.router.top_k, dim=1)
        top = torch.softmax(top, dim=1).type_as(x)
        out = _mix(x, _dense(top, chosen, self.router.num_experts), _parallel_expert(self.block))
        out = out.reshape(batch, length, width)
        if isinstance(getattr(self, "bias", None), torch.nn.Parameter):
            out = out + self.bias
        return out, router_logits


class GptOss(_Dense):
    """GPT-OSS: the model's own router (top-k of the logits, softmax over those, scattered per expert); each
    expert the clamped GLU of the model's experts, with biases."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = hidden_states.shape[0]
        experts = self.experts
        x = hidden_states.reshape(-1, experts.hidden_size)
        router_scores, _ = self.router(hidden_states)

        def expert(index: int, x: torch.Tensor) -> torch.Tensor:
            gate_up = x @ experts.gate_up_proj[index] + experts.gate_up_proj_bias[index]
            # the block's clamps, as hardtanh (the same values; an activation, which passes relevance on)
            gate = F.hardtanh(gate_up[..., ::2], min_val=-float("inf"), max_val=experts.limit)
            up = F.hardtanh(gate_up[..., 1::2], min_val=-experts.limit, max_val=experts.limit)
            glu = gate * torch.sigmoid(gate * experts.alpha)
            return ((up + 1) * glu) @ experts.down_proj[index] + experts.down_proj_bias[index]

        out = _mix(x, router_scores, expert).to(x.dtype)
        return out.reshape(batch, -1, experts.hidden_size), router_scores


class Llama4(_Dense):
    """Llama 4's text MoE: the router's sigmoid scores (0 where not chosen) scale each expert's *input*; a
    shared expert added. The scores are held, so each routed input is a constant scaling of the states."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        experts = self.experts
        x = hidden_states.reshape(-1, self.block.hidden_dim)
        router_scores, router_logits = self.router(x)
        scores = _hold(router_scores)
        out = self.shared_expert(x)
        for index in range(scores.shape[1]):
            gate, up = ((x * scores[:, index : index + 1]) @ experts.gate_up_proj[index]).chunk(2, dim=-1)
            out = out + (up * experts.act_fn(gate)) @ experts.down_proj[index]
        return out, router_logits


class Dbrx(_Dense):
    """DBRX's FFN: the model's own router (softmax, top-k, p-norm normalised); each expert a GLU of slices of the
    fused weights. Returns ``(hidden, router_weights)``."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, top, chosen = self.router(hidden_states)
        mlp = self.experts.mlp
        shape = (mlp.moe_num_experts, mlp.ffn_hidden_size, mlp.hidden_size)
        w1, v1, w2 = mlp.w1.view(shape), mlp.v1.view(shape), mlp.w2.view(shape)

        def expert(index: int, x: torch.Tensor) -> torch.Tensor:
            return (mlp.activation_fn(x @ w1[index].t()) * (x @ v1[index].t())) @ w2[index]

        x = hidden_states.reshape(-1, hidden_states.shape[-1])
        return _mix(x, _dense(top, chosen, mlp.moe_num_experts), expert).reshape(hidden_states.shape), weights


class JetMoeAttentionExperts(_Dense):
    """JetMoE's mixture of attention heads: ``map`` projects each token's queries by the k experts its router
    chose (a 0/1 selection per slot, held), ``reduce`` projects each slot's output back by the same expert,
    weighted by the held top-k softmax, and adds the bias. The attention between is the model's own."""

    def map(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        batch, length, width = hidden_states.shape
        x = hidden_states.reshape(-1, width)
        router_logits = self.router.layer(x).float()
        top, chosen = router_logits.topk(self.router.top_k, dim=1)
        gates = torch.softmax(top, dim=1).type_as(x)
        experts = self.router.num_experts
        slots = []
        for slot in range(chosen.shape[1]):
            which = chosen[:, slot : slot + 1]
            selection = _dense(torch.ones_like(gates[:, slot : slot + 1]), which, experts)
            slots.append(_mix(x, selection, lambda index, x: F.linear(x, self.input_linear.weight[index])))
        queries = torch.stack(slots, dim=1).reshape(batch, length, len(slots), -1)
        return queries, router_logits, (chosen, gates)

    def reduce(self, layer_input: torch.Tensor, topo_info: tuple[torch.Tensor, ...]) -> torch.Tensor:
        chosen, gates = topo_info
        batch, length, slots, width = layer_input.shape
        y = layer_input.reshape(-1, slots, width)
        out = None
        for slot in range(slots):
            weights = _dense(gates[:, slot : slot + 1], chosen[:, slot : slot + 1], self.router.num_experts)
            part = _mix(y[:, slot], weights, lambda index, y: F.linear(y, self.output_linear.weight[index]))
            out = part if out is None else out + part
        return out.reshape(batch, length, -1) + self.bias


class FusedSoftmaxTopK(_Dense):
    """Qwen3-VL-MoE's text block: softmax, top-k, always renormalised; the experts in fused ``gate_up_proj`` /
    ``down_proj`` tensors. Returns ``(hidden, router_logits)``."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        experts = self.experts
        x = hidden_states.reshape(-1, hidden_states.shape[-1])
        router_logits = self.gate(x)
        probabilities = F.softmax(router_logits, dim=-1, dtype=torch.float)
        top, chosen = torch.topk(probabilities, self.block.top_k, dim=-1)
        top = (top / top.sum(dim=-1, keepdim=True)).to(x.dtype)

        def expert(index: int, x: torch.Tensor) -> torch.Tensor:
            gate, up = (x @ experts.gate_up_proj[index]).chunk(2, dim=-1)
            return (up * experts.act_fn(gate)) @ experts.down_proj[index]

        out = _mix(x, _dense(top, chosen, experts.num_experts), expert)
        return out.reshape(hidden_states.shape[0], -1, hidden_states.shape[-1]), router_logits


class Aria(_Dense):
    """Aria's text MoE: top-k of the router's logits, softmax over those k; grouped-GEMM experts (``fc1`` a GLU
    of two halves, ``fc2``); shared experts added. Returns the hidden states."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.reshape(-1, hidden_states.shape[-1])
        top, chosen = torch.topk(self.router(x), k=self.block.config.moe_topk, dim=1)
        fc1, fc2 = self.experts.fc1.weight, self.experts.fc2.weight

        def expert(index: int, x: torch.Tensor) -> torch.Tensor:
            projection, gate = torch.chunk(x @ fc1[index], 2, dim=-1)
            return (F.silu(projection) * gate) @ fc2[index]

        out = _mix(x, _dense(F.softmax(top, dim=-1), chosen, fc1.shape[0]), expert).reshape(hidden_states.shape)
        return out + self.shared_experts(hidden_states)


#: block class name -> its dense form
FAMILIES: dict[str, type[_Dense]] = {
    "MixtralSparseMoeBlock": AlwaysNormalised,
    "MiniMaxSparseMoeBlock": AlwaysNormalised,
    "Qwen2MoeSparseMoeBlock": SoftmaxTopK,
    "Qwen3MoeSparseMoeBlock": SoftmaxTopK,
    "Qwen3NextSparseMoeBlock": SoftmaxTopK,
    "Qwen3OmniMoeThinkerTextSparseMoeBlock": SoftmaxTopK,
    "Qwen3OmniMoeTalkerTextSparseMoeBlock": SoftmaxTopK,
    "OlmoeSparseMoeBlock": SoftmaxTopK,
    "FlexOlmoSparseMoeBlock": SoftmaxTopK,
    "JambaSparseMoeBlock": Jamba,
    "HunYuanMoEV1Moe": HunYuan,
    "Ernie4_5_MoeSparseMoeBlock": Ernie,
    "PhimoeSparseMoeBlock": PhiMoE,
    "DeepseekV2MoE": RouterModule,
    "DeepseekV3MoE": RouterModule,
    "Dots1MoE": RouterModule,
    "Glm4MoeMoE": RouterModule,
    "Glm4vMoeTextMoE": RouterModule,
    "LongcatFlashMoE": RouterAttribute,
    "GraniteMoeMoE": TopKSoftmax,
    "GraniteMoeSharedMoE": TopKSoftmax,
    "GraniteMoeHybridMoE": TopKSoftmax,
    "JetMoeMoE": TopKSoftmax,
    "GptOssMLP": GptOss,
    "Llama4TextMoe": Llama4,
    "DbrxFFN": Dbrx,
    "JetMoeMoA": JetMoeAttentionExperts,
    "Qwen3VLMoeTextSparseMoeBlock": FusedSoftmaxTopK,
    "AriaTextMoELayer": Aria,
}

#: MoE blocks lrpcli refuses, and why
REFUSED = {
    "SwitchTransformersSparseMLP": "its top-1 router drops the tokens beyond each expert's capacity, so a token's "
    "output depends on the other tokens of the batch",
    "NllbMoeSparseMLP": "its top-2 router drops tokens beyond each expert's capacity (and the second expert at "
    "random in training), so a token's output depends on the other tokens of the batch",
    "DogeCDMoE": "its product-key router picks single-vector experts through embedding lookups of the chosen "
    "indices, which lrpcli has no dense form for",
}


def is_sparse_block(module: torch.nn.Module) -> bool:
    """A transformers MoE block of a family lrpcli computes densely (:data:`FAMILIES`)."""
    return type(module).__name__ in FAMILIES


@contextlib.contextmanager
def dense_experts(model: Any) -> Iterator[list[str]]:
    """Swap every MoE block of ``model`` (an nn.Module) for its dense form while the block is open; yields the
    swapped blocks' paths. The model is as it was afterwards, whatever happens."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module, str]] = []
    if isinstance(model, torch.nn.Module):
        for path, module in model.named_modules():
            if type(module).__name__ in REFUSED:
                raise ModelError(
                    f"the mixture-of-experts block {path} ({type(module).__name__}) is not supported: {REFUSED[type(module).__name__]}",
                    hint="explain a sub-model without it, or a model whose MoE blocks lrpcli computes densely "
                    "(Mixtral, Qwen-MoE, DeepSeek, GraniteMoE, GPT-OSS, ...: lrpcli.engine.experts.FAMILIES)",
                )
        for path, module in list(model.named_modules()):
            for name, child in list(module.named_children()):
                if is_sparse_block(child):
                    swapped.append((module, name, child, f"{path}.{name}" if path else name))
    try:
        for parent, name, child, _ in swapped:
            setattr(parent, name, FAMILIES[type(child).__name__](child))
        yield [path for _, _, _, path in swapped]
    finally:
        for parent, name, child, _ in swapped:
            setattr(parent, name, child)
