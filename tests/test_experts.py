"""Mixture-of-experts models (issue 27 item 6): transformers' MoE blocks, which torch.export cannot capture
(a loop over the experts that received tokens), are captured densely with the router's weights held constant.

Two references. For Mixtral, Qwen2/3-MoE and OLMoE, the test-only modified-gradient oracle
(tests/gradient_oracle.py) runs on the same model whose MoE blocks were replaced by a dense block written here,
independently of lrpcli, with the routing weights ``.detach()``ed: every expert on every token, weighted by its
routing weight (0 where not chosen). That is what "the router's choice held constant" means (AttnLRP treats such
gates as constants; LXT holds MoE routers so).

For the other families (PhiMoE, DeepSeek-V2/V3, dots1, GLM4-MoE, GraniteMoE(Shared), JetMoE, GPT-OSS, HunYuan,
ERNIE 4.5, MiniMax, FlexOlmo, DBRX, Llama 4, Qwen3-Next, Qwen3-VL-MoE, Qwen3-Omni, Aria, Jamba, GraniteMoeHybrid,
LongCat-Flash, GLM4V-MoE) the routing itself is checked
against the model: the captured graph's outputs equal the model's own sparse forward (1e-6 of the largest logit).
Relevance is then checked against the oracle run on lrpcli's dense blocks with the hold replaced by
``.detach()`` (so the oracle walks the same function by plain modified gradients, no lrpcli rule involved).
Families whose other parts stop torch.export (DeepSeek-V2 and Llama 4: complex RoPE; Qwen3-Next: its linear
attention; Jamba, GraniteMoeHybrid: their Mamba layers' cache checks, issue 27), multimodal ones (Qwen3-VL/Omni,
GLM4V, Aria) and LongCat-Flash (whole model not tried) are tested on their MoE block between an embedding and a
linear head.
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
from lrpcli.engine import experts  # noqa: E402
from lrpcli.engine.experts import dense_experts, is_sparse_block  # noqa: E402
from lrpcli.errors import ModelError  # noqa: E402

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


def _most_slow(families, default):
    """The families as parameters: those in ``default`` run in the default suite, the rest with ``-m slow`` (each
    takes ~12 s on 2 cores; `.ci/run` runs the slow step too)."""
    return [name if name in default else pytest.param(name, marks=pytest.mark.slow) for name in sorted(families)]


@pytest.mark.parametrize("family", _most_slow(FAMILIES, {"mixtral"}))
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


def test_a_router_that_is_not_its_familys_is_refused_not_explained_wrongly(monkeypatch):
    """A block whose routing differs from the dense form lrpcli has for it (here: Mixtral's block, which always
    renormalises its top-k weights, given the Qwen form that reads norm_topk_prob, set False) is refused."""
    torch.manual_seed(2)
    model = FAMILIES["mixtral"]().double().eval()
    monkeypatch.setitem(experts.FAMILIES, "MixtralSparseMoeBlock", experts.SoftmaxTopK)
    for module in model.modules():
        if is_sparse_block(module):
            module.norm_topk_prob = False  # the dense form then skips the renormalisation the sparse forward does

    with pytest.raises(ModelError, match="route differently"):
        explain(_LastToken(model).eval(), torch.randint(1, 40, (2, 5)), "attnlrp")


# --------------------------------------------------------------------------- every other family of transformers 4.57

ONE = dict(SMALL, num_hidden_layers=1)
ONE_KV2 = dict(ONE, num_key_value_heads=2)  # DeepSeek's MLA attention repeats no key heads under export
MLA = dict(kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)
ROUTED = dict(moe_intermediate_size=12, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=0, n_group=2, topk_group=1)


def _model(name, config, **kwargs):
    return lambda: getattr(transformers, name)(getattr(transformers, config)(**kwargs))


#: family -> (whole causal LM, dtype): float32 where the model's own forward runs only in float32 (its router
#: casts to float32 and its expert sum then mixes dtypes: DeepSeek-V3, dots1, GLM4-MoE, ERNIE)
WHOLE = {
    "phimoe": (_model("PhimoeForCausalLM", "PhimoeConfig", intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, **ONE), torch.float64),
    "granitemoe": (_model("GraniteMoeForCausalLM", "GraniteMoeConfig", intermediate_size=12, num_local_experts=4, num_experts_per_tok=2, **ONE), torch.float64),
    "granitemoeshared": (_model("GraniteMoeSharedForCausalLM", "GraniteMoeSharedConfig", intermediate_size=12, shared_intermediate_size=20, num_local_experts=4, num_experts_per_tok=2, **ONE), torch.float64),
    "jetmoe": (_model("JetMoeForCausalLM", "JetMoeConfig", vocab_size=40, hidden_size=16, num_hidden_layers=1, num_key_value_heads=1, kv_channels=8, intermediate_size=12,
                      num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32), torch.float64),
    "gpt_oss": (_model("GptOssForCausalLM", "GptOssConfig", intermediate_size=12, num_local_experts=4, num_experts_per_tok=2, head_dim=8, layer_types=["full_attention"], **ONE), torch.float64),
    "hunyuan_v1_moe": (_model("HunYuanMoEV1ForCausalLM", "HunYuanMoEV1Config", intermediate_size=12, num_experts=4, moe_topk=2, head_dim=8, **ONE), torch.float64),
    "minimax": (_model("MiniMaxForCausalLM", "MiniMaxConfig", intermediate_size=12, num_local_experts=4, num_experts_per_tok=2, head_dim=8, layer_types=["full_attention"], **ONE), torch.float64),
    "flex_olmo": (_model("FlexOlmoForCausalLM", "FlexOlmoConfig", intermediate_size=12, num_experts=4, num_experts_per_tok=2, pad_token_id=0, **ONE), torch.float64),
    "dbrx": (_model("DbrxForCausalLM", "DbrxConfig", d_model=16, n_heads=2, n_layers=1, max_seq_len=32, vocab_size=40, attn_config={"kv_n_heads": 1},
                    ffn_config={"ffn_hidden_size": 12, "moe_num_experts": 4, "moe_top_k": 2}), torch.float64),
    "deepseek_v3": (_model("DeepseekV3ForCausalLM", "DeepseekV3Config", intermediate_size=24, q_lora_rank=8, routed_scaling_factor=2.5, **ROUTED, **MLA, **ONE_KV2), torch.float32),
    "dots1": (_model("Dots1ForCausalLM", "Dots1Config", intermediate_size=24, head_dim=8, **ROUTED, **ONE), torch.float32),
    "glm4_moe": (_model("Glm4MoeForCausalLM", "Glm4MoeConfig", intermediate_size=24, head_dim=8, **ROUTED, **ONE), torch.float32),
    "ernie4_5_moe": (_model("Ernie4_5_MoeForCausalLM", "Ernie4_5_MoeConfig", intermediate_size=24, moe_intermediate_size=12, moe_num_experts=4, moe_k=2, moe_num_shared_experts=1,
                            moe_layer_start_index=0, moe_layer_interval=1, head_dim=8, **ONE), torch.float32),
}


class _BlockModel(nn.Module):
    """A family's MoE block between an embedding and a linear head: ids -> block -> last token -> logits."""

    def __init__(self, block, width=16):
        super().__init__()
        self.embed = nn.Embedding(40, width)
        self.block = block
        self.head = nn.Linear(width, 8)

    def forward(self, input_ids):
        out = self.block(self.embed(input_ids))
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out.reshape(input_ids.shape[0], input_ids.shape[1], -1)[:, -1])


