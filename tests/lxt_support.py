"""LXT 2.1, AttnLRP's reference implementation, for lrpcli's parity tests -- run in processes of its own.

LXT's ``monkey_patch`` rewrites ``torch.nn.LayerNorm``, ``torch.nn.Dropout`` and Hugging Face's
BERT / GPT-2 modules process-wide, so LXT is never imported into the pytest process. The test
writes each case (the model's config, its state dict, the input embeddings, the attention mask,
the targets) to a folder with :func:`save_case`; :func:`start` runs this file as a script in a
fresh interpreter (``python tests/lxt_support.py CASE_DIR=PRESET ...``), which patches, builds
the same model from the same state dict and writes LXT's relevance and logits next to the case
(``lxt_PRESET.npy``, ``lxt_PRESET_logits.npy``); :func:`finish` reads them back.

LXT's relevance is its own idiom: ``emb = inputs_embeds.requires_grad_()``, ``logits =
model(inputs_embeds=emb, ...).logits``, ``logits.backward(seed)``, ``R = emb * emb.grad``. The
seed is one-hot at each sample's target: in this gradient-times-input form the relevance that
enters at the output is then the target logit itself, which is lrpcli's default ``init="value"``.
(LXT's documented ``logit.backward(logit)`` scales every relevance by the logit once more: it
gives lrpcli's ``init="value"`` relevance times the target logit.)

LXT 2.1 imports ``torchvision.models.vision_transformer`` (for its ``nn`` alone, in a ViT preset
these tests do not use) at ``import lxt.efficient``; where torchvision is absent the script puts
``tests/shims`` (whose ``torchvision/models/vision_transformer.py`` holds only ``from torch
import nn``) on its own ``sys.path``, in its own process only. LXT 2.1 does not import with
transformers 5; it is installed with ``pip install --no-deps lxt==2.1`` beside
``transformers>=4.51,<5``. Where it is absent or does not import, the tests skip with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

LXT_VERSION = "2.1"
INSTALL_HINT = f"pip install --no-deps lxt=={LXT_VERSION} (beside transformers>=4.51,<5)"
SKIP_REASON = f"lxt {LXT_VERSION} not installed: {INSTALL_HINT}"
SHIM_DIR = Path(__file__).resolve().parent / "shims"
NOT_IMPORTABLE = 77  # the script's exit code where ``import lxt.efficient`` fails

#: (model, preset) -> (LXT module under ``lxt.efficient.models``, patch-map name, the transformers module it patches)
PRESETS = {
    ("bert", "attnLRP"): ("bert", "attnLRP", "transformers.models.bert.modeling_bert"),
    ("gpt2", "attnLRP"): ("gpt2", "attnLRP", "transformers.models.gpt2.modeling_gpt2"),
    ("gpt2", "cp_LRP"): ("gpt2", "cp_LRP", "transformers.models.gpt2.modeling_gpt2"),
}

# --------------------------------------------------------------------------- models (both processes)


def model_config(name: str) -> dict[str, Any]:
    """The tiny classifier's config (JSON-able), the same in both processes."""
    if name == "bert":
        return dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "gpt2":
        return dict(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16, num_labels=3, pad_token_id=0,
                    bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    raise KeyError(name)


def build_model(name: str, config: dict[str, Any]):
    """BertForSequenceClassification / GPT2ForSequenceClassification from ``config``, float64, eval.

    In the LXT process this runs after ``monkey_patch``, so the classes are LXT's patched ones.
    """
    import torch
    from transformers.models.bert import configuration_bert, modeling_bert
    from transformers.models.gpt2 import configuration_gpt2, modeling_gpt2

    torch.manual_seed(0)  # the weights come from the saved state dict; this only makes the build repeatable
    if name == "bert":  # looked up in the modeling module, which LXT's BERT preset replaces attribute by attribute
        model = modeling_bert.BertForSequenceClassification(configuration_bert.BertConfig(**config))
    else:
        model = modeling_gpt2.GPT2ForSequenceClassification(configuration_gpt2.GPT2Config(**config))
    return model.double().eval()


def forward_kwargs(name: str, attention_mask) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if name == "gpt2":
        kwargs["use_cache"] = False
    return kwargs


def save_case(directory: Path, name: str, model, embeds, attention_mask, target: Sequence[int]) -> Path:
    """Write a case for the LXT process: config, state dict, embeddings, mask, targets."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "case.json").write_text(json.dumps({"name": name, "config": model_config(name), "target": list(target)}))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, directory / "state.pt")
    torch.save({"embeds": embeds.detach().clone(), "attention_mask": attention_mask}, directory / "inputs.pt")
    return directory


# --------------------------------------------------------------------------- the pytest side


def lxt_installed() -> bool:
    return importlib.util.find_spec("lxt") is not None


def start(jobs: Sequence[tuple[Path, str]]) -> subprocess.Popen:
    """Start one LXT process for ``jobs``, (case folder, preset) pairs; :func:`finish` collects its results.

    One process may serve several models (BERT and GPT-2 under ``attnLRP``), never two presets of
    one transformers module (GPT-2's ``attnLRP`` and ``cp_LRP`` patch the same functions).
    """
    patched = [PRESETS[(_case_name(directory), preset)][2] for directory, preset in jobs]
    if len(set(patched)) != len(patched):
        raise ValueError(f"one LXT process cannot patch a transformers module twice: {jobs}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, str(Path(__file__).resolve())] + [f"{directory}={preset}" for directory, preset in jobs]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(jobs[0][0]))


def finish(process: subprocess.Popen, jobs: Sequence[tuple[Path, str]], timeout: float = 180) -> list[tuple[Any, Any]]:
    """(relevance, logits) per job, as numpy arrays, from a process :func:`start` began; or skip / fail.

    The relevance is LXT's ``emb * emb.grad``, shaped like the embeddings.
    """
    import numpy as np
    import pytest

    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"the LXT process for {jobs} ran past {timeout} s")
    if process.returncode == NOT_IMPORTABLE:
        pytest.skip(f"lxt {LXT_VERSION} is installed but does not import ({out.strip()}): {INSTALL_HINT}")
    if process.returncode != 0:
        raise AssertionError(f"the LXT process for {jobs} failed (exit {process.returncode}):\n{err[-4000:]}")
    return [(np.load(directory / f"lxt_{preset}.npy"), np.load(directory / f"lxt_{preset}_logits.npy"))
            for directory, preset in jobs]


def _case_name(directory: Path) -> str:
    return json.loads((Path(directory) / "case.json").read_text())["name"]


# --------------------------------------------------------------------------- the LXT process


def _import_lxt():
    if importlib.util.find_spec("torchvision") is None:
        sys.path.insert(0, str(SHIM_DIR))  # this process only: LXT's ViT preset needs torchvision.models.vision_transformer.nn
    import lxt.efficient  # noqa: F401
    import lxt.efficient.models  # noqa: F401

    return lxt.efficient


def _run_case(directory: Path, preset: str) -> None:
    import numpy as np
    import torch

    case = json.loads((directory / "case.json").read_text())
    name = case["name"]
    model = build_model(name, case["config"])  # built after the patch: LXT's classes
    model.load_state_dict(torch.load(directory / "state.pt"))
    inputs = torch.load(directory / "inputs.pt")
    emb = inputs["embeds"].clone().requires_grad_(True)
    logits = model(inputs_embeds=emb, **forward_kwargs(name, inputs["attention_mask"])).logits
    seed = torch.zeros_like(logits)
    seed[torch.arange(logits.shape[0]), torch.tensor(case["target"])] = 1.0  # one-hot: R at the output = the logit
    logits.backward(seed)
    np.save(directory / f"lxt_{preset}.npy", (emb * emb.grad).detach().numpy())
    np.save(directory / f"lxt_{preset}_logits.npy", logits.detach().numpy())


def main(argv: Sequence[str]) -> int:
    """``python tests/lxt_support.py CASE_DIR=PRESET ...``: patch once for all, then run each case."""
    jobs = [(Path(job.rsplit("=", 1)[0]), job.rsplit("=", 1)[1]) for job in argv]
    try:
        efficient = _import_lxt()
    except ImportError as error:
        print(f"{type(error).__name__}: {error}")
        return NOT_IMPORTABLE
    import importlib

    import torch

    torch.set_num_threads(1)
    for directory, preset in jobs:
        lxt_module, map_name, patched = PRESETS[(_case_name(directory), preset)]
        patch_map = getattr(importlib.import_module(f"lxt.efficient.models.{lxt_module}"), map_name)
        efficient.monkey_patch(importlib.import_module(patched), patch_map)
    for directory, preset in jobs:
        _run_case(directory, preset)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
