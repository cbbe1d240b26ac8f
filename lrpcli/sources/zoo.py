"""Model libraries that know their models' inputs: timm (``--arch timm:NAME``) and torchvision's weight enums
(``--weights ResNet18_Weights.IMAGENET1K_V1``).

timm builds its model by name, always with ``pretrained=False``: the weights come from the user's file, never
from a checkpoint path or a download. Its ``pretrained_cfg`` (resolved by ``timm.data.resolve_data_config``, with
what the user gave taking precedence) gives the preprocessing: mean, std, input size, interpolation and the
resize-then-centre-crop of ``crop_pct``. A torchvision weight enum's ``transforms()`` and ``meta`` give the same
and the category names, without downloading its weights. Both become a spec's ``input`` section and class names
(:func:`library_spec`), so every command reads them as it reads a spec, and the user's own options still win.

Neither library is a dependency: both are imported only here, when asked for, and a missing one is a ModelError
naming the extra to install.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..registry import suggest

TIMM_HINT = "pip install 'lrpcli[timm]'"
TORCHVISION_HINT = "pip install 'lrpcli[torchvision]'"
#: spec ``input`` keys that say where the pixels of the model's input come from (given by the user: the
#: library's geometry is left out, the user's is used as a whole)
GEOMETRY = ("size", "resize", "short_side", "crop", "crop_pct")
#: arguments that would make timm read a checkpoint or download one
_LOADING = ("pretrained", "checkpoint_path")


def _import(name: str, hint: str, what: str) -> Any:
    """``timm`` or ``torchvision``, or a ModelError naming the extra (a missing package, or one built for
    another torch: torchvision's import then fails with a RuntimeError)."""
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a build for another torch
        reason = "is not installed" if isinstance(exc, ImportError) else f"does not import ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        raise ModelError(f"{what} needs {name}, which {reason}", hint=hint) from exc


# --------------------------------------------------------------------------- timm


class TimmBuilder:
    """``--arch timm:NAME`` as a callable: ``timm.create_model(NAME, pretrained=False, **kwargs)``.

    Its ``__module__``/``__qualname__`` read ``timm``/``NAME`` so that messages name the architecture as the
    user wrote it; a spec may name it without --allow-code (nothing it builds reads a file or the network)."""

    def __init__(self, name: str):
        timm = _import("timm", TIMM_HINT, f"--arch timm:{name}")
        if not name or not timm.is_model(name):
            raise ModelError(f"--arch: timm has no model '{name}'", hint=suggest(name, timm.list_models()) or "see timm.list_models() for the names")
        self.name = name
        self.__module__ = "timm"
        self.__qualname__ = name

    def __call__(self, **kwargs: Any) -> Any:
        asked = [key for key in _LOADING if key in kwargs and kwargs[key] not in (None, False)]
        if asked:
            raise ModelError(
                f"--arch timm:{self.name}: lrp builds timm models with pretrained=False and never loads or downloads "
                f"their weights itself ({', '.join(asked)} given in --arch-kwargs)",
                hint="drop it: the weights come from MODEL, the state dict you give",
            )
        import timm

        return timm.create_model(self.name, pretrained=False, **kwargs)

    def __repr__(self) -> str:
        return f"timm:{self.name}"


def is_timm(arch: Any) -> bool:
    return isinstance(arch, TimmBuilder) or (isinstance(arch, str) and arch.startswith("timm:"))


def timm_config(name: str, arch_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The model's ``pretrained_cfg`` as ``create_model`` resolves it for NAME (its tag, and a pretrained_cfg or
    pretrained_cfg_overlay among the arguments), without building the model."""
    TimmBuilder(name)
    from timm.models import resolve_pretrained_cfg

    return resolve_pretrained_cfg(
        name, pretrained_cfg=arch_kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=arch_kwargs.get("pretrained_cfg_overlay")
    ).to_dict()


def timm_input(name: str, arch_kwargs: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """A spec's ``input`` from timm's data config for NAME: ``resolve_data_config`` over the pretrained_cfg, with
    the user's size, mean, std, interpolation and crop_pct passed in as its arguments (they win), then timm's eval
    transform (resize by 1/crop_pct, centre crop) written as lrp's geometry."""
    pretrained_cfg = timm_config(name, arch_kwargs)  # (first: says what is missing, timm or the name)
    from timm.data import resolve_data_config

    chans = arch_kwargs.get("in_chans", 3)
    args: dict[str, Any] = {"in_chans": chans}
    size = given.get("size")
    img_size = arch_kwargs.get("img_size")  # a model built for another size takes that size
    if size is not None:
        size = list(size) if isinstance(size, (list, tuple)) else [size]
        args["input_size"] = (chans, size[0], size[-1])
    elif isinstance(img_size, int) or (isinstance(img_size, (list, tuple)) and len(img_size) == 2):
        height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
        args["input_size"] = (chans, int(height), int(width))
    for key in ("mean", "std", "interpolation", "crop_pct"):
        value = given.get(key)
        if value is not None and (key not in ("mean", "std") or len(value) in (1, chans)):  # (other lengths: lrp's own error)
            args[key] = value
    config = resolve_data_config(args, pretrained_cfg=pretrained_cfg)
    entry: dict[str, Any] = {"mean": [float(v) for v in config["mean"]], "std": [float(v) for v in config["std"]]}
    entry["interpolation"] = str(config["interpolation"])
    if any(given.get(key) is not None for key in ("resize", "short_side", "crop")):
        return entry  # the user's own geometry, as a whole
    _, height, width = config["input_size"]
    crop_pct, mode = float(config["crop_pct"]), config.get("crop_mode") or "center"
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    entry["size"], entry["crop"] = [int(height), int(width)], [int(height), int(width)]
    if mode == "squash":
        entry["resize"] = list(scale)
    elif mode == "center" and scale[0] == scale[1]:
        entry["short_side"] = scale[0]
    else:
        why = "a non-square input with a centre crop" if mode == "center" else f"crop_mode '{mode}'"
        raise ModelError(
            f"timm:{name}: lrp does not follow timm's eval transform for {why} (input size {height}x{width})",
            hint=f"give the geometry yourself, e.g. --resize {scale[0]},{scale[1]} --crop {height},{width}",
        )
    return entry


def timm_classes(name: str, arch_kwargs: dict[str, Any]) -> list[str] | None:
    """Class names timm knows for NAME offline: the config's label_names, else ImageNet's (the first of each
    class's WordNet lemmas, as torchvision names them) where the class count is an ImageNet subset's."""
    config = timm_config(name, arch_kwargs)
    count = arch_kwargs.get("num_classes", config.get("num_classes"))
    labels = config.get("label_names")
    if labels and len(labels) == count:
        return [str(label) for label in labels]
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": count}) if isinstance(count, int) else None
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i).split(",")[0].strip() for i in range(count)]