def _block(module, cls, config, **kwargs):
    def build():
        configs = __import__(f"transformers.models.{module}.configuration_{module}", fromlist=[config])
        cfg = getattr(configs, config)(**kwargs)
        block = getattr(__import__(f"transformers.models.{module}.modeling_{module}", fromlist=[cls]), cls)(cfg)
        for parameter in block.parameters():  # fused expert tensors are created empty (torch.empty)
            nn.init.normal_(parameter, std=0.3)
        for buffer in block.buffers():  # DeepSeek's score-correction bias: nonzero, so that it counts
            buffer.normal_(std=0.1)
        return _BlockModel(block)

    return build


#: family -> (a tiny model around its MoE block, dtype)
BLOCKS = {
    "deepseek_v2": (_block("deepseek_v2", "DeepseekV2MoE", "DeepseekV2Config", hidden_size=16, intermediate_size=24, topk_method="group_limited_greedy",
                           routed_scaling_factor=1.5, **ROUTED), torch.float64),
    "llama4": (_block("llama4", "Llama4TextMoe", "Llama4TextConfig", hidden_size=16, intermediate_size=12, intermediate_size_mlp=24, num_local_experts=4,
                      num_experts_per_tok=2), torch.float64),
    "qwen3_next": (_block("qwen3_next", "Qwen3NextSparseMoeBlock", "Qwen3NextConfig", hidden_size=16, moe_intermediate_size=12, shared_expert_intermediate_size=20,
                          num_experts=4, num_experts_per_tok=2, norm_topk_prob=True), torch.float64),
    "qwen3_vl_moe": (_block("qwen3_vl_moe", "Qwen3VLMoeTextSparseMoeBlock", "Qwen3VLMoeTextConfig", hidden_size=16, moe_intermediate_size=12, num_experts=4,
                            num_experts_per_tok=2), torch.float64),
    "jamba": (_block("jamba", "JambaSparseMoeBlock", "JambaConfig", hidden_size=16, intermediate_size=12, num_experts=4, num_experts_per_tok=2), torch.float64),
    "granitemoehybrid": (_block("granitemoehybrid", "GraniteMoeHybridMoE", "GraniteMoeHybridConfig", hidden_size=16, intermediate_size=12, num_local_experts=4, mamba_n_heads=8,
                                num_experts_per_tok=2), torch.float64),
    "longcat_flash": (_block("longcat_flash", "LongcatFlashMoE", "LongcatFlashConfig", hidden_size=16, expert_ffn_hidden_size=12, n_routed_experts=4, zero_expert_num=2,
                             moe_topk=2), torch.float32),
    "glm4v_moe": (_block("glm4v_moe", "Glm4vMoeTextMoE", "Glm4vMoeTextConfig", hidden_size=16, intermediate_size=24, **ROUTED), torch.float32),
    "qwen3_omni_moe": (_block("qwen3_omni_moe", "Qwen3OmniMoeThinkerTextSparseMoeBlock", "Qwen3OmniMoeTextConfig", hidden_size=16, moe_intermediate_size=12,
                              num_experts=4, num_experts_per_tok=2, norm_topk_prob=False), torch.float64),
    "qwen3_omni_moe_talker": (_block("qwen3_omni_moe", "Qwen3OmniMoeTalkerTextSparseMoeBlock", "Qwen3OmniMoeTalkerTextConfig", hidden_size=16,
                                     moe_intermediate_size=12, shared_expert_intermediate_size=20, num_experts=4, num_experts_per_tok=2,
                                     norm_topk_prob=True), torch.float64),
    "aria": (_block("aria", "AriaTextMoELayer", "AriaTextConfig", hidden_size=16, intermediate_size=12, moe_num_experts=4, moe_topk=2, moe_num_shared_experts=1), torch.float64),
}

