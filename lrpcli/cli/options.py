"""Option bundles shared by commands (model loading, composite, preprocessing)."""

from __future__ import annotations

import os
from typing import Any, Callable

import click
import yaml

from ..limits import BoundedLoader

MODEL_HELP = (
    "MODEL is a TorchScript file, an exported program (.pt2), a state dict (.pt, .pth, "
    ".safetensors; with --arch) or a model spec .yaml that names all of that."
)


def _stack(decorators: list[Callable]) -> Callable:
    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def parse_mapping(value: str | None, option: str) -> dict[str, Any]:
    """A JSON or YAML mapping given on the command line (e.g. --arch-kwargs '{num_classes: 4}')."""
    if not value:
        return {}
    try:
        data = yaml.load(value, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader, bounded (limits.py)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"not valid YAML/JSON: {exc}", param_hint=option) from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"must be a mapping like '{{\"num_classes\": 4}}', got {value!r}", param_hint=option)
    return data


def parse_params(values: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        try:
            params[key.strip()] = yaml.load(raw, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader, bounded
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"bad value in {item!r}: {exc}", param_hint="--param") from exc
    return params


def floats(value: str | None, option: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.replace(",", " ").split()]
    except ValueError as exc:
        raise click.BadParameter(f"expected numbers like '0.485,0.456,0.406', got {value!r}", param_hint=option) from exc


def ints(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    try:
        items = [int(v) for v in value.lower().replace("x", " ").replace(",", " ").split()]
    except ValueError as exc:
        raise click.BadParameter(f"expected one or two integers like '224' or '224,224', got {value!r}", param_hint=option) from exc
    if not 1 <= len(items) <= 2:
        raise click.BadParameter(f"expected one or two integers, got {value!r}", param_hint=option)
    return items


model_options = _stack(
    [
        click.option("--arch", metavar="MODULE:CALLABLE", help="Architecture for a state dict: torchvision.models:vgg16, mypkg.nets:MiniVGG or path/to/nets.py:MiniVGG."),
        click.option("--arch-kwargs", metavar="MAPPING", help="Keyword arguments for --arch, as JSON/YAML: '{num_classes: 4}'."),
        click.option("--allow-pickle", is_flag=True, help="Load a whole pickled module, or a .pt2 that asks for pickled payloads. Unpickling RUNS CODE from the file: only for files you trust."),
        click.option("--no-cache", is_flag=True, help="Capture the model again instead of loading its graph from the disk cache (LRP_CACHE_DIR, default ~/.cache/lrpcli; LRP_CACHE_DIR=off turns it off)."),
        click.option("--allow-code", is_flag=True, help="Let a model spec's arch import a Python file or any module (it RUNS that code); without it a spec may name lrpcli.architectures, torchvision.models and timm:NAME only."),
        click.option("--weights", "weights_enum", metavar="ENUM", help="A torchvision weight enum (ResNet18_Weights.IMAGENET1K_V1): its transforms and category names, and its builder as --arch for a state dict. Nothing is downloaded: MODEL is the weights file."),
    ]
)

# --------------------------------------------------------------------------- one option language
# Options that several commands take are defined once, here, so that they mean the same everywhere
# (tests/test_option_language.py holds every command to this table).

def json_option(what: str):
    """``--json [FILE|-]``: the report as JSON, to FILE or (bare ``--json``, or ``-``) to stdout."""
    return click.option("--json", "json_path", is_flag=False, flag_value="-", metavar="[FILE|-]", help=f"Write {what} as JSON to FILE, or to stdout (bare --json or -).")


on_error_option = click.option(
    "--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
    help="skip: carry on past bad inputs and exit 5 at the end; fail: stop at the first.",
)
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")


def report_option(default_where: str):
    """``--report FILE``: where the run's static HTML report page goes (one meaning in every command)."""
    return click.option("--report", "report_path", metavar="FILE", help=f"Write the run's HTML report page to FILE (default: {default_where}).")


no_report_option = click.option("--no-report", is_flag=True, help="Write no HTML report page.")
overlay_option = click.option("--overlay", is_flag=True, help="Draw heatmaps over the input image: relevance as colour, opaque in proportion to |R| (see --overlay-style).")
overlay_style_option = click.option(
    "--overlay-style", type=click.Choice(["colour", "grey"]), default="colour", show_default=True,
    help="colour: over the input's own colours (they show where R is 0); grey: over a grey copy of the input.",
)


def target_option(choices: str = "pred (default), a class index, a class name, or all"):
    return click.option("-t", "--target", help=f"Which output to explain: {choices}.")


def write_json(path: str, data: Any) -> None:
    """A --json report: to stdout for ``-``, else to the file (written atomically)."""
    import json
    from pathlib import Path

    text = json.dumps(data, indent=2, default=str)
    if path == "-":
        click.echo(text)
        return
    from ..outputs import write_output

    write_output(Path(path), (text + "\n").encode("utf-8"))


# options that name a file lrp writes, and options that name a file it reads (test_hostile_outputs.py)
OUTPUT_OPTIONS = (
    ("out", "-o"), ("spec_path", "-o"), ("report_path", "--report"), ("html", "--html"),
    ("json_path", "--json"), ("junit", "--junit"), ("csv_path", "--csv"), ("plot_path", "--plot"),
)
INPUT_OPTIONS = (
    ("classes_file", "--classes"), ("tokenizer", "--tokenizer"), ("inputs_from", "--inputs-from"),
    ("composite", "-c"), ("composites", "-c"), ("masks_dir", "--masks"),
)


def refuse_overwriting_inputs(model: Any, spec: Any, inputs: Any, options: dict[str, Any]) -> None:
    """Refuse (exit 2, naming both) a command's output file that is one of its inputs: an input file,
    MODEL, the spec's weights and tokenizer, --classes, --tokenizer, a composite or architecture file.
    Called before anything is read or written (outputs.refuse_inputs_as_outputs)."""
    from ..outputs import refuse_inputs_as_outputs

    named: list[tuple[str, Any]] = [("input", list(inputs or ())), ("MODEL", model)]
    if spec is not None:
        named.append(("model's weights (the spec's model:)", getattr(spec, "model", None)))
        named.append(("spec's tokenizer", (getattr(spec, "input", None) or {}).get("tokenizer")))
    for key, flag in INPUT_OPTIONS:
        values = options.get(key)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if isinstance(value, str) and ":" in value and not os.path.exists(value):
                value = value.split(":", 1)[0]  # -c FILE:K=V
            named.append((f"{flag} file", value))
    arch = options.get("arch")
    if isinstance(arch, str) and ".py:" in arch:
        named.append(("--arch file", arch.rpartition(":")[0]))
    outputs = [(flag, options.get(key)) for key, flag in OUTPUT_OPTIONS if options.get(key)]
    refuse_inputs_as_outputs(outputs, named)


composite_options = _stack(
    [
        click.option("-c", "--composite", metavar="NAME|FILE[:K=V,...]", help="Built-in composite (see `lrp composites`) or a YAML file, optionally with parameters: -c epsilon:epsilon=0.25. Default: the model spec's, else epsilon_plus_flat."),
        click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Override a composite parameter (epsilon, gamma, stabilizer, low, high), e.g. -p epsilon=0.25 -p 'low=[-2,-2,-2]'."),
    ]
)

preprocessing_options = _stack(
    [
        click.option("--size", metavar="H[,W]", help="Size the model takes; images are resized to it."),
        click.option("--resize", metavar="H[,W]", help="Resize to this first (then --crop)."),
        click.option("--crop", metavar="H[,W]", help="Centre-crop to this after --resize."),
        click.option("--mean", metavar="M[,M,M]", help="Per-channel mean subtracted after scaling pixels to [0, 1]."),
        click.option("--std", metavar="S[,S,S]", help="Per-channel std divided by after the mean."),
        click.option("--short-side", metavar="N", type=click.IntRange(min=1), help="Resize so that the shorter side is N, keeping the aspect ratio (torchvision's Resize(N)); then --crop. Instead of --resize."),
        click.option("--crop-pct", type=click.FloatRange(0, 1, min_open=True), help="With --size S: resize the shorter side to S / crop_pct, then centre-crop S (timm's eval recipe)."),
        click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"], case_sensitive=False), help="Resampling filter of every resize (default: timm's or the weight enum's, else bilinear)."),
        click.option("--mode", type=click.Choice(["rgb", "gray", "l"], case_sensitive=False), help="Colour mode the model takes (default: the spec's, else RGB)."),
        click.option("--classes", "classes_file", type=click.Path(dir_okay=False), help="Class names, one per line (or a JSON list)."),
    ]
)




def check_cmap(name: str) -> str:
    """--cmap is an option value: an unknown one is a usage error (exit 2), with the known names."""
    from ..errors import ConfigError, UsageError
    from ..render.heatmaps import COLORMAPS

    try:
        return COLORMAPS.resolve(name)
    except ConfigError as exc:
        raise UsageError(f"--cmap: {exc.message}", hint=exc.hint) from None


def build_composite(name: str | None, spec: Any, params: dict[str, Any], preprocessing: Any = None, default: str = "epsilon_plus_flat") -> Any:
    """The composite a command runs with: -c, else the spec's, else epsilon_plus_flat; -p overrides;
    z^B bounds from the preprocessing's mean/std unless the composite or -p set them."""
    from ..runs.choices import CompositeChoice
    from ..engine.composite_yaml import load_composite

    choice = CompositeChoice.parse(name or (spec.composite if spec is not None and spec.composite else default))
    composite = load_composite(choice.spec)
    params = {**params, **choice.params}  # -c NAME:K=V, as in lrp compare: over -p
    if preprocessing is not None and "low" not in composite.explicit and "low" not in params and (preprocessing.mean or preprocessing.std):
        params["low"], params["high"] = preprocessing.bounds()
    return composite.with_params(**params) if params else composite


def given_preprocessing(options: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing options given on the command line, parsed (None where not given)."""
    from ..errors import UsageError

    given: dict[str, Any] = {key: parse(options.get(key), f"--{key}") for key, parse in (("size", ints), ("resize", ints), ("crop", ints), ("mean", floats), ("std", floats))}
    given.update({key: options.get(key) for key in ("short_side", "crop_pct")})
    given["interpolation"] = options["interpolation"].lower() if options.get("interpolation") else None
    if given["crop_pct"] is not None and any(given[key] is not None for key in ("resize", "short_side", "crop")):
        raise UsageError("--crop-pct sets the resize and the crop itself", hint="give --crop-pct with --size, or --resize/--short-side and --crop, not both")
    return given


def spec_preprocessing(spec: Any, options: dict[str, Any] | None = None) -> Any:
    """Preprocessing from the model spec's input section, overridden by command-line flags. ``crop_pct``
    becomes timm's recipe at the size (the shorter side to size / crop_pct, then the crop) where nothing
    else (timm's or a weight enum's resolution, see model_spec) has placed the resize already."""
    import math

    from ..data.images import Preprocessing
    from ..errors import UsageError

    values = dict(spec.input) if spec is not None else {}
    given = given_preprocessing(options or {})
    if any(given[key] is not None for key in ("resize", "short_side")):
        for key in ("resize", "short_side"):  # the command line's resize replaces the spec's
            values.pop(key, None)
    values.update({key: value for key, value in given.items() if value is not None})
    if (options or {}).get("mode"):
        values["mode"] = options["mode"]
    pct = values.pop("crop_pct", None)
    if pct is not None and values.get("resize") is None and values.get("short_side") is None:
        size = values.get("size")
        size = list(size) if isinstance(size, (list, tuple)) else [size] if size is not None else []
        if not size or size[0] != size[-1]:
            raise UsageError(f"--crop-pct needs a square --size (got {size or 'none'})", hint="e.g. --size 224 --crop-pct 0.875 (resize to 256, crop 224)")
        values["short_side"], values["crop"] = math.floor(size[0] / float(pct)), [size[0], size[0]]
    keys = ("mode", "size", "resize", "crop", "mean", "std", "short_side", "interpolation", "resize_with", "crop_anchor")
    return Preprocessing.from_options(**{k: v for k, v in values.items() if k in keys})


def model_spec(model: str, options: dict[str, Any]) -> Any:
    """The spec a command works from: MODEL's own (a spec .yaml, a Hugging Face folder) or None, with the input
    and class names that ``--arch timm:NAME`` or ``--weights ENUM`` (or the spec's arch/weights) give where the
    spec and the options say nothing of them (sources/zoo.py)."""
    from ..sources.files import is_spec, load_spec
    from ..sources.zoo import library_spec

    spec = load_spec(model) if is_spec(model) else None
    kwargs = parse_mapping(options.get("arch_kwargs"), "--arch-kwargs") or None
    return library_spec(spec, model, options.get("arch"), kwargs, options.get("weights_enum"), given_preprocessing(options))


def fit_preprocessing(preprocessing: Any, spec: Any, options: dict[str, Any], model: Any) -> tuple[Any, list[str]]:
    """The preprocessing fitted to what the model takes: grayscale for a model whose first layer reads one
    channel (unless a mode was given), a clear error for a mode that contradicts it, the height and width an ONNX
    file declares where no size was given, and a warning when no normalisation is given at all. Returns the preprocessing and the warnings to print."""
    import dataclasses

    from ..errors import UsageError
    from ..sources.files import input_channels
    from ..sources.onnx import input_shape as onnx_input_shape

    warnings: list[str] = []
    channels = input_channels(model)
    given = options.get("mode") or (spec.input.get("mode") if spec is not None else None)
    if channels in (1, 3) and channels != preprocessing.channels:
        if given:
            fix = "--mode l" if channels == 1 else "--mode rgb"
            raise UsageError(
                f"the model's first layer takes {channels} channel(s), but images are read as {preprocessing.mode} ({preprocessing.channels})",
                hint=f"use {fix}" + (" (and fix input.mode in the model spec)" if spec is not None and spec.input.get("mode") else ""),
            )
        preprocessing = dataclasses.replace(preprocessing, mode="L" if channels == 1 else "RGB")
    declared = onnx_input_shape(model)  # an ONNX file names its input's height and width: images are resized to them
    if declared is not None and len(declared) == 3 and preprocessing.size is None and preprocessing.resize is None and preprocessing.crop is None:
        preprocessing = dataclasses.replace(preprocessing, size=declared[1:])
    if preprocessing.mean is None and preprocessing.std is None:
        example = "--mean 0.5 --std 0.5" if preprocessing.channels == 1 else "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"
        warnings.append(
            "no --mean/--std (nor input.mean/std in a spec): pixels go in scaled to [0, 1] as they are; a model trained on "
            f"normalised inputs needs them, e.g. {example} (give --mean 0 --std 1 to say none is needed)"
        )
    return preprocessing, warnings


def graph_store(model: str, spec: Any, options: dict[str, Any]) -> Any:
    """The disk cache of captured graphs for this model, keyed by the weights file's hash with the
    architecture that builds it; None with --no-cache."""
    import hashlib
    import json
    from pathlib import Path

    from ..sources.cache import DiskCache
    from ..sources.files import file_hash

    if options.get("no_cache"):
        return None
    weights = spec.model if spec is not None else Path(model)
    arch = options.get("arch") or (spec.arch if spec is not None else None)
    kwargs = parse_mapping(options.get("arch_kwargs"), "--arch-kwargs") or (spec.arch_kwargs if spec is not None else {})
    identity = json.dumps([file_hash(weights), str(arch), kwargs], sort_keys=True, default=str)
    return DiskCache(hashlib.sha256(identity.encode()).hexdigest())


def new_explainer(loaded: Any, composite: Any, model: str, spec: Any, options: dict[str, Any]) -> Any:
    """An Explainer for a command: with the graph cache on unless --no-cache."""
    from ..engine.explainer import Explainer

    explainer = Explainer(loaded, composite)
    explainer.graph_store = graph_store(model, spec, options)
    return explainer


def load_model_option(model: str, spec: Any, options: dict[str, Any]) -> Any:
    """The model a command works on: MODEL (or the spec's weights) with --arch/--arch-kwargs/--allow-pickle/--allow-code."""
    from ..sources.files import load_model, load_spec_model

    arguments = dict(
        arch=options.get("arch"),
        arch_kwargs=parse_mapping(options.get("arch_kwargs"), "--arch-kwargs") or None,
        allow_pickle=bool(options.get("allow_pickle")),
        allow_code=bool(options.get("allow_code")),
    )
    return load_spec_model(spec, **arguments) if spec is not None else load_model(model, **arguments)


def input_shape_option(text: str | None, spec: Any) -> tuple[int, ...] | None:
    """One input's shape (no batch dim) from --input-shape, else from the spec's input size/mode or features."""
    if text:
        try:
            return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
        except ValueError as exc:
            raise click.BadParameter(f"expected integers like 3,32,32, got {text!r}", param_hint="--input-shape") from exc
    if spec is None:
        return None
    size = spec.input.get("size")
    if size:
        size = ints(",".join(str(s) for s in (size if isinstance(size, list) else [size])), "size")
        if len(size) == 1:
            size = size * 2
        channels = 1 if str(spec.input.get("mode", "RGB")).upper() in ("L", "GRAY", "GREY") else 3
        return (channels, *size)
    features = spec.input.get("features")
    if isinstance(features, list):
        return (len(features),)
    return None


contrast_option = click.option(
    "--contrast",
    metavar="CLASS",
    help="Explain the target rather than CLASS (a class name or index): the walk starts from the target's logit and "
    "minus CLASS's, so the relevance sums to the logit difference. Inputs whose target is CLASS get zero relevance. "
    "A language model's generation (--max-new-tokens): a token, each answer token rather than it.",
)
