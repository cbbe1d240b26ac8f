"""``lrp concepts``: Concept Relevance Propagation on images, and relevance maximisation over a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .console import failed, info, progress, warn
from .options import (
    build_composite,
    check_cmap,
    composite_options,
    contrast_option,
    device_option,
    fit_preprocessing,
    on_error_option,
    load_model_option,
    model_options,
    model_spec,
    new_explainer,
    parse_params,
    preprocessing_options,
    spec_preprocessing,
    target_option,
)


def _channels(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        channels = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise click.BadParameter(f"expected channel indices like 3,17, got {text!r}", param_hint="--channels") from None
    if not channels or min(channels) < 0:
        raise click.BadParameter(f"expected channel indices like 3,17, got {text!r}", param_hint="--channels")
    return channels


@click.command(
    epilog="""\b
Examples:
  lrp concepts sample_models/shapes_minivgg/model.yaml sample_models/shapes_minivgg/images --layer features.3 --top 3 -o concepts
  lrp concepts sample_models/digits_cnn/model.yaml sample_models/digits_cnn/images --layer features.0 --channels 2,5
  lrp concepts sample_models/digits_cnn/model.yaml sample_models/digits_cnn/images --layer features.0 --reference 4
  lrp concepts sample_models/digits_cnn/model.yaml sample_models/digits_cnn/images --layer features.0 --reference 2 --shard 1/2 -o refs
