"""Hugging Face folders (what ``save_pretrained`` writes) as MODEL: config.json, model.safetensors and the
folder's own tokenizer.json.

The folder reads as a model spec (:func:`folder_spec`): the class from ``config.architectures`` (a class of
``transformers`` itself, never remote code), class names from ``id2label``, the tokenizer and its length,
``attnlrp`` as the composite. The model is wrapped (:class:`Logits`) so that it takes the token ids and an
attention mask and returns the logits as one tensor (``return_dict=False``): the export path behind it is
lrpcli's job, not the user's. Weights load from safetensors; ``pytorch_model.bin`` (a pickle) only with
``--allow-pickle``. Sequence classifiers (texts with the folder's tokenizer) and image classifiers (images
with the folder's image-processor settings: a fixed height and width, bilinear resampling, rescale by 1/255,
normalise); causal LMs come next.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

INSTALL_HINT = "pip install 'lrpcli[hf]'"
#: the longest sequence a text spec made from a folder asks for, whatever the tokenizer allows
MAX_LENGTH = 512
_TASKS = {"ForSequenceClassification": "text", "ForImageClassification": "image", "ForCausalLM": "next-token", "LMHeadModel": "next-token"}


def is_folder(path: str | Path) -> bool:
    """Is ``path`` a Hugging Face model folder (a directory with config.json)?"""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file()


def _json(path: Path) -> dict[str, Any]:
    from ..limits import read_text

    try:
        data = json.loads(read_text(path, path.name, 1 << 20))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data


def _architecture(folder: Path, config: dict[str, Any]) -> tuple[str, str]:
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise ModelError(f"{folder / 'config.json'} names no architecture ('architectures' is missing)", hint="save the model with save_pretrained, which writes it")
    name = names[0]
    task = next((kind for suffix, kind in _TASKS.items() if name.endswith(suffix)), None)
    if task is None:
        raise ModelError(
            f"{folder}: lrp explains sequence and image classifiers and causal LMs (the next token) from a Hugging Face folder so far; this one is a {name}",
            hint="export the model yourself (torch.export.save with return_dict=False) and give the .pt2",
        )
    return name, task


def class_names(config: dict[str, Any]) -> list[str] | None:
    """``id2label`` as a list, where its keys are 0..n-1 (transformers writes LABEL_0... when none were set)."""
    labels = config.get("id2label")
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        by_index = {int(key): str(value) for key, value in labels.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    return [by_index[i] for i in range(len(by_index))]


def _max_length(folder: Path, config: dict[str, Any]) -> int:
    lengths = [MAX_LENGTH]
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        value = _json(tokenizer_config).get("model_max_length")
        if isinstance(value, int) and 0 < value:
            lengths.append(value)
    value = config.get("max_position_embeddings")
    if isinstance(value, int) and 0 < value:
        lengths.append(value)
    return min(lengths)


def folder_spec(folder: str | Path) -> Any:
    """The model spec a Hugging Face folder amounts to (model, input, classes, composite)."""
    from .files import ModelSpec

    folder = Path(folder)
    config = _json(folder / "config.json")
    _, task = _architecture(folder, config)
    composite = "attnlrp" if is_transformer(config) else "epsilon_plus_flat"
    if task == "image":
        return ModelSpec(model=folder, input=image_input(folder), classes=class_names(config), composite=composite, source=folder / "config.json")
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelError(
            f"{folder} has no tokenizer.json: lrp tokenizes with the folder's own (fast) tokenizer",
            hint="save the tokenizer into the folder too: AutoTokenizer.from_pretrained(...).save_pretrained(folder)",
        )
    inputs = {"kind": "text", "tokenizer": str(tokenizer), "max_length": _max_length(folder, config), "mask": "attention_mask"}
    classes = token_names(tokenizer) if task == "next-token" else class_names(config)
    return ModelSpec(model=folder, input=inputs, classes=classes, composite=composite, source=folder / "config.json")


#: config keys that give a transformer's number of attention heads, across the families' spellings (GPT-2: n_head;
#: Swin: num_heads, per stage)
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads", "decoder_attention_heads")


def is_transformer(config: dict[str, Any]) -> bool:
    """Does the config describe attention layers? Such models get AttnLRP; a nested text or vision config counts too."""
    nested = [value for key, value in config.items() if key.endswith("_config") and isinstance(value, dict)]
    return any(key in part for part in (config, *nested) for key in _HEAD_KEYS)


def token_names(tokenizer: Path) -> list[str] | None:
    """A causal LM's classes are its vocabulary: each id's token, so a prediction reads as the next token."""
    from tokenizers import Tokenizer

    vocabulary = Tokenizer.from_file(str(tokenizer)).get_vocab(with_added_tokens=True)
    names = {index: token for token, index in vocabulary.items()}
    return [names.get(i, f"<{i}>") for i in range(max(names) + 1)] if names else None


def image_input(folder: Path) -> dict[str, Any]:
    """The spec's ``input`` for the folder's image processor (preprocessor_config.json): what lrp's own
    preprocessing does the same way, or a named refusal."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no preprocessor_config.json: lrp prepares images as the folder's image processor does",
                         hint="save the image processor into the folder too: AutoImageProcessor.from_pretrained(...).save_pretrained(folder)")
    config = _json(path)
    size = config.get("size") if config.get("do_resize", True) else None
    if not (isinstance(size, dict) and isinstance(size.get("height"), int) and isinstance(size.get("width"), int)):
        raise ModelError(f"{path}: lrp follows processors that resize to a fixed height and width; this one has size {size!r}",
                         hint="give the preprocessing yourself: a spec .yaml with input.resize/crop/mean/std")
    if config.get("resample", 2) != 2:
        raise ModelError(f"{path}: resample {config.get('resample')} is not bilinear (2), the one lrp resizes with",
                         hint="give the preprocessing yourself in a spec .yaml")
    if config.get("do_rescale", True) and abs(float(config.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ModelError(f"{path}: rescale_factor {config.get('rescale_factor')} is not 1/255", hint="give the preprocessing yourself in a spec .yaml")
    normalise = config.get("do_normalize", True)
    mean = [float(v) for v in config.get("image_mean", [0.5, 0.5, 0.5])] if normalise else [0.0]
    std = [float(v) for v in config.get("image_std", [0.5, 0.5, 0.5])] if normalise else [1.0]
    return {"mode": "RGB", "size": [size["height"], size["width"]], "mean": mean, "std": std}


class _Wrapped(torch.nn.Module):
    """A transformers model held as ``model``, so that parameter names keep their ``model.`` prefix."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model


class Logits(_Wrapped):
    """A transformers text model as lrp explains it: token ids (and a mask) in, the logits out as one tensor."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]


class NextTokenLogits(_Wrapped):
    """A causal LM as lrp explains it: token ids (and a mask) in, the logits of the token after the last real
    one out (texts are padded on the right, so that is the mask's last 1, not the last position)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        if attention_mask is None:
            return logits[:, -1]
        last = attention_mask.sum(dim=1) - 1
        return logits[torch.arange(logits.shape[0], device=logits.device), last]


class ImageLogits(_Wrapped):
    """A transformers image classifier as lrp explains it: pixel values in, the logits out as one tensor."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=False)[0]


def load(folder: str | Path, *, allow_pickle: bool = False) -> torch.nn.Module:
    """The folder's model, built by its transformers class from config.json, weights from safetensors."""
    folder = Path(folder)
    config = _json(folder / "config.json")
    name, task = _architecture(folder, config)
    try:
        import transformers
    except ImportError as exc:
        raise ModelError(f"{folder} is a Hugging Face folder, which needs transformers", hint=INSTALL_HINT) from exc
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelError(
            f"{folder}: '{name}' is no model class of transformers {transformers.__version__} (remote code is not run)",
            hint="upgrade transformers if the class is newer, or export the model yourself to a .pt2",
        )
    safetensors = any(folder.glob("*.safetensors"))
    if not safetensors and not allow_pickle:
        raise ModelError(
            f"{folder} holds no .safetensors weights; pytorch_model.bin is a pickle and unpickling runs code",
            hint="re-save with save_pretrained(safe_serialization=True), or pass --allow-pickle if you trust the folder",
        )
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, use_safetensors=safetensors)
    except Exception as exc:  # transformers raises many kinds for a folder it cannot read
        raise ModelError(f"{folder}: transformers could not load the model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    wrapper = {"image": ImageLogits, "next-token": NextTokenLogits}.get(task, Logits)
    return wrapper(model.eval()).eval()


def all_positions(model: Any) -> Any:
    """A causal LM's logits at every position (batch, positions, vocabulary), as a generation is explained
    (one forward holds what each generated token was predicted from); other models as they are."""
    return Logits(model.model).eval() if isinstance(model, NextTokenLogits) else model


def stop_ids(folder: str | Path) -> list[int]:
    """The ids that end a generation: ``eos_token_id`` of generation_config.json, else of config.json."""
    folder = Path(folder)
    for name in ("generation_config.json", "config.json"):
        if (folder / name).is_file():
            value = _json(folder / name).get("eos_token_id")
            values = value if isinstance(value, list) else [value]
            found = [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]
            if found:
                return found
    return []
