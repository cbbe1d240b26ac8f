"""AttnLRP and CP-LRP in the engine against the independent modified-gradient oracle.

``gradient_oracle.py`` computes each rule as a modified gradient times input in plain torch
(detach / divide-gradient / identity), and was itself checked against LXT 2.1 to 1e-11
(tests/OPS_SURVEY.md). Here the engine's explicit rules, run through capture, canonizers
and the backward walk, must give the same relevance in float64 (stabilisers at 0, the
limit the oracle computes), and the conservative ones must conserve on bias-free models.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import test_gradient_oracle as models
from gradient_oracle import embedding_relevance, modified_gradient_relevance
from lrpcli import capture, explain, load_composite
from lrpcli.sources.architectures import ViT
from lrpcli.engine.passes.canonizers import canonize

D64 = torch.float64
TARGET = 1
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
MODES = [("attnlrp", "attnlrp"), ("cp_lrp", "cp")]


def _with_biases(model: nn.Module, seed: int = 1) -> nn.Module:
    """Every parameter moved off its initial value, so biases and LayerNorm shifts are non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def _assert_matches_oracle(model: nn.Module, x: torch.Tensor, composite: str, mode: str, rtol: float = 1e-6) -> None:
    model = model.double().eval()
    ours = explain(model, x, composite, target=TARGET, params=EXACT).relevance
    oracle = embedding_relevance if not x.is_floating_point() else modified_gradient_relevance
    expected = oracle(model, x, TARGET, mode)
    assert ours.shape == expected.shape
    assert torch.isfinite(ours).all()
    scale = expected.abs().max()
    assert scale > 0
    assert (ours - expected).abs().max() <= rtol * scale, f"{composite}: max diff {(ours - expected).abs().max():.3g} of {scale:.3g}"


class SwiGLU(nn.Module):
    """LLaMA's gated MLP: silu(gate(x)) * up(x); AttnLRP splits the product, CP-LRP holds the silu gate."""

    def __init__(self, d: int = 6):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, 8), nn.Linear(d, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, channels-last LayerNorm, MLP with GELU, LayerScale, residual; then a head."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.gamma * self.fc2(F.gelu(self.fc1(self.norm(h))))
        x = x + h.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class MaskedAttention(nn.Module):
    """scaled_dot_product_attention with a boolean or an additive constant mask."""

    def __init__(self, mask: torch.Tensor, t: int = 5, d: int = 8):
        super().__init__()
        self.qkv, self.head = nn.Linear(d, 3 * d), nn.Linear(d, 3)
        self.register_buffer("mask", mask)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.head(F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask).mean(1))


class CosineAttention(nn.Module):
    """Swin V2's cosine attention and Swin's helpers: roll, F.normalize'd q and k, swapaxes, reshape_as."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.qkv, self.head = nn.Linear(d, 3 * d), nn.Linear(d, 3)

    def forward(self, x):
        x = torch.roll(x, 1, dims=1)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attention = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).swapaxes(-2, -1) * 4.0
        return self.head((attention.softmax(-1) @ v).reshape_as(x).mean(1))


class CountedPositions(nn.Module):
    """RoBERTa's position ids: counted from the non-padding ids, so the lookup of positions reads the input."""

    def __init__(self):
        super().__init__()
        self.emb, self.pos, self.head = nn.Embedding(10, 4, padding_idx=0), nn.Embedding(8, 4), nn.Linear(4, 3)

    def forward(self, ids):
        mask = ids.ne(0).int()
        return self.head((self.emb(ids) + self.pos(torch.cumsum(mask, dim=1) * mask)).mean(1))


