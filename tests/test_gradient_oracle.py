"""The grad x input oracle (tests/gradient_oracle.py) against closed forms, in float64.

Each closed form is composed by hand in NumPy from the formulas of
research/transformers-lrp.md §1 and §4 (Prop. 3.1 softmax, Prop. 3.3 matmul, the LayerNorm
rule with sigma constant, signal-take-all gates, identity on GELU), so a wrong oracle
rule fails here before it is used as the reference for lrpcli's engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradient_oracle import _run, embedding_relevance, modified_gradient_relevance

D64 = torch.float64
TARGET = 1


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _gelu(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def _close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(_np(actual), expected, rtol=rtol, atol=atol)


def _logit(model, x, target=TARGET) -> np.ndarray:
    return _np(model(x))[:, target]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- (1) softmax


class SoftmaxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Linear(5, 4, bias=False)
        self.u = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.u(torch.softmax(self.w(x), dim=-1))


def test_softmax_is_prop_3_1():
    model = SoftmaxNet().double()
    x = torch.randn(3, 5, dtype=D64)
    W, U, xn = _np(model.w.weight), _np(model.u.weight), _np(x)
    z = xn @ W.T
    s = _softmax(z)
    r_s = s * U[TARGET]  # epsilon-0 rule of the bias-free head, R_out = logit
    r_z = z * (r_s - s * r_s.sum(-1, keepdims=True))  # Prop. 3.1
    r_x = xn * ((r_z / z) @ W)
    _close(modified_gradient_relevance(model, x, TARGET, "attnlrp"), r_x)
    # CP-LRP: the softmax output is a constant, nothing reaches the input
    assert np.abs(_np(modified_gradient_relevance(model, x, TARGET, "cp"))).max() == 0.0


# --------------------------------------------------------------------------- (2) matmul


class ProductNet(nn.Module):
    def __init__(self, n: int, how: str):
        super().__init__()
        self.head = nn.Linear(n * n, 3, bias=False)
        self.how = how

    def forward(self, x):
        a, b = x[:, 0], x[:, 1]
        if self.how == "matmul":
            o = a @ b
        elif self.how == "bmm":
            o = torch.bmm(a, b)
        else:
            o = torch.einsum("bij,bjk->bik", a, b)
        return self.head(o.flatten(1))


@pytest.mark.parametrize("how", ["matmul", "bmm", "einsum"])
def test_matmul_of_two_activations_is_uniform_prop_3_3(how):
    n = 3
    model = ProductNet(n, how).double()
    x = torch.randn(2, 2, n, n, dtype=D64)
    xn = _np(x)
    A, B = xn[:, 0], xn[:, 1]
    O = A @ B
    R = O * _np(model.head.weight)[TARGET].reshape(n, n)  # relevance at O
    half = R / (2 * O)
    r_a = A * (half @ B.transpose(0, 2, 1))
    r_b = B * (A.transpose(0, 2, 1) @ half)
    rel = modified_gradient_relevance(model, x, TARGET, "attnlrp")
    _close(rel, np.stack([r_a, r_b], axis=1))
    np.testing.assert_allclose(r_a.sum((1, 2)) + r_b.sum((1, 2)), R.sum((1, 2)), rtol=1e-12)
    np.testing.assert_allclose(_np(rel).sum((1, 2, 3)), _logit(model, x), rtol=1e-10)


# --------------------------------------------------------------------------- (3) norms


class NormNet(nn.Module):
    def __init__(self, norm: nn.Module, d: int):
        super().__init__()
        self.norm = norm
        self.head = nn.Linear(d, 3, bias=False)

    def forward(self, x):
        return self.head(self.norm(x).flatten(1))


def test_layer_norm_closed_form_and_exact_conservation():
    d = 6
    ln = nn.LayerNorm(d, bias=False)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(d) + 0.5)
    model = NormNet(ln, d).double()
    x = torch.randn(4, d, dtype=D64)
    xn, w, U = _np(x), _np(ln.weight), _np(model.head.weight)
    mu = xn.mean(-1, keepdims=True)
    sigma = np.sqrt(((xn - mu) ** 2).mean(-1, keepdims=True) + ln.eps)
    y = w * (xn - mu) / sigma
    r_y = y * U[TARGET]
    h = (w / sigma) * r_y / y
    r_in = xn * (h - h.mean(-1, keepdims=True))
    for mode in ("attnlrp", "cp"):
        rel = modified_gradient_relevance(model, x, TARGET, mode)
        _close(rel, r_in)
        np.testing.assert_allclose(_np(rel).sum(-1), r_y.sum(-1), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(_np(rel).sum(-1), _logit(model, x), rtol=1e-12, atol=1e-14)


class ChannelsFirstLN(nn.Module):
    """ConvNeXt's hand-written channels-first LayerNorm (decomposed ops after export)."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps))


