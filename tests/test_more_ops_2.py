"""More ops transformers' families stopped at (issue 27 item 6), each on a tiny module against an independent check,
then the Hugging Face family end to end (the captured graph's logits equal the model's, finite relevance).

- ``upsample_bilinear2d`` (MobileViT's resize of its patch grid): each output a weighted average of its neighbours
  with constant weights, split proportionally as an average pool's; ``upsample_nearest2d`` copies: a route. Both:
  LRP-0 = gradient x input on a bias-free ReLU net.
- ``fft_rfft``/``fft_irfft`` (Mega's damped EMA): a convolution by FFT with a kernel made from parameters, written
  out as the linear map it is; LRP-0 = gradient x input, the map against the EMA's hand formula.
  Its gated residual ``addcmul(x, gate, h - x)``: the sum and product it computes, the gate held as every other.
- attention weights made without a softmax (lrpcli/engine/held_kernels.py): Doge's dynamic mask (``exp``), YOSO's
  LSH expectation kernel (``rsub``), RWKV's WKV with its stabilising maximum (``maximum``), held constant. AttnLRP
  equals the modified-gradient oracle (tests/gradient_oracle.py) run on the same model with those parts detached.
- ``wrap_with_set_grad_enabled`` (Reformer runs each reversible layer under no_grad): the block's ops as written;
  ``exp(x - logsumexp(x))`` (its attentions' softmax): the softmax it is. Both against the same module written
  plainly and against the oracle. A forward that draws random numbers (its hashing on a text longer than a chunk)
  is refused by name.
- the families end to end (Doge, YOSO, Mega, Reformer; RWKV and MobileViT with -m slow): AttnLRP equals the oracle.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradient_oracle import embedding_relevance, modified_gradient_relevance
from lrpcli import explain
from lrpcli.errors import UnsupportedOpError

from test_hf_zoo_families import D64, EXACT, _close, _gradient_times_input  # the same helpers


# --------------------------------------------------------------------------- interpolation


class Resized(nn.Module):
    """A bias-free ReLU net whose feature map is resized (MobileViT's F.interpolate of a grid smaller than a patch)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.conv, self.head = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Linear(3 * 8 * 8, 4, bias=False)

    def forward(self, x):
        h = F.relu(self.conv(x))
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        return self.head(F.interpolate(h, size=(8, 8), mode=self.mode, **kwargs).flatten(1))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_interpolation_is_lrp0_equal_to_gradient_times_input(mode):
    """For a bias-free ReLU net LRP-0 equals gradient x input (Montavon et al. 2019, sec. 10.2.1) when every linear
    op of it splits relevance proportionally (z-rule) or routes copies: a route (the gradient) through a bilinear
    resize would not, it mixes neighbours of different size. Was "no LRP rule for 'upsample_bilinear2d'"."""
    torch.manual_seed(0)
    model = Resized(mode).double().eval()
    x = torch.randn(3, 2, 5, 5, dtype=D64)
    result = explain(model, x, "lrp_0", target=1)
    assert torch.equal(result.outputs, model(x))
    _close(result.relevance, _gradient_times_input(model, x, 1))
    assert torch.allclose(result.relevance.sum((1, 2, 3)), model(x)[:, 1].detach())  # conserved: no bias


# --------------------------------------------------------------------------- a convolution computed by FFT (Mega's EMA)


class FftConvolution(nn.Module):
    """Mega's damped EMA: each channel convolved with a kernel made from parameters, by FFT (zero-padded to 2L, so the
    circular convolution is the linear one), bias-free around it."""

    def __init__(self, channels: int = 3, length: int = 5, norm: str | None = None):
        super().__init__()
        self.norm = norm
        self.lin, self.head = nn.Linear(4, channels, bias=False), nn.Linear(channels * length, 2, bias=False)
        self.damping = nn.Parameter(torch.randn(channels, 1))
        self.scale = nn.Parameter(torch.randn(channels, 1))

    def forward(self, x):  # (batch, length, 4)
        h = F.relu(self.lin(x)).transpose(1, 2)  # (batch, channels, length)
        length = h.shape[-1]
        kernel = self.scale * torch.sigmoid(self.damping) ** torch.arange(length, dtype=h.dtype)  # from parameters only
        n = 2 * length
        ema = torch.fft.irfft(torch.fft.rfft(h, n=n, norm=self.norm) * torch.fft.rfft(kernel, n=n, norm=self.norm), n=n, norm=self.norm)
        return self.head(ema[..., :length].flatten(1))


@pytest.mark.parametrize("norm", [None, "ortho"])
def test_a_convolution_by_fft_with_a_constant_kernel_is_a_linear_map(norm):
    """irfft(rfft(x) * rfft(k)) with k from parameters is x convolved with k: a linear map of x. Written out as one,
    LRP-0 is gradient x input on this bias-free ReLU net (Montavon et al. 2019, sec. 10.2.1), and the captured
    logits are the model's. The hand formula for the EMA, y_t = sum_{s<=t} k_{t-s} x_s, checks the map itself.
    Was "no LRP rule for 'fft_rfft'"."""
    torch.manual_seed(1)
    model = FftConvolution(norm=norm).double().eval()
    x = torch.randn(3, 5, 4, dtype=D64)
    result = explain(model, x, "lrp_0", target=1)
    _close(result.outputs, model(x).detach(), rtol=1e-12)
    _close(result.relevance, _gradient_times_input(model, x, 1))
    h = F.relu(model.lin(x)).transpose(1, 2)
    kernel = model.scale * torch.sigmoid(model.damping) ** torch.arange(5, dtype=D64)
    by_hand = torch.stack([sum(kernel[:, t - s] * h[..., s] for s in range(t + 1)) for t in range(5)], -1)
    if norm == "ortho":  # rfft and irfft each divide by sqrt(n): the product once more than the unscaled pair
        by_hand = by_hand / (2 * 5) ** 0.5
    _close(model.head(by_hand.flatten(1)).detach(), model(x).detach(), rtol=1e-12)


class GatedResidual(nn.Module):
    """Mega's layer output: ``addcmul(x, gate, h - x)``, a sigmoid gate between the residual and the new value;
    ``plain``: the same written ``x + gate * (h - x)``."""

    def __init__(self, plain: bool = False):
        super().__init__()
        self.plain = plain
        self.gate, self.update, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        gate, h = torch.sigmoid(self.gate(x)), F.silu(self.update(x))
        out = x + gate * (h - x) if self.plain else torch.addcmul(x, gate, h - x)
        return self.head(out)


@pytest.mark.parametrize("composite, mode", [("attnlrp", "attnlrp"), ("cp_lrp", "cp")])
def test_addcmul_is_the_sum_and_product_it_computes(composite, mode):
    """Mega's next stop after its FFT: "no LRP rule for 'addcmul'". Written out, its product is a gate like every
    other sigmoid gate: the relevance equals the plain module's and the oracle's (the gate held, the signal taking all)."""
    torch.manual_seed(5)
    model, plain = GatedResidual().double().eval(), GatedResidual(plain=True).double().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(3, 4, dtype=D64)
    result = explain(model, x, composite, target=0, params=EXACT)
    _close(result.outputs, plain(x).detach(), rtol=1e-12)
    _close(result.relevance, explain(plain, x, composite, target=0, params=EXACT).relevance, rtol=1e-12)
    _close(result.relevance, modified_gradient_relevance(plain, x, 0, mode), rtol=1e-9)


# --------------------------------------------------------------------------- no-grad blocks, a softmax written out (Reformer)


class NoGradAttention(nn.Module):
    """Reformer's layer: the block computed under torch.no_grad() (its reversible residuals recompute it in backward),
    the attention's softmax written as exp(s - logsumexp(s)); ``plain``: the same without either."""

    def __init__(self, plain: bool = False):
        super().__init__()
        self.plain = plain
        self.qkv, self.head = nn.Linear(4, 12), nn.Linear(4, 3)

    def forward(self, x):  # (batch, tokens, 4)
        with contextlib.nullcontext() if self.plain else torch.no_grad():
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            scores = q @ k.transpose(-1, -2)
            weights = torch.softmax(scores, -1) if self.plain else torch.exp(scores - torch.logsumexp(scores, dim=-1, keepdim=True))
            out = x + weights @ v
        return self.head(out.mean(1))


@pytest.mark.parametrize("composite, mode", [("attnlrp", "attnlrp"), ("cp_lrp", "cp")])
def test_a_no_grad_block_with_a_written_out_softmax_is_explained_as_written_plainly(composite, mode):
    """Was "no LRP rule for 'wrap_with_set_grad_enabled'", then for 'logsumexp'. The relevance equals the same module
    written plainly (no no_grad, torch.softmax) to rounding, and the oracle's on the plain one (it reads exp and
    logsumexp as their plain gradient, the softmax's: AttnLRP's rule written as a gradient)."""
    torch.manual_seed(4)
    model = NoGradAttention().double().eval()
    plain = NoGradAttention(plain=True).double().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(3, 5, 4, dtype=D64)
    result = explain(model, x, composite, target=2, params=EXACT)
    _close(result.outputs, plain(x).detach(), rtol=1e-12)
    _close(result.relevance, explain(plain, x, composite, target=2, params=EXACT).relevance, rtol=1e-12)
    _close(result.relevance, modified_gradient_relevance(plain, x, 2, mode), rtol=1e-9)


class RandomHashing(nn.Module):
    """Reformer's LSH attention on a text longer than a chunk: buckets from a random rotation drawn on every call."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):  # (batch, tokens, 4)
        h = self.lin(x)
        buckets = (h @ torch.randn(4, 2, dtype=h.dtype)).argmax(-1)  # (batch, tokens)
        order = buckets.argsort(dim=-1, stable=True)
        return self.head(torch.gather(h, 1, order[..., None].expand_as(h))[:, :3].mean(1))


def test_a_forward_that_draws_random_numbers_is_refused_by_name():
    """Such a model computes another function on every call; a graph with one draw folded in would explain none of
    them. Was explained silently (one draw folded in at capture), then refused by the capture check as a bug."""
    model = RandomHashing().double().eval()
    with pytest.raises(UnsupportedOpError, match="'randn'") as refused:
        explain(model, torch.randn(2, 6, 4, dtype=D64), "attnlrp")
    assert "random numbers" in refused.value.hint and "lsh_attn_chunk_length" in refused.value.hint


# --------------------------------------------------------------------------- transformers' families end to end

transformers = pytest.importorskip("transformers")

from test_more_ops import SMALL, _Logits  # noqa: E402  (the same tiny sizes and wrapper)


def _make(name: str, config: str, last: bool = False, key: str = "input_ids", **kwargs):
    """The model in eager attention: with SDPA, Doge's eager forward drops its causal mask (transformers skips the
    mask for SDPA's is_causal, which Doge's dynamic mask then turns off), and export keeps it."""

    def build():
        settings = getattr(transformers, config)(**({} if last else {"num_labels": 3}), **kwargs)
        settings._attn_implementation = "eager"
        return _Logits(getattr(transformers, name)(settings), key=key, last=last)

    return build


@contextlib.contextmanager
def _detached(model: nn.Module, parts: dict[str, tuple[str, ...]]):
    """The outputs of the submodules named (module type -> attribute names) detached: the oracle's form of held."""
    handles = [
        getattr(module, name).register_forward_hook(lambda _m, _a, out: out.detach())
        for module in model.modules()
        if type(module).__name__ in parts
        for name in parts[type(module).__name__]
    ]
    assert handles
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _replaced(name: str, function):
    """``torch.<name>`` replaced while the oracle captures the model (restored whatever happens)."""
    own = getattr(torch, name)
    setattr(torch, name, function)
    try:
        yield
    finally:
        setattr(torch, name, own)


