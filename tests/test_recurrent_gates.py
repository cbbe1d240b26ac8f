"""Zamba's Mamba mixers and RecurrentGemma's RG-LRU explained with their input-dependent gates held (issue 27, item 6).

Both compute a linear recurrence whose coefficients are made from the input through ``exp``: Zamba's mixer is
Mamba's per "mamba head" (Δ, B and C from each head's x_proj), the RG-LRU (Griffin, De et al. 2024) gates its input
by ``sigmoid(W_x x)`` and decays its state by ``a = exp(-8 sigmoid(W_a x) softplus(Λ))``, the input normalised by
``sqrt(1 - a^2)``. lrpcli holds those values (MambaLRP, Rezaei Jafari et al., NeurIPS 2024: Δ, Ā, B, C detached;
AttnLRP, Achtibat et al., ICML 2024: a gate's signal takes the relevance), so relevance flows through x and the
state only.

The oracle is the eager model, transformers' own code, with those values detached and the other rules of the
composite lrpcli picks (mambalrp for Zamba, a state-space config; attnlrp for RecurrentGemma) as a modified
gradient (tests/test_mamba.py, tests/gradient_oracle.py): RMS norms' normaliser detached, GELU/SiLU/tanh the
identity rule, each product of two activations (gates, attention's two matmuls) half the gradient to each factor,
softmax the plain gradient (AttnLRP Prop. 3.1); relevance = gradient x input at the token embeddings, epsilon 0.
The detaching is done by a TorchFunctionMode while the gated module runs (its own forward, its own loop over the
tokens): Zamba's ``torch.split`` of its x_proj output, the RG-LRU's two ``torch.sigmoid`` gates. In eager mode the
RG-LRU takes its ``sqrt(1 - a^2)`` branch, which it skips while traced: the captured graph must take it too.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode

from gradient_oracle import identity_rule, scale_grad

transformers = pytest.importorskip("transformers")

EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
TARGET = 3
#: 18 tokens: two chunks of the chunked scan (CHUNK = 16), the second carrying the first's state
IDS = torch.tensor([[5, 1, 7, 3, 9, 2, 4, 8, 6, 1, 12, 3, 7, 7, 2, 9, 5, 11], [2, 8, 6, 6, 1, 3, 11, 4, 4, 9, 1, 2, 13, 5, 6, 3, 8, 1]])


def _moved(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter off its initial value (biases, D, norms' weights not 0 or 1), in float64, eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval().double()


def tiny_zamba() -> torch.nn.Module:
    """Three layers (mamba, hybrid, mamba), two mamba heads of 8 channels, state 4, eager attention."""
    torch.manual_seed(0)
    config = transformers.ZambaConfig(
        vocab_size=20, hidden_size=8, attention_hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
        attention_head_dim=8, intermediate_size=16, num_hidden_layers=3, attn_layer_period=2, attn_layer_offset=1,
        n_mamba_heads=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=2, use_mamba_kernels=False,
        pad_token_id=0, attn_implementation="eager",
    )
    model = _moved(transformers.ZambaForCausalLM(config))
    with torch.no_grad():  # x_proj starts at zero, the projections near it: the mixers' share (and what holding
        for module in model.modules():  # Δ, B and C changes) made as large as the rest's
            if type(module).__name__ == "ZambaMambaMixer":
                module.x_proj_weight.normal_()
                module.in_proj.weight.normal_(0, 0.5)
                module.out_proj.weight.normal_(0, 0.5)
    return model


def tiny_recurrent_gemma() -> torch.nn.Module:
    """Two layers (an RG-LRU block, a local-attention block), width 8, two heads."""
    torch.manual_seed(0)
    config = transformers.RecurrentGemmaConfig(
        vocab_size=20, hidden_size=8, intermediate_size=24, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
        num_hidden_layers=2, block_types=["recurrent", "attention"], lru_width=8, attention_window_size=64,
        conv1d_width=3, pad_token_id=0,
    )
    model = _moved(transformers.RecurrentGemmaForCausalLM(config))
    with torch.no_grad():  # gates that vary with the input (so that holding them matters)
        for module in model.modules():
            if type(module).__name__ == "RecurrentGemmaRglru":
                module.input_gate_weight.normal_(0, 2.0)
                module.recurrent_gate_weight.normal_(0, 2.0)
    return model


class LastToken(torch.nn.Module):
    """The next-token logits after the last position, the model called as a user would (its default cache)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits[:, -1]