CASES = {**{name: (build, dtype, True) for name, (build, dtype) in WHOLE.items()}, **{name: (build, dtype, False) for name, (build, dtype) in BLOCKS.items()}}


@pytest.mark.parametrize("family", _most_slow(CASES, {"deepseek_v3", "granitemoe", "llama4"}))
def test_every_moe_family_explains_as_the_oracle_with_its_router_held(family, monkeypatch):
    build, dtype, whole = CASES[family]
    torch.manual_seed(0)
    model = build().to(dtype).eval()
    assert any(is_sparse_block(m) for m in model.modules()), "the family has no MoE block lrpcli computes densely"
    wrapped = (_LastToken(model) if whole else model).eval()
    ids = torch.randint(1, 40, (3, 7))
    with torch.no_grad():
        own = wrapped(ids)  # the model's own sparse forward
    result = explain(wrapped, ids, "attnlrp", target=5, params=EXACT)
    # the routing: the dense capture computes the model's own logits
    assert (result.outputs - own).abs().max() <= 1e-6 * own.abs().max()
    assert any("mixture-of-experts" in note for note in result.notes)
    # relevance: the oracle on the same dense blocks, the routing weights detached instead of held
    monkeypatch.setattr(experts, "_hold", lambda weights: weights.detach())
    hooks = []
    if family == "llama4":  # its router takes sigmoid(-inf) where not chosen, which the oracle's out/x rule makes NaN: router input detached
        hooks = [model.block.router.register_forward_pre_hook(lambda module, args: tuple(a.detach() for a in args))]
    with dense_experts(model):
        expected = embedding_relevance(wrapped, ids, 5, "attnlrp")
    for hook in hooks:
        hook.remove()
    assert torch.isfinite(result.relevance).all() and expected.abs().max() > 0
    tolerance = 1e-6 if dtype == torch.float64 else 1e-5  # measured: up to 1.5e-7 and 2.7e-7
    assert (result.relevance - expected).abs().max() <= tolerance * expected.abs().max()
    assert not any(type(m).__module__ == experts.__name__ for m in model.modules())  # the model is as it was


