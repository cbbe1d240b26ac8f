"""Hybrid state-space models whose causal mask is as wide as ``cache_position[-1] + 1`` (Jamba, Zamba2): torch.export
cannot know a width read from a value and stopped at the attention's slice of the mask (``Eq(Min(7, u0), 7)``);
while captured, the width is checked equal to the text's length (patterns.fixed_width_masks), the graph checked
against the model.

Independent checks: the captured graph's logits equal the model's own forward (eager transformers code, no
lrpcli), and the ledger closes (Bach et al. 2015, conservation: the tokens' relevance plus what the biases and the
attention softmax's Taylor rule keep equals the target logit, nothing unbooked)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lrpcli import explain  # noqa: E402
from lrpcli.engine import patterns  # noqa: E402
from lrpcli.errors import ModelError  # noqa: E402

TARGET = 1
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}


def _jamba():
    config = transformers.JambaConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=100, expert_layer_offset=99,
        num_experts=1, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=2, use_mamba_kernels=False,
        pad_token_id=0,
    )
    return transformers.JambaForCausalLM(config)


def _zamba2():
    config = transformers.Zamba2Config(
        vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_headdim=8, mamba_ngroups=1,
        chunk_size=4, layers_block_type=["mamba", "hybrid"], hybrid_layer_ids=[1], use_mem_rope=False, num_mem_blocks=1,
        pad_token_id=0,
    )
    return transformers.Zamba2ForCausalLM(config)


def _moved(build) -> torch.nn.Module:
    """A random model in float64, every parameter moved off its initial value (conv biases, norms' weights)."""
    torch.manual_seed(0)
    model = build().eval().double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


class LastToken(torch.nn.Module):
    """The next-token logits after the last position, the model called as a user would (its default cache), or
    with ``use_cache=False``."""

    def __init__(self, model: torch.nn.Module, use_cache: bool | None = None):
        super().__init__()
        self.model, self.use_cache = model, use_cache

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=self.use_cache).logits[:, -1]


@pytest.mark.parametrize(
    "build,padded",
    [(_jamba, False), (_jamba, True), (_zamba2, False), (_zamba2, True)],
    ids=["jamba", "jamba_left_padded", "zamba2", "zamba2_left_padded"],
)
def test_hybrid_explains_with_the_models_logits_and_a_closed_ledger(build, padded):
    model = _moved(build)
    ids = torch.randint(1, 20, (2, 7))
    extras = {}
    if padded:
        mask = torch.ones_like(ids)
        mask[1, :2] = 0
        extras = {"inputs": {"attention_mask": mask}}
    # Zamba2's mixer masks its conv output too where it is called with a cache (transformers 4.57): with padding,
    # only the call without one is the forward lrpcli captures (the default call is refused: the test below)
    wrapped = LastToken(model, use_cache=False if padded and build is _zamba2 else None)
    result = explain(wrapped, ids, "mambalrp", target=TARGET, params=EXACT, layer_relevance=True, **extras)
    with torch.no_grad():
        own = wrapped(ids, extras["inputs"]["attention_mask"] if padded else None)
    torch.testing.assert_close(result.outputs, own, rtol=0, atol=1e-10 * float(own.abs().max()))
    assert torch.isfinite(result.relevance).all() and result.relevance.abs().max() > 1e-3
    logit = result.outputs[:, TARGET].double()
    named = sum(part.double() for layer in result.layers.values() for part in (layer.bias, layer.rule_share) if part is not None)
    torch.testing.assert_close(result.relevance.sum(1) + named, logit, rtol=1e-6, atol=1e-8)
    assert all(layer.other.abs().max() < 1e-6 * logit.abs().max() for layer in result.layers.values())


def test_a_mask_width_read_from_values_is_found_and_put_back():
    model = _jamba().eval()
    with patterns.fixed_width_masks(model) as widths:
        assert widths == ["model"] and "_update_causal_mask" in vars(model.model)
    assert "_update_causal_mask" not in vars(model.model)


def test_a_mixer_that_checks_its_mask_gets_its_input_masked_and_is_put_back():
    model = _zamba2().eval()
    with patterns.premasked_mixers(model) as premasked:
        assert premasked == ["model.layers.0.mamba", "model.layers.1.mamba_decoder.mamba"]
    assert not any(module._forward_pre_hooks for module in model.modules())


def test_a_padded_zamba2_called_with_its_cache_is_refused_not_explained_differently():
    """With a cache, Zamba2's mixer also masks the conv's output (its cache branch; without a cache it does not):
    the captured forward (no cache) gives other logits for a padded row, and the check says so."""
    model = _moved(_zamba2)  # (the conv's bias off zero: else the masked and the unmasked conv agree)
    ids = torch.randint(1, 20, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with pytest.raises(ModelError, match="other outputs than the model") as caught:
        explain(LastToken(model), ids, "mambalrp", target=TARGET, inputs={"attention_mask": mask})
    assert "use_cache=False" in caught.value.hint
