"""Mixture-of-experts models (issue 27 item 6): transformers' sparse MoE blocks, which torch.export cannot capture
(a loop over the experts that received tokens), are captured densely with the router's weights held constant.

The reference is the test-only modified-gradient oracle (tests/gradient_oracle.py) run on the same model whose MoE
blocks were replaced by a dense block written here, independently of lrpcli, with the routing weights
``.detach()``ed: every expert on every token, weighted by its routing weight (0 where not chosen). That is what
"the router's choice held constant" means (AttnLRP treats such gates as constants; LXT holds MoE routers so).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from gradient_oracle import embedding_relevance  # noqa: E402

from lrpcli import explain  # noqa: E402
from lrpcli.engine.experts import dense_experts, is_sparse_block  # noqa: E402

EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)


def _families():
    families = {
        "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, **SMALL)),
        "qwen2_moe": lambda: transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
            intermediate_size=24, moe_intermediate_size=12, shared_expert_intermediate_size=20, num_experts=4, num_experts_per_tok=2,
            norm_topk_prob=False, decoder_sparse_step=1, **SMALL)),
    }
    if hasattr(transformers, "Qwen3MoeForCausalLM"):
        families["qwen3_moe"] = lambda: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            intermediate_size=24, moe_intermediate_size=12, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
            head_dim=8, **SMALL))
    if hasattr(transformers, "OlmoeForCausalLM"):
        families["olmoe"] = lambda: transformers.OlmoeForCausalLM(transformers.OlmoeConfig(
            intermediate_size=12, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, **{k: v for k, v in SMALL.items()}))
    return families


FAMILIES = _families()


class _LastToken(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, return_dict=False)[0][:, -1]


class _HandDense(nn.Module):
    """The reference block: written from the Mixtral/Qwen2-MoE forward, the loop made dense, weights detached."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, hidden):
        block = self.block
        b, s, h = hidden.shape
        x = hidden.reshape(-1, h)
        logits = block.gate(x)
        p = F.softmax(logits, dim=1, dtype=torch.float)
        k = getattr(block, "top_k", None) or block.num_experts_per_tok
        top, chosen = torch.topk(p, k, dim=-1)
        if getattr(block, "norm_topk_prob", True):
            top = top / top.sum(-1, keepdim=True)
        w = torch.zeros_like(p).scatter(1, chosen, top).to(x.dtype).detach()
        out = sum(w[:, e, None] * expert(x) for e, expert in enumerate(block.experts))
        if getattr(block, "shared_expert", None) is not None:
            out = out + torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
        return out.reshape(b, s, h), logits


def _hand_densified(model):
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if is_sparse_block(child):
                setattr(module, name, _HandDense(child))
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_moe_relevance_equals_the_oracle_with_the_router_held(family):
    torch.manual_seed(0)
    model = FAMILIES[family]().double().eval()
    assert any(is_sparse_block(m) for m in model.modules()), "the family has no sparse MoE block to test"
    ids = torch.randint(1, 40, (3, 7))
    with torch.no_grad():
        own = model(input_ids=ids).logits[:, -1]
    result = explain(_LastToken(model).eval(), ids, "attnlrp", target=5, params=EXACT)
    assert torch.allclose(result.outputs, own, rtol=1e-10, atol=1e-12)  # the dense capture computes the model's logits
    assert any("mixture-of-experts" in note for note in result.notes)
    expected = embedding_relevance(_LastToken(_hand_densified(model)).eval(), ids, 5, "attnlrp")
    assert torch.isfinite(result.relevance).all() and expected.abs().max() > 0
    assert (result.relevance - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert all(type(m).__name__ != "DenseExperts" for m in model.modules())  # the model is as it was


def test_the_router_weights_carry_no_relevance_and_blocks_are_put_back():
    torch.manual_seed(1)
    model = FAMILIES["mixtral"]().double().eval()
    blocks = [m for m in model.modules() if is_sparse_block(m)]
    with dense_experts(model) as swapped:
        assert swapped == ["model.layers.0.block_sparse_moe", "model.layers.1.block_sparse_moe"]
        assert not any(is_sparse_block(m) for m in model.modules())
    assert [m for m in model.modules() if is_sparse_block(m)] == blocks
    from lrpcli import Explainer

    explainer = Explainer(_LastToken(model).eval(), "attnlrp")
    ids = torch.randint(1, 40, (2, 5))
    graph, _ = explainer.prepare(ids)
    relevant = graph.relevant()
    routers = [node for node in graph.nodes if node.op in ("topk", "scatter")]
    assert routers and not any(node.name in relevant for node in routers)  # off relevance's path: no rule needed


def test_a_router_that_is_not_mixtrals_is_refused_not_explained_wrongly():
    torch.manual_seed(2)
    model = FAMILIES["mixtral"]().double().eval()
    for module in model.modules():
        if is_sparse_block(module):
            module.norm_topk_prob = False  # the dense form then skips the renormalisation the sparse forward does
    from lrpcli.errors import ModelError

    with pytest.raises(ModelError, match="route differently"):
        explain(_LastToken(model).eval(), torch.randint(1, 40, (2, 5)), "attnlrp")