# --------------------------------------------------------------------------- the oracle


def _detached(_args, out):
    return tuple(t.detach() for t in out) if isinstance(out, (tuple, list)) else out.detach()


def _halved(args, out):  # a product of two activations: half the gradient to each factor (uniform)
    return scale_grad(out, 0.5) if all(isinstance(a, torch.Tensor) and a.requires_grad for a in args[:2]) else out


def _identity(args, out):
    return identity_rule(args[0], out)


def _attention(args, out, attn_mask=None, scale=None, **_ignored):
    """torch's scaled_dot_product_attention written out: softmax(q k^T * scale + mask) v, both products halved."""
    q, k, v = args[:3]
    scores = scale_grad(q @ k.transpose(-1, -2), 0.5) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores + attn_mask
    result = scale_grad(scores.softmax(-1) @ v, 0.5)
    torch.testing.assert_close(result, out)
    return result


class _Rules(TorchFunctionMode):
    """While active, the output of each torch function in ``rules`` passes ``rules[function](args, out)``."""

    def __init__(self, rules: dict):
        super().__init__()
        self.rules = rules

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = self.rules.get(func)
        if rule is None:
            return out
        return _attention(args, out, **(kwargs or {})) if rule is _attention else rule(args, out)


@contextlib.contextmanager
def _within(module: torch.nn.Module, rules: dict):
    """``module``'s own forward, run under :class:`_Rules`."""
    original = module.forward

    def forward(*args, **kwargs):
        with _Rules(rules):
            return original(*args, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward


def oracle(model: torch.nn.Module, ids: torch.Tensor, target: int, hold: bool = True, **inputs) -> torch.Tensor:
    """Per-token relevance (batch, tokens) of the next-token logit ``target`` as a modified gradient times input on
    the eager model (module docstring); ``hold=False`` leaves the gates live (the plain gradient through them)."""
    sinks: list[torch.Tensor] = []

    def embedding_sink(_module, _args, out):
        sink = out.detach().requires_grad_(True)
        sinks.append(sink)
        return sink

    def rms_norm(module, args, _out):
        x = args[0]
        xf = x.to(torch.float32)
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        normalised = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()
        if hasattr(module, "variance_epsilon"):  # Zamba's: weight * x_hat
            return module.weight * normalised.to(x.dtype)
        return (normalised * (1.0 + module.weight.float())).type_as(x)  # RecurrentGemma's: x_hat * (1 + weight)

    hooks = [model.model.embed_tokens.register_forward_hook(embedding_sink)]
    for module in model.modules():  # transformers' RG-LRU reads the state its last forward left (times 0 at position
        if hasattr(module, "recurrent_states"):  # 0), even without a cache: one left under inference mode fails autograd
            module.recurrent_states = None
    scopes = contextlib.ExitStack()
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            hooks.append(module.register_forward_hook(rms_norm))
        for act in ("act", "act_fn"):  # SiLU, GELU: the identity rule
            if isinstance(getattr(module, act, None), torch.nn.Module):
                hooks.append(getattr(module, act).register_forward_hook(lambda _m, args, out: identity_rule(args[0], out)))
        for projection in ("out_proj", "linear_out", "down_proj"):  # y * act(z), x_branch * y_branch, act(gate) * up
            if isinstance(getattr(module, projection, None), torch.nn.Linear) and not name.endswith("Attention"):
                hooks.append(getattr(module, projection).register_forward_pre_hook(lambda _m, args: (scale_grad(args[0], 0.5),)))
        if hold and name == "ZambaMambaMixer":
            scopes.enter_context(_within(module, {torch.split: _detached}))  # Δ, B, C (so Ā, B̄)
        elif hold and name == "RecurrentGemmaRglru":
            scopes.enter_context(_within(module, {torch.sigmoid: _detached}))  # the input and recurrence gates
        elif name == "ZambaAttention":
            scopes.enter_context(_within(module, {torch.matmul: _halved}))
        elif name == "RecurrentGemmaSdpaAttention":
            scopes.enter_context(_within(module, {torch.nn.functional.scaled_dot_product_attention: _attention}))
    scopes.enter_context(_within(model, {torch.nn.functional.tanh: _identity, torch.Tensor.tanh: _identity}))  # the soft cap
    try:
        with scopes, torch.enable_grad():
            logits = model(input_ids=ids, use_cache=False, **inputs).logits[:, -1]
            (grad,) = torch.autograd.grad(logits[:, target].sum(), sinks[0])
    finally:
        for hook in hooks:
            hook.remove()
    return (sinks[0] * grad).sum(-1).detach()


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def zamba():
    """One model and wrapper for the module, so that its captured graph is reused (capturing takes seconds)."""
    model = tiny_zamba()
    return model, LastToken(model)


@pytest.fixture(scope="module")
def recurrent_gemma():
    model = tiny_recurrent_gemma()
    return model, LastToken(model)


@pytest.mark.parametrize("family, composite", [("zamba", "mambalrp"), ("recurrent_gemma", "attnlrp")])
def test_gated_recurrences_equal_the_oracle(family, composite, request):
    """The captured graph's logits are the model's (the RG-LRU's eager sqrt(1 - a^2) branch taken), the relevance
    is finite and equals the oracle's with the gates held; with them live the oracle differs, so the tolerance
    tells holding from not holding."""
    from lrpcli import explain
    from lrpcli.sources.hf import is_state_space, is_transformer  # the composite a folder of this config gets

    model, wrapped = request.getfixturevalue(family)
    config = model.config.to_dict()
    assert composite == ("mambalrp" if is_state_space(config) else "attnlrp" if is_transformer(config) else None)
    own = wrapped(IDS).detach()
    result = explain(wrapped, IDS, composite, target=TARGET, params=EXACT)
    assert (result.outputs - own).abs().max() <= 1e-6 * own.abs().max()
    expected = oracle(model, IDS, TARGET)
    assert torch.isfinite(result.relevance).all() and expected.abs().max() > 1e-3
    # measured: Zamba 4e-8, RecurrentGemma 3e-16 (Zamba's attention softmax runs in float32)
    assert (result.relevance - expected).abs().max() <= 1e-6 * expected.abs().max(), (result.relevance, expected)
    assert (oracle(model, IDS, TARGET, hold=False) - expected).abs().max() > 1e-2 * expected.abs().max()


def test_the_gates_are_held_and_the_graph_says_so(zamba, recurrent_gemma):
    """Zamba: the exps (Ā, the chunked decays) carry no relevance, the mixers are named held and chunked (2 chunks
    per mixer, not a node per token). RecurrentGemma: the gates' sigmoids get no relevance, the decay's exp and
    sqrt(1 - a^2) are computed from held values alone ("meta"); the note names the RG-LRU."""
    from lrpcli import Explainer

    graph, _ = Explainer(zamba[1], "mambalrp").prepare(IDS)
    assert [node for node in graph.nodes if node.op == "exp"] and not graph.unsupported()
    assert all(node.kind == "meta" for node in graph.nodes if node.op == "exp")
    assert any("MambaLRP" in note and "layers.0.mamba" in note and "layers.2.mamba" in note for note in graph.notes)
    assert any("16 tokens at a time" in note for note in graph.notes)
    # three mixers (the hybrid layer has one too), two chunks each: not a node per token
    assert sum(node.op == "cumsum" and node.module.endswith("mamba") for node in graph.nodes) == 3 * 2

    graph, _ = Explainer(recurrent_gemma[1], "attnlrp").prepare(IDS)
    lru = [node for node in graph.nodes if node.module.endswith("rg_lru")]
    relevant = graph.relevant()
    sigmoids = [node for node in lru if node.op == "sigmoid"]
    assert len(sigmoids) == 2 and not any(node.name in relevant for node in sigmoids)
    for op in ("exp", "sqrt"):
        found = [node for node in lru if node.op == op]
        assert found and all(node.kind == "meta" for node in found), op
    assert any("RG-LRU" in note and "layers.0.temporal_block.rg_lru" in note for note in graph.notes)


def test_long_texts_and_packed_documents_scan_a_chunk_at_a_time():
    """A float32 RecurrentGemma over 40 tokens holding two documents (positions restart at 0 at token 23: the
    RG-LRU's reset): its scan is captured 16 tokens at a time (3 chunks, the last short), not a node per token; the
    graph's logits are the model's, the relevance the oracle's (transformers' own loop). float64 models keep the
    loop (the other tests): the chunked form rounds differently from it at float32's precision."""
    from lrpcli import Explainer, explain

    model = tiny_recurrent_gemma().float()
    ids = torch.randint(1, 20, (2, 40), generator=torch.Generator().manual_seed(1))
    positions = torch.cat([torch.arange(23), torch.arange(17)]).expand(2, -1)

    class Documents(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, position_ids=positions).logits[:, -1]

    wrapped = Documents()
    result = explain(wrapped, ids, "attnlrp", target=TARGET, params=EXACT)
    own = wrapped(ids).detach()
    assert (result.outputs - own).abs().max() <= 1e-5 * own.abs().max()  # measured 1.8e-7
    expected = oracle(model, ids, TARGET, position_ids=positions)
    assert torch.isfinite(result.relevance).all()
    assert (result.relevance - expected).abs().max() <= 1e-4 * expected.abs().max(), (result.relevance, expected)
    graph, _ = Explainer(wrapped, "attnlrp").prepare(ids)
    # one per chunk (the documents' segment count, a cumsum of the constant positions, is a constant of the graph)
    assert sum(node.op == "cumsum" and node.module.endswith("rg_lru") for node in graph.nodes) == 3


def test_a_traced_branch_is_refused_not_explained(monkeypatch):
    """The trap: traced, transformers' own RG-LRU forward skips sqrt(1 - a^2) (its ``is_torchdynamo_compiling()``
    branch). An RG-LRU captured with that forward gives other logits, and lrpcli refuses it rather than explain
    another function."""
    from lrpcli import Explainer
    from lrpcli.engine import state_space
    from lrpcli.errors import ModelError

    def traced(lru, activations, position_ids):
        return type(lru).forward(lru, activations, position_ids)

    monkeypatch.setattr(state_space, "held_rglru_forward", traced)
    with pytest.raises(ModelError, match="RG-LRUs .* gates held"):
        Explainer(LastToken(tiny_recurrent_gemma()), "attnlrp").prepare(IDS[:, :6])


def test_a_padded_zamba_explains_each_text_as_alone(zamba):
    """Texts padded on the right in one batch, as ``lrp explain FOLDER texts`` runs them (hf.NextTokenLogits, the
    mask given): Zamba's mixer masks its input only ``if not torch.all(mask == 1)`` (a check on values torch.export
    cannot pass); captured, it always multiplies by the mask. The graph's logits are the model's, and the padded
    text's relevance is the oracle's for the text alone."""
    from lrpcli import explain
    from lrpcli.sources.hf import NextTokenLogits

    model = zamba[0]
    wrapped = NextTokenLogits(model).eval()
    ids = IDS[:, :7].clone()
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    result = explain(wrapped, ids, "mambalrp", target=TARGET, params=EXACT, inputs={"attention_mask": mask})
    own = wrapped(ids, mask).detach()
    assert (result.outputs - own).abs().max() <= 1e-6 * own.abs().max()
    alone = oracle(model, ids[1:, :5], TARGET)[0]
    assert torch.isfinite(result.relevance).all() and alone.abs().max() > 1e-3
    assert (result.relevance[1] - torch.cat([alone, alone.new_zeros(2)])).abs().max() <= 1e-6 * alone.abs().max()
