"""Parity with LXT 2.1 (AttnLRP's reference implementation) on tiny random BERT and GPT-2 classifiers.

LXT's idiom: a module fed ``inputs_embeds`` returns the logits; relevance is ``emb * emb.grad``
after ``logits.backward(onehot)`` -- in that gradient-times-input form the relevance entering at
the output is the target logit, lrpcli's default ``init="value"`` (LXT's documented
``logit.backward(logit)`` would multiply every relevance by the logit once more). lrpcli explains
the same embeddings with ``explain(model, embeddings, composite, params=EXACT)``: LXT's efficient
mode is the epsilon -> 0 limit of the epsilon rules (plain gradients through linear layers), so the
built-in composites run with epsilon and stabiliser 0 here; their default epsilon of 1e-6 alone
moves the relevance by about 4e-4 of max |R| on these models, more than the tolerance.

Measured (float64): max |lrpcli - LXT| / max |LXT| = 3.5e-9 (BERT attnLRP), 1.1e-9 (GPT-2 attnLRP),
4.3e-9 (GPT-2 cp_LRP), all from LXT's identity-rule stabiliser ``out / (x + 1e-10)``; the other
mode misses by 0.18 (BERT), 0.99 and 2.6 (GPT-2) of max |R|.

LXT patches torch / transformers classes process-wide, so it runs in processes of its own
(``tests/lxt_support.py``) on a model built from the same config and state dict as here; its
logits are checked equal to ours first. LXT 2.1 has no CP-LRP preset for BERT, so BERT is
compared under AttnLRP only, GPT-2 under both.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lxt_support as lx

D64 = torch.float64
RTOL = 1e-5  # of max |R_LXT|
SHARP = 1e-3  # the other mode differs by more than this, relative
TARGET = [1, 2]
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}  # LXT's efficient mode is the epsilon -> 0 limit (plain gradients through linears)

#: (model, lrpcli composite, LXT preset) that must agree
PAIRS = [("bert", "attnlrp", "attnLRP"), ("gpt2", "attnlrp", "attnLRP"), ("gpt2", "cp_lrp", "cp_LRP")]
#: ... and those that must not (lrpcli's other composite against the same LXT relevance)
CROSSED = [("bert", "cp_lrp", "attnLRP"), ("gpt2", "cp_lrp", "attnLRP"), ("gpt2", "attnlrp", "cp_LRP")]


class EmbedsToLogits(nn.Module):
    """LXT's idiom as a module: the embeddings in, the logits out; the attention mask a constant."""

    def __init__(self, model: nn.Module, name: str, attention_mask: torch.Tensor | None):
        super().__init__()
        self.model, self.name = model, name
        self.register_buffer("attention_mask", attention_mask, persistent=False)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=embeds, **lx.forward_kwargs(self.name, self.attention_mask)).logits


def _perturbed(model: nn.Module, name: str) -> nn.Module:
    """Every parameter moved by 0.1 N(0, 1) (biases and LayerNorm shifts non-zero), Q and K weights x10 (peaked attention)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        for module_name, module in model.named_modules():
            if name == "bert" and module_name.endswith(("attention.self.query", "attention.self.key")):
                module.weight.mul_(10.0)
            if name == "gpt2" and module_name.endswith("attn.c_attn"):  # Conv1D (in, 3 * out): Q, K, V columns
                module.weight[:, : 2 * model.config.n_embd].mul_(10.0)
    return model


def _case(name: str):
    model = _perturbed(lx.build_model(name, lx.model_config(name)), name)
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 50, (2, 8), generator=generator)
    if name == "bert":  # the second row padded at 6-7
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        ids[1, 6:] = 0
    else:  # GPT-2: causal, unpadded, the mask built by the model
        mask = None
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids).detach()
    return model, embeds, mask


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (wrapped model, embeddings, {preset: LXT relevance}, {preset: LXT logits}, {composite: ours}).

    Two LXT processes (BERT and GPT-2 under attnLRP; GPT-2 under cp_LRP, which patches GPT-2's
    attention differently) run while lrpcli explains the same inputs here.
    """
    pytest.importorskip("transformers")
    if not lx.lxt_installed():
        pytest.skip(lx.SKIP_REASON)
    from lrpcli import explain

    built, folders = {}, {}
    for name in ("bert", "gpt2"):
        model, embeds, mask = _case(name)
        folders[name] = lx.save_case(tmp_path_factory.mktemp(name), name, model, embeds, mask, TARGET)
        built[name] = (EmbedsToLogits(model, name, mask).eval(), embeds, {}, {}, {})
    groups = [[(folders["bert"], "attnLRP"), (folders["gpt2"], "attnLRP")], [(folders["gpt2"], "cp_LRP")]]
    processes = [lx.start(jobs) for jobs in groups]
    try:
        for name, (model, embeds, _, _, ours) in built.items():
            for composite in ("attnlrp", "cp_lrp"):
                result = explain(model, embeds, composite, target=torch.tensor(TARGET), params=EXACT)
                assert result.relevance.shape == embeds.shape and result.relevance.dtype == D64
                ours[composite] = result.relevance.detach()
    except BaseException:
        for process in processes:
            process.kill()
            process.communicate()
        raise
    for jobs, process in zip(groups, processes):
        for (folder, preset), (relevance, logits) in zip(jobs, lx.finish(process, jobs)):
            name = "bert" if folder == folders["bert"] else "gpt2"
            built[name][2][preset] = torch.from_numpy(relevance)
            built[name][3][preset] = torch.from_numpy(logits)
    return built


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_both_processes_build_the_same_model(cases, name):
    model, embeds, _, logits, _ = cases[name]
    with torch.no_grad():
        ours = model(embeds)
    for preset, theirs in logits.items():
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12, msg=f"{name}/{preset}: LXT's patched forward differs")


@pytest.mark.parametrize("name, composite, preset", PAIRS)
def test_relevance_equals_lxt(cases, name, composite, preset):
    theirs = cases[name][2][preset]
    ours = cases[name][4][composite]
    scale = theirs.abs().max()
    assert scale > 0 and torch.isfinite(ours).all()
    diff = (ours - theirs).abs().max()
    assert diff <= RTOL * scale, f"{name} {composite} vs LXT {preset}: max diff {diff:.3g} of max |R| {scale:.3g}"
    # per token too (the README's relevance per token is this sum over the hidden dimension)
    assert (ours.sum(-1) - theirs.sum(-1)).abs().max() <= RTOL * theirs.sum(-1).abs().max()


@pytest.mark.parametrize("name, composite, preset", CROSSED)
def test_the_other_mode_differs_from_lxt(cases, name, composite, preset):
    """The comparison above is sharp: lrpcli's other composite misses LXT's relevance by far more than RTOL."""
    theirs = cases[name][2][preset]
    diff = (cases[name][4][composite] - theirs).abs().max()
    assert diff > SHARP * theirs.abs().max(), f"{name} {composite} vs LXT {preset}: only {diff:.3g} of {theirs.abs().max():.3g}"
