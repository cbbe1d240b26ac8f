"""Mamba hybrids (Jamba, Zamba2, Bamba, Falcon-H1) explained with MambaLRP equal an independent oracle (issue 27).

The composite is ``mambalrp`` (configs/mambalrp.yaml), the one lrpcli picks for such Hugging Face folders
(sources/hf.is_state_space). The oracle is the eager transformers model with every value MambaLRP holds detached,
written here as hooks and patched functions (none of lrpcli's code), and relevance = input x modified gradient at
the token embeddings (summed over the hidden dimension):

- ``selection``: the selective SSM's Δ, B and C detached, so Ā = exp(ΔA) and B̄ too (MambaLRP, Rezaei Jafari et al.,
  NeurIPS 2024, Sec. 4; the authors' ``mamba_lrp/model/mamba_huggingface.py`` detaches ``discrete_A``,
  ``discrete_B`` and ``C``): Mamba-1 mixers' ``x_proj`` output; Mamba-2 mixers' Δ (``in_proj``'s last
  ``num_heads`` features) and B, C (the convolution's output past ``intermediate_size``), as tests/test_mamba.py;
- ``gate``: the products ``y * act(z)`` of the mixers and of the gated MLPs split half/half (MambaLRP's
  ``y/2 + (y/2).detach()``; AttnLRP Prop. 3.2), as the gradient halved at ``out_proj`` / ``down_proj``'s input
  (the RMS norm between a Mamba-2 gate and ``out_proj`` is linear once its normaliser is held);
- ``norm``: RMSNorm's normaliser ``rsqrt(mean(x²) + eps)`` detached (AttnLRP Prop. 3.4; tests/gradient_oracle.py
  detaches rsqrt of an activation likewise; in these four models ``torch.rsqrt`` is called by the RMS norms only);
- ``activation``: SiLU/GELU pass relevance unchanged (the identity rule, ``x * (f(x) / x).detach()``);
- ``attention``: AttnLRP (Achtibat et al., ICML 2024, Props. 3.1-3.3; mambalrp's ``taylor`` softmax and
  ``uniform`` products): softmax by its plain gradient, both products of two activations halved, so q and k get
  a quarter of the gradient through ``scaled_dot_product_attention`` and v a half (as tests/gradient_oracle.py).

Each test also removes the oracle's holds one at a time: lrpcli's relevance must then differ by far more than
the tolerance (the test can fail, and every hold is seen).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

from gradient_oracle import identity_rule, scale_grad

transformers = pytest.importorskip("transformers")

from test_hybrid_masks import LastToken, _jamba, _moved, _zamba2  # noqa: E402

TARGET = 1
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
HOLDS = frozenset({"selection", "gate", "norm", "activation", "attention"})
#: transformers computes the RMS norms and the Mamba-2 scans in float32 inside these float64 models: measured
#: 3e-8 (Jamba) to 7.3e-7 (Bamba) of max|R|; with those casts made float64 (an experiment), 7e-11 at most
TOLERANCE = 2e-6


def _bamba():
    config = transformers.BambaConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4,
        mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=4, pad_token_id=0,
    )
    return transformers.BambaForCausalLM(config)


def _falcon_h1(mamba_rms_norm: bool = False):
    """Falcon-H1 runs attention and a Mamba-2 mixer side by side in every layer: one layer holds both. Its µP
    multipliers off 1 (released checkpoints have them); ``mamba_rms_norm`` normalises the scan before its gate."""
    config = transformers.FalconH1Config(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4,
        mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=4, pad_token_id=0, mamba_rms_norm=mamba_rms_norm,
        embedding_multiplier=5.0, lm_head_multiplier=0.05, key_multiplier=0.4, attention_out_multiplier=0.9,
        ssm_in_multiplier=1.25, ssm_out_multiplier=1.5, mlp_multipliers=[0.9, 0.4], ssm_multipliers=[0.5, 1.5, 2.0, 2.0, 1.5],
    )
    return transformers.FalconH1ForCausalLM(config)


FAMILIES = {
    "jamba": _jamba, "zamba2": _zamba2, "bamba": _bamba, "falcon_h1": _falcon_h1,
    "falcon_h1_rms_norm": lambda: _falcon_h1(mamba_rms_norm=True),
}


@contextlib.contextmanager
def _patched(owner, name: str, replacement) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _held_tail(keep: int):
    """A tensor's features past ``keep`` (negative: its last ``-keep``) detached."""
    return lambda out: torch.cat([out[..., :keep], out[..., keep:].detach()], dim=-1)


