"""``lrp check-conservation``: a conservation gate for CI, layer by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .console import console, failed, info, warn
from .options import build_composite, composite_options, contrast_option, device_option, new_explainer, fit_preprocessing, json_option, on_error_option, target_option, write_json, input_shape_option, load_model_option, model_options, parse_params, preprocessing_options, refuse_overwriting_inputs, report_option, spec_preprocessing, model_spec


@click.command(
    "check-conservation",
    epilog="""\b
Examples:
  lrp check-conservation sample_models/digits_cnn/model.yaml --random 8 -c lrp_0
  lrp check-conservation sample_models/shapes_minivgg/model.yaml sample_models/shapes_minivgg/images -c epsilon_plus_flat --junit conservation.xml
  lrp check-conservation model.pt --arch nets.py:Net --input-shape 3,32,32 --random 16 --dtype float64 --tolerance 1e-10 --count all
  lrp check-conservation sample_models/text_sentiment/bag.yaml sample_models/text_sentiment/texts.txt --dtype float64
  lrp check-conservation sample_models/digits_cnn/model.yaml sample_models/digits_cnn/images -c lrp_0 --report conservation.html
""",
)
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1)
@model_options
@composite_options
@preprocessing_options
@click.option("--random", "random_count", type=click.IntRange(min=1), help="Check N random inputs of the model's input shape (when no INPUTS are given).")
@click.option("--input-shape", metavar="C,H,W", help="Input shape for --random (default: from the model spec).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random.")
@click.option("--tolerance", type=click.FloatRange(min=0), help="Allowed gap (default: 1e-5 in float32, 1e-10 in float64).")
@click.option("--absolute", is_flag=True, help="Compare the absolute gap with the tolerance (default: relative to the logit).")
@click.option("--count", type=click.Choice(["all", "unexplained"]), help="Count the whole gap, or only what biases and stabilisers do not explain (default: all for LRP-0, else unexplained).")
@target_option("pred (default), a class index or a class name")
@click.option("--init", type=click.Choice(["value", "one-hot"]), default="value", show_default=True, help="Start from the target logit's value, or from 1 (zennit's seed).")
@contrast_option
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@device_option
@on_error_option
@json_option("the full report")
@click.option("--junit", type=click.Path(dir_okay=False), help="Write a JUnit XML file (one test case per sample).")
@report_option("no page")
@click.option("-q", "--quiet", is_flag=True, help="Only the verdict line.")
@click.option("--shard", metavar="K/N", help="Check only shard K of N of the inputs (for array jobs; join --json reports with `lrp merge`).")
@click.option("--inputs-from", metavar="FILE|-", help="Read input paths from a file (one per line), or - for stdin.")
@click.option("--tokenizer", type=click.Path(dir_okay=False), help="Texts: a Hugging Face tokenizer.json (default: the spec's input.tokenizer).")
@click.option("--text-col", metavar="NAME", help="Texts in a CSV or JSONL file: the column / key holding the text.")
@click.option("--id-col", metavar="NAME", help="Texts in a CSV or JSONL file: a column that names each text in the report.")
@click.option("--max-length", type=click.IntRange(min=1), help="Texts: cut texts to this many tokens (default: the spec's, else 256).")
def check_conservation(model: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Check that MODEL's LRP relevance is conserved from the output to INPUTS (images, a CSV
    file, or a file of texts for a text model: each text's token relevances are summed).

    For each sample the input relevance total is compared with the target logit; the
    per-layer table shows where relevance was absorbed (bias, stabiliser) or lost.
    Exit code 0 when every sample is within tolerance, 6 when any is not.

    --report FILE writes an HTML page: the verdict, the per-input gaps (sortable, failures
    highlighted) and every sample's per-layer ledger, as a table and a bar chart.
    """
    import torch

    from ..runs.conservation import check_conservation as run_check
    from ..runs.conservation import junit_xml, merge
    from ..errors import CheckFailed, InputError, UsageError
    from ..runs.choices import resolve_device, walk_start
    from ..outputs import write_output

    from ..runs.shards import Shard, read_inputs_list

    if options["report_path"] == "-":
        raise UsageError("--report takes a file name, not -", hint="the page is a file to open in a browser")
    spec = model_spec(model, options)
    shard = Shard.parse(options["shard"])
    if options["inputs_from"]:
        inputs = tuple(inputs) + tuple(read_inputs_list(options["inputs_from"]))
    refuse_overwriting_inputs(model, spec, inputs, options)
    if inputs and options["random_count"]:
        raise UsageError("give INPUTS or --random N, not both")
    if not inputs and not options["random_count"]:
        raise UsageError("nothing to check", hint="give image INPUTS, or --random N for random inputs of the model's input shape")
    tabular = [i for i in inputs if str(i).lower().endswith(".csv") or str(i) == "-"]
    if tabular and len(inputs) > 1:
        raise UsageError("give one CSV file (or - for stdin), or image inputs, not several or both")
    dtype = {"float32": torch.float32, "float64": torch.float64}[options["dtype"]]
    images = bool(inputs) and not tabular
    preprocessing = spec_preprocessing(spec, options) if (images or (spec is not None and spec.input.get("size"))) else None
    from .text import is_text_run

    texts = bool(inputs) and (is_text_run(spec, options) or str(inputs[0]).lower().endswith((".txt", ".jsonl", ".ndjson")))
    if texts:
        preprocessing = None
    composite = build_composite(options["composite"], spec, parse_params(options["params"]), preprocessing, default="epsilon" if texts else "epsilon_plus_flat")
    loaded = load_model_option(model, spec, options)
    if images and preprocessing is not None:
        preprocessing, cautions = fit_preprocessing(preprocessing, spec, options, loaded)
        for caution in cautions if not options["quiet"] else ():
            warn(caution)
    explainer = new_explainer(loaded, composite, model, spec, options)
    target = int(options["target"]) if options["target"] is not None and str(options["target"]).lstrip("-").isdigit() else options["target"]
    if isinstance(target, str) and target.lower() in ("pred", "prediction", "predicted"):
        target = None  # the prediction, as everywhere
    if isinstance(target, str):
        classes = spec.classes if spec else None
        if not classes or target not in classes:
            raise UsageError(f"--target '{target}' is not a class index or a known class name")
        target = classes.index(target)

    batches: list[tuple[torch.Tensor, list[str]]] = []
    extras: list[dict | None] = []
    skipped: list[str] = []  # unreadable inputs (--on-error skip): the others are checked, the run exits 5
    if texts:
        if len(inputs) != 1:
            raise UsageError("give one file of texts (or - for stdin)")
        explainer.float_dtype = dtype
        batches, extras = _text_batches(explainer, inputs[0], spec, options, shard)
    elif tabular:
        batches = _csv_batches(tabular[0], spec, options, shard)
    elif inputs:
        from ..data.images import collect_images

        items = collect_images(inputs)
        items = shard.select(items) if shard else items
        if not items:
            raise UsageError(f"shard {shard} holds none of the {len(collect_images(inputs))} inputs")

        readable = []
        for item in items:
            try:
                readable.append((item.name, preprocessing.tensor(preprocessing.pixels(item.path))))
            except InputError as exc:
                if options["on_error"] == "fail":
                    raise
                skipped.append(exc.message)
        for start in range(0, len(readable), options["batch_size"]):
            chunk = readable[start : start + options["batch_size"]]
            batches.append((torch.stack([tensor for _, tensor in chunk]), [name for name, _ in chunk]))
    else:
        from ..sources.files import saved_input_shape

        shape = input_shape_option(options["input_shape"], spec) or saved_input_shape(loaded)  # a .pt2 or .onnx says what it takes
        if shape is None:
            raise UsageError("the input shape is unknown", hint="pass --input-shape C,H,W (or F), or use a model spec with input.size")
        generator = torch.Generator().manual_seed(options["seed"])
        x = torch.randn(options["random_count"], *shape, generator=generator)
        names = [f"random-{i}" for i in range(x.shape[0])]
        keep = [i for i, name in enumerate(names) if shard is None or shard.owns(name)]
        x, names = x[keep], [names[i] for i in keep]
        for start in range(0, x.shape[0], options["batch_size"]):
            batches.append((x[start : start + options["batch_size"]], names[start : start + options["batch_size"]]))

    if not batches:
        raise InputError(f"none of the {len(skipped)} input(s) could be read: {skipped[0] if skipped else ''}")
    device = resolve_device(options["device"])
    start = walk_start(options["init"], options["contrast"], spec.classes if spec else None)
    reports = [
        run_check(
            explainer,
            (xb if texts else xb.to(dtype)).to(device),
            names,
            target,
            tolerance=options["tolerance"],
            relative=not options["absolute"],
            count=options["count"],
            init=start,
            inputs={k: v.to(device) for k, v in extras[index].items()} if texts and extras[index] else None,
        )
        for index, (xb, names) in enumerate(batches)
    ]
    report = merge(reports)
    if options["junit"]:
        write_output(Path(options["junit"]), junit_xml(report).encode("utf-8"))
    if options["json_path"]:
        write_json(options["json_path"], {**report.to_dict(), **({"contrast": options["contrast"]} if options["contrast"] else {})})
    if options["report_path"]:
        _write_report(report, model, inputs, options)
    if not options["quiet"]:
        _print_tables(report)
    kind = "relative" if report.relative else "absolute"
    verdict = (
        f"{len(report.samples) - len(report.failed)} of {len(report.samples)} sample(s) conserve relevance with "
        f"{report.composite} ({kind} tolerance {report.tolerance:g}, counting {report.count} of the gap)"
    )
    for message in skipped:
        failed("skipped", message)
    if report.failed:
        worst = max(report.failed, key=lambda s: s.error)
        raise CheckFailed(verdict + f"; worst: {worst.sample} (gap {worst.error:.3g}, most lost at layer {worst.worst_layer})")
    info(verdict)
    if skipped:
        raise InputError(f"{len(skipped)} input(s) could not be read and were not checked; the others conserve")