# --------------------------------------------------------------------------- torchvision weight enums


def weights_enum(text: str) -> Any:
    """``ResNet18_Weights.IMAGENET1K_V1`` (``torchvision.models.`` in front, or ``.DEFAULT``) -> the enum member."""
    torchvision = _import("torchvision", TORCHVISION_HINT, f"--weights {text}")
    models = torchvision.models
    if not hasattr(models, "get_weight"):
        raise ModelError(f"--weights {text}: this torchvision ({getattr(torchvision, '__version__', '?')}) has no weight enums", hint=TORCHVISION_HINT)
    name = str(text).removeprefix("torchvision.models.")
    try:
        return models.get_weight(name)  # torchvision's own lookup: every enum, the video and segmentation ones too
    except Exception:  # noqa: BLE001 - ValueError, KeyError, AttributeError by version: said below, with names
        pass
    enum_name, _, member = name.rpartition(".")
    known = sorted(n for n in dir(models) if n.endswith("_Weights"))
    enum = getattr(models, enum_name, None) if "." not in enum_name else None
    if enum is None or enum_name not in known:
        raise ModelError(f"--weights {text}: torchvision.models has no weight enum '{enum_name or name}'", hint=suggest(enum_name or name, known) or "e.g. ResNet18_Weights.IMAGENET1K_V1")
    try:
        return enum[member]
    except KeyError:
        members = list(enum.__members__)
        raise ModelError(f"--weights {text}: {enum_name} has no member '{member}' (it has {', '.join(members)})", hint=suggest(member, members)) from None


def weights_input(weights: Any, given: dict[str, Any]) -> dict[str, Any]:
    """A spec's ``input`` from an image-classification weight enum's ``transforms()`` (resize the shorter side,
    centre crop, interpolation, mean, std); the user's geometry, where given, as a whole instead of the enum's."""
    transforms = weights.transforms()
    fields = ("crop_size", "resize_size", "mean", "std", "interpolation")
    if type(transforms).__name__ != "ImageClassification" or not all(hasattr(transforms, key) for key in fields):
        raise ModelError(
            f"--weights {_name(weights)}: its transforms are {type(transforms).__name__}, not an image classifier's; lrp follows ImageClassification's",
            hint="give the preprocessing yourself (--size, --mean, --std) without --weights",
        )
    entry: dict[str, Any] = {
        "mean": [float(v) for v in transforms.mean],
        "std": [float(v) for v in transforms.std],
        "interpolation": str(getattr(transforms.interpolation, "value", transforms.interpolation)),
    }
    if any(given.get(key) is not None for key in ("resize", "short_side", "crop")):
        return entry  # the user's own geometry, as a whole
    crop, resize = list(transforms.crop_size), list(transforms.resize_size)
    size = given.get("size") or [crop[0], crop[-1]]
    size = [int(size[0]), int(size[-1])] if isinstance(size, (list, tuple)) else [int(size), int(size)]
    entry["size"] = list(size)
    if given.get("crop_pct") is not None:  # timm's recipe at this size: the shorter side to size / crop_pct, then crop
        if size[0] != size[1]:
            raise ModelError(f"--crop-pct applies to a square size, got {size[0]}x{size[1]}", hint="give --short-side N (or --resize H,W) and --crop H,W instead")
        entry["short_side"], entry["crop"] = math.floor(size[0] / float(given["crop_pct"])), list(size)
    elif given.get("size") is None:  # the enum's own: the shorter side, then the crop
        entry["crop"] = list(size)
        entry.update({"short_side": int(resize[0])} if len(resize) == 1 else {"resize": [int(resize[0]), int(resize[1])]})
    return entry


