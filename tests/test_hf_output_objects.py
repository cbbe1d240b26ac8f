"""The Hugging Face wrappers read the logits off the model's output object (issue 27): Aria-text's head reads
``.last_hidden_state`` off its inner model's output and ShieldGemma2's ``.logits``, which ``return_dict=False``
made tuples (a raw AttributeError before). Tiny random configs of benchmarks/hf_zoo.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lrpcli import explain
from lrpcli.errors import ModelError

transformers = pytest.importorskip("transformers")

from lrpcli.sources import hf  # noqa: E402

_spec = importlib.util.spec_from_file_location("hf_zoo", Path(__file__).resolve().parent.parent / "benchmarks" / "hf_zoo.py")
hf_zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf_zoo)


def test_aria_text_explains_through_the_next_token_wrapper():
    """Before: AttributeError: 'tuple' object has no attribute 'last_hidden_state'."""
    torch.manual_seed(0)
    _config, model, _ = hf_zoo.build("causal:aria_text")
    wrapped = hf.NextTokenLogits(model).eval()
    ids = torch.randint(3, 40, (2, 6))
    with torch.no_grad():
        own = model(input_ids=ids).logits[:, -1]
    result = explain(wrapped, ids, "attnlrp")
    assert (result.outputs - own).abs().max() <= 1e-5 * own.abs().max()
    assert torch.isfinite(result.relevance).all() and result.relevance.abs().sum() > 0


def _shieldgemma2():
    torch.manual_seed(0)
    config, model, _ = hf_zoo.build("image:shieldgemma2")
    size = config.vision_config.image_size
    prompt = torch.tensor([[1] + [config.image_token_index] * config.mm_tokens_per_image + list(range(6, 12))])
    return config, model, prompt, torch.randn(2, 3, size, size)


def test_shieldgemma2_image_wrapper_feeds_its_prompt_and_reads_the_logits():
    """Before: ImageLogits took no prompt, and its forward read .logits off a tuple (AttributeError). (Capturing
    it stops next at Gemma3's get_placeholder_mask, a data-dependent check torch.export cannot guard: a
    ModelError, not this wrapper's.)"""
    _config, model, prompt, pixels = _shieldgemma2()
    wrapped = hf.ImageLogits(model, prompt=prompt).eval()
    with torch.no_grad():
        own = model(input_ids=prompt.expand(2, -1), pixel_values=pixels).logits
        ours = wrapped(pixels)
    assert ours.shape == (2, 2) and torch.equal(ours, own)


def test_a_shieldgemma2_folder_says_it_needs_its_prompt(tmp_path):
    """lrp explain feeds images alone: a folder whose classifier also reads a prompt is a ModelError that says
    how to give it one (before: the image wrapper failed inside transformers)."""
    _config, model, _prompt, _pixels = _shieldgemma2()
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelError) as caught:
        hf.load(tmp_path)
    assert "prompt" in str(caught.value) and "ImageLogits" in caught.value.hint
