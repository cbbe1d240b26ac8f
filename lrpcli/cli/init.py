"""``lrp init``: write a model spec from the options that work, after running one input through it.

Bringing one's own model takes a model file, an architecture, preprocessing and class names;
once a command line works, ``lrp init`` keeps it as a spec (paths relative to the spec), so
that every later command needs only ``model.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .console import info, note, warn
from .options import (
    build_composite,
    fit_preprocessing,
    load_model_option,
    model_options,
    model_spec,
    parse_mapping,
    parse_params,
    preprocessing_options,
    refuse_overwriting_inputs,
    spec_preprocessing,
)


@click.command(
    epilog="""\b
Examples:
  lrp init sample_models/digits_cnn/model.ts sample_models/digits_cnn/images --mean 0.5 --std 0.5 -o my_model.yaml
  lrp init my.ts imgs/ -o my.yaml                      (mode, size from the model and the images)
  lrp init model.pt --arch lrpcli.architectures:MiniVGG --arch-kwargs '{num_classes: 4}' imgs/ --mean 0.5 --std 0.25 --classes classes.txt -o model.yaml
  lrp init model.pt2 texts.txt --tokenizer tokenizer.json --max-length 128 -o text.yaml
"""
)
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1)
@model_options
@preprocessing_options
@click.option("-c", "--composite", metavar="NAME|FILE", help="The spec's default composite (checked: it must load).")
@click.option("--tokenizer", type=click.Path(exists=True, dir_okay=False), help="Texts: the model's Hugging Face tokenizer.json (makes a text spec).")
@click.option("--max-length", type=click.IntRange(min=1), help="Texts: the longest text in tokens (default 256).")
@click.option("-o", "--out", "spec_path", type=click.Path(dir_okay=False), default="model.yaml", show_default=True, help="Where to write the spec.")
@click.option("--force", is_flag=True, help="Replace an existing spec file.")
def init(model: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Write a model spec for MODEL (with --arch for a state dict) after explaining one of INPUTS with it.

    The spec holds the model file, the architecture, the preprocessing (the colour mode
    follows the model's first layer; the size is the model's or the first image's), the
    class names and the composite, with paths relative to the spec's folder. Give INPUTS
    (images, or a file of texts with --tokenizer) so that the spec is tried before it is
    written.
    """
    import yaml

    from ..errors import UsageError
    from ..sources.files import load_class_names
    from ..outputs import write_output

    from ..sources import hf

    if hf.is_folder(model):
        raise UsageError(
            f"{model} is a Hugging Face folder: every command reads it as it is, no spec needed",
            hint=f"lrp explain {model} {' '.join(inputs) or 'TEXTS'}",
        )
    target = Path(options["spec_path"])
    if target.suffix not in (".yaml", ".yml"):
        raise UsageError(f"-o {target}: a model spec is a .yaml file")
    refuse_overwriting_inputs(model, None, inputs, options)  # --force onto MODEL, a composite or classes file
    if target.exists() and not options["force"]:
        raise UsageError(f"{target} exists", hint="give another -o, or --force to replace it")
    folder = target.resolve().parent

    def relative(path: str) -> str:
        return os.path.relpath(Path(path).resolve(), folder)

    spec: dict[str, Any] = {"model": relative(model)}
    library = model_spec(model, options)  # what --arch timm:NAME or --weights ENUM give (None otherwise)
    if options["arch"] or (library is not None and library.arch):
        arch = options["arch"] or library.arch
        where, sep, name = arch.rpartition(":")
        if where.endswith(".py"):  # a Python file is looked up next to the spec
            arch = f"{relative(where)}:{name}"
        spec["arch"] = arch
        kwargs = parse_mapping(options["arch_kwargs"], "--arch-kwargs")
        if kwargs:
            spec["arch_kwargs"] = kwargs
    if options["weights_enum"]:
        spec["weights"] = options["weights_enum"]
    loaded = load_model_option(model, library, options)
    composite_name = options["composite"]
    tried = ""
    if options["tokenizer"]:
        spec["input"] = {"kind": "text", "tokenizer": relative(options["tokenizer"]), "max_length": options["max_length"] or 256}
        tried = _try_text(loaded, spec["input"], options, inputs, composite_name)
    else:
        preprocessing = spec_preprocessing(library, options)
        preprocessing, cautions = fit_preprocessing(preprocessing, library, options, loaded)
        for caution in cautions:
            warn(caution)
        entry: dict[str, Any] = {"mode": preprocessing.mode}
        if inputs:
            preprocessing, tried = _try_image(loaded, preprocessing, inputs, composite_name)
        for key in ("size", "resize", "crop"):
            value = getattr(preprocessing, key)
            if value is not None:
                entry[key] = list(value)
        for key in ("mean", "std"):
            value = getattr(preprocessing, key)
            if value is not None:
                entry[key] = list(value)
        if preprocessing.short_side is not None:
            entry["short_side"] = preprocessing.short_side
        if preprocessing.interpolation != "bilinear":
            entry["interpolation"] = preprocessing.interpolation
        spec["input"] = entry
    if options["classes_file"]:
        spec["classes"] = load_class_names(options["classes_file"])
    if composite_name:
        build_composite(composite_name, None, parse_params(()))  # must load
        spec["composite"] = composite_name if not Path(composite_name).is_file() else relative(composite_name)
    if not tried:
        note("no INPUTS given: the spec was not tried on an input; run lrp explain with it to check")
    header = f"# {target.name}: written by `lrp init`; paths are relative to this file\n"
    write_output(target, (header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, default_flow_style=None)).encode("utf-8"))
    consent = _consent_needed(spec.get("arch"), target)
    if consent:
        note(f"the spec's arch {consent}; commands that read this spec need --allow-code")
    command = f"lrp explain {target} {' '.join(inputs) or 'INPUTS'}" + (" --allow-code" if consent else "")
    info(f"wrote {target}{tried}; next: {command}")