def weights_classes(weights: Any) -> list[str] | None:
    categories = (getattr(weights, "meta", None) or {}).get("categories")
    return [str(c) for c in categories] if categories else None


def weights_arch(weights: Any) -> str | None:
    """The torchvision builder these weights belong to (``torchvision.models:resnet18``), if one says so."""
    import torchvision

    models = torchvision.models
    for name in models.list_models(module=models):
        try:
            if models.get_model_weights(name) is type(weights):
                return f"torchvision.models:{name}"
        except (ValueError, KeyError):
            continue
    return None


def _saved_program(path: Path) -> bool:
    """A TorchScript file or exported program under a state dict's suffix (``model.pt``): it brings its own graph."""
    from .files import _is_torchscript, _zip_has

    return _is_torchscript(path) or _zip_has(path, "archive_format")


def _name(weights: Any) -> str:
    return f"{type(weights).__name__}.{weights.name}"


def not_downloaded(text: str, model: str | Path) -> ModelError:
    """The error for --weights without a weights file as MODEL: lrp does not download the enum's weights."""
    weights = weights_enum(text)
    file = Path(str(getattr(weights, "url", "")).rsplit("/", 1)[-1] or "weights.pth")
    cached = Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / file
    where = f"they are at {cached} (torchvision's download cache)" if cached.is_file() else f"torchvision saves them as ~/.cache/torch/hub/checkpoints/{file}"
    return ModelError(
        f"--weights {text} gives the preprocessing and category names only: lrp does not download the weights, and MODEL ({model}) is no weights file",
        hint=f"give the weights file as MODEL; {where}: lrp explain {cached if cached.is_file() else file} IMAGES --weights {text}",
    )


# --------------------------------------------------------------------------- one spec for every command


def library_spec(spec: Any, model: str | Path, arch: Any, arch_kwargs: dict[str, Any] | None, weights: str | None, given: dict[str, Any]) -> Any:
    """``spec`` (or, for a model file, a spec made for it) with the input and classes that timm or a torchvision
    weight enum give, where the spec says nothing of them; None where neither library is named.

    ``arch``/``arch_kwargs``/``weights`` are the command line's (else the spec's); ``given``: the preprocessing
    options the user gave (they go into timm's resolution and decide whose geometry is used)."""
    from .files import STATE_DICT_SUFFIXES, ModelSpec

    arch = arch or (spec.arch if spec is not None else None)
    weights = weights or (getattr(spec, "weights", None) if spec is not None else None)
    if not is_timm(arch) and not weights:
        return spec
    kwargs = (arch_kwargs if arch_kwargs is not None else (spec.arch_kwargs if spec is not None else {})) or {}
    own = dict(spec.input) if spec is not None else {}
    given = {**{key: own.get(key) for key in (*GEOMETRY, "mean", "std", "interpolation")}, **{k: v for k, v in given.items() if v is not None}}
    own.pop("crop_pct", None)  # used here, by the library's resolution
    if is_timm(arch):
        name = arch.name if isinstance(arch, TimmBuilder) else str(arch).split(":", 1)[1]
        entry, classes = timm_input(name, kwargs, given), timm_classes(name, kwargs)
    else:
        enum = weights_enum(weights)
        path = Path(model) if spec is None else Path(spec.model)
        if path.is_dir():
            raise not_downloaded(weights, path)
        entry, classes = weights_input(enum, given), weights_classes(enum)
        count = kwargs.get("num_classes")
        if classes and isinstance(count, int) and count != len(classes):
            classes = None  # a model fine-tuned to other classes: the enum's names are not its
        if arch is None and path.suffix.lower() in STATE_DICT_SUFFIXES and path.is_file() and not _saved_program(path):
            found = weights_arch(enum)  # a state dict with the enum's weights: the enum's builder is its architecture
            if found:
                spec = dataclasses.replace(spec, arch=found) if spec is not None else ModelSpec(model=path, arch=found)
    base = spec if spec is not None else ModelSpec(model=Path(model))
    return dataclasses.replace(base, input={**entry, **own}, classes=base.classes if base.classes is not None else classes)
