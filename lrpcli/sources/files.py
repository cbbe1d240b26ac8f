"""Loading models: TorchScript, ExportedProgram (.pt2), state dicts with an architecture,
safetensors, ONNX (onnx.py), whole pickled modules (opt-in), and model spec files.

A *model spec* is a small YAML file a team can hand over with the weights::

    model: model.pt                      # relative to the spec file
    arch: lrpcli.architectures:MiniVGG   # needed for state dicts
    arch_kwargs: {num_classes: 4}
    input: {mode: RGB, size: [32, 32], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
    classes: classes.txt                 # or an inline list
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError, ModelError
from ..limits import MAX_CLASSES_BYTES, check_archive, check_pixels, load_yaml, read_text
from ..registry import suggest
from ..engine.weights import model_tensors
from . import hf, lightning, onnx
from .safety import check_trusted_callable, load_exported, spec_arch

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
SPEC_KEYS = ("model", "arch", "arch_kwargs", "input", "classes", "composite", "description", "weights")
INPUT_KEYS = (
    "kind", "mode", "size", "resize", "crop", "mean", "std", "features", "drop", "id_col", "label_col",
    "tokenizer", "max_length", "text_col", "mask", "short_side", "interpolation", "crop_pct",
)
INPUT_KINDS = ("image", "tabular", "text")


def load_model(
    model: Any,
    *,
    arch: str | Callable | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    allow_code: bool = False,
) -> Any:
    """Return something ``graph.capture`` takes: an nn.Module, ScriptModule or ExportedProgram.

    ``model`` may already be one of those, or a path to: a ``.pt2`` ExportedProgram, a
    TorchScript file, an ``.onnx`` file (extra ``onnx``), a state dict (``.pt``, ``.pth``, ``.safetensors``; needs ``arch``),
    a model spec ``.yaml``, or — only with ``allow_pickle`` — a whole pickled module.
    ``arch`` is the caller's own choice and may name any callable; a spec's ``arch`` is
    limited to model libraries unless ``allow_code`` (see ``safety.py``).
    """
    if isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        return model
    if not isinstance(model, (str, Path)):
        raise ModelError(
            f"cannot use an object of type {type(model).__name__} as a model",
            hint="pass an nn.Module, a ScriptModule, an ExportedProgram or a path to a saved model",
        )
    path = Path(model)
    if hf.is_folder(path):
        return hf.load(path, allow_pickle=allow_pickle)
    if path.is_dir():
        raise ModelError(
            f"{path} is a folder without config.json",
            hint="give a model file (TorchScript, .pt2, a state dict with --arch, a spec .yaml) or a Hugging Face folder (config.json + model.safetensors)",
        )
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if onnx.is_onnx(path):
        if arch is not None:
            raise ModelError(f"{path} is an ONNX model: it carries its own graph", hint="drop --arch (and the spec's arch)")
        return onnx.load(path)
    if path.suffix in (".yaml", ".yml"):
        return load_spec_model(load_spec(path), arch=arch, arch_kwargs=arch_kwargs, allow_pickle=allow_pickle, allow_code=allow_code)
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelError(f"{path}: not a loadable TorchScript file: {exc}") from exc
    exported = path.suffix == ".pt2" or _zip_has(path, "archive_format")
    if arch is not None:
        if exported:  # never handed to torch.export.load on the strength of a state-dict reading
            raise ModelError(
                f"{path} is an exported program (.pt2), not a state dict: it carries its own graph",
                hint="drop --arch (and the spec's arch) to load it as an exported program",
            )
        state, hparams = load_checkpoint(path)
        return _build(arch, arch_kwargs or {}, state, path, hparams)
    if exported:
        return load_exported(path, allow_pickle)
    return _load_pickled_or_explain(path, allow_pickle)


def load_spec_model(
    spec: "ModelSpec",
    *,
    arch: str | Callable | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    allow_code: bool = False,
) -> Any:
    """The model a spec names; ``arch``/``arch_kwargs`` given here override the spec's.

    The spec's own ``arch`` is data from whoever wrote the spec, so it may only construct a
    model class or builder of a trusted model library unless ``allow_code``.
    """
    if arch is None and spec.arch:
        arch = spec_arch(spec.arch, spec.source, allow_code)
        if not allow_code:
            factory = resolve_arch(arch)
            check_trusted_callable(arch, factory)
            arch = factory
    return load_model(
        spec.model,
        arch=arch,
        arch_kwargs=arch_kwargs if arch_kwargs is not None else spec.arch_kwargs,
        allow_pickle=allow_pickle,
        allow_code=allow_code,
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or torch.load with weights_only=True (no code runs)."""
    return load_checkpoint(path)[0]


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a state dict and, for a checkpoint (Lightning's ``.ckpt``: the weights under
    ``state_dict``), its hyper-parameters; read with safetensors or weights-only (no code runs)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency
            raise ModelError("reading .safetensors needs the safetensors package", hint="pip install safetensors") from exc
        try:
            return load_file(str(path)), {}
        except Exception as exc:
            raise ModelError(f"{path}: not a readable safetensors file: {exc}") from exc
    try:
        with lightning.safe_globals():
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: not a state dict that loads safely: {_first_line(exc)}",
            hint="if it is a whole pickled module and you trust it, pass --allow-pickle (it runs code)",
        ) from exc
    hparams: dict[str, Any] = {}
    if lightning.is_checkpoint(state):  # Lightning's and the common checkpoint layout
        hparams, state = lightning.hyper_parameters(state), state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state, hparams


