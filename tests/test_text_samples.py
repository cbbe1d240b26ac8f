"""The sample text classifiers (sample_models/text_sentiment/): they load from their specs, classify
the held-out texts, and their explanations find the planted sentiment words.

Each held-out text holds one to three words of the VADER lexicon planted among neutral words
(``planted.jsonl`` gives their character spans); the label is the sign of their summed valence. So
the token with the largest |relevance| for the predicted class should be a planted word far more
often than the share of planted tokens in a text (what a random pick gets). Also: padding gets no
relevance and changes nothing, and a bias-free bag of embeddings conserves relevance exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrpcli import explain
from lrpcli.sources.architectures import TextBag
from lrpcli.sources.files import load_spec, load_spec_model

tokenizers = pytest.importorskip("tokenizers")

FOLDER = Path(__file__).resolve().parent.parent / "sample_models" / "text_sentiment"
CLASSES = ["negative", "positive"]
STEMS = ("bag", "lstm", "transformer")


def _pad(rows: list[list[int]], length: int) -> torch.Tensor:
    ids = torch.zeros(len(rows), length, dtype=torch.int64)  # [PAD] is id 0
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids


@pytest.fixture(scope="module")
def held_out():
    """The 200 shipped held-out texts, tokenized, with labels and a planted-token flag per token."""
    texts = (FOLDER / "texts.txt").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in (FOLDER / "planted.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(texts) == len(rows) == 200
    tokenizer = tokenizers.Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    assert tokenizer.token_to_id("[PAD]") == 0 and tokenizer.padding["pad_id"] == 0
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(texts)
    planted = []
    for row, text, encoding in zip(rows, texts, encodings):
        for word in row["planted"]:
            assert text[word["start"] : word["end"]].lower() == word["word"]
        planted.append([any(s < w["end"] and w["start"] < e for w in row["planted"]) for s, e in encoding.offsets])
    ids = [list(e.ids) for e in encodings]
    labels = torch.tensor([CLASSES.index(r["label"]) for r in rows])
    return {"ids": ids, "planted": planted, "labels": labels, "length": max(len(i) for i in ids)}


@pytest.fixture(scope="module")
def explained(held_out):
    """Per model: its spec, the model and explain() for the predicted class on the padded held-out batch."""
    found = {}
    ids = _pad(held_out["ids"], held_out["length"])
    for stem in STEMS:
        spec = load_spec(FOLDER / f"{stem}.yaml")
        assert spec.input["kind"] == "text" and spec.classes == CLASSES
        model = load_spec_model(spec)
        found[stem] = (spec, model, explain(model, ids, spec.composite))
    return found


def top1_share(relevance: torch.Tensor, held_out: dict) -> tuple[float, float]:
    """Share of texts whose top token by |relevance| is planted, and the chance of that for a random token."""
    hits, chance = 0, 0.0
    for row_relevance, ids, planted in zip(relevance, held_out["ids"], held_out["planted"]):
        n = len(ids)
        hits += planted[int(row_relevance[:n].abs().argmax())]
        chance += sum(planted) / n
    return hits / len(held_out["ids"]), chance / len(held_out["ids"])


def test_sample_folder_is_small():
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 3_000_000


@pytest.mark.parametrize("stem", STEMS)
def test_held_out_accuracy(stem, explained, held_out):
    _, model, result = explained[stem]
    accuracy = (result.outputs.argmax(1) == held_out["labels"]).float().mean().item()
    assert accuracy >= 0.9, f"{stem}: held-out accuracy {accuracy:.3f}"
    with torch.no_grad():  # explain() reports the model's own logits
        torch.testing.assert_close(result.outputs, model(_pad(held_out["ids"], held_out["length"])))


@pytest.mark.parametrize("stem", STEMS)
def test_top_token_is_a_planted_word(stem, explained, held_out):
    _, _, result = explained[stem]
    share, chance = top1_share(result.relevance, held_out)
    assert chance < 0.2  # most tokens are neutral
    assert share >= 0.7 and share >= 5 * chance, f"{stem}: top-1 |R| on a planted word {share:.3f}, chance {chance:.3f}"


def test_untrained_bag_does_not_find_the_planted_words(held_out):
    """The measure can fail: the same architecture with random weights lands near chance."""
    torch.manual_seed(0)
    model = TextBag(vocab_size=load_spec(FOLDER / "bag.yaml").arch_kwargs["vocab_size"]).eval()
    result = explain(model, _pad(held_out["ids"], held_out["length"]), "epsilon")
    share, chance = top1_share(result.relevance, held_out)
    assert share < 0.3, f"untrained: {share:.3f} (chance {chance:.3f})"


@pytest.mark.parametrize("stem", STEMS)
def test_padding_gets_no_relevance_and_changes_nothing(stem, explained, held_out):
    spec, model, result = explained[stem]
    length = held_out["length"]
    short = _pad(held_out["ids"], length)
    assert (short == 0).any()
    assert result.relevance[short == 0].abs().max().item() == 0.0
    subset = list(range(0, 200, 5))  # 40 texts, padded to the spec's max_length
    longer = explain(model, _pad([held_out["ids"][i] for i in subset], spec.input["max_length"]), spec.composite)
    assert longer.relevance[:, length:].abs().max().item() == 0.0
    torch.testing.assert_close(longer.outputs, result.outputs[subset], atol=1e-5, rtol=1e-4)
    scale = result.relevance[subset].abs().max().item()
    torch.testing.assert_close(longer.relevance[:, :length], result.relevance[subset], atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("composite,params", [("lrp_0", None), ("epsilon", {"epsilon": 1e-12, "stabilizer": 1e-12})])
def test_bias_free_bag_conserves_relevance(composite, params):
    torch.manual_seed(3)
    model = TextBag(vocab_size=40, dim=8, num_classes=3, bias=False).double().eval()
    with torch.no_grad():
        model.embed.weight[1:].normal_()  # row 0 ([PAD]) stays zero
    ids = torch.randint(1, 40, (6, 10))
    ids[0, 4:] = 0
    ids[1, 1:] = 0
    ids[2, 9:] = 0
    for target in range(3):
        result = explain(model, ids, composite, target=target, params=params)
        assert result.relevance.dtype == torch.float64
        logits = result.outputs[:, target]
        assert logits.abs().min() > 1e-3  # a sum to check, not zero against zero
        assert (result.relevance.sum(1) - logits).abs().max().item() < 1e-6
        assert result.relevance[ids == 0].abs().max().item() == 0.0
        # each token's share: its embedding's contribution to the mean, read through the head
        with torch.no_grad():
            count = (ids != 0).sum(1, keepdim=True).double()
            expected = model.embed(ids) @ model.head.weight[target] / count
        torch.testing.assert_close(result.relevance, expected, atol=1e-9, rtol=1e-6)


def test_the_shipped_bag_without_its_bias_conserves_on_the_held_out_texts(held_out):
    """The trained sample bag, its head's bias set to zero, in float64: each text's token relevances add up to its logit."""
    model = load_spec_model(load_spec(FOLDER / "bag.yaml")).double().eval()
    with torch.no_grad():
        model.head.bias.zero_()
    ids = _pad(held_out["ids"], held_out["length"])
    result = explain(model, ids, "lrp_0")
    logits = result.outputs.gather(1, result.targets[:, None]).squeeze(1)
    assert (result.relevance.sum(1) - logits).abs().max().item() < 1e-6
    assert logits.abs().min().item() > 1e-3
