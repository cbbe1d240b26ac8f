"""Families benchmarks/hf_zoo.py found stopping at an op or guard lrpcli can handle (issue 27, item 6).

Each against something independent of the engine: gradient x input where LRP-0 must equal it (a bias-free ReLU net
is positively homogeneous and piecewise linear, so LRP-0 = gradient x input: Montavon et al. 2019, "Layer-Wise
Relevance Propagation: An Overview", sec. 10.2.1), the modified-gradient oracle (tests/gradient_oracle.py) for
AttnLRP, and the captured graph's logits equal to the model's own.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradient_oracle import embedding_relevance
from lrpcli import explain

D64 = torch.float64
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}


def _close(ours: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    assert ours.shape == expected.shape
    assert torch.isfinite(ours).all()
    scale = expected.abs().max()
    assert scale > 0
    assert (ours - expected).abs().max() <= rtol * scale, f"max diff {(ours - expected).abs().max():.3g} of {scale:.3g}"


def _gradient_times_input(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x)[:, target].sum().backward()
    return (x * x.grad).detach()


# --------------------------------------------------------------------------- ATen's alias ops (ConvBERT's multiply)


class Aliases(nn.Module):
    """torch.multiply / torch.subtract / torch.divide: ATen keeps them as their own ops (aten.multiply, ...)."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(5, 7, bias=False), nn.Linear(7, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.lin(x))
        return self.head(torch.divide(torch.subtract(torch.multiply(h, 3.0), h), 2.0))


def test_alias_ops_are_their_plain_ops_lrp0_equals_gradient_times_input():
    torch.manual_seed(0)
    model = Aliases().double().eval()
    x = torch.randn(4, 5, dtype=D64)
    result = explain(model, x, "lrp_0", target=1, params=EXACT)
    assert torch.allclose(result.outputs, model(x).detach(), rtol=0, atol=1e-12)
    _close(result.relevance, _gradient_times_input(model, x, 1))


# --------------------------------------------------------------------------- clamp (DBRX's q/k/v clip)


class Clipped(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(5, 7, bias=False), nn.Linear(7, 3, bias=False)

    def forward(self, x):
        return self.head(torch.clamp(self.lin(x), -0.5, 0.5))


def test_clamp_passes_relevance_unchanged_lrp0_by_hand():
    """clamp is an element-wise activation (hardtanh's shape): its relevance passes unchanged, as for ReLU. LRP-0
    (Bach et al. 2015, R_j = sum_k a_j w_jk R_k / z_k) written out: R_h = h * v_t at the clamp's output,
    R_z = R_h, R_x = x * W^T (R_z / z). Clipped units keep their relevance (h = +-0.5, not z)."""
    torch.manual_seed(0)
    model = Clipped().double().eval()
    x = torch.randn(4, 5, dtype=D64) * 2
    z = model.lin(x)
    h = z.clamp(-0.5, 0.5)
    assert ((z.abs() > 0.5).sum() > 0) and ((z.abs() < 0.5).sum() > 0)  # both regimes are exercised
    expected = x * (((h * model.head.weight[2]) / z) @ model.lin.weight)
    _close(explain(model, x, "lrp_0", target=2, params=EXACT).relevance, expected.detach())


# --------------------------------------------------------------------------- a piecewise activation (Apertus's xIELU)


class Piecewise(nn.Module):
    """xIELU as transformers writes it (python path): where(x > 0, a x^2 + b x, (expm1(min(x, eps)) - x) c + b x)."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(5, 7, bias=False), nn.Linear(7, 3, bias=False)
        self.register_buffer("eps", torch.tensor(-1e-6, dtype=D64))

    def forward(self, x):
        z = self.lin(x)
        h = torch.where(z > 0, 0.8 * z * z + 0.5 * z, (torch.expm1(torch.min(z, self.eps)) - z) * 1.3 + 0.5 * z)
        return self.head(h)


def test_a_piecewise_activation_is_one_element_wise_node_lrp0_by_hand():
    """The whole function of z is one activation and passes relevance unchanged (AttnLRP's identity rule for an
    activation written out as several ops, as for gelu_new): R_z = R_h = h * v_t, R_x = x * W^T (R_z / z)."""
    torch.manual_seed(0)
    model = Piecewise().double().eval()
    x = torch.randn(4, 5, dtype=D64)
    z = model.lin(x)
    h = torch.where(z > 0, 0.8 * z * z + 0.5 * z, (torch.expm1(torch.min(z, model.eps)) - z) * 1.3 + 0.5 * z)
    expected = x * (((h * model.head.weight[0]) / z) @ model.lin.weight)
    _close(explain(model, x, "lrp_0", target=0, params=EXACT).relevance, expected.detach())


# --------------------------------------------------------------------------- the real part of a DFT (FNet)


class Fourier(nn.Module):
    """FNet's token mixing, fftn(h, dim=(1, 2)).real, or a 1-d fft(h).real over the features, in a bias-free ReLU net."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims
        self.lin, self.head = nn.Linear(4, 6, bias=False), nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.lin(x))
        mixed = torch.fft.fftn(h, dim=self.dims).real if len(self.dims) == 2 else torch.fft.fft(h, dim=-1).real
        return self.head(mixed.sum(1))


