"""``lrp explain``: heatmaps, relevance arrays and a summary for a folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .console import console, failed, info, note, progress, warn
from .options import (
    check_cmap,
    contrast_option,
    device_option,
    overlay_option,
    overlay_style_option,
    on_error_option,
    target_option,
    fit_preprocessing,
    build_composite,
    composite_options,
    load_model_option,
    model_options,
    model_spec,
    new_explainer,
    no_report_option,
    parse_params,
    preprocessing_options,
    refuse_overwriting_inputs,
    report_option,
    spec_preprocessing,
)


@click.command(
    epilog="""\b
Examples:
  lrp explain sample_models/shapes_minivgg/model.yaml sample_models/shapes_minivgg/images -o out
  lrp explain model.pt --arch mypkg.nets:MiniVGG --arch-kwargs '{num_classes: 4}' imgs/ --size 32 --mean 0.5 --std 0.25
  lrp explain model.ts 'photos/**/*.jpg' -c epsilon_gamma_box --top-k 3 --overlay --cmap coldnhot
  head -n 50 sample_models/breast_cancer_mlp/sample.csv | lrp explain sample_models/breast_cancer_mlp/model.yaml - --top-k 3
  lrp explain sample_models/shapes_minivgg/model.yaml sample_models/shapes_minivgg/images -o out --shard 1/2
  lrp explain sample_models/text_sentiment/lstm.yaml sample_models/text_sentiment/texts.txt --top-k 3 -o words.jsonl
  echo "a wonderful, warm film" | lrp explain sample_models/text_sentiment/bag.yaml - --format pretty
  lrp explain my_model.pt2 reviews.csv --tokenizer tokenizer.json --text-col review --id-col id --html page.html
