"""Qwen3-Next's gated delta rule and Gemma3n's AltUp / sparse MLP explained with their input-made gates held (issue 27, item 6).

Before, both stopped at an op without a rule: ``cumsum`` (the chunked delta rule's cumulative decay, made from
``in_proj_ba``'s output) and ``pow`` (AltUp's magnitudes ``mean(h**2)**0.5`` and ``sqrt(maximum(mean(h**2), eps))``),
then ``std`` (Gemma3n's Gaussian top-k cutoff). lrpcli holds the delta rule's g and beta (as MambaLRP, Rezaei Jafari
et al., NeurIPS 2024, holds Δ, Ā, B, C), AltUp's magnitudes (normalisers, as AttnLRP Prop. 3.4 holds a norm's
sigma) and the top-k cutoff (lrpcli/engine/held_gates.py). The oracle (tests/gradient_oracle.py) is AttnLRP as a
modified gradient on the model itself with the same values ``.detach()``ed: the delta rule's ``in_proj_ba`` output
and the top-k cutoff (AltUp's magnitudes the oracle holds itself, as every normaliser); relevance = gradient x input
at the token embeddings, epsilon 0.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gradient_oracle import embedding_relevance  # noqa: E402
from lrpcli import explain  # noqa: E402
from lrpcli.engine import held_gates  # noqa: E402
from test_export_rewrites import Ids, _put_back  # noqa: E402

EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
TARGET = 1


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.isfinite(got).all() and expected.abs().max() > 0
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()


def tiny_qwen3_next(tokens_per_key_head: int = 2) -> torch.nn.Module:
    """A linear-attention layer and a full-attention one, plain MLPs (the MoE blocks are tests/test_experts.py's)."""
    torch.manual_seed(0)
    config = transformers.Qwen3NextConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        intermediate_size=24, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=2,
        linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=1, linear_num_value_heads=tokens_per_key_head,
        num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8, shared_expert_intermediate_size=8,
        mlp_only_layers=[0, 1], max_position_embeddings=32,
    )
    model = Ids(transformers.Qwen3NextForCausalLM(config), last=True).double().eval()
    with torch.no_grad():  # g and beta that vary with the input, so that holding them matters
        for module in model.modules():
            if held_gates.is_gated_delta_net(module):
                module.in_proj_ba.weight.normal_(0, 1.0)
    return model


def tiny_gemma3n() -> torch.nn.Module:
    """Two layers (the first with the 95% Gaussian top-k), AltUp with its four streams."""
    torch.manual_seed(0)
    config = transformers.Gemma3nTextConfig(
        vocab_size=40, vocab_size_per_layer_input=40, hidden_size=16, hidden_size_per_layer_input=4, intermediate_size=24,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_kv_shared_layers=0,
        layer_types=["sliding_attention", "full_attention"], activation_sparsity_pattern=[0.95, 0.0], laurel_rank=4,
        sliding_window=4, max_position_embeddings=32,
    )
    return Ids(transformers.Gemma3nForCausalLM(config), last=True).double().eval()


def _detached_topk(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """transformers' Gemma3nTextMLP._gaussian_topk with the cutoff detached (the oracle's form of held)."""
    sparsity = torch.tensor(module.activation_sparsity, dtype=torch.float32)
    multiplier = torch.distributions.normal.Normal(0, 1).icdf(sparsity).type(inputs.dtype)
    cutoff = inputs.mean(-1, keepdim=True) + inputs.std(-1, keepdim=True, unbiased=False) * multiplier
    return torch.relu(inputs - cutoff.detach())


@contextlib.contextmanager
def _oracle_form(model: torch.nn.Module):
    """The model with its held values detached, and what torch.export cannot take from it as it is (done by lrpcli's
    capture too): Qwen3-Next's mask check on values (no mask here: None, as the model computes it), Gemma3n's in-place
    clamp of AltUp's coefficients (already within the clip)."""
    handles, undo = [], []
    for module in model.modules():
        if held_gates.is_gated_delta_net(module):
            handles.append(module.in_proj_ba.register_forward_hook(lambda _m, _a, out: out.detach()))
        elif held_gates.is_sparse_mlp(module):
            module._gaussian_topk = functools.partial(_detached_topk, module)
            undo.append(lambda module=module: delattr(module, "_gaussian_topk"))
        if callable(getattr(type(module), "_update_linear_attn_mask", None)):
            module._update_linear_attn_mask = lambda attention_mask, cache_position: None
            undo.append(lambda module=module: delattr(module, "_update_linear_attn_mask"))
        config = getattr(module, "config", None)
        if getattr(config, "altup_coef_clip", None) is not None:
            clip = config.altup_coef_clip
            config.altup_coef_clip = None
            undo.append(lambda config=config, clip=clip: setattr(config, "altup_coef_clip", clip))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for step in undo:
            step()


def _explained_as_oracle(model: torch.nn.Module, ids: torch.Tensor, note: str) -> None:
    with torch.no_grad():
        own = model(ids)
    result = explain(model, ids, "attnlrp", target=TARGET, params=EXACT)
    assert (result.outputs - own).abs().max() <= 1e-6 * own.abs().max()
    assert any(note in line for line in result.notes), result.notes
    _put_back(model)
    with _oracle_form(model):
        expected = embedding_relevance(model, ids, TARGET, "attnlrp")
    _close(result.relevance, expected)
    _put_back(model)


def test_gemma3n_altup_magnitudes_and_sparsity_cutoff_are_held():
    """Before: unsupported op 'pow' (AltUp's magnitudes), then 'std' (the top-k cutoff)."""
    model = tiny_gemma3n()
    _explained_as_oracle(model, torch.randint(3, 40, (2, 6)), "sparsity cutoff")


@pytest.mark.parametrize("heads", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_qwen3_next_gated_delta_rule_is_explained_with_its_decay_held(heads):
    """Before: unsupported op 'cumsum' (the chunk's cumulative decay). Slow-ish (its capture traces the chunked
    rule's 63-step loop, ~1 min here and again for the oracle): one value head per key head in the default run,
    two (the keys repeated) marked slow."""
    model = tiny_qwen3_next(heads)
    _explained_as_oracle(model, torch.randint(3, 40, (2, 6)), "gated delta rule")