def test_the_routers_weights_hold_where_the_router_is_its_own_module():
    """DeepSeek-V3's router (sigmoid scores, a correction bias, group-limited top-k) is the model's own module:
    with the weights held it is off relevance's path, so its topk/sigmoid nodes need no rule."""
    torch.manual_seed(3)
    build, dtype, _ = CASES["deepseek_v3"]
    model = build().to(dtype).eval()
    from lrpcli import Explainer

    graph, _ = Explainer(_LastToken(model).eval(), "attnlrp").prepare(torch.randint(1, 40, (2, 5)))
    relevant = graph.relevant()
    routers = [node for node in graph.nodes if node.op in ("topk", "sigmoid", "scatter") and ".gate" in (node.module or "")]
    assert routers and not any(node.name in relevant for node in routers)


def test_a_block_lrpcli_cannot_compute_densely_is_refused_by_name():
    """Switch Transformers' top-1 router drops tokens beyond an expert's capacity: refused, naming block and why."""
    config = transformers.SwitchTransformersConfig(vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_decoder_layers=2, num_heads=2, num_experts=4,
                                                   encoder_sparse_step=1, decoder_sparse_step=1, expert_capacity=4)
    block = transformers.models.switch_transformers.modeling_switch_transformers.SwitchTransformersSparseMLP(config)
    with pytest.raises(ModelError, match=r"block block \(SwitchTransformersSparseMLP\) is not supported: .*capacity"):
        explain(_BlockModel(block).eval(), torch.randint(1, 40, (2, 5)), "attnlrp")


def test_a_model_whose_own_forward_fails_is_a_model_error_naming_it():
    """DeepSeek-V3 in float64: its router computes in float32 and its own expert sum then index_adds float64 into
    float32, so the model cannot run; the dense capture has nothing to be checked against: a ModelError, not torch's."""
    torch.manual_seed(4)
    model = CASES["deepseek_v3"][0]().double().eval()
    with pytest.raises(ModelError, match=r"own forward fails.*\n.*hint: run the model in a dtype it supports"):
        explain(_LastToken(model).eval(), torch.randint(1, 40, (2, 5)), "attnlrp")
