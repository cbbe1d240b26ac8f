"""Hugging Face Mamba explained with MambaLRP's rules (issue 27, item 6: state-space models).

MambaLRP (Rezaei Jafari, Montavon, Müller, Eberle, NeurIPS 2024, Sec. 4) as the authors' code states it for
transformers' slow path (github.com/FarnoushRJ/MambaLRP, ``mamba_lrp/model/mamba_huggingface.py``,
``ModifiedMambaMixer.slow_forward`` and ``ModifiedMambaRMSNorm``; ``lrp/core.py`` ``ModifiedAct``):

- the selective SSM: ``discrete_A``, ``discrete_B`` and ``C`` detached (Δ, Ā = exp(ΔA), B, C held constant);
- SiLU: ``x * (silu(x) / x).data``, relevance passes unchanged (the identity rule);
- the gate ``y * silu(z)``: ``y/2 + (y/2).data`` before ``out_proj``, each factor gets half the relevance;
- RMSNorm: ``x * rsqrt(mean(x^2) + eps).detach()``;
- everything else the plain gradient (LRP-0), relevance = gradient x input at the token embeddings.

:func:`mambalrp_oracle` writes exactly that as forward hooks on the eager model (none of lrpcli's code), and
lrpcli's walk over its captured graph must give the same token relevance.
"""

from __future__ import annotations

import json

import pytest
import torch

from gradient_oracle import identity_rule, scale_grad

transformers = pytest.importorskip("transformers")

D64 = torch.float64
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
TARGET = 3


FAMILIES = {
    "mamba": ("MambaConfig", "MambaForCausalLM"),
    "falcon_mamba": ("FalconMambaConfig", "FalconMambaForCausalLM"),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM"),
}
#: Mamba-2's sizes: heads of 4 channels, B and C in one group, chunks of 4 tokens (so 7 tokens make two chunks)
MAMBA2 = {"hidden_size": 8, "num_heads": 4, "head_dim": 4, "n_groups": 1, "chunk_size": 4}


