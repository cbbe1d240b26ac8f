"""torch.export guards in transformers' families, rewritten while capturing (lrpcli/engine/guards.py; issue 27 item 6).

Each family's tiny config (float64, random weights): the captured graph's logits equal the model's own (1e-6 of the
largest), relevance is finite (and equal to the modified-gradient oracle, tests/gradient_oracle.py, run over the
same rewritten code, where the oracle can capture it), and the model's own code is back afterwards (no instance
attributes, no hooks left). Before guards.py each stopped in torch.export (the guard named per test).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from gradient_oracle import embedding_relevance  # noqa: E402
from lrpcli import explain  # noqa: E402
from lrpcli.engine.capture import capture  # noqa: E402
from lrpcli.engine.patterns import rewritten  # noqa: E402
from lrpcli.errors import ModelError  # noqa: E402

EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
PATCHED = ("forward", "_get_global_attn_indices", "lang_adapter", "_update_linear_attn_mask", "resize_positional_embeddings", "get_placeholder_mask")


class Ids(nn.Module):
    """ids (and held inputs by name) in, the logits out (the last position's for a causal LM)."""

    def __init__(self, model: nn.Module, last: bool = False):
        super().__init__()
        self.model, self.last = model, last

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        extra = {k: v for k, v in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)) if v is not None}
        logits = self.model(input_ids=input_ids, **extra, return_dict=True).logits
        return logits[:, -1] if self.last else logits


def _put_back(model: nn.Module) -> None:
    """The model's own code again: no rewrite left as an instance attribute, no hook left registered."""
    for name, module in model.named_modules():
        assert not set(PATCHED) & set(vars(module)), name
        assert not module._forward_pre_hooks and not module._forward_hooks, name


def _equal_logits(result, own: torch.Tensor) -> None:
    assert torch.isfinite(result.relevance).all()
    assert (result.outputs - own).abs().max() <= 1e-6 * own.abs().max()


def _oracle(model: nn.Module, x: torch.Tensor, target: int, **inputs) -> torch.Tensor:
    with rewritten(model, x, inputs or None):  # the oracle's own torch.export meets the same guards
        return embedding_relevance(model, x, target, "attnlrp", **inputs)


# ------------------------------------------------------------------------------------------- Longformer, LED


def _longformer() -> nn.Module:
    config = transformers.LongformerConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=40, attention_window=4, pad_token_id=1, num_labels=3,
    )
    return Ids(transformers.LongformerForSequenceClassification(config)).double().eval()


def test_longformer_global_attention_on_the_first_token_is_captured_and_equals_the_oracle():
    """Before: GuardOnDataDependentSymNode Eq(u0, 1) (the encoder's ``is_global_attn = ....any().item()`` and
    ``_get_global_attn_indices``' nonzero). The classifier puts global attention on the first token: one per row,
    fixed for the capture. The ids are padded from 6 to 8 (the attention window) before the lookup: the tokens
    still get relevance (padded_lookups), the same as the oracle's over the rewritten code."""
    torch.manual_seed(0)
    model = _longformer()
    x = torch.randint(3, 40, (3, 6))
    with torch.no_grad():
        own = model(x)
    result = explain(model, x, "attnlrp", target=1, params=EXACT)
    _equal_logits(result, own)
    assert result.relevance.abs().sum() > 0
    assert any("global attention" in note for note in result.notes)
    _put_back(model)
    expected = _oracle(model, x, 1)
    assert (result.relevance - expected).abs().max() <= 1e-6 * expected.abs().max()
    _put_back(model)