class PermutedLN(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.ln = nn.LayerNorm(weight.numel(), eps=eps, bias=False)
        with torch.no_grad():
            self.ln.weight.copy_(weight)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_hand_written_channels_first_layer_norm_equals_the_layer_norm_rule():
    c = 4
    cf = ChannelsFirstLN(c)
    a = NormNet(cf, c * 9).double()
    b = NormNet(PermutedLN(cf.weight.detach(), cf.eps), c * 9).double()
    b.head.load_state_dict(a.head.state_dict())
    x = torch.randn(2, c, 3, 3, dtype=D64)
    torch.testing.assert_close(a(x), b(x))
    ra = modified_gradient_relevance(a, x, TARGET, "attnlrp")
    rb = modified_gradient_relevance(b, x, TARGET, "attnlrp")
    torch.testing.assert_close(ra, rb, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(ra).sum((1, 2, 3)), _logit(a, x), rtol=1e-10)


def test_group_norm_closed_form():
    c, groups = 4, 2
    gn = nn.GroupNorm(groups, c)
    with torch.no_grad():
        gn.weight.copy_(torch.rand(c) + 0.5)
        gn.bias.zero_()
    model = NormNet(gn, c * 4).double()
    x = torch.randn(3, c, 2, 2, dtype=D64)
    xn, w, U = _np(x), _np(gn.weight), _np(model.head.weight)
    g = xn.reshape(3, groups, -1)
    mu = g.mean(-1, keepdims=True)
    sigma = np.sqrt(((g - mu) ** 2).mean(-1, keepdims=True) + gn.eps)
    wc = w.reshape(1, c, 1, 1)
    y = wc * ((g - mu) / sigma).reshape(xn.shape)
    r_y = y * U[TARGET].reshape(1, c, 2, 2)
    h = (wc * r_y / y).reshape(3, groups, -1) / sigma
    r_in = xn * (h - h.mean(-1, keepdims=True)).reshape(xn.shape)
    rel = modified_gradient_relevance(model, x, TARGET, "attnlrp")
    _close(rel, r_in)
    np.testing.assert_allclose(_np(rel).sum((1, 2, 3)), _logit(model, x), rtol=1e-12)


class HandRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


@pytest.mark.parametrize("kind", ["hand", "nn"])
def test_rms_norm_is_identity(kind):
    d = 5
    norm = HandRMSNorm(d) if kind == "hand" else nn.RMSNorm(d)
    model = NormNet(norm, d).double()
    x = torch.randn(3, d, dtype=D64)
    y = _np(norm.double()(x))
    r_out = y * _np(model.head.weight)[TARGET]
    _close(modified_gradient_relevance(model, x, TARGET, "attnlrp"), r_out)


class L1Normalise(nn.Module):
    def forward(self, x):
        return x / x.abs().sum(-1, keepdim=True)


def test_divisor_computed_from_the_activation_is_a_constant():
    model = NormNet(L1Normalise(), 5).double()
    x = torch.randn(3, 5, dtype=D64)
    xn = _np(x)
    y = xn / np.abs(xn).sum(-1, keepdims=True)
    _close(modified_gradient_relevance(model, x, TARGET, "attnlrp"), y * _np(model.head.weight)[TARGET])


# --------------------------------------------------------------------------- (4) SE gate


class SENet(nn.Module):
    def __init__(self, c: int = 4, hard: bool = False):
        super().__init__()
        self.fc1 = nn.Conv2d(c, 2, 1, bias=False)
        self.fc2 = nn.Conv2d(2, c, 1, bias=False)
        self.gate = nn.Hardsigmoid() if hard else nn.Sigmoid()
        self.head = nn.Linear(c * 9, 3, bias=False)

    def forward(self, x):
        g = self.gate(self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head((x * g).flatten(1))


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("mode", ["attnlrp", "cp"])
def test_se_gate_signal_takes_all(hard, mode):
    c = 4
    model = SENet(c, hard).double()
    x = torch.randn(2, c, 3, 3, dtype=D64)
    xn = _np(x)
    W1, W2 = _np(model.fc1.weight)[:, :, 0, 0], _np(model.fc2.weight)[:, :, 0, 0]
    pre = np.maximum(xn.mean((2, 3)) @ W1.T, 0) @ W2.T
    g = np.clip(pre / 6 + 0.5, 0, 1) if hard else 1 / (1 + np.exp(-pre))
    r_x = xn * g[:, :, None, None] * _np(model.head.weight)[TARGET].reshape(1, c, 3, 3)
    rel = modified_gradient_relevance(model, x, TARGET, mode)
    _close(rel, r_x)
    np.testing.assert_allclose(_np(rel).sum((1, 2, 3)), _logit(model, x), rtol=1e-12)


# --------------------------------------------------------------------------- (5) transformer block


class EagerAttention(nn.Module):
    """Attention written out: matmul, scale, additive causal mask, softmax, matmul."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = torch.full((t, t), -1e9, dtype=x.dtype).triu(1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + mask, dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, t, d))


class SDPAAttention(EagerAttention):
    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, t, d))


class MHAAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, bias=False, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class Block(nn.Module):
    def __init__(self, attention: str, d: int = 8, heads: int = 2):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, bias=False)
        self.attn = {"eager": EagerAttention, "sdpa": SDPAAttention, "mha": MHAAttention}[attention](d, heads)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.fc1 = nn.Linear(d, 2 * d, bias=False)
        self.fc2 = nn.Linear(2 * d, d, bias=False)
        self.head = nn.Linear(d, 3, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


@pytest.mark.parametrize("attention", ["eager", "sdpa", "mha"])
def test_bias_free_block_conserves_in_cp_mode(attention):
    model = Block(attention).double()
    x = torch.randn(2, 5, 8, dtype=D64)
    logit = _logit(model, x)
    cp = _np(modified_gradient_relevance(model, x, TARGET, "cp"))
    np.testing.assert_allclose(cp.sum((1, 2)), logit, rtol=0, atol=1e-10)
    # AttnLRP leaks relevance at each softmax (its Taylor bias term): no conservation
    attn = _np(modified_gradient_relevance(model, x, TARGET, "attnlrp"))
    assert np.abs(attn.sum((1, 2)) - logit).max() > 1e-6


def test_sdpa_eager_and_mha_agree():
    """The one-op SDPA rule (q, k x 1/4, v x 1/2) equals the rules on its decomposition."""
    eager, sdpa = Block("eager").double(), Block("sdpa").double()
    sdpa.load_state_dict(eager.state_dict())
    x = torch.randn(2, 5, 8, dtype=D64)
    for mode in ("attnlrp", "cp"):
        torch.testing.assert_close(
            modified_gradient_relevance(eager, x, TARGET, mode),
            modified_gradient_relevance(sdpa, x, TARGET, mode),
            rtol=1e-9,
            atol=1e-12,
        )


# --------------------------------------------------------------------------- SDPA closed form


class QKVNet(nn.Module):
    """x holds q, k, v directly: (batch, seq, 3, heads, d)."""

    def __init__(self, t: int, heads: int, d: int, mask: torch.Tensor | None, causal: bool):
        super().__init__()
        self.head = nn.Linear(heads * t * d, 3, bias=False)
        self.register_buffer("mask", mask)
        self.causal = causal

    def forward(self, x):
        q, k, v = x.permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal)
        return self.head(o.flatten(1))


def _attention_closed_form(x, mask, U, mode):
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (b, h, t, d)
    c = 1.0 / math.sqrt(q.shape[-1])
    P = q @ k.transpose(0, 1, 3, 2)
    S = c * P + mask
    A = _softmax(S)
    O = A @ v
    R = O * U[TARGET].reshape(O.shape[1:])
    if mode == "cp":
        r_v = v * (A.transpose(0, 1, 3, 2) @ (R / O))
        r_q = r_k = np.zeros_like(q)
    else:
        half = R / (2 * O)
        r_a = A * (half @ v.transpose(0, 1, 3, 2))
        r_v = v * (A.transpose(0, 1, 3, 2) @ half)
        r_s = S * (r_a - A * r_a.sum(-1, keepdims=True))  # Prop. 3.1
        r_p = (c * P) * r_s / S  # the constant mask keeps its share; x c keeps relevance
        half_p = r_p / (2 * P)
        r_q = q * (half_p @ k)
        r_k = k * (half_p.transpose(0, 1, 3, 2) @ q)
    return np.stack([r.transpose(0, 2, 1, 3) for r in (r_q, r_k, r_v)], axis=2), R


@pytest.mark.parametrize("mask_kind", ["none", "causal", "additive"])
@pytest.mark.parametrize("mode", ["attnlrp", "cp"])
def test_sdpa_matches_explicit_prop_3_3_3_1_3_3(mask_kind, mode):
    b, t, h, d = 2, 4, 2, 3
    x = torch.randn(b, t, 3, h, d, dtype=D64)
    mask = None
    np_mask = np.zeros((t, t))
    if mask_kind == "additive":
        mask = torch.randn(t, t, dtype=D64)
        np_mask = _np(mask)
    elif mask_kind == "causal":
        np_mask = np.triu(np.full((t, t), -1e300), 1)
    model = QKVNet(t, h, d, mask, mask_kind == "causal").double()
    expected, R = _attention_closed_form(_np(x), np_mask, _np(model.head.weight), mode)
    rel = modified_gradient_relevance(model, x, TARGET, mode)
    _close(rel, expected, rtol=1e-8, atol=1e-12)
    if mode == "cp":  # Q and K get nothing; V gets all (conservative)
        assert np.abs(_np(rel)[:, :, :2]).max() == 0.0
        np.testing.assert_allclose(_np(rel).sum((1, 2, 3, 4)), R.sum((1, 2, 3)), rtol=1e-12)


# --------------------------------------------------------------------------- (6) GELU identity


class GeluNet(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.w = nn.Linear(4, 6, bias=False)
        self.act = act
        self.u = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.u(self.act(self.w(x)))


def test_gelu_is_identity():
    model = GeluNet(nn.GELU()).double()
    x = torch.randn(3, 4, dtype=D64)
    W, U, xn = _np(model.w.weight), _np(model.u.weight), _np(x)
    z = xn @ W.T
    r_z = _gelu(z) * U[TARGET]  # identity: R_z = R_a
    r_x = xn * ((r_z / z) @ W)
    for mode in ("attnlrp", "cp"):
        rel = modified_gradient_relevance(model, x, TARGET, mode)
        _close(rel, r_x)
        np.testing.assert_allclose(_np(rel).sum(-1), _logit(model, x), rtol=1e-10)


class HandSiLU(nn.Module):  # x * sigmoid(x), not an activation module: the gate rule applies
    def forward(self, x):
        return x * torch.sigmoid(x)


def test_silu_written_as_a_product_is_identity():
    a, b = GeluNet(nn.SiLU()).double(), GeluNet(HandSiLU()).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4, dtype=D64)
    torch.testing.assert_close(
        modified_gradient_relevance(a, x, TARGET, "attnlrp"), modified_gradient_relevance(b, x, TARGET, "attnlrp")
    )


def test_hf_gelu_new_collapses_to_one_identity():
    activations = pytest.importorskip("transformers.activations")
    a, b = GeluNet(nn.GELU(approximate="tanh")).double(), GeluNet(activations.NewGELUActivation()).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4, dtype=D64)
    for mode in ("attnlrp", "cp"):
        torch.testing.assert_close(
            modified_gradient_relevance(a, x, TARGET, mode), modified_gradient_relevance(b, x, TARGET, mode)
        )


# --------------------------------------------------------------------------- embeddings, API


class BagOfEmbeddings(nn.Module):
    def __init__(self, vocab: int = 10, d: int = 4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Embedding(6, d)
        self.head = nn.Linear(d, 3, bias=False)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1])
        return self.head((self.emb(ids) + self.pos(positions)).mean(1))


def test_embedding_relevance_closed_form():
    model = BagOfEmbeddings().double()
    ids = torch.tensor([[3, 1, 4, 1, 5, 0], [2, 7, 1, 8, 0, 0]])
    E, P, U = _np(model.emb.weight)[_np(ids)], _np(model.pos.weight), _np(model.head.weight)
    t = ids.shape[1]
    expected = (E * U[TARGET]).sum(-1) / t  # the position embeddings are biases: their share stays
    for mode in ("attnlrp", "cp"):
        rel = embedding_relevance(model, ids, TARGET, mode)
        assert rel.shape == ids.shape
        _close(rel, expected)
        assert (_np(rel)[_np(ids) == 0] == 0).all()  # padding embeddings are zero rows
    np.testing.assert_allclose(expected.sum(-1) + (P * U[TARGET]).sum() / t, _logit(model, ids), rtol=1e-12)


def test_per_sample_targets():
    model = GeluNet(nn.GELU()).double()
    x = torch.randn(3, 4, dtype=D64)
    targets = torch.tensor([0, 2, 1])
    rel = modified_gradient_relevance(model, x, targets, "attnlrp")
    for i, t in enumerate(targets.tolist()):
        torch.testing.assert_close(rel[i], modified_gradient_relevance(model, x, t, "attnlrp")[i])


class Uncovered(nn.Module):
    def forward(self, x):
        return F.linear(x, x[:2])


def test_uncovered_product_raises():
    with pytest.raises(NotImplementedError, match="linear"):
        modified_gradient_relevance(Uncovered().double(), torch.randn(3, 4, dtype=D64), 0)


def test_forward_is_the_model_on_hf_models():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config).eval().double()
    ids = torch.randint(1, 50, (2, 6))
    ids[1, 4:] = 0
    mask = (ids != 0).long()
    for mode in ("attnlrp", "cp"):
        logits, interp = _run(model, ids, mode, True, {"attention_mask": mask})
        torch.testing.assert_close(logits, model(input_ids=ids, attention_mask=mask).logits)
        assert len(interp.sinks) == 1  # word embeddings only; position / token type are constants
        rel = embedding_relevance(model, ids, TARGET, mode, attention_mask=mask)
        assert rel.shape == ids.shape and torch.isfinite(rel).all()