@pytest.mark.parametrize("dims", [(1, 2), (-1,)])
def test_the_real_part_of_a_dft_is_a_linear_map_lrp0_equals_gradient_times_input(dims):
    """Re(DFT) of a real x is a fixed linear map (cos and sin matrices), so the net stays bias-free, piecewise
    linear and positively homogeneous: LRP-0 = gradient x input; and the graph computes the model's logits."""
    torch.manual_seed(0)
    model = Fourier(dims).double().eval()
    x = torch.randn(3, 5, 4, dtype=D64)
    result = explain(model, x, "lrp_0", target=1, params=EXACT)
    assert torch.allclose(result.outputs, model(x).detach(), rtol=0, atol=1e-12)
    _close(result.relevance, _gradient_times_input(model, x, 1))


def test_a_scaled_or_padded_dft_stays_a_named_unsupported_op():
    """fft with a size (zero padding) or a norm is not written out: the refusal names the op."""
    from lrpcli.errors import UnsupportedOpError

    class Padded(nn.Module):
        def forward(self, x):
            return torch.fft.fftn(x, s=(6, 4), dim=(1, 2)).real.sum(1)

    with pytest.raises(UnsupportedOpError, match="fft_fftn"):
        explain(Padded(), torch.randn(2, 5, 4), "lrp_0", target=0)


# --------------------------------------------------------------------------- type_as reads a dtype (Funnel's mask)


class OnesMask(nn.Module):
    """Funnel's default mask: ones(...).type_as(hidden), then scores - INF * (1 - mask): a constant, all zeros."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(5, 7, bias=False), nn.Linear(7, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.lin(x))
        mask = torch.ones(x.shape[0], 7).type_as(h)
        return self.head(h - 1e6 * (1 - mask))


def test_a_constant_cast_to_a_live_dtype_stays_constant_lrp0_equals_gradient_times_input():
    torch.manual_seed(0)
    model = OnesMask().double().eval()
    x = torch.randn(4, 5, dtype=D64)
    result = explain(model, x, "lrp_0", target=1, params=EXACT)
    assert torch.allclose(result.outputs, model(x).detach(), rtol=0, atol=1e-12)
    _close(result.relevance, _gradient_times_input(model, x, 1))


# --------------------------------------------------------------------------- transformers' families end to end

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
             max_position_embeddings=32)


from test_more_ops import _Logits  # noqa: E402  (the same wrapper: one input by name, logits out)


def _classifier(name: str, config: str, **kwargs):
    return lambda: _Logits(getattr(transformers, name)(getattr(transformers, config)(num_labels=3, **kwargs)))


def _lm(name: str, config: str, **kwargs):
    return lambda: _Logits(getattr(transformers, name)(getattr(transformers, config)(**kwargs)), last=True)


#: family -> (the model, what stopped it before, compared with the oracle: the oracle's own torch.export stops at
#: DBRX's expert loop, which lrpcli rewrites; its clamp has the by-hand test above; the oracle holds xIELU as one
#: activation too)
FAMILIES = {
    "apertus": (_lm("ApertusForCausalLM", "ApertusConfig", num_key_value_heads=1, **SMALL), "expm1", True),
    "dbrx": (_lm("DbrxForCausalLM", "DbrxConfig", d_model=16, n_heads=2, n_layers=2, max_seq_len=32, vocab_size=40,
                 attn_config={"clip_qkv": 0.3, "kv_n_heads": 1},
                 ffn_config={"ffn_hidden_size": 24, "moe_num_experts": 1, "moe_top_k": 1}), "clamp", False),
    "fnet": (_classifier("FNetForSequenceClassification", "FNetConfig", vocab_size=40, hidden_size=16, num_hidden_layers=2,
                         intermediate_size=24, max_position_embeddings=32), "fft_fftn", True),
    "funnel": (_classifier("FunnelForSequenceClassification", "FunnelConfig", vocab_size=40, block_sizes=[1, 1], d_model=16,
                           n_head=2, d_head=8, d_inner=24), "rsub", True),
    "convbert": (_classifier("ConvBertForSequenceClassification", "ConvBertConfig", embedding_size=16, head_ratio=1,
                             conv_kernel_size=3, **SMALL), "multiply", True),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transformers_family_explains_as_the_oracle(family):
    """Float64, a tiny random config: finite relevance, the graph's logits equal the model's and AttnLRP equals the
    oracle (where the oracle can capture the model)."""
    make, _before, oracle = FAMILIES[family]
    torch.manual_seed(12)
    model = make().double().eval()
    x = torch.randint(3, 40, (2, 6))
    with torch.no_grad():
        own = model(x)
    result = explain(model, x, "attnlrp", target=1, params=EXACT)
    assert torch.isfinite(result.relevance).all()
    assert (result.outputs - own).abs().max() <= 1e-10 * own.abs().max()
    if oracle:
        _close(result.relevance, embedding_relevance(model, x, 1, "attnlrp"), rtol=1e-6)