"""
)
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1)
@model_options
@composite_options
@preprocessing_options
@click.option("-o", "--out", type=click.Path(), help="Output folder for images (default: lrp-out); output file for CSV input (default: stdout).")
@target_option()
@click.option("-k", "--top-k", type=int, help="Images: explain the K highest-scoring classes. CSV: add the K most positive and most negative features per row.")
@click.option("--features", metavar="A,B,...", help="CSV: the feature columns, in the model's order (default: the spec's, else all others).")
@click.option("--drop", metavar="A,B,...", help="CSV: columns that are not features.")
@click.option("--id-col", metavar="NAME", help="CSV: a column that identifies rows (copied to the output).")
@click.option("--label-col", metavar="NAME", help="CSV: a label column carried through to the output.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet", "arrow", "pretty"]), help="Rows: csv (default), jsonl, parquet (-o FILE.parquet) or arrow (an Arrow IPC stream, one record batch per batch; -o FILE.arrow or a pipe). Texts: jsonl (default; one line per text and target), csv (one row per token), or pretty (coloured words; the default on a terminal).")
@click.option("--tokenizer", type=click.Path(dir_okay=False), help="Texts: a Hugging Face tokenizer.json (default: the spec's input.tokenizer).")
@click.option("--text-col", metavar="NAME", help="Texts in a CSV or JSONL file: the column / key holding the text.")
@click.option("--max-length", type=click.IntRange(min=1), help="Texts: cut texts to this many tokens (default: the spec's, else 256); cut texts are reported.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), metavar="N", help="Texts, a language model: generate N tokens per prompt (greedy; fewer where it stops) and explain each over every token before it, one JSON line per prompt.")
@click.option("--continuation-col", metavar="NAME", help="Texts, a language model: explain the answer in this column of the CSV/JSONL prompts, token by token (teacher forcing), instead of a generated one.")
@click.option("--context-col", metavar="NAME", help="Texts, a language model: a column with the passage(s) the prompt follows (read first, then a blank line and the prompt); each answer token's relevance is also summed per passage (blank-line separated) and sentence.")
@click.option("--html", type=click.Path(dir_okay=False), help="Texts: also write one script-free HTML page with every text's words shaded by relevance (the --report page shows them too, a sample of a large run, with the words for and against each class).")
@click.option("--init", type=click.Choice(["value", "one-hot"]), default="value", show_default=True, help="Start from the target logit's value, or from 1 (zennit's seed).")
@contrast_option
@click.option("--cmap", default="bwr", show_default=True, help="Heatmap colour map: bwr, seismic, coldnhot, gray, coolwarm, ...")
@overlay_option
@overlay_style_option
@click.option("--scale", default="per-image", show_default=True, metavar="per-image|shared[:V]|percentile[:P]", help="Heatmap colour scale (|R| at the colour map's ends): each image's own max |R|; shared: one scale for the run, the max |R| over all its inputs (found from OUT/relevance/*.npy after the last batch, heatmaps then redrawn; per shard with --shard), or shared:V for a given V; percentile: each image's P-th percentile of |R| (default 99.5), larger values clipped.")
@click.option("--heatmap-size", type=click.Choice(["model", "input"]), default="model", show_default=True, help="Images: draw heatmaps at the model's input size, or at each input file's own size (the relevance resampled into the part of the file the model saw; 0 outside a crop).")
@click.option("--legend", is_flag=True, help="Add a colour bar with the heatmap's scale (-S .. +S, S the scale used, see --scale) under each heatmap.")
@report_option("OUT/report.html for images, FILE.report.html beside -o FILE for CSV rows and texts; none on stdout")
@no_report_option
@click.option("--no-heatmaps", is_flag=True, help="Write no PNG heatmaps.")
@click.option("--no-arrays", is_flag=True, help="Write no .npy relevance arrays.")
@click.option("--layers", metavar="NAME,...", help="Images: also write the relevance at these inner layers' outputs (module paths, see `lrp inspect`) to OUT/layers/<layer>/<input>.npy.")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), help="Inputs per batch (default: 16 images, 1024 CSV rows).")
@device_option
@click.option("--dtype", type=click.Choice(["float32", "float64", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), help="Image-decoding worker processes (default: by input count and CPUs); with --ray, the number of Ray actors (default 1).")
@click.option("--ray", "ray", is_flag=True, help="Run on Ray (extra ray): the cluster RAY_ADDRESS names, else a local one; --workers N actors, each loading the model once (a GPU each with --device cuda). Images, CSV/JSON-lines/Parquet rows and texts; the same outputs as a plain run. --resume continues an interrupted Ray run (rows: with -o FILE, whose finished blocks wait in FILE.ray-parts/); --shard K/N puts shard K's inputs on the cluster (the same split as without Ray; `lrp merge` joins the shards), for one Ray job per shard.")
@on_error_option
@click.option("--resume", is_flag=True, help="Skip inputs whose outputs already exist in OUT.")
@click.option("--overwrite", is_flag=True, help="Replace results of another model or composite in OUT (refused otherwise).")
@click.option("--shard", metavar="K/N", help="Do only shard K of N (deterministic; for array jobs). Files get a .shard-K-of-N suffix; join them with `lrp merge`.")
@click.option("--inputs-from", metavar="FILE|-", help="Read input paths from a file (one per line), or - for stdin.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def explain(model: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Explain MODEL's decisions on image INPUTS (files, folders, globs), CSV rows or texts with LRP.

    Images: writes OUT/heatmaps/<input>.png, OUT/relevance/<input>.npy, OUT/summary.csv
    (one row per input and target) and OUT/run.json.

    CSV (a file, or - for stdin): one output row per input row and target, with the
    relevance of each feature, to stdout or -o FILE, streamed batch by batch.

    Texts (a text model's spec, or --tokenizer; a .txt file with one text per line, - for
    stdin, or a CSV/JSONL file with --text-col): one JSON line per text and target with the
    relevance of every token and word, to stdout or -o FILE; --top-k K adds the K words most
    for and against; --html FILE writes a page of shaded texts.

    Rows and texts written to -o FILE also get a report page beside it (FILE.report.html: the
    features by mean |relevance| and their spread, or the highlighted texts and the words most
    for and against each class; --report FILE to choose, --no-report for none).

    """
    from ..data.images import collect_images
    from ..errors import InputError, UsageError
    from ..sources.files import file_hash, load_class_names
    from ..runs.images import ImageRunOptions, explain_images
    from ..runs.choices import TargetSpec, walk_start

    from ..runs.shards import Shard, read_inputs_list

    shard = Shard.parse(options["shard"])
    if options["inputs_from"]:
        inputs = tuple(inputs) + tuple(read_inputs_list(options["inputs_from"]))
    spec = model_spec(model, options)  # (first: --weights with a folder as MODEL is a forgotten weights file)
    if not inputs:
        raise UsageError("no INPUTS given", hint="give image files, folders, globs or one CSV file (or --inputs-from FILE)")
    refuse_overwriting_inputs(model, spec, inputs, options)
    from .text import explain_text, is_text_run

    # .jsonl holds texts for a text model (its spec, --tokenizer or --text-col), else rows of features
    if is_text_run(spec, options) or any(str(i).lower().endswith(".txt") for i in inputs):
        if len(inputs) != 1:
            raise UsageError("give one file of texts (or - for stdin)")
        if options["heatmap_size"] != "model":
            raise UsageError("--heatmap-size applies to images", hint="drop it for texts")
        if options["max_new_tokens"] is not None or options["continuation_col"] or options["context_col"]:
            if options["ray"]:
                raise UsageError("--ray explains images, rows and texts, not generated tokens yet", hint="drop --ray for --max-new-tokens / --continuation-col / --context-col")
            from .generate import explain_generation

            explain_generation(model, spec, inputs[0], options)
        else:
            explain_text(model, spec, inputs[0], options)
        return
    tabular = [i for i in inputs if str(i).lower().endswith((".csv", ".parquet", ".pq", ".jsonl", ".ndjson")) or str(i) == "-"]
    if tabular and len(inputs) > 1:
        raise UsageError("give one CSV, JSON-lines or Parquet file (or - for stdin), or image inputs, not several or both")
    if tabular and options["heatmap_size"] != "model":
        raise UsageError("--heatmap-size applies to images", hint="drop it for CSV rows")
    for flag in ("tokenizer", "text_col", "max_length", "html", "max_new_tokens"):
        if options.get(flag):
            raise UsageError(f"--{flag.replace('_', '-')} applies to texts", hint="a text model's spec says input: {kind: text}; or give --tokenizer")
    if tabular:
        if options["fmt"] == "pretty":
            raise UsageError("--format pretty applies to texts; CSV rows are written as csv or jsonl")
        from .tabular import explain_csv

        explain_csv(model, spec, inputs[0], options)
        return
    check_cmap(options["cmap"])
    if options["report_path"] and options["no_report"]:
        raise UsageError("--report and --no-report exclude each other")
    if options["report_path"] and Path(options["report_path"]).resolve() != (Path(options["out"] or "lrp-out") / "report.html").resolve():
        raise UsageError(
            f"--report {options['report_path']}: an image run's page is OUT/report.html (it links the heatmaps inside OUT)",
            hint="leave --report out, or copy the whole OUT folder; `lrp report OUT` rebuilds the page",
        )
    from ..render.heatmaps import Scale

    heat_scale = Scale.parse(options["scale"])
    if options["top_k"] is not None and options["target"] is not None:
        raise UsageError("--target and --top-k exclude each other")

    preprocessing = spec_preprocessing(spec, options)

    classes = spec.classes if spec else None
    if options["classes_file"]:
        classes = load_class_names(options["classes_file"])
    targets = TargetSpec.parse(options["target"], options["top_k"], classes)

    composite = build_composite(options["composite"], spec, parse_params(options["params"]), preprocessing)

    loaded = load_model_option(model, spec, options)
    preprocessing, cautions = fit_preprocessing(preprocessing, spec, options, loaded)
    for caution in cautions if not options["quiet"] else ():
        warn(caution)
    explainer = new_explainer(loaded, composite, model, spec, options)
    out = Path(options["out"] or "lrp-out")
    items = collect_images(inputs, exclude=[out / "heatmaps", out / "report"])  # an OUT inside an input folder: not its own input (nor its report pictures)
    run_options = ImageRunOptions(
        out=out,
        batch_size=options["batch_size"] or 16,
        device=options["device"],
        dtype=options["dtype"],
        cmap=options["cmap"],
        overlay=options["overlay"],
        heatmaps=not options["no_heatmaps"],
        arrays=not options["no_arrays"],
        on_error=options["on_error"],
        resume=options["resume"],
        workers=options["workers"],
        init=walk_start(options["init"], options["contrast"], classes),
        shard=shard,
        overwrite=options["overwrite"],
        layers=tuple(name.strip() for name in (options["layers"] or "").split(",") if name.strip()),
        legend=options["legend"],
        scale=heat_scale,
        overlay_style=options["overlay_style"],
        heatmap_size=options["heatmap_size"],
    )
    weights = spec.model if spec else Path(model)
    run_options.model_sha256 = file_hash(weights)
    run_info = {
        "model": str(model),
        "weights": str(weights),
        "weights_sha256": run_options.model_sha256,
        "arguments": {"inputs": list(inputs), **{k: v for k, v in options.items()}},
    }
    quiet = options["quiet"]
    with progress("explaining", len(shard.select(items)) if shard else len(items), quiet) as advance:
        explainer.stages = advance.stage  # "capturing the model" while the first batch waits for the graph
        run = explain_images
        if options["ray"]:  # the same batches, explained by a pool of Ray actors
            from .ray_hooks import ray_images

            run = ray_images(model, options)
        report = run(explainer, items, preprocessing, run_options, targets, classes, run_info, progress=advance)
    try:  # the page is extra: failing to write it leaves the run's results as they are
        from ..report import write_report

        if not options["no_report"]:
            write_report(out)
    except Exception as exc:  # noqa: BLE001
        warn(f"could not write {out}/report.html: {getattr(exc, 'message', None) or exc}")
    for line in report.notes:
        note(line)
    if not quiet:
        skipped = f", {report.skipped} already done" if report.skipped else ""
        skipped += f" (shard {shard})" if shard else ""
        sfx = shard.suffix if shard else ""
        info(
            f"explained {report.explained} of {report.total} input(s){skipped} in {report.seconds:.1f}s "
            f"with {composite.name} -> {out}/ (heatmaps/, relevance/, summary{sfx}.csv, run{sfx}.json)"
        )
    if report.failures:
        for failure in report.failures:
            failed("failed", failure.message)
        raise InputError(f"{len(report.failures)} of {report.total} input(s) failed; the others were written to {out}/")