"""
)
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1)
@model_options
@composite_options
@preprocessing_options
@click.option("--layer", required=True, metavar="NAME", help="The layer whose channels are the concepts (a module path, see `lrp inspect`).")
@click.option("--top", type=click.IntRange(min=1), help="Draw the conditional heatmaps of each input's K most relevant channels (default 5).")
@click.option("--channels", metavar="C,C,...", help="Draw the conditional heatmaps of these channels (instead of --top); with --reference, rank only these.")
@click.option("--reference", type=click.IntRange(min=1), metavar="K", help="Relevance maximisation: per channel the K inputs where it is most relevant (and most active), with the crop holding most of its conditional relevance: OUT/references.csv, OUT/references/<layer>/<channel>/<kind>-<rank>.png.")
@click.option("--shard", metavar="K/N", help="With --reference: rank only shard K of N of the inputs (deterministic; for array jobs), written with a .shard-K-of-N suffix; `lrp merge OUT` joins the shards into the exact global top K.")
@click.option("--resume", is_flag=True, help="With --reference: go on from where an interrupted ranking into OUT stopped (it saves what it has every 10 s and when stopped).")
@click.option("-o", "--out", type=click.Path(file_okay=False), default="lrp-concepts", show_default=True, help="Output folder.")
@target_option("pred (default), a class index, or a class name")
@click.option("--init", type=click.Choice(["value", "one-hot"]), default="value", show_default=True, help="Start from the target logit's value, or from 1 (zennit's seed).")
@contrast_option
@click.option("--cmap", default="bwr", show_default=True, help="Heatmap colour map: bwr, seismic, coldnhot, gray, coolwarm, ...")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Rows per batch: inputs, or an input's conditions (one per channel).")
@device_option
@click.option("--dtype", type=click.Choice(["float32", "float64", "float16", "bfloat16"]), default="float32", show_default=True)
@on_error_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def concepts(model: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Which channels of a layer MODEL's decision used on image INPUTS, and where (Concept Relevance Propagation).

    Writes OUT/concepts.csv (every channel's relevance at the layer for the target, one row per input and
    channel) and, for each input's top (or named) channels, the conditional heatmap: the relevance with the
    layer's relevance kept on that channel only, as OUT/concepts/<input>/<layer>/<channel>.npy and .png.
    The conditional heatmaps of all channels sum to the input's heatmap.

    With --reference K, INPUTS is a dataset: per channel the K inputs where it is most relevant, and the K where
    it is most active, with the part of each input that holds most of its conditional relevance.

    OUT/concepts.html shows what OUT holds of both; where OUT is an image run's folder (lrp explain -o OUT),
    its report.html gets a concepts section linking to it.
    """
    from ..data.images import collect_images
    from ..errors import InputError, UsageError
    from ..runs.choices import TargetSpec, walk_start
    from ..runs.concepts import ConceptRun, run_concepts, run_references
    from ..runs.shards import Shard
    from ..sources.files import load_class_names

    if not inputs:
        raise UsageError("no INPUTS given", hint="give image files, folders or globs")
    if options["top"] is not None and options["channels"] is not None:
        raise UsageError("--top and --channels exclude each other")
    if options["reference"] is not None and options["top"] is not None:
        raise UsageError("--top applies to conditional heatmaps; --reference ranks every channel (or --channels)")
    if options["shard"] is not None and options["reference"] is None:
        raise UsageError("--shard applies to --reference (ranking a dataset in parts)")
    if options["resume"] and options["reference"] is None:
        raise UsageError("--resume applies to --reference (a ranking of a dataset)")
    shard = Shard.parse(options["shard"])
    check_cmap(options["cmap"])
    spec = model_spec(model, options)
    preprocessing = spec_preprocessing(spec, options)
    classes = spec.classes if spec else None
    if options["classes_file"]:
        classes = load_class_names(options["classes_file"])
    target = TargetSpec.parse(options["target"], None, classes)
    if target.mode not in ("pred", "index"):
        raise UsageError(f"--target {options['target']}: concepts explain one output per input", hint="give pred, a class index or a class name")
    composite = build_composite(options["composite"], spec, parse_params(options["params"]), preprocessing)
    loaded = load_model_option(model, spec, options)
    preprocessing, cautions = fit_preprocessing(preprocessing, spec, options, loaded)
    for caution in cautions if not options["quiet"] else ():
        warn(caution)
    explainer = new_explainer(loaded, composite, model, spec, options)
    out = Path(options["out"])
    items = collect_images(inputs, exclude=[out])
    if not items:
        raise InputError(f"no images found in {', '.join(inputs)}")
    out.mkdir(parents=True, exist_ok=True)
    run = ConceptRun(
        out=out,
        layer=options["layer"],
        target=None if target.mode == "pred" else int(target.index),
        init=walk_start(options["init"], options["contrast"], classes),
        top=options["top"] or 5,
        channels=_channels(options["channels"]),
        batch_size=options["batch_size"],
        device=options["device"],
        dtype=options["dtype"],
        cmap=options["cmap"],
        shard=shard,
        on_error=options["on_error"],
        resume=options["resume"],
    )
    count = len(shard.select(items)) if shard else len(items)
    with progress("ranking" if options["reference"] else "explaining", count, options["quiet"]) as advance:
        explainer.stages = advance.stage
        if options["reference"]:
            rows = run_references(explainer, items, preprocessing, run, options["reference"], progress=advance)
            written = f"references{shard.suffix if shard else ''}.csv, references/ ({len(rows)} crops)"
        else:
            rows = run_concepts(explainer, items, preprocessing, run, progress=advance)
            written = f"concepts.csv, concepts/ ({len(rows)} conditional heatmaps)"
    if shard is None:
        write_pages(out)
    if not options["quiet"]:
        done = run.written if not options["reference"] else count - len(run.failures)
        info(f"layer {run.layer}: {done} of {count} input(s){f' (shard {shard})' if shard else ''} -> {out}/ ({written})")
    if run.failures:
        for failure in run.failures:
            failed("failed", f"{failure.input}: {failure.message}")
        raise InputError(f"{len(run.failures)} of {len(items)} input(s) failed; the others were written to {out}/")


def write_pages(out: Path) -> None:
    """OUT/concepts.html from what OUT holds (this run's results and an earlier run's of the other kind), and
    OUT/report.html rebuilt with its concepts section where OUT is an image run's folder. The pages are extra:
    failing to write them leaves the results as they are."""
    from ..report import write_report
    from ..report.concepts import write_concepts_page
    from ..report.images import REPORT_NAME

    try:
        write_concepts_page(out)
        if (out / REPORT_NAME).is_file():
            write_report(out)
    except Exception as exc:  # noqa: BLE001
        warn(f"could not write the pages in {out}: {getattr(exc, 'message', None) or exc}")
