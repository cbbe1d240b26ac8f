"""Each ecosystem's first command, as the README shows it (issue 26: "each persona's first command, as the
README now shows it, in a test"). The commands are read from README.md itself and run word for word in a folder
that holds what they name, built here (a Hugging Face classifier folder, a Lightning checkpoint with the package
its --arch names, a causal LM folder), so that a README that drifts from what works fails here."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from cli_support import lrp, minivgg, write_image

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _readme_command(pattern: str) -> list[str]:
    """The README's one `lrp ...` command line that matches ``pattern`` (a regex), as arguments."""
    lines = [line.strip() for line in re.findall(r"^\s*(lrp explain [^\n`]+)$", README, re.M) if re.search(pattern, line)]
    lines += [m for m in re.findall(r"`(lrp explain [^`]+)`", README) if re.search(pattern, m)]
    assert lines, f"no README command matches {pattern!r}"
    return shlex.split(lines[0])[1:]


def _run_in(folder: Path, monkeypatch, args: list[str]):
    monkeypatch.chdir(folder)
    return lrp(*args)


def test_hugging_face_persona(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from test_hf_folders import LABELS, WORDS, _tokenizer

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=4 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )
    args = _readme_command(r"my-finetuned-bert/ reviews\.txt")
    folder = tmp_path / args[1].rstrip("/")
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    (tmp_path / args[2]).write_text("the film was good\nnot very boring\n", encoding="utf-8")
    run = _run_in(tmp_path, monkeypatch, args)
    assert run.code == 0, run.describe()
    rows = [json.loads(line) for line in (tmp_path / "words.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {row["prediction_label"] for row in rows} <= set(LABELS.values())
    assert rows[0]["tokens"][0]["token"] == "[CLS]"


def test_lightning_persona(tmp_path, monkeypatch):
    from test_lightning import _save_checkpoint

    args = _readme_command(r"last\.ckpt images/ --arch mypkg\.nets:Net")
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("from lrpcli.sources.architectures import MiniVGG as Net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mypkg", None)
    _save_checkpoint(tmp_path / "last.ckpt", minivgg())
    write_image(tmp_path / "images" / "a.png", 7)
    run = _run_in(tmp_path, monkeypatch, args + ["-q"])
    sys.modules.pop("mypkg", None)
    sys.modules.pop("mypkg.nets", None)
    assert run.code == 0, run.describe()
    assert list((tmp_path / "lrp-out" / "relevance").glob("a*.npy"))


def test_language_model_persona(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from test_generate import _model, _tokenizer as lm_tokenizer

    args = _readme_command(r"my-llama/ prompts\.txt --max-new-tokens")
    folder = tmp_path / args[1].rstrip("/")
    _model("llama").save_pretrained(folder)
    lm_tokenizer().save_pretrained(folder)
    (tmp_path / args[2]).write_text("the film was\n", encoding="utf-8")
    run = _run_in(tmp_path, monkeypatch, args + ["-q"])
    assert run.code == 0, run.describe()
    row = json.loads((tmp_path / "gen.jsonl").read_text().splitlines()[0])
    assert row["generated"] and len(row["generated"][0]["relevance"]) == len(row["prompt_tokens"])
    assert (tmp_path / "gen.report.html").is_file()