def resolve_arch(arch: str | Callable) -> Callable:
    """``module.path:Callable`` or ``path/to/file.py:Callable`` -> the callable."""
    if callable(arch):
        return arch
    if ":" not in str(arch):
        raise ModelError(
            f"--arch '{arch}' must look like MODULE:CALLABLE",
            hint="e.g. torchvision.models:vgg16, mypkg.nets:MiniVGG or path/to/nets.py:MiniVGG",
        )
    where, _, name = str(arch).rpartition(":")
    if where == "timm":  # timm.create_model(name, pretrained=False): a library of names, not a module of callables
        from .zoo import TimmBuilder

        return TimmBuilder(name)
    if where.endswith(".py") or "/" in where:
        file = Path(where)
        if not file.is_file():
            raise ModelError(f"--arch: file not found: {file}")
        module_name = f"_lrp_arch_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            raise ModelError(f"--arch: importing {file} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            hint = None
            if where.split(".")[0] == "torchvision":
                hint = "torchvision is an optional extra: pip install 'lrpcli[torchvision]'"
            elif where.split(".")[0] == "timm":
                hint = "timm is an optional extra: pip install 'lrpcli[timm]' (and name a model as --arch timm:NAME)"
            raise ModelError(f"--arch: cannot import module '{where}': {exc}", hint=hint) from exc
        except (Exception, SystemExit) as exc:  # the module's own code raised (or exited) while importing
            raise ModelError(f"--arch: importing module '{where}' failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ModelError(f"--arch: '{where}' has no callable '{name}'", hint=suggest(name, names))
    return factory


def _build(
    arch: str | Callable, kwargs: dict[str, Any], state: dict[str, torch.Tensor], path: Path, hparams: dict[str, Any] | None = None
) -> torch.nn.Module:
    """The architecture called with ``kwargs`` (and the checkpoint's hyper-parameters that name its
    parameters), the weights loaded strictly (a prefix such as a LightningModule's ``model.`` stripped where
    that makes them fit)."""
    factory = resolve_arch(arch)
    kwargs = lightning.arch_kwargs(factory, hparams or {}, kwargs)
    label = arch if isinstance(arch, str) else f"{getattr(arch, '__module__', '?')}:{getattr(arch, '__qualname__', arch)}"
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the architecture's own code: a TypeError for bad kwargs, anything else from inside
        raise ModelError(f"--arch: calling {label} with {kwargs} failed: {type(exc).__name__}: {_first_line(exc)}", hint="check --arch-kwargs") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"--arch: {label} returned a {type(model).__name__}, not an nn.Module")
    state = lightning.fit_keys(state, set(model.state_dict().keys()))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{path}: the weights do not fit {label}: {_state_dict_mismatch(exc)}",
            hint="check --arch and --arch-kwargs (e.g. num_classes)",
        ) from exc
    return model.eval()