def tiny_mamba(seed: int = 0, layers: int = 2, vocab: int = 20, family: str = "mamba") -> torch.nn.Module:
    """A random MambaForCausalLM (or FalconMamba) small enough for seconds (d_model 8, d_inner 16, state 4, conv
    kernel 3), every parameter moved off its initial value so that conv biases, D and the norms' weights are not 0
    or 1."""
    torch.manual_seed(seed)
    config_class, model_class = (getattr(transformers, name) for name in FAMILIES[family])
    sizes = MAMBA2 if family == "mamba2" else {"hidden_size": 8, "time_step_rank": 2}
    config = config_class(vocab_size=vocab, state_size=4, num_hidden_layers=layers, expand=2, conv_kernel=3, pad_token_id=0, **sizes)
    model = model_class(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


class LastToken(torch.nn.Module):
    """The next-token logits after the last position (no cache: the sequential scan over the whole text)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits[:, -1]


def mambalrp_oracle(model: torch.nn.Module, ids: torch.Tensor, target: int, half_gate: bool = True) -> torch.Tensor:
    """MambaLRP as a modified gradient times input on the eager model (the authors' modifications as hooks):
    per-token relevance (batch, tokens) for the next-token logit ``target``. ``half_gate=False`` leaves the gate's
    product to the plain gradient (both factors take the whole relevance: not conservative)."""
    backbone = model.backbone
    sinks: list[torch.Tensor] = []
    hooks = []

    def embedding_sink(_module, _args, out):
        sink = out.detach().requires_grad_(True)
        sinks.append(sink)
        return sink

    def rms_norm(module, args, _out):  # transformers' RMS norms with their normaliser detached
        x = args[0]
        xf = x.to(torch.float32)
        if len(args) > 1:  # Mamba-2's gated norm: x * silu(gate) first, the product split as the gate
            gate = args[1].to(torch.float32)
            product = xf * identity_rule(gate, torch.nn.functional.silu(gate))
            xf = scale_grad(product, 0.5) if half_gate else product
        normaliser = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + module.variance_epsilon).detach()
        return module.weight * (xf * normaliser).to(x.dtype)

    def held_tail(keep: int):  # a tensor's last features (Mamba-2's Δ, or its B and C) detached
        return lambda out: torch.cat([out[..., :keep], out[..., keep:].detach()], dim=-1)

    hooks.append(backbone.embeddings.register_forward_hook(embedding_sink))
    for module in model.modules():
        if type(module).__name__.endswith(("RMSNorm", "RMSNormGated")):
            hooks.append(module.register_forward_hook(rms_norm))
    for layer in backbone.layers:
        mixer = layer.mixer
        if hasattr(mixer, "x_proj"):  # Mamba, FalconMamba
            hooks.append(mixer.x_proj.register_forward_hook(lambda _m, _a, out: out.detach()))  # Δ, B, C (so Ā, B̄)
            hooks.append(mixer.act.register_forward_hook(lambda _m, args, out: identity_rule(args[0], out)))
            if half_gate:
                hooks.append(mixer.out_proj.register_forward_pre_hook(lambda _m, args: (scale_grad(args[0], 0.5),)))
        else:  # Mamba-2: Δ is in_proj's last num_heads features, B and C the conv's (after SiLU) past d_inner
            dt, bc = held_tail(-mixer.num_heads), held_tail(mixer.intermediate_size)
            hooks.append(mixer.in_proj.register_forward_hook(lambda _m, _a, out, dt=dt: dt(out)))
            hooks.append(mixer.act.register_forward_hook(lambda _m, args, out, bc=bc: bc(identity_rule(args[0], out))))
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
            (grad,) = torch.autograd.grad(logits[:, target].sum(), sinks[0])
    finally:
        for hook in hooks:
            hook.remove()
    return (sinks[0] * grad).sum(-1).detach()


@pytest.fixture(scope="module")
def model():
    return tiny_mamba().double()


@pytest.fixture(scope="module")
def wrapped(model):
    """One wrapper for the module, so that its captured graph is reused (capturing takes seconds)."""
    return LastToken(model)


@pytest.fixture(scope="module")
def ids():
    return torch.tensor([[5, 1, 7, 3, 9, 2, 4], [2, 8, 6, 6, 1, 3, 11]])


def test_mambalrp_equals_the_modified_gradient_oracle(model, wrapped, ids):
    from lrpcli import explain

    ours = explain(wrapped, ids, "mambalrp", target=TARGET, params=EXACT)
    expected = mambalrp_oracle(model, ids, TARGET)
    assert torch.isfinite(ours.relevance).all()
    torch.testing.assert_close(ours.outputs, model(input_ids=ids, use_cache=False).logits[:, -1].detach())
    scale = expected.abs().max()
    assert scale > 1e-3
    # the SSM runs in float32 inside a float64 model (transformers casts B, Δ and the state): measured 6e-8
    assert (ours.relevance - expected).abs().max() <= 1e-6 * scale, (ours.relevance, expected)
    # the tolerance tells the rules apart: the gate held (CP-LRP's choice), or not split, gives other maps
    assert (explain(wrapped, ids, "cp_lrp", target=TARGET, params=EXACT).relevance - expected).abs().max() > 1e-2 * scale
    assert (mambalrp_oracle(model, ids, TARGET, half_gate=False) - expected).abs().max() > 1e-2 * scale


@pytest.mark.parametrize("family", ["falcon_mamba", "mamba2"])
def test_falcon_mamba_and_mamba2_equal_the_oracle_too(family, ids):
    """FalconMamba's mixer normalises Δ, B and C (an RMS norm without weight) after x_proj: held with them.
    Mamba-2 (the chunked SSD form, two chunks here) has Δ, B and C as slices of in_proj's and the conv's outputs,
    held in the captured graph; its gate sits in the gated RMS norm (y * silu(z), then normalised): split
    half/half as MambaLRP's gate (the paper's rules, applied to Mamba-2's same components). The model is called
    as a user would, with its default cache on (Mamba-2 checks ``cache_position[0] > 0`` then)."""
    from lrpcli import explain

    model = tiny_mamba(family=family).double()

    class Default(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits[:, -1]

    result = explain(Default(), ids, "mambalrp", target=TARGET, params=EXACT, layer_relevance=True)
    assert model.config.use_cache  # as it was
    ours, expected = result.relevance, mambalrp_oracle(model, ids, TARGET)
    assert torch.isfinite(ours).all() and expected.abs().max() > 1e-3
    # float32 inside: measured 1.1e-7 (FalconMamba) and 4.3e-7 (Mamba-2); a wrong rule is off by 10 % or more
    assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max(), (ours, expected)
    # conservative: what the tokens do not get, the conv biases took (the ledger), nothing else
    logit = result.outputs[:, TARGET].double()
    biases = sum(layer.bias.double() for layer in result.layers.values() if layer.bias is not None)
    torch.testing.assert_close(ours.sum(1) + biases, logit, rtol=1e-5, atol=1e-6)  # float32 logits (transformers')
    assert all(layer.other.abs().max() < 1e-6 * logit.abs().max() for layer in result.layers.values())


def test_a_hybrid_with_attention_and_padding_explains(ids):
    """Bamba (Mamba-2 mixers and an attention layer): its mixers' mask check (``cache_position[0] > 0 or
    torch.all(mask == 1)``, which torch.export cannot pass) is captured as the mask itself; with a padded row the
    captured graph's logits are the model's, the relevance is finite, and what the tokens do not get is named by
    the ledger (conv biases, the attention softmax's Taylor share)."""
    from lrpcli import explain

    torch.manual_seed(0)
    config = transformers.BambaConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4,
        mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=4, pad_token_id=0,
    )
    model = transformers.BambaForCausalLM(config).eval().double()

    class Padded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, -1]

    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in the second row
    result = explain(Padded(), ids, "mambalrp", target=TARGET, params=EXACT, inputs={"attention_mask": mask}, layer_relevance=True)
    own = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1].detach()
    torch.testing.assert_close(result.outputs, own)
    assert torch.isfinite(result.relevance).all()
    logit = result.outputs[:, TARGET].double()
    named = sum(part.double() for layer in result.layers.values() for part in (layer.bias, layer.rule_share) if part is not None)
    torch.testing.assert_close(result.relevance.sum(1) + named, logit, rtol=1e-5, atol=1e-6)
    assert all(layer.other.abs().max() < 1e-6 * logit.abs().max() for layer in result.layers.values())


