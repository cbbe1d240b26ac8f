"""Hugging Face folders (what ``save_pretrained`` writes) as MODEL: config.json, model.safetensors and the
folder's own tokenizer.json.

The folder reads as a model spec (:func:`folder_spec`): the class from ``config.architectures`` (a class of
``transformers`` itself, never remote code), class names from ``id2label``, the tokenizer and its length,
``attnlrp`` as the composite (``mambalrp`` for state-space models). The model is wrapped (:class:`Logits`) so that
it takes the token ids and an attention mask and returns the logits as one tensor (read off the model's output
object: some heads, Aria-text's and ShieldGemma2's, read their inner model's output by name, so
``return_dict=False`` breaks them): the export path behind it is lrpcli's job, not the user's. Weights load from safetensors; ``pytorch_model.bin`` (a
pickle) only with ``--allow-pickle``. Sequence classifiers (texts with the folder's tokenizer), image classifiers
(images prepared as the folder's image processor prepares them: the ViT, DeiT, BEiT, BiT, CLIP, MobileNet,
ConvNeXt, LeViT, PoolFormer and EfficientNet processors, slow (Pillow) or fast (torch); others are refused by name)
and causal LMs (the next token).
"""

from __future__ import annotations

import inspect
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
    composite = "mambalrp" if is_state_space(config) else "attnlrp" if is_transformer(config) else "epsilon_plus_flat"
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


#: config keys that give a selective SSM's state size (Mamba, FalconMamba, Mamba2: state_size; Jamba, Zamba, Bamba:
#: mamba_d_state)
_STATE_KEYS = ("state_size", "mamba_d_state")


def is_state_space(config: dict[str, Any]) -> bool:
    """Does the config describe selective state-space (Mamba) layers? Such models get MambaLRP (hybrids too: its
    rules for attention are AttnLRP's)."""
    return any(key in config for key in _STATE_KEYS)


def token_names(tokenizer: Path) -> list[str] | None:
    """A causal LM's classes are its vocabulary: each id's token, so a prediction reads as the next token."""
    from tokenizers import Tokenizer

    vocabulary = Tokenizer.from_file(str(tokenizer)).get_vocab(with_added_tokens=True)
    names = {index: token for token, index in vocabulary.items()}
    return [names.get(i, f"<{i}>") for i in range(max(names) + 1)] if names else None