def _state_dict_mismatch(exc: RuntimeError, limit: int = 6) -> str:
    """torch's load_state_dict message without its header line: the missing, unexpected and
    mis-shaped keys, at most ``limit`` lines of them."""
    lines = [line.strip() for line in str(exc).strip().splitlines()[1:] if line.strip()]
    if not lines:
        return _first_line(exc, 300)
    shown = "; ".join(line if len(line) <= 300 else line[:300] + "..." for line in lines[:limit])
    return shown + (f"; ... ({len(lines) - limit} more)" if len(lines) > limit else "")


def _load_pickled_or_explain(path: Path, allow_pickle: bool) -> torch.nn.Module:
    if not allow_pickle:
        try:
            with lightning.safe_globals():
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            state = None
        if lightning.is_checkpoint(state):
            raise ModelError(
                f"{path} is a checkpoint (Lightning's .ckpt layout): its weights need the model's architecture",
                hint="pass --arch MODULE:CALLABLE, the network the checkpoint's module holds (e.g. mypkg.nets:Net); "
                "its hyper_parameters fill the arguments they name, and a prefix such as 'model.' is stripped",
            )
        if isinstance(state, dict):
            raise ModelError(
                f"{path} is a state dict: lrp needs the model's architecture to use it",
                hint="pass --arch MODULE:CALLABLE (e.g. mypkg.nets:MiniVGG or nets.py:MiniVGG), "
                "or a model spec .yaml that names it",
            )
        raise ModelError(
            f"{path}: not a TorchScript file, an exported program (.pt2) or a state dict",
            hint="if it is a whole pickled module and you trust its source, pass --allow-pickle "
            "(unpickling runs code)",
        )
    try:
        model = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"{path}: unpickling failed: {_first_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{path}: the pickle holds a {type(model).__name__}, not an nn.Module")
    return model.eval()


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _zip_names(path: Path) -> list[str] | None:
    """The entry names of a zip archive (TorchScript, .pt2 and torch.save files are zips), None for a
    file that is not one. A file that starts like a zip but whose directory is damaged (truncated, bad
    bytes in a name) is a ModelError naming it, not an internal error from zipfile; so is an archive
    whose entries unpack to far more than its size (a zip bomb, ``limits.check_archive``), before any
    loader reads it."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from exc
    if not zipfile.is_zipfile(path) and magic != b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except Exception as exc:  # BadZipFile, UnicodeDecodeError on a damaged name, EOFError, ...
        raise ModelError(
            f"{path}: a damaged zip archive ({type(exc).__name__}: {_first_line(exc)})",
            hint="the file is truncated or corrupted: copy or download it again",
        ) from exc
    check_archive(path, entries, size)
    return [entry.filename for entry in entries]


def _zip_has(path: Path, name: str) -> bool:
    return any(entry.endswith(name) for entry in _zip_names(path) or [])


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a ``code/`` folder and ``constants.pkl``; state dicts do not."""
    names = _zip_names(path) or []
    return any("/code/" in name for name in names) and any(name.endswith("constants.pkl") for name in names)


def saved_input(model: Any) -> Any:
    """The (fake) tensor a saved program's first user input was exported with: its shape, dtype and
    which dims are symbolic; None for other model forms."""
    if not isinstance(model, torch.export.ExportedProgram):
        return None
    users = {spec.arg.name for spec in model.graph_signature.input_specs if spec.kind.name == "USER_INPUT"}
    first = next((n for n in model.graph.nodes if n.op == "placeholder" and n.name in users), None)
    return first.meta.get("val") if first is not None else None


