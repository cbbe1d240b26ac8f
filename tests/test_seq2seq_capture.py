"""Encoder-decoder and T5-style models of transformers (issue 27 item 6): what torch.export cannot capture as the
model is written, lrpcli captures another way (engine/patterns.py), checked against the model's own outputs.

- T5/mT5/UMT5 and BART/mBART/PLBart classifiers pool at each row's last ``<eos>`` by counting
  (``unique_consecutive``, a boolean selection): captured as a gather.
- In-place writes into computed values (``shift_tokens_right``; the causal decoders' padding mask written into a
  slice) were lost by the out-of-place graph: such programs are functionalised.
- Text stacks that make their all-ones mask only outside torch.export (BART's decoder: a causal mask for
  ``length + 1`` keys under export; LongT5) get the mask the eager forward makes.
- T5-style relative position buckets (log, min, where on integer positions) are constants of the length, or
  computed from the mask: no relevance, no rule needed.

References, independent of lrpcli: the model's own forward (per row where it refuses a batch), autograd on the
model's own forward (LRP-0 on a bias-free ReLU net is gradient x input: Montavon et al. 2019, "Layer-Wise Relevance
Propagation: An Overview", sec. 10.2.1), and the modified-gradient oracle (tests/gradient_oracle.py) on the model
with a pooling written here.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from gradient_oracle import embedding_relevance  # noqa: E402

from lrpcli import Explainer, explain  # noqa: E402
from lrpcli.errors import ModelError  # noqa: E402

EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
EOS, PAD = 1, 0
T5_SIZES = dict(
    vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, num_labels=3,
    decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS, relative_attention_num_buckets=8, relative_attention_max_distance=16,
)
BART_SIZES = dict(
    vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
    encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=PAD, bos_token_id=3, eos_token_id=EOS,
    decoder_start_token_id=EOS, num_labels=3, init_std=0.3,
)


def _model(family: str, head: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    sizes = T5_SIZES if "T5" in family else BART_SIZES
    config = getattr(transformers, family + "Config")(**{**sizes, **overrides})
    return getattr(transformers, family + head)(config).double().eval()


class Logits(nn.Module):
    """ids and mask in, the first output out (what lrp wraps a folder's model in)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        return out[:, -1] if out.ndim == 3 else out


class HandPooled(nn.Module):
    """The oracle's model: the classifier's base and head, pooled at each row's last <eos> written here (the
    position where the running count of <eos> first reaches its total). The decoder reads the ids shifted right
    (the family's own shift); its token embeddings are given as the lookup of the ids, shifted, so that the tokens
    are credited with what the decoder reads of them (the oracle's sinks are the lookups of the ids)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def shifted(self, input_ids):
        import inspect
        import sys

        m = self.model
        if hasattr(m, "transformer"):
            return m._shift_right(input_ids)
        shift = sys.modules[type(m.model).__module__].shift_tokens_right
        names = inspect.signature(shift).parameters
        return shift(input_ids, *(getattr(m.config, n) for n in ("pad_token_id", "decoder_start_token_id") if n in names))

    def forward(self, input_ids, attention_mask=None):
        m = self.model
        base = m.transformer if hasattr(m, "transformer") else m.model
        shifted = self.shifted(input_ids)
        embed = base.decoder.embed_tokens
        decoder = {"decoder_inputs_embeds": torch.cat([embed(shifted[:, :1]), embed(input_ids)[:, :-1]], dim=1)}
        hidden = base(input_ids, attention_mask=attention_mask, use_cache=False, return_dict=False, **decoder)[0]
        last = (input_ids == m.config.eos_token_id).long().cumsum(1).argmax(1)
        return m.classification_head(hidden[torch.arange(hidden.shape[0]), last])


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows: one <eos> at the end; padded after its <eos>; an <eos> inside the text too (so the rows hold
    different numbers of <eos>, which the model's own forward refuses as a batch)."""
    torch.manual_seed(1)
    ids = torch.randint(3, 40, (3, 8))
    ids[:, -1] = EOS
    ids[1, -2:], ids[1, -3] = PAD, EOS
    ids[2, 3] = EOS
    return ids, (ids != PAD).long()


def _own_rows(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([Logits(model)(ids[i : i + 1], None if mask is None else mask[i : i + 1]) for i in range(ids.shape[0])])


# --------------------------------------------------------------------------- <eos> pooling


class _Base(nn.Module):
    """A bias-free token mixer: embedding, a conv over the tokens, ReLU."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Embedding(20, 6)
        self.conv = nn.Conv1d(6, 6, kernel_size=3, padding=1, bias=False)

    def forward(self, input_ids, attention_mask=None, use_cache=None, return_dict=None):
        return (torch.relu(self.conv(self.shared(input_ids).transpose(1, 2))).transpose(1, 2),)


class ToyForSequenceClassification(nn.Module):
    """The pooling of transformers' BartForSequenceClassification.forward (modeling_bart.py, 4.57), verbatim."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(eos_token_id=EOS, use_return_dict=False)
        self.model = _Base()
        self.classification_head = nn.Linear(6, 3, bias=False)

    def forward(self, input_ids, attention_mask=None, return_dict=None):
        hidden_states = self.model(input_ids, attention_mask=attention_mask)[0]
        eos_mask = input_ids.eq(self.config.eos_token_id).to(hidden_states.device)
        if len(torch.unique_consecutive(eos_mask.sum(1))) > 1:
            raise ValueError("All examples must have the same number of <eos> tokens.")
        sentence_representation = hidden_states[eos_mask, :].view(hidden_states.size(0), -1, hidden_states.size(-1))[:, -1, :]
        return (self.classification_head(sentence_representation),)


def test_an_eos_counting_classifier_lrp0_is_gradient_times_input():
    torch.manual_seed(0)
    model = ToyForSequenceClassification().double().eval()
    ids = torch.randint(2, 20, (3, 7))
    ids[:, 2], ids[:, -1] = EOS, EOS  # two <eos> per row: pooled at the last
    result = explain(model, ids, "lrp_0", target=2, embedding_relevance=True)
    assert any("<eos>" in note for note in result.notes)
    embedded = {}

    def leaf(_module, _inputs, output):
        embedded["e"] = output.detach().requires_grad_(True)
        return embedded["e"]

    handle = model.model.shared.register_forward_hook(leaf)
    try:
        logits = model(ids)[0]  # the model's own forward: unique_consecutive and the boolean selection
    finally:
        handle.remove()
    logits[:, 2].sum().backward()
    torch.testing.assert_close(result.outputs, logits.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(result.embedding, embedded["e"] * embedded["e"].grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.relevance.sum(1), result.outputs[:, 2], rtol=1e-10, atol=1e-12)  # LRP-0 conserves here
    assert type(model).forward is ToyForSequenceClassification.forward and "forward" not in vars(model)  # put back


EOS_CLASSIFIERS = ["T5", "UMT5", "Bart", "MBart", "PLBart"]  # (mT5 is T5 with another vocabulary: same classes)


@pytest.mark.parametrize("family", EOS_CLASSIFIERS)
def test_eos_classifiers_explain_as_the_oracle_and_conserve_with_the_ledger(family):
    model = _model(family, "ForSequenceClassification")
    ids, mask = _ids()
    with pytest.raises(ValueError, match="same number of <eos>"):
        Logits(model)(ids, mask)  # the model's own forward refuses this batch; each row alone it takes
    result = explain(Logits(model).eval(), ids, "attnlrp", target=2, params=EXACT, inputs={"attention_mask": mask}, layer_relevance=True)
    assert any("last <eos>" in note for note in result.notes)
    own = _own_rows(model, ids, mask)
    torch.testing.assert_close(result.outputs, own, rtol=0, atol=1e-6 * float(own.abs().max()))
    hand = HandPooled(model).eval()
    assert torch.equal(hand.shifted(ids)[:, 1:], ids[:, :-1])  # the decoder reads the ids one position on
    torch.testing.assert_close(hand(ids, mask), own, rtol=0, atol=1e-12)
    expected = embedding_relevance(hand, ids, 2, "attnlrp", attention_mask=mask)
    assert torch.isfinite(result.relevance).all() and expected.abs().max() > 0
    # T5's softmax runs in float32 inside the float64 model: measured 3e-8 of the largest; a wrong rule is off by far more
    assert (result.relevance - expected).abs().max() <= 1e-6 * expected.abs().max()
    logit = result.outputs[:, 2]
    absorbed = sum(layer.absorbed for layer in result.layers.values())
    torch.testing.assert_close(result.relevance.sum(1) + absorbed, logit, rtol=1e-6, atol=1e-9)
    for layer in result.layers.values():  # every loss named: biases, constants, stabilisers, the softmax rule
        assert float(layer.other.abs().max()) <= 1e-6 * float(logit.abs().max()), (layer.node, layer.op, layer.rule)


def test_a_row_without_eos_gets_nan_logits_and_a_capture_on_one_is_refused():
    model = _model("T5", "ForSequenceClassification")
    ids, mask = _ids()
    explainer = Explainer(Logits(model).eval(), "attnlrp")
    explainer.captured(ids[:2], {"attention_mask": mask[:2]})
    broken = ids[:2].clone()
    broken[1] = torch.where(broken[1] == EOS, 5, broken[1])
    outputs = explainer.forward(broken, {"attention_mask": mask[:2]})
    assert torch.isfinite(outputs[0]).all() and torch.isnan(outputs[1]).all()  # not the last position, silently
    with pytest.raises(ModelError, match="fails on sample 1") as error:
        explain(Logits(_model("T5", "ForSequenceClassification")).eval(), broken, "attnlrp", inputs={"attention_mask": mask[:2]})
    assert "eos" in error.value.hint


# --------------------------------------------------------------------------- in-place writes


CAUSAL_LMS = ["Bart", "MBart", "Marian", "Pegasus", "Blenderbot", "BlenderbotSmall", "PLBart"]


@pytest.mark.parametrize("family", CAUSAL_LMS)
def test_left_padded_causal_decoders_keep_their_padding_mask(family):
    """``causal_mask[..., :n] = causal_mask[..., :n].masked_fill(padding, min)`` writes the padding into a slice of
    the mask; computed out of place, the write was lost and the real last token attended to the padding."""
    model = _model(family, "ForCausalLM")
    ids, _ = _ids()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: the last position is a real token
    result = explain(Logits(model).eval(), ids, "attnlrp", target=5, inputs={"attention_mask": mask})
    with torch.no_grad():
        own = Logits(model)(ids, mask)
    torch.testing.assert_close(result.outputs, own, rtol=0, atol=1e-6 * float(own.abs().max()))
    assert torch.isfinite(result.relevance).all()


def test_a_write_into_a_slice_of_an_activation_is_kept_not_lost():
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            shifted = x.clone()
            shifted[:, 1:] = x[:, :-1] * 0.5
            return self.lin(shifted).sum(1)

    model, x = Shift().double().eval(), torch.randn(2, 5, 4, dtype=torch.double)
    result = explain(model, x, "epsilon")  # a route since issue 27 (tests/test_slice_writes.py checks its numbers)
    with torch.no_grad():
        torch.testing.assert_close(result.outputs, model(x), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- masks made outside export


@pytest.mark.parametrize(
    "family,head,settings",
    [
        ("Bart", "ForCausalLM", {"attn_implementation": "eager"}),
        ("Bart", "ForSequenceClassification", {"attn_implementation": "eager"}),
        ("Marian", "ForCausalLM", {"attn_implementation": "eager"}),
        ("LongT5", "EncoderModel", {"encoder_attention_type": "local", "local_radius": 2}),
        ("LongT5", "EncoderModel", {"encoder_attention_type": "transient-global", "local_radius": 2, "global_block_size": 4}),
    ],
)
def test_stacks_without_a_mask_get_the_one_their_eager_forward_makes(family, head, settings):
    """Under export BART's decoder builds its causal mask for length + 1 keys (no mask given: the static-cache
    width), which eager attention cannot add to the scores; LongT5 fails on the missing mask. Both make an
    all-ones mask themselves when run eagerly."""
    attention = settings.pop("attn_implementation", None)
    model = _model(family, head, **settings)
    if attention:
        model.config._attn_implementation = attention
    ids, _ = _ids()
    ids[1] = torch.where(ids[1] == PAD, 7, ids[1])
    ids[2, 3] = 9  # one <eos> per row: the classifier's own forward takes the batch

    class NoMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, return_dict=False)[0]
            return out[:, -1, :8] if out.ndim == 3 else out

    result = explain(NoMask().eval(), ids, "attnlrp", target=2)
    with torch.no_grad():
        own = NoMask()(ids)
    torch.testing.assert_close(result.outputs, own, rtol=0, atol=1e-6 * float(own.abs().max()))
    assert torch.isfinite(result.relevance).all() and result.relevance.abs().max() > 0


# --------------------------------------------------------------------------- relative position buckets


@pytest.mark.parametrize(
    "family,settings",
    [("T5", {}), ("UMT5", {}), ("LongT5", {"encoder_attention_type": "transient-global", "local_radius": 2, "global_block_size": 4})],
)
def test_relative_position_buckets_carry_no_relevance(family, settings):
    """The buckets (T5Attention._relative_position_bucket: abs/min/log/where on integer positions) are a constant of
    the length (folded at capture) or computed from the mask (LongT5's transient-global blocks): kind meta, off
    relevance's path, no rule asked for; the relevance is the oracle's."""
    model = _model(family, "EncoderModel", **settings)
    ids, mask = _ids()

    class First(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0][:, 0, :6]

    wrapped = First().eval()
    explainer = Explainer(wrapped, "attnlrp", params=EXACT)
    graph, _ = explainer.prepare(ids, {"attention_mask": mask})
    relevant = graph.relevant()
    buckets = [node for node in graph.nodes if node.op in ("log", "abs", "min", "minimum", "lt", "full_like")]
    assert all(node.kind == "meta" and node.name not in relevant for node in buckets)
    result = explainer.explain(ids, target=2, inputs={"attention_mask": mask})
    with torch.no_grad():
        own = wrapped(ids, mask)
    torch.testing.assert_close(result.outputs, own, rtol=0, atol=1e-6 * float(own.abs().max()))
    expected = embedding_relevance(wrapped, ids, 2, "attnlrp", attention_mask=mask)
    assert torch.isfinite(result.relevance).all() and expected.abs().max() > 0
    assert (result.relevance - expected).abs().max() <= 1e-6 * expected.abs().max()


# --------------------------------------------------------------------------- lrp explain FOLDER texts


WORDS = "the film was good bad great boring not very".split()


def _t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=16)


def test_a_t5_classifier_folder_explains_its_texts_as_the_api_does(tmp_path):
    pytest.importorskip("tokenizers")
    from cli_support import lrp

    torch.manual_seed(0)
    labels = {0: "negative", 1: "positive", 2: "mixed"}
    config = transformers.T5Config(**{**T5_SIZES, "vocab_size": 3 + len(WORDS)}, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = transformers.T5ForSequenceClassification(config).eval()
    folder = tmp_path / "t5"
    model.save_pretrained(folder)
    _t5_tokenizer().save_pretrained(folder)
    texts = ["the film was good", "not very great boring film"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    run = lrp("explain", folder, tmp_path / "texts.txt", "-q", "--no-report", out=tmp_path / "words.jsonl")
    assert run.code == 0, run.describe()
    rows = [json.loads(line) for line in (tmp_path / "words.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row, text in zip(rows, texts):
        assert [t["token"] for t in row["tokens"]] == text.split() + ["</s>"]
        encoded = _t5_tokenizer()(text, return_tensors="pt")
        expected = explain(Logits(model).eval(), encoded["input_ids"], "attnlrp", target=row["target"], inputs={"attention_mask": encoded["attention_mask"]})
        got = torch.tensor([t["relevance"] for t in row["tokens"]], dtype=torch.float64)
        torch.testing.assert_close(got, expected.relevance[0].double(), rtol=1e-4, atol=1e-6)
        assert row["logit"] == pytest.approx(float(expected.outputs[0, row["target"]]), rel=1e-4)
        with torch.no_grad():
            own = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        assert row["logit"] == pytest.approx(float(own[0, row["target"]]), rel=1e-4)