#: Pillow's filters by the numbers configs give as ``resample``
_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: the image processors whose steps lrp repeats (slow class names; a ``...Fast`` one runs the same steps on
#: torch tensors): resize, centre crop, rescale, normalise, each as the class does it
_PROCESSORS = (
    "ViTImageProcessor", "DeiTImageProcessor", "BeitImageProcessor", "BitImageProcessor", "CLIPImageProcessor",
    "MobileNetV1ImageProcessor", "MobileNetV2ImageProcessor", "ConvNextImageProcessor", "LevitImageProcessor",
    "PoolFormerImageProcessor", "EfficientNetImageProcessor",
)
#: slow processors whose resize takes a fixed height and width only, and those without a crop step
_FIXED_SIZE_ONLY = ("ViTImageProcessor", "DeiTImageProcessor", "BeitImageProcessor", "EfficientNetImageProcessor")
_NO_CROP = ("ViTImageProcessor", "ConvNextImageProcessor")


def _own_preprocessing(folder: Path) -> str:
    return f"write a spec .yaml with model: {folder} and input.resize/short_side, crop, interpolation, mean and std that match it"


def _processor_settings(folder: Path, path: Path, config: dict[str, Any]) -> tuple[str, bool, dict[str, Any]]:
    """The processor's class name (without Fast), whether the folder names the fast one, and its settings: the
    JSON's, with the class's own defaults and size forms filled in by the (slow) class itself. A ``...Fast``
    folder is what ``AutoImageProcessor.from_pretrained`` loads where torchvision is installed, so lrp follows it."""
    kind = config.get("image_processor_type") or str(config.get("feature_extractor_type") or "").replace("FeatureExtractor", "ImageProcessor")
    if not isinstance(kind, str) or not kind:
        raise ModelError(f"{path} names no image processor (image_processor_type)", hint="save the image processor with save_pretrained, which writes it")
    name, fast = kind.removesuffix("Fast"), kind.endswith("Fast")
    if name not in _PROCESSORS:
        raise ModelError(
            f"{path}: lrp repeats the steps of {', '.join(p.removesuffix('ImageProcessor') for p in _PROCESSORS)} image processors; this folder's is {kind}",
            hint=_own_preprocessing(folder),
        )
    try:
        import transformers
    except ImportError as exc:
        raise ModelError(f"{folder} is a Hugging Face folder, which needs transformers", hint=INSTALL_HINT) from exc
    try:
        processor = getattr(transformers, name).from_dict({k: v for k, v in config.items() if k != "auto_map"})
    except Exception as exc:  # transformers raises many kinds for settings it cannot take
        raise ModelError(f"{path}: transformers' {name} does not take these settings: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    return name, fast, vars(processor)


def _size(value: Any) -> dict[str, int]:
    return {k: v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)} if isinstance(value, dict) else {}


def _geometry(folder: Path, path: Path, name: str, fast: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """Resize, crop and filter as the spec's ``input`` says them: ``resize`` [h, w] or ``short_side`` N (the
    shorter side to N, the aspect kept), ``crop`` [h, w] and its rounding, the filter, Pillow or torch."""
    kind = name + ("Fast" if fast else "")
    resample = _FILTERS.get(int(settings.get("resample", 2)) if isinstance(settings.get("resample", 2), int) else -1)
    if resample is None or (fast and resample not in ("nearest", "bilinear", "bicubic")):
        raise ModelError(f"{path}: {kind} resamples with {settings.get('resample')!r}, which lrp does not repeat", hint=_own_preprocessing(folder))
    if settings.get("do_pad") or settings.get("do_flip_channel_order"):
        raise ModelError(f"{path}: {kind} pads or reorders channels (do_pad, do_flip_channel_order), which lrp does not repeat", hint=_own_preprocessing(folder))
    steps: dict[str, Any] = {"interpolation": resample, "resize_with": "torch" if fast else "pillow", "crop_anchor": "floor"}
    size = _size(settings.get("size")) if settings.get("do_resize", True) else {}
    height, width, edge = size.get("height"), size.get("width"), size.get("shortest_edge")
    refused = ModelError(
        f"{path}: lrp follows {kind} resizing to a fixed height and width"
        + (" or the shortest edge" if fast or name not in _FIXED_SIZE_ONLY else "") + f"; this one has size {settings.get('size')!r}",
        hint=_own_preprocessing(folder),
    )
    crop_pct = settings.get("crop_pct")
    if not size:
        pass
    elif set(size) - {"height", "width", "shortest_edge"} or (height is None) != (width is None) or (edge is None) == (height is None):
        raise refused
    elif name == "ConvNextImageProcessor":  # below 384: the shorter side to edge / crop_pct, then a square crop
        if edge is None:
            raise refused
        if edge < 384:
            steps.update(short_side=int(edge / crop_pct), crop=[edge, edge], crop_anchor="round" if fast else "floor")  # torchvision's center_crop rounds
        else:
            steps["resize"] = [edge, edge]
    elif name == "LevitImageProcessor" and edge is not None:
        steps["short_side"] = int((256 / 224) * edge)
    elif name == "PoolFormerImageProcessor" and crop_pct is not None:
        if edge is not None or height == width:
            steps["short_side"] = int((edge or height) / crop_pct)
        else:
            steps["resize"] = [int(height / crop_pct), int(width / crop_pct)]
    elif edge is not None:
        if name in _FIXED_SIZE_ONLY and not fast:
            raise refused
        steps["short_side"] = edge
    else:
        steps["resize"] = [height, width]
    crop = _size(settings.get("crop_size"))
    if settings.get("do_center_crop") and (fast or name not in _NO_CROP):
        if "crop" in steps or set(crop) != {"height", "width"}:
            raise ModelError(f"{path}: {kind} crops with crop_size {settings.get('crop_size')!r}, which lrp does not repeat", hint=_own_preprocessing(folder))
        steps["crop"] = [crop["height"], crop["width"]]
    final = steps.get("crop") or steps.get("resize")
    return {**steps, **({"size": final} if final else {})}


def _channels(value: Any, default: list[float]) -> list[float]:
    values = default if value is None else value if isinstance(value, (list, tuple)) else [value]
    return [float(v) for v in values]


def _normalisation(path: Path, name: str, settings: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The processor's rescale (x * factor, minus 1 with EfficientNet's rescale_offset), normalise ((x - mean) /
    std) and EfficientNet's include_top (/ std again), one affine map per channel, as mean and std for pixels
    scaled to [0, 1]: y = (x * factor - offset - mean) / (std * top) = (x / 255 - mean') / std'."""
    rescale = settings.get("do_rescale", True)
    factor = float(settings.get("rescale_factor", 1 / 255)) if rescale else 1.0
    if not factor > 0:
        raise ModelError(f"{path}: rescale_factor {settings.get('rescale_factor')!r} is not a positive number")
    offset = 1.0 if rescale and settings.get("rescale_offset") else 0.0
    normalise = settings.get("do_normalize", True)
    mean = _channels(settings.get("image_mean"), [0.5]) if normalise else [0.0]
    std = _channels(settings.get("image_std"), [0.5]) if normalise else [1.0]
    top = _channels(settings.get("image_std"), [0.5]) if name == "EfficientNetImageProcessor" and settings.get("include_top") else [1.0]
    n = max(len(mean), len(std), len(top))
    mean, std, top = ([v[0]] * n if len(v) == 1 else v for v in (mean, std, top))
    if not all(s > 0 for s in std + top):
        raise ModelError(f"{path}: image_std {settings.get('image_std')!r} must be positive")
    return [(offset + m) / (255 * factor) for m in mean], [s * t / (255 * factor) for s, t in zip(std, top)]


def image_input(folder: Path) -> dict[str, Any]:
    """The spec's ``input`` for the folder's image processor (preprocessor_config.json): the steps it takes,
    as lrp's own preprocessing takes them (the same pixels within float rounding), or a named refusal."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no preprocessor_config.json: lrp prepares images as the folder's image processor does",
                         hint="save the image processor into the folder too: AutoImageProcessor.from_pretrained(...).save_pretrained(folder)")
    name, fast, settings = _processor_settings(folder, path, _json(path))
    geometry = _geometry(folder, path, name, fast, settings)
    mean, std = _normalisation(path, name, settings)
    return {"mode": "RGB", **geometry, "mean": mean, "std": std}


class _Wrapped(torch.nn.Module):
    """A transformers model held as ``model``, so that parameter names keep their ``model.`` prefix."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model


def _logits(output: Any) -> torch.Tensor:
    """The logits of a model's output: its ``.logits``, or the first item of a model that returns a tuple anyway.
    The wrappers ask for the output object (return_dict=True): Aria-text's and ShieldGemma2's heads read
    ``.last_hidden_state`` / ``.logits`` off their inner model's output, which return_dict=False makes a tuple."""
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else output[0]


def _mask(attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The mask as a keyword where there is one: some models take none (FNet mixes tokens by a Fourier transform)."""
    return {} if attention_mask is None else {"attention_mask": attention_mask}


class Logits(_Wrapped):
    """A transformers text model as lrp explains it: token ids (and a mask) in, the logits out as one tensor."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return _logits(self.model(input_ids=input_ids, **_mask(attention_mask), return_dict=True))


class NextTokenLogits(_Wrapped):
    """A causal LM as lrp explains it: token ids (and a mask) in, the logits of the token after the last real
    one out (texts are padded on the right, so that is the mask's last 1, not the last position)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = _logits(self.model(input_ids=input_ids, **_mask(attention_mask), return_dict=True))
        if attention_mask is None:
            return logits[:, -1]
        last = attention_mask.sum(dim=1) - 1
        return logits[torch.arange(logits.shape[0], device=logits.device), last]


class ImageLogits(_Wrapped):
    """A transformers image classifier as lrp explains it: pixel values in, the logits out as one tensor.
    ``prompt``: token ids (1, length) for a classifier that reads the image beside a text holding its image
    tokens (ShieldGemma2: the processor's policy prompt), fed with every image."""

    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor | None = None):
        super().__init__(model)
        self.register_buffer("prompt", prompt, persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        text = {} if self.prompt is None else {"input_ids": self.prompt.expand(pixel_values.shape[0], -1)}
        return _logits(self.model(pixel_values=pixel_values, **text, return_dict=True))


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
    if is_state_space(config):  # one forward over the whole text: no cache, whose position checks torch.export cannot pass
        model.config.use_cache = False
    if task == "image" and "input_ids" in inspect.signature(model.forward).parameters:
        raise ModelError(
            f"{folder}: {name} classifies an image beside a text prompt that holds its image tokens (a policy prompt "
            "its processor writes); lrp explain feeds images alone",
            hint="in Python: lrpcli.explain(hf.ImageLogits(model, prompt=input_ids), pixels) with the processor's input_ids "
            "for one image, or export such a wrapper to a .pt2",
        )
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