def saved_input_shape(model: Any) -> tuple[int, ...] | None:
    """One input's shape (without the batch) where a saved program or an ONNX file fixes it, e.g. (3, 224, 224); else None."""
    declared = onnx.input_shape(model)
    if declared is not None:
        return declared
    value = saved_input(model)
    if value is None or not value.is_floating_point() or not all(isinstance(s, int) for s in value.shape[1:]):
        return None
    return tuple(int(s) for s in value.shape[1:])


def input_channels(model: Any) -> int | None:
    """How many channels the model's image input has: a saved program's input signature, else the first
    4-D weight (the first convolution's (out, in, kh, kw)); None where neither says."""
    declared = onnx.input_shape(model)
    if declared is not None and len(declared) == 3:
        return declared[0]
    value = saved_input(model)
    if value is not None and value.ndim == 4 and isinstance(value.shape[1], int):
        return int(value.shape[1])
    weight = next((t for t in model_tensors(model) if t.is_floating_point() and t.ndim == 4), None)
    return int(weight.shape[1]) if weight is not None else None


def file_hash(path: str | Path) -> str:
    """sha256 of a file, for run.json (which weights produced these heatmaps); of a Hugging Face folder, its
    config and weights files by name."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if not path.is_dir() else sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".bin") and p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- model spec files


@dataclass
class ModelSpec:
    """What a model spec file says (paths resolved against the file's folder)."""

    model: Path
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None
    composite: str | None = None
    source: Path | None = None
    weights: str | None = None  # a torchvision weight enum whose transforms and category names to use (zoo.py)


def is_spec(path: str | Path) -> bool:
    """A spec .yaml, or a Hugging Face folder (which reads as one)."""
    return Path(path).suffix in (".yaml", ".yml") or hf.is_folder(path)


def load_spec(path: str | Path) -> ModelSpec:
    path = Path(path)
    if hf.is_folder(path):
        return hf.folder_spec(path)
    raw = load_yaml(read_text(path, "model spec"), str(path))
    if not isinstance(raw, dict) or "model" not in raw:
        raise ConfigError("a model spec needs a 'model:' entry (the weights file)", source=str(path), key="model")
    _reject_unknown(raw, SPEC_KEYS, "in the model spec", path)
    inputs = raw.get("input") or {}
    if not isinstance(inputs, dict):
        raise ConfigError("'input' must be a mapping", source=str(path), key="input")
    _reject_unknown(inputs, INPUT_KEYS, "under input", path)
    _check_input(inputs, path)
    _check_text_input(inputs, path)
    arch_kwargs = raw.get("arch_kwargs") or {}
    if not isinstance(arch_kwargs, dict):
        raise ConfigError("'arch_kwargs' must be a mapping", source=str(path), key="arch_kwargs")
    classes = raw.get("classes")
    if isinstance(classes, str):
        try:
            classes = load_class_names(path.parent / classes)
        except ConfigError as exc:
            raise ConfigError(f"classes: {exc.message}", source=str(path), key="classes", hint=exc.hint) from exc
    elif classes is not None and not (isinstance(classes, list) and all(isinstance(c, (str, int)) for c in classes)):
        raise ConfigError("'classes' must be a list of names or a file with one name per line", source=str(path), key="classes")
    model_path = Path(str(raw["model"]))
    if not model_path.is_absolute():
        model_path = path.parent / model_path
    return ModelSpec(
        model=model_path,
        arch=raw.get("arch"),
        arch_kwargs=dict(arch_kwargs),
        input=dict(inputs),
        classes=[str(c) for c in classes] if classes is not None else None,
        composite=raw.get("composite"),
        source=path,
        weights=_weights_name(raw.get("weights"), path),
    )


def _weights_name(value: Any, path: Path) -> str | None:
    if value is not None and not (isinstance(value, str) and "." in value):
        raise ConfigError(f"'weights' names a torchvision weight enum like ResNet18_Weights.IMAGENET1K_V1, got {value!r}", source=str(path), key="weights")
    return value


def _reject_unknown(mapping: dict, allowed: tuple[str, ...], where: str, path: Path) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(
                f"unknown key '{key}' {where} (allowed: {', '.join(allowed)})",
                source=str(path),
                key=str(key),
                hint=suggest(str(key), list(allowed)),
            )


def _check_input(inputs: dict, path: Path) -> None:
    """The spec's image sizes and normalisation, checked here so a bad value names the spec (exit 3):
    sizes positive and within Pillow's pixel limit, mean/std finite, std positive."""
    for key in ("size", "resize", "crop"):
        value = inputs.get(key)
        if value is None:
            continue
        items = list(value) if isinstance(value, list) else [value, value]
        items = items * 2 if len(items) == 1 else items
        if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
            raise ConfigError(f"input.{key} must be one or two positive integers (height, width), got {value!r}", source=str(path), key=key)
        check_pixels((items[0], items[1]), f"input.{key}", source=str(path), key=key)
    side = inputs.get("short_side")
    if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side <= 0):
        raise ConfigError(f"input.short_side must be one positive integer, got {side!r}", source=str(path), key="short_side")
    pct = inputs.get("crop_pct")
    if pct is not None and (isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 1):
        raise ConfigError(f"input.crop_pct must be a number in (0, 1], got {pct!r}", source=str(path), key="crop_pct")
    if pct is not None and any(inputs.get(key) is not None for key in ("resize", "short_side", "crop")):
        raise ConfigError("input.crop_pct sets the resize and the crop itself: give it or resize/short_side/crop, not both", source=str(path), key="crop_pct")
    if inputs.get("resize") is not None and side is not None:
        raise ConfigError("input.resize and input.short_side exclude each other", source=str(path), key="short_side")
    for key in ("mean", "std"):
        value = inputs.get(key)
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                raise ConfigError(f"input.{key} must be finite numbers, got {value!r}", source=str(path), key=key)
            if key == "std" and item <= 0:
                raise ConfigError(f"input.std must be positive, got {value!r}", source=str(path), key=key)