CASES = {
    "block eager attention": lambda: (models.Block("eager"), torch.randn(2, 5, 8, dtype=D64)),
    "block sdpa causal": lambda: (models.Block("sdpa"), torch.randn(2, 5, 8, dtype=D64)),
    "block multi-head attention": lambda: (models.Block("mha"), torch.randn(2, 5, 8, dtype=D64)),
    "sdpa boolean mask": lambda: (MaskedAttention((torch.rand(5, 5) > 0.3) | torch.eye(5, dtype=torch.bool)), torch.randn(2, 5, 8, dtype=D64)),
    "sdpa additive mask": lambda: (MaskedAttention(torch.randn(5, 5, dtype=D64)), torch.randn(2, 5, 8, dtype=D64)),
    "squeeze-excitation": lambda: (models.SENet(4, False), torch.randn(2, 4, 3, 3, dtype=D64)),
    "squeeze-excitation hard": lambda: (models.SENet(4, True), torch.randn(2, 4, 3, 3, dtype=D64)),
    "convnext block": lambda: (ConvNeXtBlock(), torch.randn(2, 3, 4, 4, dtype=D64)),
    "channels-first layernorm": lambda: (nn.Sequential(nn.Conv2d(3, 4, 1), models.ChannelsFirstLN(4), nn.Flatten(), nn.Linear(36, 3)), torch.randn(2, 3, 3, 3, dtype=D64)),
    "layernorm": lambda: (models.NormNet(nn.LayerNorm(6), 6), torch.randn(2, 6, dtype=D64)),
    "groupnorm": lambda: (nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(36, 3)), torch.randn(2, 2, 3, 3, dtype=D64)),
    "rmsnorm": lambda: (models.NormNet(nn.RMSNorm(6), 6), torch.randn(2, 6, dtype=D64)),
    "hand-written rmsnorm": lambda: (models.NormNet(models.HandRMSNorm(6), 6), torch.randn(2, 6, dtype=D64)),
    "gelu": lambda: (models.GeluNet(nn.GELU()), torch.randn(3, 4, dtype=D64)),
    "silu written as x*sigmoid(x)": lambda: (models.GeluNet(models.HandSiLU()), torch.randn(3, 4, dtype=D64)),
    "swiglu": lambda: (SwiGLU(), torch.randn(3, 6, dtype=D64)),
    "bag of embeddings (token ids)": lambda: (models.BagOfEmbeddings(), torch.tensor([[3, 1, 4, 1, 5, 0], [2, 7, 1, 8, 0, 0]])),
    "cosine attention (swin v2)": lambda: (CosineAttention(), torch.randn(2, 5, 8, dtype=D64)),
    "position ids counted from the ids (roberta)": lambda: (CountedPositions(), torch.tensor([[3, 1, 4, 1, 5, 0], [2, 7, 1, 8, 0, 0]])),
    "vit (lrpcli.architectures)": lambda: (ViT(image_size=8, patch_size=4, dim=8, depth=2, heads=2), torch.randn(2, 3, 8, 8, dtype=D64)),
}