def test_longformer_rows_with_different_global_counts_are_refused_or_nan():
    """A held global-attention mask: rows with different counts cannot share one graph (ModelError at capture);
    a later batch whose count differs from the captured one gets NaN logits, not a wrong answer."""
    torch.manual_seed(0)
    inner = transformers.LongformerForSequenceClassification(_longformer().model.config).double().eval()

    class Global(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner

        def forward(self, input_ids, global_attention_mask):
            return self.model(input_ids=input_ids, global_attention_mask=global_attention_mask).logits

    model = Global().eval()
    x = torch.randint(3, 40, (2, 6))
    uneven = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0]])
    with pytest.raises(ModelError, match="different numbers of global-attention tokens"):
        explain(model, x, "attnlrp", inputs={"global_attention_mask": uneven})
    _put_back(model)
    two = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]])
    with torch.no_grad():
        own = model(x, two)
    graph = capture(model, x, extras={"global_attention_mask": two})
    with torch.no_grad():
        assert (graph.run(x, {"global_attention_mask": two})[graph.output] - own).abs().max() <= 1e-6 * own.abs().max()
        other = graph.run(x, {"global_attention_mask": uneven})[graph.output]
        own_second = model(x[1:], uneven[1:])
    assert torch.isnan(other[0]).all()  # one global token where the graph was captured for two
    assert (other[1:] - own_second).abs().max() <= 1e-6 * own_second.abs().max()
    _put_back(model)


def test_led_classifier_is_captured_and_equals_the_oracle():
    """Before: Eq(u0, 1) (the same encoder code; LED's classifier gives no global attention: the count 0) and
    LED's <eos> counting (its base model is ``led``, which the <eos> pooling rewrite did not look for)."""
    torch.manual_seed(0)
    config = transformers.LEDConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=24, decoder_ffn_dim=24, max_encoder_position_embeddings=32, max_decoder_position_embeddings=32,
        attention_window=4, num_labels=3, pad_token_id=1, eos_token_id=2, bos_token_id=0, decoder_start_token_id=2,
    )
    model = Ids(transformers.LEDForSequenceClassification(config)).eval()  # (float32: its causal mask fails in float64)
    x = torch.randint(3, 40, (2, 6))
    x[:, -1] = 2
    with torch.no_grad():
        own = model(x)
    result = explain(model, x, "attnlrp", target=1, params=EXACT)
    _equal_logits(result, own)
    assert result.relevance.abs().sum() > 0
    _put_back(model)


# ------------------------------------------------------------------------------------------------------- X-MOD


def test_xmod_runs_the_default_languages_adapter():
    """Before: Eq(u0, 0) (``torch.split(hidden, lang_lengths.tolist())``). Called without lang_ids, every row is in
    the default language: its adapter alone (the second language's, so picking the first would differ)."""
    torch.manual_seed(0)
    config = transformers.XmodConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=40, languages=["en_XX", "de_DE"], num_labels=3,
    )
    inner = transformers.XmodForSequenceClassification(config)
    inner.set_default_language("de_DE")
    model = Ids(inner).double().eval()
    x = torch.randint(3, 40, (2, 6))
    with torch.no_grad():
        own = model(x)
    result = explain(model, x, "attnlrp", target=1, params=EXACT)
    _equal_logits(result, own)
    assert any("language adapters" in note and "de_DE" in note for note in result.notes)
    _put_back(model)
    expected = _oracle(model, x, 1)
    assert (result.relevance - expected).abs().max() <= 1e-6 * expected.abs().max()


# -------------------------------------------------------------------------------------------------- Qwen3-Next


@pytest.mark.parametrize("padded", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_qwen3_next_linear_attention_mask_is_kept(padded):
    """Before: Eq(u0, 1) (``cache_position[0] > 0 or torch.all(attention_mask == 1)``). The linear-attention
    layers now always get the mask: by an all-ones one (where the model itself passes None) that multiplies by 1;
    a padded one the model uses too (slow: each capture traces the chunked delta rule's 63-step loop, 1-2 min
    on a loaded 2-core machine). (The capture only here; its relevance, with the delta rule's gates held, is
    tests/test_held_gates.py's.)"""
    torch.manual_seed(0)
    config = transformers.Qwen3NextConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        intermediate_size=24, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=2,
        linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=1, linear_num_value_heads=2,
        num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8, shared_expert_intermediate_size=8,
        max_position_embeddings=32,
    )
    model = Ids(transformers.Qwen3NextForCausalLM(config), last=True).double().eval()
    x = torch.randint(3, 40, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    if padded:
        mask[1, :2] = 0  # left padding, as the linear attention expects it
    with torch.no_grad():
        own = model(x, mask)
    graph = capture(model, x, extras={"attention_mask": mask})
    with torch.no_grad():
        got = graph.run(x, {"attention_mask": mask})[graph.output]
    assert (got - own).abs().max() <= 1e-6 * own.abs().max()
    assert any("linear-attention mask" in note for note in graph.notes)
    _put_back(model)


# ------------------------------------------------------------------------------------------------------- TAPAS


def _tapas_config():
    return transformers.TapasConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=40, type_vocab_sizes=[3, 4, 4, 2, 4, 4, 4], num_labels=3,
    )


