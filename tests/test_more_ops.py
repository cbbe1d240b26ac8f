"""Ops transformers' families stopped at (issue 27 item 6): each on a tiny module against a hand-computed rule or
the modified-gradient oracle (tests/gradient_oracle.py), then the Hugging Face family end to end where it builds
(finite relevance, the captured graph's logits equal to the model's).

- ``square`` (ReLU², Primer: Persimmon, Arcee, BitNet, Nemotron's MLP): an element-wise activation. AttnLRP's
  product rule on ``x * x`` gives each of the two equal factors half, both halves return to x: the identity.
- ``gather`` with constant indices (DeBERTa's relative attention): a route; relevance goes back where each value
  came from (summed where an index repeats), as the gradient routes it.
- ``zeros_like`` (RecurrentGemma): a constant. ``glu`` (Wav2Vec2-BERT): a sigmoid gate, as every other gate.
  ``linalg_vector_norm`` (ConvNeXt V2's GRN): a normaliser, held as LayerNorm's sigma. An activation times a
  constant batch of matrices (DeBERTa's relative positions): a linear map. ``view_as_complex`` times a constant
  (Llama 4's RoPE): a rotation by constant angles, a linear map written in real pairs.
- a float32 part of a float64 model (CodeGen's attention scores), constants a model keeps in float32 on purpose
  (ModernBERT's rotary frequencies), a Parameter registered as a buffer (FalconMamba): no raw torch errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradient_oracle import embedding_relevance, modified_gradient_relevance
from lrpcli import capture, explain

D64 = torch.float64
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}


def _close(ours: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    assert ours.shape == expected.shape
    assert torch.isfinite(ours).all()
    scale = expected.abs().max()
    assert scale > 0
    assert (ours - expected).abs().max() <= rtol * scale, f"max diff {(ours - expected).abs().max():.3g} of {scale:.3g}"


# --------------------------------------------------------------------------- square (ReLU²)


class ReluSquared(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.square(F.relu(self.lin(x))))


def test_relu_squared_passes_relevance_unchanged_lrp0_by_hand():
    """LRP-0 (Bach et al. 2015, R_j = sum_k a_j w_jk R_k / z_k) on head(square(relu(W x + b))), with R at the
    output the target logit: R_h = h * v_t (the head's bias keeps its share), square and relu pass R_h on, and
    R_x = x * W^T (R_h / z). Written out here, independently of the engine."""
    torch.manual_seed(0)
    model = ReluSquared().double().eval()
    x = torch.randn(4, 5, dtype=D64)
    target = 2
    z = model.lin(x)
    h = F.relu(z).square()
    r_h = h * model.head.weight[target]
    expected = x * ((r_h / z) @ model.lin.weight)  # r_h is 0 where relu cut z off
    ours = explain(model, x, "lrp_0", target=target).relevance
    _close(ours, expected.detach())


def test_hugging_face_relu_squared_equals_the_oracle():
    """transformers' ReLUSquaredActivation (relu then torch.square) under AttnLRP: the oracle's identity rule for
    an activation module, to 1e-9 in float64."""
    transformers = pytest.importorskip("transformers")
    from transformers.activations import ReLUSquaredActivation

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), ReLUSquaredActivation(), nn.Linear(7, 3)).double().eval()
    x = torch.randn(4, 5, dtype=D64)
    ours = explain(model, x, "attnlrp", target=1, params=EXACT).relevance
    _close(ours, modified_gradient_relevance(model, x, 1, "attnlrp"))


# --------------------------------------------------------------------------- gather


class Gathered(nn.Module):
    """Values picked from an activation by constant indices (one repeated, one never picked), bias-free ReLU net."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(5, 6, bias=False), nn.Linear(4, 3, bias=False)
        self.register_buffer("index", torch.tensor([[0, 2, 2, 5]]))

    def forward(self, x):
        h = F.relu(self.lin(x))
        return self.head(torch.gather(h, 1, self.index.expand(x.shape[0], -1)))


def test_gather_routes_relevance_back_as_lrp0_equals_gradient_times_input():
    """For a bias-free ReLU net LRP-0 equals gradient x input (Montavon et al. 2019, sec. 10.2.1); gather is then
    only right if it routes relevance as its gradient does (scatter-add: the repeated index gets both shares)."""
    torch.manual_seed(2)
    model = Gathered().double().eval()
    x = torch.randn(3, 5, dtype=D64, requires_grad=True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    ours = explain(model, x.detach(), "lrp_0", target=1).relevance
    _close(ours, (x * grad).detach())
    assert torch.allclose(ours.sum(1), out[:, 1].detach())  # conserved: no bias, no stabiliser


# --------------------------------------------------------------------------- dtypes and buffers


class Float32Scores(nn.Module):
    """CodeGen's attention: q and k cast to float32 for the scores, a float64 mask added, the weights cast back."""

    def __init__(self, d: int = 6):
        super().__init__()
        self.qkv, self.head = nn.Linear(d, 3 * d), nn.Linear(d, 3)
        self.register_buffer("mask", torch.zeros(5, 5))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q.to(torch.float32) @ k.to(torch.float32).transpose(-1, -2)
        weights = torch.softmax(scores + self.mask, dim=-1).to(v.dtype)
        return self.head((weights @ v).mean(1))


def test_a_float32_part_of_a_float64_model_gets_relevance_in_its_own_dtype():
    """Was a raw 'expected scalar type Double but found Float' in the scores' transpose. The reference: the same
    weights with the casts taken out (all float64); they differ by float32's rounding of the scores only."""
    torch.manual_seed(3)
    model = Float32Scores().double().eval()
    x = torch.randn(2, 5, 6, dtype=D64)
    ours = explain(model, x, "attnlrp", target=0, params=EXACT).relevance
    plain = Float32Scores().double().eval()
    plain.load_state_dict(model.state_dict())
    plain.forward = lambda x: plain.head((torch.softmax(plain.qkv(x).chunk(3, -1)[0] @ plain.qkv(x).chunk(3, -1)[1].transpose(-1, -2) + plain.mask, -1) @ plain.qkv(x).chunk(3, -1)[2]).mean(1))
    reference = explain(plain, x, "attnlrp", target=0, params=EXACT).relevance
    assert ours.dtype == D64
    _close(ours, reference, rtol=1e-5)


class Float32Rotary(nn.Module):
    """ModernBERT's rotary angles: a float32 buffer times positions cast with .float(), both following the batch,
    in a float64 model."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(20, 8), nn.Linear(8, 3)
        self.register_buffer("inv_freq", 1.0 / 10.0 ** torch.arange(0, 1, 0.125))

    def forward(self, ids):
        batch, length = ids.shape
        inv = self.inv_freq[None, :, None].float().expand(batch, -1, 1)
        positions = torch.arange(length, device=ids.device)[None, None, :].expand(batch, 1, -1).float()
        angles = (inv @ positions).transpose(1, 2)
        return self.head((self.emb(ids) * angles.cos().to(self.emb.weight.dtype)).mean(1))


def test_constants_a_model_keeps_in_float32_stay_float32_in_a_float64_graph():
    """Was 'the model failed on an input shaped (2, 6): expected scalar type Double but found Float': moving the
    graph to the model's float64 converted the float32 frequencies but not the positions' .float()."""
    torch.manual_seed(4)
    model = Float32Rotary().double().eval()
    model.inv_freq = model.inv_freq.float()
    ids = torch.randint(0, 20, (2, 6))
    result = explain(model, ids, "attnlrp", target=0, params=EXACT)
    assert torch.equal(result.outputs, model(ids))
    _close(result.relevance, embedding_relevance(model, ids, 0, "attnlrp"))


def test_moving_a_graph_to_a_dtype_moves_the_models_dtype_and_its_casts():
    torch.manual_seed(5)
    model = Float32Rotary().eval()  # a float32 model explained in float64: its casts to float32 go to float64 too
    ids = torch.randint(0, 20, (2, 6))
    graph = capture(model, ids)
    moved = graph.to("cpu", D64)
    assert moved(ids).dtype == D64
    assert torch.allclose(moved(ids), model(ids).double(), atol=1e-6)


class ParameterBuffer(nn.Module):
    """FalconMamba registers its RMS weights as buffers holding nn.Parameters."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(4, 4), nn.Linear(4, 3)
        self.register_buffer("scale", nn.Parameter(torch.linspace(0.5, 2.0, 4), requires_grad=False), persistent=False)

    def forward(self, x):
        return self.head(self.lin(x) * self.scale)


def test_a_parameter_registered_as_a_buffer_is_captured():
    """Was a raw KeyError "attribute 'scale' already exists" from torch.export's program.module(). The relevance
    equals the same module with a plain tensor buffer, and the model keeps its own Parameter."""
    torch.manual_seed(6)
    model = ParameterBuffer().double().eval()
    model._buffers["scale"] = nn.Parameter(model.scale.detach(), requires_grad=False)
    own = model._buffers["scale"]
    x = torch.randn(3, 4, dtype=D64)
    ours = explain(model, x, "epsilon", target=0).relevance
    assert model._buffers["scale"] is own
    plain = ParameterBuffer().double().eval()
    plain.load_state_dict(model.state_dict())
    plain._buffers["scale"] = own.detach().clone()
    _close(ours, explain(plain, x, "epsilon", target=0).relevance, rtol=0)


# --------------------------------------------------------------------------- zeros_like (a constant)


class ShapedConstants(nn.Module):
    """RecurrentGemma's zeros_like(x) (its scan's output buffer), and ones_like: values made from x's shape only."""

    def __init__(self, twin: bool = False):
        super().__init__()
        self.twin = twin
        self.lin, self.head = nn.Linear(4, 5), nn.Linear(5, 3)
        self.register_buffer("ones", torch.ones(1, 5))

    def forward(self, x):
        h = F.relu(self.lin(x))
        if self.twin:  # the same constants as a buffer
            return self.head(h + 0.0 * self.ones + self.ones)
        return self.head(h + torch.zeros_like(h) + torch.ones_like(h))


def test_zeros_like_is_a_constant():
    """Relevance as with the same constants given as a buffer: they take their share as a bias does, x the rest.
    Was 'no LRP rule for zeros_like'."""
    torch.manual_seed(13)
    model = ShapedConstants().double().eval()
    twin = ShapedConstants(twin=True).double().eval()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(3, 4, dtype=D64)
    _close(explain(model, x, "epsilon", target=0).relevance, explain(twin, x, "epsilon", target=0).relevance, rtol=1e-12)


# --------------------------------------------------------------------------- glu (a sigmoid gate)


class Glu(nn.Module):
    """Wav2Vec2-BERT's convolution module: a pointwise conv doubling the channels, then glu over them."""

    def __init__(self, explicit: bool = False):
        super().__init__()
        self.explicit = explicit
        self.conv, self.head = nn.Conv1d(4, 8, 1), nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        if self.explicit:  # the same function written out: the oracle holds a sigmoid gate (its 'mul(signal, sigmoid)')
            a, b = h.chunk(2, dim=1)
            h = a * torch.sigmoid(b)
        else:
            h = F.glu(h, dim=1)
        return self.head(h.mean(2))


@pytest.mark.parametrize("composite, mode", [("attnlrp", "attnlrp"), ("cp_lrp", "cp")])
def test_glu_is_a_held_sigmoid_gate_as_the_oracle_holds_it(composite, mode):
    """glu(x) = a * sigmoid(b) (Dauphin et al. 2017): the gate b held, the signal a takes all, as for every sigmoid
    gate (AttnLRP and CP-LRP alike; the oracle's rule for mul(signal, sigmoid)). The oracle runs the explicit twin."""
    torch.manual_seed(7)
    model = Glu().double().eval()
    twin = Glu(explicit=True).double().eval()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(3, 4, 5, dtype=D64)
    ours = explain(model, x, composite, target=1, params=EXACT).relevance
    _close(ours, modified_gradient_relevance(twin, x, 1, mode))


# --------------------------------------------------------------------------- linalg_vector_norm (ConvNeXt V2's GRN)


class GRN(nn.Module):
    """ConvNeXt V2's global response normalisation (Woo et al. 2023, Alg. 1), channels last, then a head."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, c, 1), nn.Linear(c, 3)
        self.gamma, self.beta = nn.Parameter(torch.randn(c)), nn.Parameter(torch.randn(c))

    def forward(self, x):
        h = self.stem(x).permute(0, 2, 3, 1)
        gx = torch.linalg.vector_norm(h, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        h = self.gamma * (h * nx) + self.beta + h
        return self.head(h.mean((1, 2)))


def test_grn_holds_its_norm_as_layernorm_rules_hold_sigma():
    """GRN's N(x) = ||x|| / mean ||x|| is a normaliser: held constant (AttnLRP Prop. 3.4's treatment of 1/sigma),
    so x * N(x) is a scaling; the oracle detaches linalg_vector_norm. Was 'no LRP rule for linalg_vector_norm'."""
    torch.manual_seed(8)
    model = GRN().double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=D64)
    ours = explain(model, x, "attnlrp", target=0, params=EXACT).relevance
    _close(ours, modified_gradient_relevance(model, x, 0, "attnlrp"))


# --------------------------------------------------------------------------- dropout after dropout


def test_dropout_after_dropout_is_dropped():
    """Wav2Vec2-BERT's feature projection's dropout feeds the encoder's: removing the second rewired its readers
    to the first, already removed (KeyError 'dropout' while recording)."""
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.1), nn.Dropout(0.1), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    plain = nn.Sequential(model[0], model[3], model[4])
    x = torch.randn(3, 4, dtype=D64)
    _close(explain(model, x, "epsilon", target=0).relevance, explain(plain, x, "epsilon", target=0).relevance, rtol=0)


# --------------------------------------------------------------------------- an activation times a constant batch of matrices


class RelativeKeys(nn.Module):
    """DeBERTa's content-to-position scores: queries times constant position keys (one matrix per head), and
    Wav2Vec2-BERT's relative positions (the constant on the left)."""

    def __init__(self, left: bool = False):
        super().__init__()
        self.left = left
        self.lin, self.head = nn.Linear(4, 6, bias=False), nn.Linear(5 * 5, 3, bias=False)
        self.register_buffer("keys", torch.randn(2, 3, 5))  # (heads, head dim, positions)

    def forward(self, x):  # x: (batch, 5 tokens, 4)
        q = F.relu(self.lin(x)).unflatten(-1, (2, 3)).transpose(1, 2)  # (batch, heads, 5, 3)
        scores = torch.matmul(self.keys.transpose(-1, -2), q.transpose(-1, -2)) if self.left else torch.matmul(q, self.keys)
        return self.head(scores.sum(1).flatten(1))


@pytest.mark.parametrize("left", [False, True])
def test_an_activation_times_constant_matrices_is_a_linear_map(left):
    """A product with one live factor is a linear map of it: in a bias-free ReLU net LRP-0 is gradient x input.
    Was "'matmul' multiplies two activations (or a constant on the left)"."""
    torch.manual_seed(10)
    model = RelativeKeys(left).double().eval()
    x = torch.randn(3, 5, 4, dtype=D64, requires_grad=True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[:, 2].sum(), x)
    ours = explain(model, x.detach(), "lrp_0", target=2).relevance
    _close(ours, (x * grad).detach())


# --------------------------------------------------------------------------- view_as_complex (Llama 4's RoPE)


class ComplexRope(nn.Module):
    """Llama 4's rotary embedding: pairs of features as complex numbers, times constant unit phasors."""

    def __init__(self, tokens: int = 5, width: int = 8):
        super().__init__()
        self.lin, self.head = nn.Linear(width, width, bias=False), nn.Linear(width, 3, bias=False)
        angles = torch.arange(tokens)[:, None] * 10.0 ** -torch.arange(width // 2)[None, :]
        self.register_buffer("phasors", torch.polar(torch.ones_like(angles), angles))  # complex (tokens, width / 2)

    def forward(self, x):
        h = self.lin(x)
        rotated = torch.view_as_real(torch.view_as_complex(h.reshape(*h.shape[:-1], -1, 2)) * self.phasors).flatten(2)
        return self.head(F.relu(rotated).mean(1))


def test_a_rotation_by_constant_complex_phasors_is_a_linear_map():
    """The rotation is linear in x with constant coefficients: LRP-0 in a bias-free ReLU net equals gradient x
    input, and the rotated values equal the model's. Was 'no LRP rule for view_as_complex'."""
    torch.manual_seed(11)
    model = ComplexRope().double().eval()
    x = torch.randn(3, 5, 8, dtype=D64, requires_grad=True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    result = explain(model, x.detach(), "lrp_0", target=0)
    assert torch.equal(result.outputs, out.detach())
    _close(result.relevance, (x * grad).detach())
    _close(explain(model, x.detach(), "attnlrp", target=0, params=EXACT).relevance, modified_gradient_relevance(model, x.detach(), 0, "attnlrp"))


# --------------------------------------------------------------------------- autocast switched off


class AutocastOff(nn.Module):
    """Nemotron's LayerNorm1P: the norm computed under torch.autocast(enabled=False)."""

    def __init__(self, off: bool = True):
        super().__init__()
        self.off = off
        self.lin, self.norm, self.head = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.lin(x)
        if self.off:
            with torch.autocast(device_type=x.device.type, enabled=False):
                h = F.layer_norm(h, (6,), self.norm.weight + 1, self.norm.bias, 1e-5)
        else:
            h = F.layer_norm(h, (6,), self.norm.weight + 1, self.norm.bias, 1e-5)
        return self.head(F.relu(h))


def test_a_block_under_disabled_autocast_is_explained_as_written():
    """torch.export wraps it in the higher-order op wrap_with_autocast: was "no LRP rule for 'wrap_with_autocast'".
    The relevance equals the same module without the autocast block."""
    torch.manual_seed(14)
    model = AutocastOff().double().eval()
    plain = AutocastOff(off=False).double().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(3, 4, dtype=D64)
    _close(explain(model, x, "attnlrp", target=0).relevance, explain(plain, x, "attnlrp", target=0).relevance, rtol=0)


# --------------------------------------------------------------------------- transformers' families end to end

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, max_position_embeddings=32)


class _Logits(nn.Module):
    """A Hugging Face model's logits for one input (the last position's for a causal LM)."""

    def __init__(self, model, key: str = "input_ids", last: bool = False):
        super().__init__()
        self.model, self.key, self.last = model, key, last

    def forward(self, x):
        logits = self.model(**{self.key: x}, return_dict=True).logits
        return logits[:, -1] if self.last else logits


def _lm(name: str, config: str, **kwargs):
    return lambda: _Logits(getattr(transformers, name)(getattr(transformers, config)(**kwargs)), last=True)


def _classifier(name: str, config: str, key: str = "input_ids", **kwargs):
    return lambda: _Logits(getattr(transformers, name)(getattr(transformers, config)(num_labels=3, **kwargs)), key=key)


#: family -> (the model, its input, what it stopped at before, compared with the oracle: the op is new there; the
#: others only run, to keep the file fast)
FAMILIES = {
    "persimmon": (_lm("PersimmonForCausalLM", "PersimmonConfig", **SMALL), "ids", "square", True),
    "nemotron": (_lm("NemotronForCausalLM", "NemotronConfig", num_key_value_heads=1, head_dim=8, partial_rotary_factor=0.5, **SMALL), "ids",
                 "wrap_with_autocast", False),
    "arcee": (_lm("ArceeForCausalLM", "ArceeConfig", num_key_value_heads=1, **SMALL), "ids", "square", False),
    "bitnet": (_lm("BitNetForCausalLM", "BitNetConfig", num_key_value_heads=1, **SMALL), "ids", "square", False),
    "deberta": (_classifier("DebertaForSequenceClassification", "DebertaConfig", relative_attention=True, pos_att_type="c2p|p2c",
                            max_relative_positions=-1, type_vocab_size=0, **SMALL), "ids", "matmul", True),
    "deberta_v2": (_classifier("DebertaV2ForSequenceClassification", "DebertaV2Config", relative_attention=True, pos_att_type=["p2c", "c2p"],
                               position_buckets=8, max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True,
                               position_biased_input=False, type_vocab_size=0, **SMALL), "ids", "gather", True),
    "convnextv2": (_classifier("ConvNextV2ForImageClassification", "ConvNextV2Config", key="pixel_values", num_channels=3,
                               hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32), "pixels", "linalg_vector_norm", True),
    "wav2vec2_bert": (_classifier("Wav2Vec2BertForSequenceClassification", "Wav2Vec2BertConfig", key="input_features", hidden_size=16,
                                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, feature_projection_input_dim=20,
                                  output_hidden_size=16, conv_depthwise_kernel_size=3), "features", "glu", False),
    "llama4": (_lm("Llama4ForCausalLM", "Llama4TextConfig", num_key_value_heads=1, head_dim=8, intermediate_size_mlp=24, num_local_experts=1,
                   num_experts_per_tok=1, interleave_moe_layer_step=1, moe_layers=[], no_rope_layers=[1, 0], attention_chunk_size=4, **SMALL),
               "ids", "view_as_complex", True),
    "codegen": (_lm("CodeGenForCausalLM", "CodeGenConfig", vocab_size=40, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=32,
                    n_ctx=32), "ids", "float/double", False),
    "modernbert_decoder": (_lm("ModernBertDecoderForCausalLM", "ModernBertDecoderConfig", pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               cls_token_id=1, sep_token_id=2, **SMALL), "ids", "replay dtype", False),
}
INPUTS = {"ids": lambda: torch.randint(3, 40, (2, 6)), "pixels": lambda: torch.randn(2, 3, 32, 32, dtype=D64),
          "features": lambda: torch.randn(2, 7, 20, dtype=D64)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transformers_family_explains(family):
    """A tiny random config in float64: finite relevance, the captured graph's logits equal the model's, and where
    the op stopped it, AttnLRP equal to the oracle (to 1e-6 as tests/test_modern_rules.py; Llama 4 rotates in
    float32, hence its tolerance)."""
    make, kind, _before, oracle = FAMILIES[family]
    torch.manual_seed(12)
    model = make().double().eval()
    x = INPUTS[kind]()
    with torch.no_grad():
        own = model(x)
    result = explain(model, x, "attnlrp", target=1, params=EXACT)
    assert torch.isfinite(result.relevance).all()
    float32_inside = family in ("codegen", "llama4")  # attention scores, rotary angles
    assert (result.outputs - own).abs().max() <= (1e-6 if float32_inside else 1e-10) * own.abs().max()
    if oracle:
        reference = (embedding_relevance if kind == "ids" else modified_gradient_relevance)(model, x, 1, "attnlrp")
        _close(result.relevance, reference, rtol=1e-4 if family == "llama4" else 1e-6)