@pytest.mark.parametrize("composite, mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_equals_the_modified_gradient_oracle(case, composite, mode):
    torch.manual_seed(0)
    model, x = CASES[case]()
    _assert_matches_oracle(_with_biases(model.double()), x, composite, mode)


@pytest.mark.parametrize("case", ["block eager attention", "block sdpa causal", "block multi-head attention", "squeeze-excitation", "layernorm"])
def test_bias_free_models_conserve_under_cp_lrp_at_every_node(case):
    """CP-LRP is conservative when biases are zero: the input total is the logit, and no node loses relevance."""
    torch.manual_seed(0)
    model, x = CASES[case]()
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    result = explain(model, x, "cp_lrp", target=TARGET, params=EXACT, layer_relevance=True)
    logit = result.outputs[:, TARGET]
    torch.testing.assert_close(result.relevance.sum(tuple(range(1, x.ndim))), logit, rtol=1e-10, atol=1e-12)
    for layer in result.layers.values():
        torch.testing.assert_close(layer.relevance_in, layer.relevance_out, rtol=1e-9, atol=1e-12, msg=f"{layer.node} ({layer.op}, {layer.rule})")


def test_cp_lrp_ledger_accounts_for_every_bias_and_the_class_token():
    """Linear biases over tokens x features, the position embedding and the concatenated class token are
    constants: under CP-LRP what they take is the ledger's bias, and nothing is left unexplained."""
    torch.manual_seed(0)
    model = _with_biases(ViT(image_size=8, patch_size=4, dim=8, depth=2, heads=2).double()).eval()
    x = torch.randn(3, 3, 8, 8, dtype=D64)
    result = explain(model, x, "cp_lrp", target=TARGET, params=EXACT, layer_relevance=True)
    biases = sum(layer.bias for layer in result.layers.values() if layer.bias is not None)
    assert biases.abs().min() > 1e-3
    torch.testing.assert_close(result.relevance.sum((1, 2, 3)) + biases, result.outputs[:, TARGET], rtol=1e-9, atol=1e-12)
    for layer in result.layers.values():
        assert layer.other.abs().max() < 1e-9, (layer.node, layer.op)


def test_attnlrp_softmax_leak_is_named_in_the_ledger():
    """AttnLRP's softmax rule is not conservative; the ledger names what it took, node by node."""
    torch.manual_seed(0)
    model, x = models.Block("eager").double().eval(), torch.randn(2, 5, 8, dtype=D64)
    result = explain(model, x, "attnlrp", target=TARGET, params=EXACT, layer_relevance=True)
    softmax = [layer for layer in result.layers.values() if layer.kind == "softmax"]
    assert len(softmax) == 1 and softmax[0].rule == "taylor"
    torch.testing.assert_close(softmax[0].rule_share, softmax[0].absorbed)
    assert softmax[0].rule_share.abs().max() > 1e-6
    for layer in result.layers.values():  # every loss is accounted for: nothing is left in "other"
        assert layer.other.abs().max() < 1e-9, layer.node
    total = result.relevance.sum((1, 2)) + sum(layer.rule_share for layer in softmax)
    torch.testing.assert_close(total, result.outputs[:, TARGET], rtol=1e-10, atol=1e-12)


def test_rules_assigned_to_the_new_kinds():
    torch.manual_seed(0)
    model, x = ConvNeXtBlock().eval(), torch.randn(2, 3, 4, 4)
    composite = load_composite("attnlrp")
    graph = canonize(capture(model, x), composite.canonizers)
    kinds = {graph.node(name).kind: assigned.rule.name for name, assigned in composite.assign(graph).items()}
    assert kinds["layernorm"] == "epsilon"
    se_model = models.SENet(4, False).eval()
    graph = canonize(capture(se_model, torch.randn(2, 4, 3, 3)), composite.canonizers)
    products = [graph.node(name) for name, a in composite.assign(graph).items() if graph.node(name).kind == "product"]
    assert [p.gate_op for p in products] == ["sigmoid"]
    assert composite.assign(graph)[products[0].name].rule.name == "signal"  # `type: gate` before `type: product`


def test_se_net_under_every_cnn_composite_conserves_when_bias_free():
    """The CNN composites serve squeeze-and-excitation nets: the gate is held, the signal takes all."""
    from lrpcli.engine.composite_yaml import builtin_names

    torch.manual_seed(0)
    model = models.SENet(4, False).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    x = torch.rand(2, 4, 3, 3, dtype=D64)
    for name in ("lrp_0", "epsilon"):
        result = explain(model, x, name, target=TARGET, params=EXACT)
        torch.testing.assert_close(result.relevance.sum((1, 2, 3)), result.outputs[:, TARGET], rtol=1e-10, atol=1e-12)
    for name in builtin_names():
        assert torch.isfinite(explain(model, x, name, target=TARGET).relevance).all(), name


def test_division_by_an_activation_that_is_no_normaliser_is_refused():
    from lrpcli.errors import UnsupportedOpError

    class Ratio(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x) / self.b(x)

    with pytest.raises(UnsupportedOpError, match="no normaliser"):
        explain(Ratio(), torch.randn(2, 4), "attnlrp")


def test_token_ids_give_one_relevance_per_token_and_padding_none():
    torch.manual_seed(0)
    model = models.BagOfEmbeddings().double().eval()
    ids = torch.tensor([[3, 1, 4, 1, 5, 0], [2, 7, 1, 8, 0, 0]])
    result = explain(model, ids, "attnlrp", target=TARGET)
    assert result.relevance.shape == ids.shape and result.relevance.dtype == D64
    assert (result.relevance[ids == 0] == 0).all()  # padding_idx rows are zero vectors


# --------------------------------------------------------------------------- Hugging Face models


def _hf_case(name: str):
    transformers = pytest.importorskip("transformers")
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3)
    if name == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(vocab_size=50, max_position_embeddings=16, **small)), "ids"
    if name == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=16, num_labels=3)
        return transformers.DistilBertForSequenceClassification(config), "ids"
    if name == "gpt2":
        config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16, num_labels=3, pad_token_id=0, bos_token_id=1, eos_token_id=1)
        return transformers.GPT2ForSequenceClassification(config), "ids"
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, **small)
    return transformers.ViTForImageClassification(config), "pixels"