def _table_types(batch: int, length: int) -> torch.Tensor:
    """Token types of a question then a small table: segment, column, row ids in cells of two or three tokens."""
    types = torch.zeros(batch, length, 7, dtype=torch.long)
    types[:, 2:, 0] = 1
    for b in range(batch):
        for t in range(2, length):
            cell = (t - 2 + b) // 2
            types[b, t, 1], types[b, t, 2] = 1 + cell % 3, cell // 3
    return types


def test_tapas_first_cell_positions_equal_its_segment_reductions():
    """The dense per-cell positions equal TAPAS's own IndexMap / reduce_min / gather (run eagerly)."""
    from transformers.models.tapas import modeling_tapas as tapas

    from lrpcli.engine import guards

    types = _table_types(3, 9)
    col = tapas.IndexMap(types[:, :, 1], 4, batch_dims=1)
    row = tapas.IndexMap(types[:, :, 2], 4, batch_dims=1)
    full = tapas.ProductIndexMap(col, row)
    positions = torch.arange(9).unsqueeze(0).expand(3, 9)
    first = tapas.gather(tapas.reduce_min(positions, full)[0], full)
    expected = torch.min(torch.as_tensor(39), torch.arange(9).unsqueeze(0) - first)
    assert torch.equal(guards.first_cell_positions(types, 40), expected)
    assert not torch.equal(expected, positions)  # the positions do restart per cell


def test_tapas_per_cell_positions_are_captured_and_equal_the_oracle():
    """Before: 'The tensor has a non-zero number of elements, but its data is not allocated yet' (the segment
    reductions' ``.tolist()`` of a fake tensor). A table's token types held: positions restart per cell."""
    torch.manual_seed(0)
    model = Ids(transformers.TapasForSequenceClassification(_tapas_config())).double().eval()
    x = torch.randint(3, 40, (2, 9))
    types = _table_types(2, 9)
    with torch.no_grad():
        own = model(x, token_type_ids=types)
    result = explain(model, x, "attnlrp", target=1, params=EXACT, inputs={"token_type_ids": types})
    _equal_logits(result, own)
    _put_back(model)
    expected = _oracle(model, x, 1, token_type_ids=types)
    assert (result.relevance - expected).abs().max() <= 1e-6 * expected.abs().max()


# ----------------------------------------------------------------------------------------------------- Gemma3n


def test_gemma3n_altup_clamp_is_done_before_capture():
    """Before: 'We found a fake tensor in the exported program constant's list' (AltUp's ``correct`` clamps its
    coefficient weights in place, ``weight.data.clamp_``, in every forward). Clamped once before capture, as the
    model's forward does: the graph equals the model and the clip is back. (The capture only here; its relevance,
    AltUp's magnitude held, is tests/test_held_gates.py's.)"""
    torch.manual_seed(0)
    config = transformers.Gemma3nTextConfig(
        vocab_size=40, vocab_size_per_layer_input=40, hidden_size=16, hidden_size_per_layer_input=4, intermediate_size=24,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_kv_shared_layers=0,
        layer_types=["sliding_attention", "full_attention"], activation_sparsity_pattern=[0.95, 0.0], laurel_rank=4,
        sliding_window=4, max_position_embeddings=32,
    )
    model = Ids(transformers.Gemma3nForCausalLM(config), last=True).eval()
    altup = model.model.model.layers[0].altup
    with torch.no_grad():
        altup.correction_coefs.weight[0, 0] = 200.0  # outside the clip (120): the model's forward clamps it first
    x = torch.randint(3, 40, (2, 6))
    graph = capture(model, x)  # (a graph holding 200 would differ from the model: refused by the check)
    assert float(altup.correction_coefs.weight[0, 0].detach()) == 120.0 and config.altup_coef_clip == 120.0
    with torch.no_grad():
        own = model(x)
        got = graph.run(x, None)[graph.output]
    assert (got - own).abs().max() <= 1e-6 * own.abs().max()
    assert any("AltUp" in note for note in graph.notes)
    _put_back(model)


