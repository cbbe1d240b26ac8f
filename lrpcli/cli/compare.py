"""``lrp compare``: the same inputs under several composites, side by side in one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .console import console, failed, info, note, progress, warn
from .options import graph_store, check_cmap, contrast_option, device_option, overlay_option, overlay_style_option, fit_preprocessing, on_error_option, target_option, build_composite, load_model_option, model_options, parse_params, preprocessing_options, refuse_overwriting_inputs, spec_preprocessing, model_spec


@click.command(
    epilog="""\b
Examples:
  lrp compare sample_models/shapes_minivgg/model.yaml sample_models/shapes_minivgg/images/circle_02.png -o cmp
  lrp compare sample_models/shapes_minivgg/model.yaml 'sample_models/shapes_minivgg/images/c*.png' -o sheet.png --shared-scale
  lrp compare sample_models/digits_cnn/model.yaml sample_models/digits_cnn/images -c lrp_0 -c epsilon:epsilon=0.25 -c epsilon_gamma_box --sheet -o cmp
  lrp compare model.ts photos/castle.jpg --size 224 -c lrp_0 -c epsilon_plus_flat --overlay --cmap coldnhot
"""
)
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1)
@model_options
@click.option(
    "-c",
    "--composite",
    "composites",
    multiple=True,
    metavar="NAME|FILE[:KEY=VALUE,...]",
    help="A composite to compare (repeat for more): a built-in (see `lrp composites`) or a YAML file, "
    "optionally with parameters for this column only, e.g. -c epsilon:epsilon=0.25. "
    "Default: lrp_0, the model spec's composite (else epsilon_plus_flat) and epsilon_gamma_box.",
)
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Override a parameter of every composite (epsilon, gamma, stabilizer, low, high), e.g. -p gamma=0.5.")
@preprocessing_options
@click.option("-o", "--out", type=click.Path(), help="Output folder (default: lrp-compare), or a .png file: then one sheet for all inputs (as --sheet).")
@click.option("--sheet", is_flag=True, help="One sheet for all inputs (a row per input, a column per composite): OUT/sheet.png, or the -o .png file.")
@target_option("pred (default), a class index or a class name; all composites explain the same one")
@click.option("--shared-scale", is_flag=True, help="Scale each row's heatmaps by the row's largest |relevance| (compare magnitudes across composites) instead of each panel's own.")
@click.option("--cmap", default="bwr", show_default=True, help="Heatmap colour map: bwr, seismic, coldnhot, gray, coolwarm, ...")
@overlay_option
@overlay_style_option
@click.option("--init", type=click.Choice(["value", "one-hot"]), default="value", show_default=True, help="Start from the target logit's value, or from 1 (zennit's seed).")
@contrast_option
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Inputs per batch.")
@device_option
@click.option("--dtype", type=click.Choice(["float32", "float64", "float16", "bfloat16"]), default="float32", show_default=True)
@on_error_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def compare(model: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Compare composites on image INPUTS (files, folders, globs): the input, then its heatmap
    under each composite, side by side.

    Writes OUT/<input>.png per input (a header row, the input captioned with its prediction
    and the explained target, a heatmap per composite captioned with its relevance sum), or
    with --sheet (or -o NAME.png) one figure with a row per input. Heatmaps are symmetric
    (0 is the colour map's centre: red for, blue against the target with bwr), scaled by
    each panel's largest |relevance|, or with --shared-scale by each row's.
    """
    from ..runs.compare import DEFAULT_COMPOSITES, MAX_SHEET_ROWS, CompareOptions, compare_images
    from ..runs.choices import CompositeChoice
    from ..data.images import collect_images
    from ..errors import ConfigError, InputError, UsageError
    from ..sources.files import load_class_names
    from ..runs.choices import TargetSpec, walk_start

    if not inputs:
        raise UsageError("no INPUTS given", hint="give image files, folders or globs")
    tabular = [i for i in inputs if str(i).lower().endswith(".csv") or str(i) == "-"]
    if tabular:
        raise UsageError(f"lrp compare takes images, not CSV rows ({tabular[0]})", hint="use lrp explain for tabular data")
    from ..engine.explainer import Explainer

    check_cmap(options["cmap"])
    out_text = options["out"] or "lrp-compare"
    sheet: Path | None = None
    if out_text.lower().endswith(".png"):
        sheet = Path(out_text)
        out = sheet.parent
    else:
        out = Path(out_text)
        if options["sheet"]:
            sheet = out / "sheet.png"
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a folder", hint="give a folder, or a .png file for a sheet")

    spec = model_spec(model, options)
    refuse_overwriting_inputs(model, spec, inputs, options)  # -o sheet.png onto one of the images
    preprocessing = spec_preprocessing(spec, options)
    classes = spec.classes if spec else None
    if options["classes_file"]:
        classes = load_class_names(options["classes_file"])
    targets = TargetSpec.parse(options["target"], None, classes)
    if targets.mode not in ("pred", "index"):
        raise UsageError(f"--target {options['target']}: compare explains one target per input", hint="use pred, a class index or a class name")

    # every composite first (a typo fails before the model loads), each with -p, then its own parameters
    shared = parse_params(options["params"])
    texts = list(options["composites"]) or list(
        dict.fromkeys(c or (spec.composite if spec is not None and spec.composite else "epsilon_plus_flat") for c in DEFAULT_COMPOSITES)
    )
    labels: list[str] = []
    composites = []
    for text in texts:
        choice = CompositeChoice.parse(text)
        try:
            composite = build_composite(choice.spec, spec, {**shared, **choice.params}, preprocessing)
        except ConfigError as exc:
            if not choice.params and shared:  # may be -p's fault: say which, as lrp explain does
                raise
            raise ConfigError(f"-c {text}: {exc.message}", hint=exc.hint) from exc
        label = choice.label(composite.name)
        if label in labels:
            raise UsageError(f"composite '{label}' is given twice", hint="give each -c once")
        labels.append(label)
        composites.append(composite)

    items = collect_images(inputs)
    if sheet is not None and len(items) > MAX_SHEET_ROWS:
        raise UsageError(f"a sheet holds at most {MAX_SHEET_ROWS} inputs, got {len(items)}", hint="write one figure per input (no --sheet), or pass fewer inputs")
    loaded = load_model_option(model, spec, options)
    preprocessing, cautions = fit_preprocessing(preprocessing, spec, options, loaded)
    for caution in cautions if not options.get("quiet") else ():
        warn(caution)
    explainers = [Explainer(loaded, composite) for composite in composites]  # one model: the graph is captured once
    store = graph_store(model, spec, options)  # the weights are hashed once, not per composite
    for explainer in explainers:
        explainer.graph_store = store

    footer_parts = [f"model: {model}"]
    if shared:
        footer_parts.append("all composites: " + ", ".join(f"{k}={v}" for k, v in shared.items()))
    run_options = CompareOptions(
        batch_size=options["batch_size"], device=options["device"], dtype=options["dtype"], init=walk_start(options["init"], options["contrast"], classes), on_error=options["on_error"]
    )
    quiet = options["quiet"]
    with progress(f"comparing {len(composites)} composites", len(items), quiet) as advance:
        report = compare_images(
            explainers,
            labels,
            items,
            preprocessing,
            targets,
            out=out,
            sheet=sheet,
            classes=classes,
            options=run_options,
            cmap=options["cmap"],
            overlay=options["overlay"],
            overlay_style=options["overlay_style"],
            shared_scale=options["shared_scale"],
            footer="; ".join(footer_parts),
            progress=advance,
        )
    for line in report.notes:
        note(line)
    if not quiet:
        where = str(sheet) if sheet is not None else f"{out}/ ({len(report.written)} figure(s))"
        info(f"compared {report.explained} of {report.total} input(s) under {', '.join(labels)} in {report.seconds:.1f}s -> {where}")
    if report.failures:
        for failure in report.failures:
            failed("failed", failure.message)
        written = "; the others were written" if report.written else ""
        raise InputError(f"{len(report.failures)} of {report.total} input(s) failed{written}")