def mambalrp_oracle(model: torch.nn.Module, ids: torch.Tensor, target: int, holds=HOLDS) -> torch.Tensor:
    """MambaLRP (with AttnLRP's attention) as a modified gradient times input on the eager model: per-token
    relevance (batch, tokens) of the next-token logit ``target``, with the values named in ``holds`` held. Each
    hold asked for must have applied somewhere in the forward (else the oracle would silently compute another
    rule): an AssertionError says which did not."""
    sinks: list[torch.Tensor] = []
    applied: set[str] = set()
    hooks = []

    def sink(_module, _args, out):
        held = out.detach().requires_grad_(True)
        sinks.append(held)
        return held

    def marked(hold: str, function):
        def apply(*args, **kwargs):
            applied.add(hold)
            return function(*args, **kwargs)

        return apply

    def identity(function):  # f(x) with the identity rule's gradient
        return lambda x, *args, **kwargs: identity_rule(x, function(x.detach(), *args, **kwargs))

    halved = marked("gate", lambda _module, args: (scale_grad(args[0], 0.5), *args[1:]))
    hooks.append(model.get_input_embeddings().register_forward_hook(sink))
    for module in model.modules():  # first, so that a hold on an activation's output comes after its identity rule
        if "activation" in holds and type(module).__module__.startswith(("transformers.activations", "torch.nn.modules.activation")):
            hooks.append(module.register_forward_hook(marked("activation", lambda _m, args, out: identity_rule(args[0], out))))
    for module in model.modules():
        if "selection" in holds and hasattr(module, "A_log"):
            if hasattr(module, "x_proj"):  # Mamba-1 (Jamba): Δ, B, C out of x_proj
                hooks.append(module.x_proj.register_forward_hook(marked("selection", lambda _m, _a, out: out.detach())))
            else:  # Mamba-2: Δ the last num_heads features of in_proj, B and C the conv's (after its act) past d_inner
                dt, bc = _held_tail(-module.num_heads), _held_tail(module.intermediate_size)
                hooks.append(module.in_proj.register_forward_hook(marked("selection", lambda _m, _a, out, dt=dt: dt(out))))
                hooks.append(module.act.register_forward_hook(marked("selection", lambda _m, _a, out, bc=bc: bc(out))))
        if "gate" in holds and hasattr(module, "A_log"):  # y * act(z) (or its RMS norm) is out_proj's input
            hooks.append(module.out_proj.register_forward_pre_hook(halved))
        if "gate" in holds and hasattr(module, "act_fn") and hasattr(module, "down_proj"):  # gated MLPs
            hooks.append(module.down_proj.register_forward_pre_hook(halved))

    sdpa, rsqrt = F.scaled_dot_product_attention, torch.rsqrt

    def attention(q, k, v, *args, **kwargs):
        return sdpa(scale_grad(q, 0.25), scale_grad(k, 0.25), scale_grad(v, 0.5), *args, **kwargs)

    with contextlib.ExitStack() as stack:
        if "activation" in holds:  # the functional calls too (gated norms, Falcon-H1's y * silu(z))
            stack.enter_context(_patched(F, "silu", marked("activation", identity(F.silu))))
            stack.enter_context(_patched(F, "gelu", marked("activation", identity(F.gelu))))
        if "norm" in holds:
            stack.enter_context(_patched(torch, "rsqrt", marked("norm", lambda x: rsqrt(x).detach())))
        if "attention" in holds:
            stack.enter_context(_patched(F, "scaled_dot_product_attention", marked("attention", attention)))
        try:
            with torch.enable_grad():
                logits = model(input_ids=ids, use_cache=False).logits[:, -1]
                (grad,) = torch.autograd.grad(logits[:, target].sum(), sinks[0])
        finally:
            for hook in hooks:
                hook.remove()
    assert applied == set(holds), f"the oracle's holds {sorted(set(holds) - applied)} found nothing to hold"
    return (sinks[0] * grad).sum(-1).detach()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hybrid_equals_the_mambalrp_oracle(family):
    from lrpcli import explain
    from lrpcli.sources.hf import is_state_space

    model = _moved(FAMILIES[family])
    assert is_state_space(model.config.to_dict())  # a folder of it gets mambalrp
    ids = torch.randint(1, 20, (2, 7), generator=torch.Generator().manual_seed(0))
    ours = explain(LastToken(model, use_cache=False), ids, "mambalrp", target=TARGET, params=EXACT).relevance
    expected = mambalrp_oracle(model, ids, TARGET)
    scale = expected.abs().max()
    assert torch.isfinite(ours).all() and scale > 1e-3
    gap = (ours - expected).abs().max()
    assert gap <= TOLERANCE * scale, f"{family}: {gap:.3g} of max|R| {scale:.3g}\n{ours}\n{expected}"
    for hold in sorted(HOLDS):  # the oracle without any one of its holds is far off: the test can fail, on each
        other = mambalrp_oracle(model, ids, TARGET, holds=HOLDS - {hold})
        assert (ours - other).abs().max() > 100 * TOLERANCE * scale, f"{family}: the oracle without '{hold}' is not told apart"
