"""Texts in, token relevance out: `lrp explain MODEL TEXTS --tokenizer tokenizer.json`.

The models here are bag-of-embeddings classifiers with a bias-free linear head, so each
token's relevance has a closed form to check against: R_t = E[id_t] . W[target] (LRP-epsilon
of a linear map, epsilon -> 0), and the token relevances add up to the logit.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from lrpcli.cli import main

tokenizers = pytest.importorskip("tokenizers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "film", "was", "good", "bad", "un", "##happy", "happy", "plot", "<", ">", "b", ",", "."]


def _tokenizer(path: Path, specials: bool = True) -> Path:
    """A WordPiece tokenizer (subword pieces: unhappy -> un ##happy), with [CLS] ... [SEP] around each text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    if specials:
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.save(str(path))
    return path


class Bag(nn.Module):
    """Sum of the real tokens' embeddings, then a bias-free linear head; optionally an attention-mask input."""

    def __init__(self, classes: int = 3, mask_pads: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(len(VOCAB), 6, padding_idx=None if not mask_pads else 0)
        self.head = nn.Linear(6, classes, bias=False)
        self.mask_pads = mask_pads
        if not mask_pads:
            with torch.no_grad():
                self.embedding.weight[0] = 1.0  # pads look up a non-zero row and nothing masks them

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(ids)
        if self.mask_pads:
            embedded = embedded * (ids != 0).to(embedded.dtype).unsqueeze(-1)
        return self.head(embedded.sum(1))

    def expected(self, ids: list[int], target: int) -> list[float]:
        weights = self.embedding.weight.detach().double()
        return (weights[ids] @ self.head.weight.detach().double()[target]).tolist()


class MaskedBag(Bag):
    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head((self.embedding(ids) * attention_mask.unsqueeze(-1).to(self.embedding.weight.dtype)).sum(1))


def _export(model: nn.Module, path: Path, mask: bool = False) -> Path:
    ids = torch.tensor([[2, 4, 5, 3], [2, 6, 7, 3]])
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
    if mask:
        program = torch.export.export(model, (ids, torch.ones_like(ids)), dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
    else:
        program = torch.export.export(model, (ids,), dynamic_shapes=({0: batch, 1: length},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    model = Bag().eval()
    spec = folder / "model.yaml"
    _export(model, folder / "bag.pt2")
    _tokenizer(folder / "tokenizer.json")
    spec.write_text("model: bag.pt2\ninput: {kind: text, tokenizer: tokenizer.json, max_length: 32}\nclasses: [neg, neu, pos]\n")
    texts = folder / "texts.txt"
    texts.write_text("The film was good.\n\nan unhappy plot, bad film\n<b>happy</b>\n")
    return folder, model, spec, texts


def run(*args, input=None):
    return CliRunner().invoke(main, ["explain", *map(str, args)], input=input)


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def _token_ids(tokenizer_path: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path)).encode(text).ids


def test_jsonl_rows_carry_token_relevance_that_matches_the_closed_form_and_sums_to_the_logit(text_setup):
    folder, model, spec, texts = text_setup
    result = run(spec, texts, "--dtype", "float64", "-t", "all", "-c", "lrp_0")
    assert result.exit_code == 0, result.output
    rows = lines(result.stdout)
    assert [row["id"] for row in rows] == ["1"] * 3 + ["3"] * 3 + ["4"] * 3  # line numbers; the blank line is skipped
    for row in rows:
        ids = _token_ids(folder / "tokenizer.json", row["text"])
        expected = model.expected(ids, row["target"])
        got = [token["relevance"] for token in row["tokens"]]
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-9)
        assert row["relevance_sum"] == pytest.approx(row["logit"], rel=1e-6, abs=1e-9)
        assert row["target_label"] == ["neg", "neu", "pos"][row["target"]]
        for token in row["tokens"]:  # offsets point into the text ([CLS]/[SEP] are flagged and span nothing)
            if token.get("special"):
                assert token["start"] == token["end"] == 0
            elif token["token"] != "[UNK]":
                assert row["text"][token["start"] : token["end"]].lower() == token["token"].lstrip("#")


def test_subword_pieces_are_merged_into_words_with_their_relevance_summed(text_setup):
    folder, model, spec, texts = text_setup
    row = next(r for r in lines(run(spec, texts, "--dtype", "float64").stdout) if r["id"] == "3")
    pieces = [t["token"] for t in row["tokens"]]
    assert pieces[:4] == ["[CLS]", "[UNK]", "un", "##happy"]  # "an" is not in the vocabulary
    words = [w["word"] for w in row["words"]]
    assert words == ["an", "unhappy", "plot", ",", "bad", "film"]
    unhappy = row["words"][1]
    assert unhappy["relevance"] == pytest.approx(row["tokens"][2]["relevance"] + row["tokens"][3]["relevance"])
    assert row["text"][unhappy["start"] : unhappy["end"]] == "unhappy"
    assert sum(w["relevance"] for w in row["words"]) + sum(t["relevance"] for t in row["tokens"] if t.get("special")) == pytest.approx(row["relevance_sum"])


def test_top_k_lists_the_words_most_for_and_against(text_setup):
    folder, model, spec, texts = text_setup
    row = next(r for r in lines(run(spec, texts, "--top-k", "2").stdout) if r["id"] == "3")
    ranked = sorted(row["words"], key=lambda w: w["relevance"])
    assert [w["word"] for w in row["top_positive"]] == [w["word"] for w in ranked[::-1][:2] if w["relevance"] > 0]
    assert [w["word"] for w in row["top_negative"]] == [w["word"] for w in ranked[:2] if w["relevance"] < 0]


def test_csv_format_writes_one_row_per_token(text_setup):
    import csv
    import io

    folder, model, spec, texts = text_setup
    result = run(spec, texts, "--format", "csv")
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    jsonl = lines(run(spec, texts).stdout)
    assert len(table) == sum(len(row["tokens"]) for row in jsonl)
    unhappy = [r for r in table if r["id"] == "3" and r["word"] == "unhappy"]
    assert [r["token"] for r in unhappy] == ["un", "##happy"]
    assert {r["special"] for r in table if r["token"] in ("[CLS]", "[SEP]")} == {"1"}


def test_csv_and_jsonl_inputs_carry_ids_and_labels_and_name_bad_rows(text_setup, tmp_path):
    folder, model, spec, texts = text_setup
    reviews = tmp_path / "reviews.csv"
    reviews.write_text('id,review,label\nr1,"good film, good plot",pos\nr2,,neg\nr3,bad plot,neg\n')
    result = run(spec, reviews, "--text-col", "review", "--id-col", "id", "--label-col", "label")
    assert result.exit_code == 5  # a bad row: the others are written, the run says so
    rows = lines(result.stdout)
    assert [(r["id"], r["label"]) for r in rows] == [("r1", "pos"), ("r3", "neg")]
    assert "row 3: no text in column 'review'" in result.stderr
    records = tmp_path / "reviews.jsonl"
    records.write_text('{"key": 7, "body": "the plot"}\nnot json\n{"key": 9, "body": "happy"}\n')
    result = run(spec, records, "--text-col", "body", "--id-col", "key")
    assert [r["id"] for r in lines(result.stdout)] == ["7", "9"]
    assert "line 2: not valid JSON" in result.stderr and result.exit_code == 5
    missing = run(spec, reviews)
    assert missing.exit_code == 5 and "--text-col" in missing.output


def test_stdin_and_output_file(text_setup, tmp_path):
    folder, model, spec, texts = text_setup
    out = tmp_path / "out.jsonl"
    result = run(spec, "-", "-o", out, input="good film\nbad film\n")
    assert result.exit_code == 0, result.output
    assert [r["text"] for r in lines(out.read_text())] == ["good film", "bad film"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_long_texts_are_truncated_and_reported(text_setup):
    folder, model, spec, texts = text_setup
    result = run(spec, texts, "--max-length", "4")
    assert result.exit_code == 0, result.output
    rows = lines(result.stdout)
    assert all(len(row["tokens"]) <= 4 for row in rows)
    assert [row["truncated"] for row in rows] == [True, True, True]
    assert rows[0]["tokens"][-1]["token"] == "[SEP]"  # truncation keeps the special tokens
    assert "3 text(s) were cut to 4 tokens" in result.stderr


def test_html_page_shades_every_word_and_escapes_the_text(text_setup, tmp_path):
    folder, model, spec, texts = text_setup
    page = tmp_path / "page.html"
    result = run(spec, texts, "--html", page, "-o", tmp_path / "rows.jsonl")
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "<b>" not in html and "&lt;" in html and "&gt;" in html  # text is shown, never interpreted
    assert html.count('class="text"') == 3
    rows = lines((tmp_path / "rows.jsonl").read_text())
    shaded = re.findall(r'<span class="w" style="background: rgba\((\d+),0,(\d+),([\d.]+)\)(?:; color: #fff)?" title="([^"]+)">', html)
    assert len(shaded) == sum(len(row["words"]) for row in rows)
    signs = [1 if red == "255" else -1 for red, blue, alpha, title in shaded]
    assert signs == [1 if w["relevance"] > 0 else -1 for row in rows for w in row["words"]]
    assert "<script" not in html and not re.search(r"https?:", html)  # no script, no address (the policy's http-equiv is no address)
    assert "default-src 'none'" in html  # and a policy that fetches nothing


def test_an_attention_mask_input_is_fed_the_mask(tmp_path):
    model = MaskedBag().eval()
    _export(model, tmp_path / "masked.pt2", mask=True)
    _tokenizer(tmp_path / "tokenizer.json")
    texts = tmp_path / "t.txt"
    texts.write_text("good\nthe film was good\n")  # two lengths: the short one is padded
    result = run(tmp_path / "masked.pt2", texts, "--tokenizer", tmp_path / "tokenizer.json", "--dtype", "float64", "-c", "lrp_0")
    assert result.exit_code == 0, result.output
    assert "'attention_mask' input" in result.stderr
    for row in lines(result.stdout):
        ids = _token_ids(tmp_path / "tokenizer.json", row["text"])
        assert [t["relevance"] for t in row["tokens"]] == pytest.approx(model.expected(ids, row["target"]), rel=1e-5, abs=1e-9)


def test_a_model_that_does_not_mask_its_padding_is_named(tmp_path):
    _export(Bag(mask_pads=False).eval(), tmp_path / "leaky.pt2")
    _tokenizer(tmp_path / "tokenizer.json")
    texts = tmp_path / "t.txt"
    texts.write_text("good\nthe film was good\n")
    result = run(tmp_path / "leaky.pt2", texts, "--tokenizer", tmp_path / "tokenizer.json")
    assert result.exit_code == 0, result.output
    assert "padding tokens received relevance" in result.stderr


def test_clear_errors_for_missing_pieces(text_setup, tmp_path):
    folder, model, spec, texts = text_setup
    no_tokenizer = run(folder / "bag.pt2", texts)
    assert no_tokenizer.exit_code == 2 and "--tokenizer" in no_tokenizer.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not a tokenizer")
    assert run(folder / "bag.pt2", texts, "--tokenizer", bad).exit_code == 3
    assert run(spec, texts, "--size", "32").exit_code == 2
    assert run(spec, texts, "--format", "pretty", "-o", tmp_path / "x.jsonl").exit_code == 2
    images = run(spec.parent / "bag.pt2", tmp_path, "--html", tmp_path / "p.html")
    assert images.exit_code == 2 and "applies to texts" in images.output


def test_pretty_format_prints_the_texts(text_setup):
    folder, model, spec, texts = text_setup
    result = run(spec, texts, "--format", "pretty", "--top-k", "1")
    assert result.exit_code == 0, result.output
    assert "an unhappy plot, bad film" in result.stdout
    assert "for: " in result.stdout and "against: " in result.stdout


class BiasedBag(Bag):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3, bias=True)
        with torch.no_grad():
            self.head.bias.fill_(0.5)


def test_check_conservation_on_texts_passes_bias_free_and_names_a_bias(text_setup, tmp_path):
    folder, model, spec, texts = text_setup
    ok = CliRunner().invoke(main, ["check-conservation", str(spec), str(texts), "--dtype", "float64", "-c", "lrp_0", "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout[: ok.stdout.rindex("}") + 1])
    assert len(report["samples"]) == 3
    for sample in report["samples"]:
        assert abs(sample["logit"] - sample["input_relevance"]) <= 1e-10 * max(1.0, abs(sample["logit"]))
    _export(BiasedBag().eval(), tmp_path / "biased.pt2")
    args = ["check-conservation", str(tmp_path / "biased.pt2"), str(texts), "--tokenizer", str(folder / "tokenizer.json")]
    gate = CliRunner().invoke(main, args + ["--dtype", "float64", "-c", "lrp_0", "--count", "all"])
    assert gate.exit_code == 6 and "head" in gate.output  # the bias took the gap, at the head
    explained = CliRunner().invoke(main, args + ["--dtype", "float64", "-c", "lrp_0", "--count", "unexplained"])
    assert explained.exit_code == 0, explained.output  # ... and the ledger says so: nothing unexplained


def _bert_pt2(path: Path) -> Path:
    """A small random Hugging Face BERT classifier, exported taking (input_ids, attention_mask)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=3,
    )
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config).eval()

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.tensor([[2, 4, 5, 3], [2, 6, 7, 3]])
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length", max=64)}
    torch.export.save(torch.export.export(Logits().eval(), (ids, torch.ones_like(ids)), dynamic_shapes=(dims, dims)), str(path))
    return path


def test_a_hugging_face_bert_gives_each_text_the_same_relevance_alone_as_in_a_padded_batch(text_setup, tmp_path):
    """With the attention mask fed, padding changes nothing: batched (padded) and one-by-one results agree."""
    folder, model, spec, texts = text_setup
    bert = _bert_pt2(tmp_path / "bert.pt2")
    args = [bert, texts, "--tokenizer", folder / "tokenizer.json", "-c", "attnlrp", "--dtype", "float64", "-t", "1"]
    batched = run(*args)
    alone = run(*args, "-b", "1")
    assert batched.exit_code == 0 and alone.exit_code == 0, batched.output + alone.output
    assert "'attention_mask' input" in batched.stderr
    for one, other in zip(lines(batched.stdout), lines(alone.stdout)):
        assert one["logit"] == pytest.approx(other["logit"], rel=1e-9)
        assert [t["relevance"] for t in one["tokens"]] == pytest.approx([t["relevance"] for t in other["tokens"]], rel=1e-6, abs=1e-12)
        assert any(abs(t["relevance"]) > 0 for t in one["tokens"] if not t.get("special"))