# ----------------------------------------------------------------------------------------------------- SigLIP2


class Patches(nn.Module):
    """SigLIP2 over patches and their grids (what its image processor gives), the class logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, patches, spatial_shapes):
        mask = torch.ones(patches.shape[:2], dtype=torch.long)
        return self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=spatial_shapes, return_dict=True).logits


def _siglip2() -> nn.Module:
    config = transformers.Siglip2Config(
        vision_config={"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "num_patches": 16, "patch_size": 2, "num_channels": 3},
        text_config={"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 40},
    )
    config.num_labels = 3
    return Patches(transformers.Siglip2ForImageClassification(config)).double().eval()


def test_siglip2_position_grid_is_resized_at_the_examples_size():
    """Before: GuardOnDataDependentSymNode u0 > 0 (``resize_positional_embeddings`` interpolates to
    ``size=spatial_shapes[i]``, sizes read from a tensor's values). Every row's grid is 3x4 (12 patches, padded to
    14): the grid is resized once at that size; logits equal the model's, relevance finite, the code put back."""
    torch.manual_seed(0)
    model = _siglip2()
    patches = torch.randn(2, 14, 12, dtype=torch.float64)
    shapes = torch.tensor([[3, 4], [3, 4]])
    with torch.no_grad():
        own = model(patches, shapes)
    result = explain(model, (patches, shapes), "attnlrp", target=1, params=EXACT)
    relevance = result.relevance[0]  # the patches' (the grid sizes are integers)
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    assert (result.outputs - own).abs().max() <= 1e-6 * own.abs().max()
    _put_back(model)
    graph = capture(model, (patches, shapes))  # run later on a row with another grid: NaN, not a wrong answer
    with torch.no_grad():
        other = graph.run((patches, torch.tensor([[3, 4], [2, 7]])), None)[graph.output]
    assert torch.isfinite(other[0]).all() and torch.isnan(other[1]).all()


def test_siglip2_rows_with_different_grids_are_refused_by_name():
    """One graph holds one grid size: a batch of a 3x4 and a 2x6 image is a ModelError that names both."""
    torch.manual_seed(0)
    model = _siglip2()
    patches = torch.randn(2, 12, 12, dtype=torch.float64)
    with pytest.raises(ModelError) as caught:
        capture(model, (patches, torch.tensor([[3, 4], [2, 6]])))
    assert "2x6" in str(caught.value) and "3x4" in str(caught.value) and caught.value.hint
    _put_back(model)


# -------------------------------------------------------------------------------------------------- ShieldGemma2


def test_shieldgemma2_image_tokens_are_placed_without_the_count_check():
    """Before: GuardOnDataDependentSymNode Ne(u0, 256) (Gemma3's ``get_placeholder_mask`` checks
    ``inputs_embeds[mask].numel() != image_features.numel()``, a count read from the ids' values). The features
    go where the prompt's image-token ids are, as the model puts them: the graph equals the model, the code is put
    back. (The capture only here; ``masked_scatter`` as a write: tests/test_slice_writes.py.)"""
    import importlib.util
    from pathlib import Path

    from lrpcli.sources import hf

    spec = importlib.util.spec_from_file_location("hf_zoo", Path(__file__).resolve().parent.parent / "benchmarks" / "hf_zoo.py")
    hf_zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hf_zoo)
    torch.manual_seed(0)
    config, model, _ = hf_zoo.build("image:shieldgemma2")
    prompt = torch.tensor([[1] + [config.image_token_index] * config.mm_tokens_per_image + list(range(6, 12))])
    wrapped = hf.ImageLogits(model.double(), prompt=prompt).eval()
    size = config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, dtype=torch.float64)
    graph = capture(wrapped, pixels)
    with torch.no_grad():
        own = wrapped(pixels)
        got = graph.run(pixels, None)[graph.output]
    assert torch.isfinite(got).all()
    assert (got - own).abs().max() <= 1e-6 * own.abs().max()
    assert any("image tokens" in note for note in graph.notes)
    _put_back(wrapped)