#: what the oracle cannot read as written, given as the same function it can: RWKV's torch.square(relu(k)) as x * x
#: (AttnLRP's product rule: the identity; square has no rule there), Mega's addcmul as x + a * b, Reformer's no_grad
#: blocks as no-ops (its own capture of one gives no gradient at all)
SQUARE, ADDCMUL = ("square", lambda x: x * x), ("addcmul", lambda x, a, b, value=1: x + value * (a * b))
NO_GRAD = ("no_grad", contextlib.nullcontext)

#: family -> (the model, its input, what stopped it before, parts the oracle detaches (held: module type ->
#: submodules), torch functions the oracle reads in another form, how far the graph's logits may be from the model's)
FAMILIES = {
    "doge": (_make("DogeForSequenceClassification", "DogeConfig", num_key_value_heads=1, pad_token_id=0, **SMALL), "ids", "exp",
             {"DogeAttention": ("dt_proj",)}, (), 1e-10),
    "yoso": (_make("YosoForSequenceClassification", "YosoConfig", **SMALL), "ids", "rsub", {"YosoSelfAttention": ("query", "key")}, (), 1e-10),
    "rwkv": (_make("RwkvForCausalLM", "RwkvConfig", last=True, vocab_size=40, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16,
                   intermediate_size=24, context_length=32), "ids", "maximum", {"RwkvSelfAttention": ("key",)}, (SQUARE,), 1e-10),
    "mega": (_make("MegaForSequenceClassification", "MegaConfig", vocab_size=40, hidden_size=16, num_hidden_layers=1, intermediate_size=24,
                   ema_projection_size=4, shared_representation_size=8, nffn_hidden_size=24, max_positions=32, pad_token_id=0), "ids",
             "fft_rfft", {}, (ADDCMUL,), 1e-6),  # its EMA runs in float32
    "reformer": (_make("ReformerForSequenceClassification", "ReformerConfig", vocab_size=40, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, attention_head_size=8, feed_forward_size=24, attn_layers=["local", "lsh"],
                       axial_pos_shape=(4, 8), axial_pos_embds_dim=(8, 8), max_position_embeddings=32, is_decoder=False, pad_token_id=0),
                 "ids8", "wrap_with_set_grad_enabled", {}, (NO_GRAD,), 1e-10),  # 8 tokens: one chunk, no hashing
    "mobilevit": (_make("MobileViTForImageClassification", "MobileViTConfig", key="pixel_values", image_size=32, patch_size=8,
                        hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32], num_attention_heads=2, expand_ratio=2.0,
                        mlp_ratio=2.0), "pixels", "upsample_bilinear2d", {}, (), 1e-10),
}
INPUTS = {"ids": lambda: torch.randint(3, 40, (2, 6)), "ids8": lambda: torch.randint(3, 40, (2, 8)),
          "pixels": lambda: torch.randn(2, 3, 32, 32, dtype=D64)}