class _Logits(nn.Module):
    def __init__(self, model: nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return self.model(**{self.key: x}).logits


@pytest.mark.parametrize("composite, mode", MODES)
@pytest.mark.parametrize("name", ["bert", "distilbert", "gpt2", "vit"])
def test_hugging_face_classifiers_equal_the_oracle(name, composite, mode):
    model, inputs = _hf_case(name)
    torch.manual_seed(0)
    if inputs == "ids":
        wrapped, x = _Logits(model, "input_ids"), torch.randint(1, 50, (2, 6))
    else:
        wrapped, x = _Logits(model, "pixel_values"), torch.randn(2, 3, 16, 16, dtype=D64)
    _assert_matches_oracle(_with_biases(wrapped.double()), x, composite, mode)


def test_scale_default_of_attention_is_one_over_sqrt_head_dim():
    from lrpcli.engine.passes.transformer import attention_scores

    q, k = torch.randn(2, 3, 4, dtype=D64), torch.randn(2, 5, 4, dtype=D64)
    torch.testing.assert_close(attention_scores(q, k), q @ k.transpose(1, 2) / math.sqrt(4))


# --------------------------------------------------------------------------- saved forms and the CLI


def _saved_block(tmp_path):
    torch.manual_seed(0)
    model = models.Block("mha").eval()
    path = tmp_path / "block.ts"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 5, 8)), str(path))
    return model, path


def test_traced_attention_equals_the_eager_module(tmp_path):
    """A traced MultiheadAttention computes its scale from the input's sizes: that arithmetic is no data."""
    model, path = _saved_block(tmp_path)
    x = torch.randn(3, 5, 8)
    for composite in ("attnlrp", "cp_lrp"):
        eager = explain(model, x, composite, target=TARGET).relevance
        traced = explain(str(path), x, composite, target=TARGET).relevance
        torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-6)


def test_inspect_lists_the_new_kinds_and_no_false_warnings(tmp_path):
    from lrpcli.runs.inspect import inspect_model

    model, _ = _saved_block(tmp_path)
    report = inspect_model(model, torch.zeros(1, 5, 8), "attnlrp")
    rules = {layer.kind: layer.rule for layer in report.layers}
    assert rules["layernorm"] == "epsilon" and rules["product"] == "uniform" and rules["softmax"] == "taylor"
    assert not [w for w in report.warnings if "a run would stop here" in w], report.warnings
    assert any("attention decomposed" in note for note in report.notes)