def _write_report(report: Any, model: str, inputs: tuple[str, ...], options: dict[str, Any]) -> None:
    """The --report page; one that cannot be written is a warning (the gate's verdict still stands)."""
    import platform
    import sys
    from datetime import datetime, timezone

    import torch

    from .. import __version__
    from ..errors import LrpError
    from ..report.conservation import write_conservation_report

    if inputs:
        shown = ", ".join(str(i) for i in inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
    else:
        shown = f"{options['random_count']} random input(s), seed {options['seed']}"
    run = {
        "model": str(model),
        "inputs": shown,
        "shard": options.get("shard"),
        "init": options.get("init"),
        "contrast": options.get("contrast"),
        "target": options.get("target"),
        "versions": {"lrpcli": __version__, "torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform()},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        path = write_conservation_report(Path(options["report_path"]), report.to_dict(), run)
    except (LrpError, OSError) as exc:
        warn(f"could not write {options['report_path']}: {getattr(exc, 'message', None) or exc}")
        return
    if not options["quiet"]:
        info(f"wrote {path}")


def _print_tables(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    headline = Table(title=f"conservation: input relevance vs. logit ({report.composite})")
    for column in ("sample", "target", "logit", "input relevance", "gap", "explained", "unexplained", "error", "ok"):
        headline.add_column(column, justify="right" if column not in ("sample", "ok") else "left")
    for sample in report.samples:
        headline.add_row(
            escape(sample.sample),
            str(sample.target),
            f"{sample.logit:.6g}",
            f"{sample.input_relevance:.6g}",
            f"{sample.gap:.3g}",
            f"{sample.explained:.3g}",
            f"{sample.unexplained:.3g}",
            f"{sample.error:.3g}",
            "[green]yes[/]" if sample.passed else "[red]NO[/]",
        )
    console.print(headline)
    focus = report.failed[0] if report.failed else max(report.samples, key=lambda s: s.error)
    layers = Table(title=f"per layer, sample {focus.sample} (worst: {focus.worst_layer})")
    show_rule_share = any(c.rule_share for c in focus.layers)  # only where a non-conservative rule ran (softmax)
    columns = ("layer", "type", "rule", "relevance out", "relevance in", "absorbed", "bias", "stabiliser")
    for column in columns + (("rule took",) if show_rule_share else ()) + ("other",):
        layers.add_column(column, justify="left" if column in ("layer", "type", "rule") else "right")
    for check in reversed(focus.layers):  # output first, the way relevance flows
        style = "bold red" if check.layer == focus.worst_layer and not focus.passed else None
        layers.add_row(
            escape(check.layer),
            escape(check.type),
            check.rule,
            f"{check.relevance_out:.6g}",
            f"{check.relevance_in:.6g}",
            f"{check.absorbed:.3g}",
            f"{check.bias:.3g}",
            f"{check.stabilizer:.3g}",
            *((f"{check.rule_share:.3g}",) if show_rule_share else ()),
            f"{check.other:.3g}",
            style=style,
        )
    console.print(layers)
    if any(abs(c.other) > 0 for c in focus.layers) and report.count == "unexplained" and not focus.passed:
        warn("'other' is relevance lost or created by a rule itself, not by a bias or stabiliser")


def _text_batches(explainer: Any, source: str, spec: Any, options: dict[str, Any], shard: Any = None) -> tuple[list, list]:
    """Token-id batches (and attention masks, where the model takes one) of every text; a bad text stops the gate."""
    from ..data.tabular import open_csv
    from ..data.text import TextTokenizer, batch_length, pad_batch, read_texts, text_format
    from ..errors import InputError, UsageError
    from ..runs.texts import batches as in_batches
    from ..runs.choices import resolve_device
    from ..runs.texts import check_vocabulary, fixed_length, mask_input

    spec_input = spec.input if spec else {}
    tokenizer_path = options.get("tokenizer") or spec_input.get("tokenizer")
    if not tokenizer_path:
        raise UsageError("texts need a tokenizer", hint="give --tokenizer tokenizer.json, or a model spec with input.tokenizer")
    tokenizer = TextTokenizer(tokenizer_path, options.get("max_length") or spec_input.get("max_length") or 256)
    text_col = options.get("text_col") or spec_input.get("text_col")
    name = "<stdin>" if source == "-" else source
    fmt = text_format(source, text_col)
    if source != "-" and not Path(source).is_file():
        raise InputError(f"input not found: {source}")
    mask_name = mask_input(explainer.model, spec_input.get("mask"))
    fixed = fixed_length(explainer.model)
    batches, extras = [], []
    with open_csv(source) as handle:
        records = read_texts(handle, name, fmt, text_col=text_col, id_col=options.get("id_col") or spec_input.get("id_col"))
        for chunk in in_batches(records, options["batch_size"]):
            chunk = [record for record in chunk if shard is None or shard.owns(str(record.number))]
            if not chunk:
                continue
            bad = [record for record in chunk if record.error]
            if bad:
                raise InputError(bad[0].error)
            encoded = tokenizer.encode([record.text for record in chunk], [record.where for record in chunk])
            ids, mask = pad_batch(encoded, tokenizer.pad_id, batch_length(max(len(e.ids) for e in encoded), tokenizer.max_length, fixed))
            if not batches:  # a tokenizer that does not fit the model: named before any lookup
                device = resolve_device(options["device"])
                check_vocabulary(explainer, tokenizer, ids.to(device), {mask_name: mask.to(device)} if mask_name else None)
            batches.append((ids, [record.id for record in chunk]))
            extras.append({mask_name: mask} if mask_name else None)
    if not batches:
        raise InputError(f"{name}: no texts to check")
    return batches, extras


def _csv_batches(source: str, spec: Any, options: dict[str, Any], shard: Any = None) -> list:
    """All good rows of a CSV as batches (bad rows are input errors: a gate must see every sample)."""
    import sys


    from ..data.tabular import TabularColumns, open_csv, open_rows, read_batches
    from ..errors import InputError
    from .options import floats

    spec_input = spec.input if spec else {}
    name = "<stdin>" if source == "-" else source
    if source != "-" and not Path(source).is_file():
        raise InputError(f"input not found: {source}")
    with open_csv(source) as handle:
        header, reader = open_rows(handle, name)
        id_col, label_col = spec_input.get("id_col"), spec_input.get("label_col")
        columns = TabularColumns.resolve(
            header,
            features=spec_input.get("features"),
            drop=spec_input.get("drop") or [],
            id_col=id_col,
            label_col=label_col,
            mean=floats(options["mean"], "--mean") or spec_input.get("mean"),
            std=floats(options["std"], "--std") or spec_input.get("std"),
            source=name,
            optional=tuple(c for c in (id_col, label_col) if c),
        )
        batches = []
        for batch in read_batches(reader, header, columns, options["batch_size"], name):
            if shard is not None:
                batch.rows = [row for row in batch.rows if shard.owns(str(row.number))]
                if not batch.rows:
                    continue
            bad = [row for row in batch.rows if row.error is not None]
            if bad:
                raise InputError(bad[0].error)
            batches.append((batch.tensor(columns).float(), [row.id for row in batch.rows]))
    if not batches:
        raise InputError(f"{name}: no rows to check")
    return batches
