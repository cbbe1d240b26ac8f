"""A Hugging Face folder (what save_pretrained writes) as MODEL (issue 26, item 1; the sequence-classifier slice).

A tiny BERT classifier with random weights and a word-level tokenizer are saved the way a user's fine-tuning
run saves them; `lrp explain DIR texts` must read the labels from id2label, tokenize with the folder's own
tokenizer ([CLS] ... [SEP] in place) and give the relevance that `explain()` gives on the same model object
with the same ids and mask.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_support import lrp, refused

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "the film was good bad great boring not very".split()
LABELS = {0: "negative", 1: "positive", 2: "mixed"}


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", model_max_length=16
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=4 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )
    model = transformers.BertForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("hf") / "sentiment"
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path, model


def test_a_folder_explains_with_its_labels_tokenizer_and_the_engines_relevance(folder, tmp_path):
    from lrpcli import explain

    path, model = folder
    texts = tmp_path / "texts.txt"
    texts.write_text("the film was good\nnot very great boring\n", encoding="utf-8")
    run = lrp("explain", path, texts, "-q", "--no-report", out=tmp_path / "words.jsonl")
    assert run.code == 0, run.describe()
    rows = [json.loads(line) for line in (tmp_path / "words.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    tokenizer = _tokenizer()
    for row, text in zip(rows, ["the film was good", "not very great boring"]):
        assert row["prediction_label"] == LABELS[row["prediction"]] and row["target_label"] == LABELS[row["target"]]
        pieces = [t["token"] for t in row["tokens"]]
        assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and pieces[1:-1] == text.split()
        encoded = tokenizer(text, return_tensors="pt")
        expected = explain(model_forward(model), encoded["input_ids"], "attnlrp", target=row["target"], inputs={"attention_mask": encoded["attention_mask"]})
        got = torch.tensor([t["relevance"] for t in row["tokens"]], dtype=torch.float64)
        torch.testing.assert_close(got, expected.relevance[0].double(), rtol=1e-4, atol=1e-6)
        assert row["logit"] == pytest.approx(float(expected.outputs[0, row["target"]]), rel=1e-4)


def model_forward(model):
    """The user's own wrapper: ids and mask in, logits out (what lrp builds for a folder)."""

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Wrapped().eval()


def test_the_folder_reads_as_a_spec(folder):
    from lrpcli.sources.files import is_spec, load_spec

    path, _ = folder
    spec = load_spec(path)
    assert is_spec(path) and spec.classes == ["negative", "positive", "mixed"] and spec.composite == "attnlrp"
    assert spec.input["kind"] == "text" and spec.input["max_length"] == 16  # the tokenizer's model_max_length


def test_pickled_weights_need_consent_and_remote_code_never_runs(folder, tmp_path):
    path, model = folder
    pickled = tmp_path / "pickled"
    model.save_pretrained(pickled, safe_serialization=False)
    _tokenizer().save_pretrained(pickled)
    texts = tmp_path / "t.txt"
    texts.write_text("the film\n", encoding="utf-8")
    refused(lrp("explain", pickled, texts, "-q", "--no-report", out=tmp_path / "o.jsonl"), 4, "pytorch_model.bin is a pickle", "--allow-pickle")
    assert lrp("explain", pickled, texts, "-q", "--no-report", "--allow-pickle", out=tmp_path / "o2.jsonl").code == 0
    remote = tmp_path / "remote"
    model.save_pretrained(remote)
    _tokenizer().save_pretrained(remote)
    config = json.loads((remote / "config.json").read_text())
    config["architectures"] = ["PlantedForSequenceClassification"]
    config["auto_map"] = {"AutoModelForSequenceClassification": "planted.PlantedForSequenceClassification"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "planted.py").write_text("open('MARKER', 'w').write('ran')\n")
    refused(lrp("explain", remote, texts, "-q", "--no-report", out=tmp_path / "o3.jsonl"), 4, "no model class of transformers")
    assert not (remote / "MARKER").exists() and not (tmp_path / "MARKER").exists()


def test_a_plain_folder_is_named_as_such(tmp_path):
    from cli_support import write_image

    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "imgs" / "a.png", 1)
    refused(lrp("explain", tmp_path / "empty", tmp_path / "imgs", "-q", out=tmp_path / "o"), 4, "folder without config.json")


def test_without_transformers_the_message_names_the_extra(folder, tmp_path, monkeypatch):
    import sys

    path, _ = folder
    texts = tmp_path / "t.txt"
    texts.write_text("the film\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    refused(lrp("explain", path, texts, "-q", "--no-report", out=tmp_path / "o.jsonl"), 4, "pip install 'lrpcli[hf]'")


def test_init_on_a_folder_says_it_needs_no_spec(folder, tmp_path):
    path, _ = folder
    refused(lrp("init", path, "texts.txt", "-o", tmp_path / "m.yaml"), 2, "no spec needed", f"lrp explain {path} texts.txt")
    assert not (tmp_path / "m.yaml").exists()


def test_an_onnx_file_is_named_as_such_not_answered_with_allow_pickle(tmp_path):
    from cli_support import write_image

    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")  # the start of an ONNX protobuf
    write_image(tmp_path / "imgs" / "a.png", 1)
    run = lrp("explain", tmp_path / "model.onnx", tmp_path / "imgs", "-q", out=tmp_path / "o")
    refused(run, 4, "is an ONNX model", "torch.export.save")
    assert "--allow-pickle" not in run.stderr


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog"}
    config = transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()},
    )
    model = transformers.ViTForImageClassification(config).eval()
    path = tmp_path_factory.mktemp("hf") / "vit"
    model.save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]).save_pretrained(path)
    return path, model