def test_long_texts_are_captured_a_chunk_at_a_time(model, monkeypatch):
    """transformers' loop over the tokens is captured as CHUNK-token chunks (40 tokens: three chunks, the last one
    short): the graph's logits are the model's, the relevance the loop oracle's, and the graph does not grow with
    every token. A chunked form that computed something else would be refused, not explained."""
    from lrpcli import Explainer, explain
    from lrpcli.engine import state_space
    from lrpcli.errors import ModelError

    assert state_space.CHUNK == 16
    ids = torch.randint(1, 20, (2, 40), generator=torch.Generator().manual_seed(1))
    wrapped = LastToken(model)
    result = explain(wrapped, ids, "mambalrp", target=TARGET, params=EXACT)
    torch.testing.assert_close(result.outputs, model(input_ids=ids, use_cache=False).logits[:, -1].detach())
    expected = mambalrp_oracle(model, ids, TARGET)
    assert (result.relevance - expected).abs().max() <= 1e-6 * expected.abs().max()  # measured 1.6e-7
    graph, _ = Explainer(wrapped, "mambalrp").prepare(ids)
    assert sum(node.op == "cumsum" for node in graph.nodes) == 2 * 3  # per layer and chunk, not per token

    def wrong(mixer, input_states, attention_mask=None):
        return 1.01 * real(mixer, input_states, attention_mask)

    real = state_space.chunked_mamba_forward
    monkeypatch.setattr(state_space, "chunked_mamba_forward", wrong)
    with pytest.raises(ModelError, match="a chunk at a time"):
        Explainer(LastToken(model), "mambalrp").prepare(ids[:, :5])


def test_the_scan_conserves_and_the_ledger_names_every_bias(wrapped, ids):
    """Every MambaLRP rule conserves. With the conv biases (the only biases on relevance's path: in_proj,
    out_proj and lm_head have none) at zero, the tokens' relevance sums to the logit; with them, the ledger's
    bias shares make up the difference and nothing is left unexplained at any node."""
    from lrpcli import explain

    result = explain(wrapped, ids, "mambalrp", target=TARGET, params=EXACT, layer_relevance=True)
    logit = result.outputs[:, TARGET].double()  # transformers returns float32 logits
    biases = sum(layer.bias.double() for layer in result.layers.values() if layer.bias is not None)
    assert biases.abs().min() > 1e-4
    torch.testing.assert_close(result.relevance.sum(1) + biases, logit, rtol=1e-6, atol=1e-8)
    for layer in result.layers.values():
        assert layer.other.abs().max() < 1e-6 * logit.abs().max(), (layer.node, layer.op, layer.rule)

    bias_free = tiny_mamba().double()
    with torch.no_grad():
        for layer in bias_free.backbone.layers:
            layer.mixer.conv1d.bias.zero_()
    result = explain(LastToken(bias_free), ids, "mambalrp", target=TARGET, params=EXACT)
    torch.testing.assert_close(result.relevance.sum(1), result.outputs[:, TARGET].double(), rtol=1e-6, atol=1e-8)