def _consent_needed(arch: str | None, spec_path: Path) -> str:
    """Why a spec with this arch needs --allow-code ('' when it does not): the check every command makes."""
    from ..errors import ModelError
    from ..sources.files import resolve_arch
    from ..sources.safety import check_trusted_callable, spec_arch

    if not arch:
        return ""
    try:
        text = spec_arch(arch, spec_path.resolve(), allow_code=False)
        check_trusted_callable(text, resolve_arch(text))
    except ModelError as exc:
        return "is a Python file, whose code runs when imported" if ".py:" in arch else f"is outside the libraries a spec may name ({exc.message})"
    return ""


def _try_image(model: Any, preprocessing: Any, inputs: tuple[str, ...], composite: str | None) -> tuple[Any, str]:
    """The preprocessing with the size the model needs, after explaining the first image with it."""
    import dataclasses

    import torch

    from ..data.images import collect_images
    from ..engine.explainer import Explainer

    items = collect_images(inputs)
    first = items[0]
    if preprocessing.size is None and preprocessing.resize is None and preprocessing.short_side is None and preprocessing.crop is None:
        pixels = preprocessing.pixels(first.path)
        preprocessing = dataclasses.replace(preprocessing, size=(int(pixels.shape[0]), int(pixels.shape[1])))
    x = preprocessing.tensor(preprocessing.pixels(first.path))[None]
    result = Explainer(model, composite or "epsilon_plus_flat").explain(x)
    if not bool(torch.isfinite(result.relevance).all()):
        warn(f"{first.name}: the relevance is not finite with these options")
    return preprocessing, f" (tried on {first.name}: prediction {int(result.targets[0])})"


def _try_text(model: Any, entry: dict[str, Any], options: dict[str, Any], inputs: tuple[str, ...], composite: str | None) -> str:
    from ..data.text import TextTokenizer, pad_batch
    from ..engine.explainer import Explainer
    from ..runs.texts import mask_input

    if not inputs:
        return ""
    tokenizer = TextTokenizer(options["tokenizer"], entry["max_length"])
    with open(inputs[0], encoding="utf-8") as handle:
        text = next((line.strip() for line in handle if line.strip()), "")
    encoded = tokenizer.encode([text])
    ids, attention = pad_batch(encoded, tokenizer.pad_id, len(encoded[0].ids))
    name = mask_input(model)
    result = Explainer(model, composite or "epsilon").explain(ids, inputs={name: attention} if name else None)
    return f" (tried on the first text of {inputs[0]}: prediction {int(result.targets[0])})"