def test_an_image_classifier_folder_prepares_images_as_its_processor_and_explains_them(vit_folder, tmp_path):
    """The folder's processor output (resize 40x30 -> 16x16, rescale, normalise) equals lrp's input, and the
    relevance equals explain() on the same model with the processor's pixel values."""
    from PIL import Image

    from lrpcli import explain
    from lrpcli.cli.options import spec_preprocessing
    from lrpcli.sources.files import load_spec

    path, model = vit_folder
    from cli_support import write_image

    image_path = write_image(tmp_path / "imgs" / "a.png", 5, size=(40, 30))
    processor = transformers.AutoImageProcessor.from_pretrained(path, use_fast=False)
    with Image.open(image_path) as image:
        expected_pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
    spec = load_spec(path)
    assert spec.classes == ["cat", "dog"] and spec.composite == "attnlrp"
    preprocessing = spec_preprocessing(spec)
    ours = preprocessing.tensor(preprocessing.pixels(image_path))[None]
    torch.testing.assert_close(ours.float(), expected_pixels, rtol=0, atol=1e-5)
    run = lrp("explain", path, tmp_path / "imgs", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    (row,) = run.rows()
    assert row["prediction_label"] in ("cat", "dog")

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    expected = explain(Wrapped().eval(), expected_pixels, "attnlrp", target=int(row["target"]))
    np.testing.assert_allclose(run.array(row["relevance"]), expected.relevance[0].numpy(), rtol=1e-3, atol=1e-5)


def test_a_processor_lrp_cannot_follow_is_named(vit_folder, tmp_path):
    from cli_support import write_image

    path, model = vit_folder
    other = tmp_path / "shortest"
    model.save_pretrained(other)
    transformers.ViTImageProcessor(size={"shortest_edge": 16}).save_pretrained(other)
    write_image(tmp_path / "imgs" / "a.png", 5)
    refused(lrp("explain", other, tmp_path / "imgs", "-q", out=tmp_path / "o"), 4, "fixed height and width", "input.resize")


def test_a_causal_lm_folder_explains_the_next_token_after_each_texts_last_word(tmp_path):
    """Texts of different lengths in one batch (padded on the right): each one's next-token logit and token
    relevance equal explain() on that text alone through a user's own last-position wrapper."""
    from lrpcli import explain

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=4 + len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path / "lm"
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    texts = ["the film was good", "bad boring not very great"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    run = lrp("explain", path, tmp_path / "t.txt", "-q", "--no-report", out=tmp_path / "next.jsonl")
    assert run.code == 0, run.describe()
    rows = [json.loads(line) for line in (tmp_path / "next.jsonl").read_text().splitlines()]

    class LastToken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1]

    vocabulary = {v: k for k, v in _tokenizer().get_vocab().items()}
    tokenizer = _tokenizer()
    for row, text in zip(rows, texts):
        encoded = tokenizer(text, return_tensors="pt")
        expected = explain(LastToken().eval(), encoded["input_ids"], "attnlrp", target=row["target"], inputs={"attention_mask": encoded["attention_mask"]})
        assert row["prediction"] == int(expected.outputs[0].argmax()) and row["prediction_label"] == vocabulary[row["prediction"]]
        assert row["logit"] == pytest.approx(float(expected.outputs[0, row["target"]]), rel=1e-4)
        got = torch.tensor([t["relevance"] for t in row["tokens"]], dtype=torch.float64)
        torch.testing.assert_close(got, expected.relevance[0].double(), rtol=1e-4, atol=1e-6)


def test_a_model_that_takes_no_attention_mask_is_wrapped_without_one():
    """FNet mixes tokens by a Fourier transform and its forward has no attention_mask: the wrapper passes none
    when it has none (it passed attention_mask=None, a TypeError in FNet's forward); then it explains."""
    import transformers

    from lrpcli import explain
    from lrpcli.sources.hf import Logits

    torch.manual_seed(0)
    config = transformers.FNetConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=3)
    model = transformers.FNetForSequenceClassification(config).eval()
    ids = torch.randint(2, 64, (2, 6))
    with torch.no_grad():
        own = model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.equal(Logits(model).eval()(ids), own)
    result = explain(Logits(model).eval(), ids, "epsilon_plus")  # its Fourier mixing: engine/fourier.py
    assert torch.allclose(result.outputs, own, atol=1e-5)
    assert result.relevance.shape == ids.shape and torch.isfinite(result.relevance).all()