def test_the_selection_is_held_and_the_gates_split(model, wrapped, ids):
    """What the graph says: Δ, the discretisation's exp, Ā, B̄ and C carry no relevance (kind meta), the gate
    products take the uniform rule, the SiLUs pass relevance on, and the note names every mixer; the model's own
    x_proj has no hook left afterwards."""
    from lrpcli import Explainer

    explainer = Explainer(wrapped, "mambalrp", params=EXACT)
    graph, assigned = explainer.prepare(ids)
    relevant = graph.relevant()
    exps = [node for node in graph.nodes if node.op == "exp"]
    assert exps and all(node.kind == "meta" for node in exps) and not graph.unsupported()
    x_proj = [node for node in graph.nodes if node.module.endswith("mixer.x_proj") and node.kind == "linear"]
    assert len(x_proj) == 2 and not any(node.name in relevant for node in x_proj)
    gates = [node for node in graph.nodes if node.kind == "product" and node.gate_op == "silu"]
    assert len(gates) == 2 and {assigned[node.name].rule.name for node in gates} == {"uniform"}
    assert any("MambaLRP" in note and "layers.0.mixer" in note and "layers.1.mixer" in note for note in graph.notes)
    assert not model.backbone.layers[0].mixer.x_proj._forward_hooks


def test_float32_and_a_batch_of_one(ids):
    from lrpcli import explain

    model = tiny_mamba()
    result = explain(LastToken(model), ids[:1], "mambalrp", target=TARGET)
    expected = mambalrp_oracle(model, ids[:1], TARGET)
    assert torch.isfinite(result.relevance).all()
    torch.testing.assert_close(result.relevance, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


# --------------------------------------------------------------------------- a Mamba folder through lrp explain

WORDS = "the film was good bad great boring not very".split()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", model_max_length=16)


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_a_mamba_folder_explains_with_mambalrp_end_to_end(family, tmp_path):
    """save_pretrained of a tiny Mamba (Mamba-2) and an offline tokenizer; `lrp explain FOLDER texts.txt` picks
    MambaLRP and gives, per text (padded on the right in one batch), the next-token logit and the token relevance
    of explain() on that text alone. A second run reads the captured graph from the disk cache (the held values'
    kinds derived again from the stored graph) and writes the same rows."""
    pytest.importorskip("tokenizers")
    from cli_support import lrp
    from lrpcli import explain
    from lrpcli.sources.cache import cache_dir
    from lrpcli.sources.hf import folder_spec

    model = tiny_mamba(layers=1, vocab=2 + len(WORDS), family=family)
    path = tmp_path / family
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    assert folder_spec(path).composite == "mambalrp"
    texts = ["the film was good", "bad boring not very great"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    run = lrp("explain", path, tmp_path / "t.txt", "-q", "--no-report", out=tmp_path / "next.jsonl")
    assert run.code == 0, run.describe()
    entries = {entry: entry.stat().st_mtime_ns for entry in cache_dir().glob("*.json")}
    again = lrp("explain", path, tmp_path / "t.txt", "-q", "--no-report", out=tmp_path / "again.jsonl")
    assert again.code == 0, again.describe()
    assert {entry: entry.stat().st_mtime_ns for entry in cache_dir().glob("*.json")} == entries  # read, not written
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "next.jsonl").read_text()
    rows = [json.loads(line) for line in (tmp_path / "next.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    tokenizer = _tokenizer()
    for row, text in zip(rows, texts):
        encoded = tokenizer(text, return_tensors="pt")
        expected = explain(LastToken(model), encoded["input_ids"], "mambalrp", target=row["target"])
        assert row["prediction"] == int(expected.outputs[0].argmax())
        assert row["logit"] == pytest.approx(float(expected.outputs[0, row["target"]]), rel=1e-4)
        got = torch.tensor([t["relevance"] for t in row["tokens"]], dtype=torch.float64)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected.relevance[0].double(), rtol=1e-4, atol=1e-6)