#: heavy (30-60 s here): their ops have fast checks above (the WKV alone, interpolation on a tiny net)
SLOW = {"rwkv", "mobilevit"}


def _scaled_weights(model: nn.Module) -> None:
    """MobileViT's initialisation (std 0.02 through 20 layers) gives logits of 1e-53: weights of a usable size."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim > 1:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
            elif name.endswith("weight"):
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype))


@pytest.mark.parametrize("family", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in sorted(FAMILIES)])
def test_transformers_family_explains_as_the_oracle(family):
    """A tiny random config in float64: the captured graph's logits equal the model's, finite relevance, and AttnLRP
    equal to the oracle (to 1e-6, as tests/test_more_ops.py) on the same model with its held parts detached."""
    make, kind, _before, parts, replaced, gap = FAMILIES[family]
    torch.manual_seed(12)
    model = make().double().eval()
    if family == "mobilevit":
        _scaled_weights(model)
    x = INPUTS[kind]()
    with torch.no_grad():
        own = model(x)
    result = explain(model, x, "attnlrp", target=1, params=EXACT)
    assert torch.isfinite(result.relevance).all()
    assert (result.outputs - own).abs().max() <= gap * own.abs().max()
    with contextlib.ExitStack() as stack:
        if parts:
            stack.enter_context(_detached(model, parts))
        for name, function in replaced:
            stack.enter_context(_replaced(name, function))
        reference = embedding_relevance(model, x, 1, "attnlrp") if kind.startswith("ids") else modified_gradient_relevance(model, x, 1, "attnlrp")
    _close(result.relevance, reference, rtol=1e-6)


class Wkv(nn.Module):
    """RWKV's time mixing on its own: keys and values from bias-free linear maps, transformers' own WKV loop (its
    running maximum included), a bias-free head."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.key, self.value, self.head = (nn.Linear(3, width, bias=False), nn.Linear(3, width, bias=False), nn.Linear(width, 2, bias=False))
        self.time_decay, self.time_first = nn.Parameter(torch.randn(width)), nn.Parameter(torch.randn(width))

    def forward(self, x):  # (batch, tokens, 3)
        from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

        wkv, _ = rwkv_linear_attention_cpu(self.time_decay, self.time_first, self.key(x), F.relu(self.value(x)))
        return self.head(wkv.mean(1))


def test_the_wkv_with_its_keys_held_conserves_and_is_gradient_times_input():
    """out_t = sum_s w_ts v_s / sum_s w_ts: with the weights held (the keys make only them) a linear map of the values,
    without bias; its maximum divides numerator and denominator alike and cancels. LRP-0 then conserves the logit
    exactly and equals gradient x input of the same model with its keys detached."""
    torch.manual_seed(3)
    model = Wkv().double().eval()
    x = torch.randn(3, 5, 3, dtype=D64)
    result = explain(model, x, "lrp_0", target=0)
    _close(result.outputs, model(x).detach(), rtol=1e-12)
    with _detached(model, {"Wkv": ("key",)}):
        expected = _gradient_times_input(model, x, 0)
    _close(result.relevance, expected)
    _close(result.relevance.sum((1, 2)), model(x)[:, 0].detach())

