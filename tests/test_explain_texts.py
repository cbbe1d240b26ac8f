"""Texts in Python (issue 26, item 6): ``lrpcli.explain_texts`` gives the rows ``lrp explain`` writes for texts,
by the same code, and shows them in a notebook with their words and tokens shaded."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import lrpcli
from lrpcli.cli import main

pytest.importorskip("tokenizers")

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models" / "text_sentiment"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "film", "was", "good", "bad", "un", "##happy", "happy", "plot", ",", "."]
CLASSES = ["neg", "neu", "pos"]


def _wordpiece(path: Path) -> Path:
    """A WordPiece tokenizer (unhappy -> un ##happy) that puts [CLS] ... [SEP] around each text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.save(str(path))
    return path


class Bag(nn.Module):
    """Sum of the real tokens' embeddings, a bias-free linear head: token j's LRP-0 relevance for class k is
    embedding[id_j] . head.weight[k] (the logit is a sum of those terms, one per token)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(len(VOCAB), 6, padding_idx=0)
        self.head = nn.Linear(6, len(CLASSES), bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(ids) * (ids != 0).to(torch.float32).unsqueeze(-1)
        return self.head(embedded.sum(1))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return _wordpiece(tmp_path_factory.mktemp("wordpiece") / "tokenizer.json")


def test_rows_are_the_json_lines_lrp_explain_writes(tmp_path):
    spec = SAMPLES / "transformer.yaml"
    texts = ["Her neighbour was rage again.", "We called the package awful, the campus was comfortable.", "gracious"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    cli = CliRunner().invoke(main, ["explain", str(spec), str(tmp_path / "texts.txt"), "--format", "jsonl", "--top-k", "2", "--no-cache", "-q"])
    assert cli.exit_code == 0, cli.output
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    result = lrpcli.explain_texts(str(spec), texts, top_k=2)
    assert result.composite == "attnlrp"  # the spec's composite, as the CLI takes it
    assert len(result) == 3
    for got, want in zip(result.rows, expected):
        assert list(got) == list(want)  # the same fields in the same order
        assert json.loads(json.dumps(got), parse_float=lambda v: round(float(v), 5)) == json.loads(
            json.dumps(want), parse_float=lambda v: round(float(v), 5)
        )
    assert result.rows[0]["prediction_label"] in ("negative", "positive")


def test_token_relevance_is_lrp_0_by_hand_and_words_merge_the_pieces(tokenizer):
    model = Bag().eval()
    texts = ["The film was good.", "an unhappy plot, bad film"]
    result = lrpcli.explain_texts(model, texts, tokenizer=str(tokenizer), composite="lrp_0", target="all", classes=CLASSES, dtype="float64")
    assert [(row["id"], row["target_label"]) for row in result.rows] == [(i, c) for i in ("1", "2") for c in CLASSES]
    from tokenizers import Tokenizer

    words = Tokenizer.from_file(str(tokenizer))
    weights = model.embedding.weight.detach().double()
    for row in result.rows:
        encoding = words.encode(row["text"])
        assert [t for t, _ in result.tokens(result.rows.index(row))] == encoding.tokens  # the tokenizer's own pieces, [CLS] and [SEP] in place
        # LRP-0 of a linear model of the embeddings: each token's term of the logit (hand-computed)
        expected = (weights[encoding.ids] @ model.head.weight.detach().double()[row["target"]]).tolist()
        assert [t["relevance"] for t in row["tokens"]] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert row["relevance_sum"] == pytest.approx(row["logit"], rel=1e-9)
    row = result[3]  # text 2, class neg
    assert [w for w, _ in result.words(3)] == ["an", "unhappy", "plot", ",", "bad", "film"]
    pieces = {t["token"]: t["relevance"] for t in row["tokens"]}
    assert result.words(3)[1][1] == pytest.approx(pieces["un"] + pieces["##happy"])
    assert [t.get("special", False) for t in row["tokens"]][:1] == [True] and row["tokens"][-1]["special"]


def test_a_notebook_shows_each_text_with_its_words_and_tokens_shaded(tokenizer):
    texts = ["the <b>film</b> was bad", "good plot"]
    result = lrpcli.explain_texts(Bag().eval(), texts, tokenizer=str(tokenizer), composite="epsilon", classes=CLASSES)
    page = result._repr_html_()
    first = page.split("lrpcli TextExplanation")[1].split('<div style="margin')[1]
    words = re.findall(r'<span style="background:rgba\((\d+),0,(\d+),([0-9.]+)\)[^"]*" title="([^"]+)">([^<]*)</span>', first)
    shaded = [(w, t) for *_, t, w in words]
    expected_words = [(html.escape(w), f"{r:.4g}") for w, r in result.words(0)]
    expected_tokens = [(html.escape(t), f"{r:.4g}") for t, r in result.tokens(0)]
    assert shaded == expected_words + expected_tokens
    strongest = max(range(len(result.words(0))), key=lambda i: abs(result.words(0)[i][1]))
    assert float(words[strongest][2]) == 1.0  # each text scaled to its own largest |relevance|
    assert "<b>film" not in page and "&lt;" in page  # the text is escaped
    assert f"target {result[0]['target_label']}" in page
    fig = result.plot(0)
    (ax,) = fig.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == [w for w, _ in result.words(0)]
    assert [bar.get_width() for bar in ax.patches] == pytest.approx([r for _, r in result.words(0)])


def test_clear_errors(tokenizer):
    with pytest.raises(lrpcli.UsageError, match="texts need a tokenizer") as error:
        lrpcli.explain_texts(Bag().eval(), ["good"])
    assert "tokenizer=" in error.value.hint
    with pytest.raises(lrpcli.UsageError, match="text 2 is a int"):
        lrpcli.explain_texts(Bag().eval(), ["good", 3], tokenizer=str(tokenizer))
    with pytest.raises(lrpcli.UsageError, match="not a class name"):
        lrpcli.explain_texts(Bag().eval(), "good", tokenizer=str(tokenizer), classes=CLASSES, target="pos itive")
    assert "explain_texts" in dir(lrpcli) and "TextExplanation" in dir(lrpcli)


def test_a_hugging_face_folder_gives_its_tokenizer_labels_and_composite(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "the film was good bad".split()
    labels = {0: "negative", 1: "positive"}
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=4 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()},
    )
    folder = tmp_path / "sentiment"
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", model_max_length=16).save_pretrained(folder)
    (tmp_path / "texts.txt").write_text("the film was good\nbad\n")
    cli = CliRunner().invoke(main, ["explain", str(folder), str(tmp_path / "texts.txt"), "--format", "jsonl", "--no-cache", "-q", "--no-report"])
    assert cli.exit_code == 0, cli.output
    result = lrpcli.explain_texts(str(folder), ["the film was good", "bad"])
    assert result.composite == "attnlrp"
    assert [t for t, _ in result.tokens(0)] == ["[CLS]", "the", "film", "was", "good", "[SEP]"]
    for got, want in zip(result.rows, (json.loads(line) for line in cli.stdout.splitlines())):
        assert got["prediction_label"] == labels[got["prediction"]] == want["prediction_label"]
        assert [t["relevance"] for t in got["tokens"]] == pytest.approx([t["relevance"] for t in want["tokens"]], rel=1e-5, abs=1e-7)