def _check_text_input(inputs: dict, path: Path) -> None:
    """A text spec's kind, tokenizer (resolved against the spec's folder) and max_length."""
    kind = inputs.get("kind")
    if kind is not None and kind not in INPUT_KINDS:
        raise ConfigError(f"input.kind must be one of {', '.join(INPUT_KINDS)}, got {kind!r}", source=str(path), key="kind", hint=suggest(str(kind), list(INPUT_KINDS)))
    if inputs.get("tokenizer") is not None:
        if not isinstance(inputs["tokenizer"], str):
            raise ConfigError("input.tokenizer must be the path of a tokenizer.json", source=str(path), key="tokenizer")
        tokenizer = Path(inputs["tokenizer"])
        inputs["tokenizer"] = str(tokenizer if tokenizer.is_absolute() else path.parent / tokenizer)
        inputs.setdefault("kind", "text")
    if inputs.get("kind") == "text" and not inputs.get("tokenizer"):
        raise ConfigError("a text model's spec needs input.tokenizer (a tokenizer.json)", source=str(path), key="tokenizer")
    length = inputs.get("max_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ConfigError(f"input.max_length must be a positive integer, got {length!r}", source=str(path), key="max_length")
    for key in ("text_col", "mask"):
        if inputs.get(key) is not None and not isinstance(inputs[key], str):
            raise ConfigError(f"input.{key} must be a name, got {inputs[key]!r}", source=str(path), key=key)


def load_class_names(path: str | Path) -> list[str]:
    """One class name per line (blank lines ignored); a .json list works too. Only a regular file of
    bounded size is read (``classes: /dev/zero`` would read forever)."""
    path = Path(path)
    text = read_text(path, "class-names file", MAX_CLASSES_BYTES)
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON: {exc.msg}", source=str(path), line=exc.lineno) from exc
        if not isinstance(names, list):
            raise ConfigError("a class-names .json file must hold a list", source=str(path))
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]