def test_check_conservation_names_what_the_softmax_rule_took(tmp_path):
    from cli_support import lrp

    _, path = _saved_block(tmp_path)
    run = lrp("check-conservation", path, "--input-shape", "5,8", "--random", "3", "-c", "attnlrp", "--json")
    assert run.code == 0, run.describe()
    import json

    report = json.loads(run.stdout)
    for sample in report["samples"]:
        softmax = [layer for layer in sample["layers"] if layer["type"] == "softmax" or layer["rule"] == "taylor"]
        assert len(softmax) == 1 and abs(softmax[0]["rule_share"]) > 0
        assert abs(softmax[0]["rule_share"] - softmax[0]["absorbed"]) < 1e-6
        assert sample["passed"]
    table = lrp("check-conservation", path, "--input-shape", "5,8", "--random", "2", "-c", "attnlrp")
    assert table.code == 0 and "rule took" in table.stderr, table.describe()


def test_attention_weights_are_not_kept_through_the_forward_pass():
    """The T x T parts of an attention are recomputed in the walk (what keeps attnlrp's memory within 1.5x the
    gradient's, benchmarks/transformers_results.md), and the relevance is what it is with them kept."""
    from lrpcli import Explainer
    from lrpcli.engine.propagate import ATTENTION_PARTS, record
    from lrpcli.engine.ops import op_name

    torch.manual_seed(0)
    model, x = models.Block("sdpa").double().eval(), torch.randn(2, 5, 8, dtype=D64)
    explainer = Explainer(model, "attnlrp", params=EXACT)
    graph, _ = explainer.prepare(x)
    parts = [node.name for node in graph.nodes if op_name(node.target) in ATTENTION_PARTS]
    assert len(parts) == 3  # scores, causal mask, weights
    values = record(graph, x)
    assert all(not dict.__contains__(values, name) and name in values.recomputable for name in parts)
    torch.testing.assert_close(explainer.explain(x, TARGET).relevance, modified_gradient_relevance(model, x, TARGET, "attnlrp"), rtol=1e-6, atol=1e-9)


def test_fused_multi_head_attention_of_a_traced_module_equals_the_oracle():
    """nn.MultiheadAttention traced without grad (torchvision's ViT saved with torch.jit.trace) runs the fused
    _native_multi_head_attention op, which lrp decomposes into its projections and attention parts."""
    torch.manual_seed(0)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.attention(x, x, x, need_weights=False)[0].mean(1))

    model = Head().eval().requires_grad_(False)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
    assert "_native_multi_head_attention" in str(traced.inlined_graph)
    twin = Head().double().eval()
    twin.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    for composite, mode in MODES:
        ours = explain(traced, x, composite, target=TARGET, params=EXACT).relevance.double()
        expected = modified_gradient_relevance(twin, x.double(), TARGET, mode)
        assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max(), composite



def test_an_attention_mask_is_an_extra_input_held_constant():
    """forward(input_ids, attention_mask): the mask is given per batch (inputs=...), never explained; padded
    tokens get no relevance, and the result equals the oracle's with the same mask."""
    transformers = pytest.importorskip("transformers")
    from lrpcli.errors import InputError

    class WithMask(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=16, num_labels=3)
    model = WithMask(_with_biases(transformers.BertForSequenceClassification(config).double())).eval()
    ids = torch.randint(1, 50, (3, 6))
    ids[1, 4:], ids[2, 3:] = 0, 0
    mask = (ids != 0).long()
    for composite, mode in MODES:
        ours = explain(model, ids, composite, target=TARGET, params=EXACT, inputs={"attention_mask": mask}).relevance
        expected = embedding_relevance(model, ids, TARGET, mode, attention_mask=mask)
        assert (ours - expected).abs().max() <= 1e-6 * expected.abs().max()
        assert (ours[mask == 0] == 0).all()
    from lrpcli import Explainer, LrpError

    explainer = Explainer(model, "attnlrp")
    explainer.explain(ids, inputs={"attention_mask": mask})
    with pytest.raises(LrpError, match="attention_mask") as caught:
        explainer.explain(ids)  # without its mask the model cannot even be captured
    assert "inputs=" in (caught.value.hint or "")
    graph, _ = explainer.prepare(ids, {"attention_mask": mask})
    with pytest.raises(InputError, match="attention_mask"):
        graph.inputs(ids, {})
