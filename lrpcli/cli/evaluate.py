"""``lrp evaluate``: how faithful are the explanations? Perturbation curves, AOPC, localisation, sanity.

Past 500 lines for a reason: one command of some 30 options, whose run kinds (images and rows here, texts in
_evaluate_texts) share the option handling below (_settings, _baselines, the cache, the report options);
what texts need beyond that lives in evaluate_text.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .console import console, failed, info, note, progress, warn
from .options import build_composite, device_option, fit_preprocessing, json_option, on_error_option, load_model_option, model_options, no_report_option, parse_params, preprocessing_options, refuse_overwriting_inputs, report_option, spec_preprocessing, model_spec

DEFAULT_OUT = "lrp-eval"
IMAGE_BATCH, CSV_BATCH = 16, 256
DEFAULT_SANITY_LAYERS = 3


@click.command(
    epilog="""\b
Examples:
  lrp evaluate sample_models/digits_cnn/model.yaml sample_models/digits_cnn/images -c epsilon_plus_flat -c epsilon -o eval-digits
  lrp evaluate sample_models/shapes_minivgg/model.yaml sample_models/shapes_minivgg/images --masks sample_models/shapes_minivgg/masks --patch 4 --replace mean --steps 8 --sanity
  lrp evaluate sample_models/breast_cancer_mlp/model.yaml sample_models/breast_cancer_mlp/sample.csv -c epsilon --replace mean --json - > eval.json
  lrp evaluate model.ts photos/ -c epsilon_gamma_box -c epsilon_plus_flat --replace blur --patch 8 --save-arrays quantus/ -b 32
  lrp evaluate sample_models/text_sentiment/lstm.yaml sample_models/text_sentiment/planted.jsonl --text-col text --planted-col planted -c epsilon --replace unk

\b
Outputs (in OUT, default lrp-eval/): evaluation.png (MoRF curves solid, LeRF dashed),
evaluation.json (curves, AOPC, gap, confidence, localisation, sanity; per input too),
evaluation.csv (one row per method, order and step) and report.html (the run, the
curves per method, the metrics and what is better, sanity, localisation; `lrp report
OUT` rebuilds it from evaluation.json); --json/--csv (FILE or -), --plot FILE and
--report FILE write them elsewhere, --no-report writes no page. --save-arrays DIR
writes x_batch.npy (N,C,H,W float32), y_batch.npy (N, int64: the explained class),
a_batch_<method>.npy (N,C,H,W float32) and, with --masks, s_batch.npy
(N,1,H,W uint8): the arrays Quantus's metrics take.
"""
)
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1)
@model_options
@click.option("-c", "--composite", "composites", multiple=True, metavar="NAME|FILE", help="Composite to evaluate; repeat for several. Default: the model spec's, else epsilon_plus_flat (epsilon for CSV).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Override a parameter of every composite (epsilon, gamma, stabilizer, low, high).")
@click.option("--baseline", "baselines", multiple=True, metavar="NAME", help="gradient-x-input, random, or none; repeat for several (default: both).")
@preprocessing_options
@click.option("--steps", type=int, default=10, show_default=True, help="Curve steps L: the removed share grows in L equal steps to --max-fraction.")
@click.option("--max-fraction", type=float, default=1.0, show_default=True, help="Share of pixels/patches/features removed at the last step.")
@click.option("--patch", type=int, default=1, show_default=True, help="Images: remove PxP patches (ranked by summed relevance) instead of single pixels.")
@click.option("--replace", default="zero", show_default=True, help="Removed values become: zero (0 after normalisation), mean (image's channel mean / feature mean), blur (blurred image), uniform (noise in the input's range).")
@click.option("--blur-sigma", type=float, help="Gaussian sigma in pixels for --replace blur (default: max(1, min(H, W) / 16)).")
@click.option("--score", type=click.Choice(["logit", "probability"]), default="logit", show_default=True, help="Which target score the plot and the table's AOPC show (JSON/CSV hold both).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the random baseline, uniform noise and tie breaking.")
@click.option("--masks", "masks_dir", metavar="DIR", help="Images: ground-truth masks (PNG, same file name, >127 = object) for relevance mass accuracy.")
@click.option("--sanity", is_flag=True, help="Model randomisation check: re-explain with the top layers' weights randomised (cascading) and report the rank correlation.")
@click.option("--sanity-layers", type=int, help=f"Randomise the top 1..N conv/linear layers (implies --sanity; default {DEFAULT_SANITY_LAYERS}).")
@click.option("--sanity-threshold", type=float, default=0.9, show_default=True, help="Flag a method whose heatmaps keep a Spearman correlation (signed or of absolute values) at or above this at some level.")
@click.option("--save-arrays", metavar="DIR", help="Write x_batch.npy, y_batch.npy, a_batch_<method>.npy (Quantus layout) to DIR.")
@click.option("-o", "--out", metavar="DIR", help=f"Output folder for evaluation.png/.json/.csv (default: {DEFAULT_OUT}).")
@json_option("the results (instead of OUT/evaluation.json)")
@click.option("--csv", "csv_path", metavar="FILE|-", help="Write the CSV here instead of OUT/evaluation.csv (- for stdout).")
@click.option("--plot", "plot_path", metavar="FILE", help="Write the PNG chart here instead of OUT/evaluation.png.")
@report_option("OUT/report.html")
@no_report_option
@click.option("-b", "--batch-size", type=click.IntRange(min=1), help=f"Inputs per batch (default: {IMAGE_BATCH} images, {CSV_BATCH} CSV rows).")
@device_option
@on_error_option
@click.option("--tokenizer", type=click.Path(dir_okay=False), help="Texts: a Hugging Face tokenizer.json (default: the spec's input.tokenizer).")
@click.option("--text-col", metavar="NAME", help="Texts in a CSV or JSONL file: the column / key holding the text.")
@click.option("--id-col", metavar="NAME", help="Texts in a CSV or JSONL file: a column that names each text.")
@click.option("--planted-col", metavar="NAME", help="Texts: a column listing words known to decide the label (JSON list or a;b;c): the share of positive relevance on them is reported.")
@click.option("--max-length", type=click.IntRange(min=1), help="Texts: cut texts to this many tokens (default: the spec's, else 256).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or table.")
def evaluate(model: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Evaluate MODEL's LRP explanations on image INPUTS (files, folders, globs), CSV rows or texts.

    For each composite (-c, repeatable) and baseline (gradient x input, random), the
    pixels, PxP patches or features are removed in order of relevance, most relevant
    first (MoRF) and least relevant first (LeRF), and the logit of the class predicted on
    the clean input is recorded: the perturbation curve. AOPC = mean over the L+1 steps of
    (f(x) - f(x_k)), averaged over inputs; higher is better. gap = AOPC_MoRF - AOPC_LeRF
    (the area between the curves); higher is better. Also reported: the target
    probability, seed 003's confidence (p_max - p_2nd) / p_max along the curves,
    relevance mass accuracy inside --masks, and with --sanity the Spearman rank
    correlation between original heatmaps and heatmaps of a model with its top layers
    randomised.
    """
    from ..errors import UsageError
    from ..evaluate import BASELINES, Evaluator, feature_stats, resolve_baseline
    from ..runs.choices import resolve_device

    if not inputs:
        raise UsageError("no INPUTS given", hint="give image files, folders, globs or one CSV file (or - for stdin)")
    spec = model_spec(model, options)
    refuse_overwriting_inputs(model, spec, inputs, options)
    from .text import is_text_run

    if is_text_run(spec, options) or str(inputs[0]).lower().endswith((".txt", ".jsonl", ".ndjson")):
        if len(inputs) != 1:
            raise UsageError("give one file of texts (or - for stdin)")
        return _evaluate_texts(model, spec, inputs, options)
    for flag in ("tokenizer", "text_col", "id_col", "planted_col", "max_length"):
        if options.get(flag):
            raise UsageError(f"--{flag.replace('_', '-')} applies to texts", hint="a text model's spec says input: {kind: text}; or give --tokenizer")
    tabular = [i for i in inputs if str(i).lower().endswith(".csv") or str(i) == "-"]
    if tabular and len(inputs) > 1:
        raise UsageError("give one CSV file (or - for stdin), or image inputs, not several or both")
    if options["json_path"] == "-" and options["csv_path"] == "-":
        raise UsageError("--json - and --csv - would both write to stdout; send one of them to a file")
    _check_report_options(options)
    if tabular:
        for flag in ("size", "resize", "crop", "mode", "masks_dir"):
            if options.get(flag):
                name = "--masks" if flag == "masks_dir" else f"--{flag}"
                raise UsageError(f"{name} applies to images, not CSV rows")
    settings = _settings(options, tabular=bool(tabular))
    baselines = _baselines(options["baselines"], resolve_baseline, BASELINES)

    preprocessing = None if tabular else spec_preprocessing(spec, options)
    params = parse_params(options["params"])
    default = "epsilon" if tabular else "epsilon_plus_flat"
    methods: dict[str, Any] = {}
    for name in options["composites"] or (None,):
        composite = build_composite(name, spec, params, preprocessing, default=default)
        key = composite.name
        if key in methods:
            if name is not None and str(name) not in methods:
                key = str(name)
            else:
                raise UsageError(f"composite '{key}' is given twice")
        methods[key] = composite
    device = resolve_device(options["device"])
    loaded = load_model_option(model, spec, options)
    if preprocessing is not None:
        preprocessing, cautions = fit_preprocessing(preprocessing, spec, options, loaded)
        for caution in cautions if not options["quiet"] else ():
            warn(caution)

    batch_size = options["batch_size"] or (CSV_BATCH if tabular else IMAGE_BATCH)
    if tabular:
        batches = _csv_inputs(tabular[0], spec, options, batch_size, loaded)
        total = sum(len(ids) for _, ids in batches)
        import torch

        reference = feature_stats(torch.cat([x for x, _ in batches]))
    else:
        from ..data.images import collect_images

        items = collect_images(inputs)
        mask_paths = _mask_paths(items, options["masks_dir"]) if options["masks_dir"] else None
        total = len(items)
        reference = None

    evaluator = Evaluator(
        loaded,
        methods,
        baselines,
        settings,
        tabular=bool(tabular),
        reference=reference,
        keep_relevance=bool(options["save_arrays"]),
        device=device,
    )
    _use_graph_cache(evaluator, model, spec, options)

    import time

    skipped: list[str] = []  # unreadable images (--on-error skip): the others are evaluated, the run exits 5
    started = time.perf_counter()
    with progress("evaluating", total, options["quiet"]) as advance:
        if tabular:
            for x, ids in batches:
                evaluator.add(x, ids)
                advance(len(ids))
        else:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                chunk_masks = mask_paths[start : start + batch_size] if mask_paths else None
                if options["on_error"] == "skip":
                    chunk, chunk_masks = _readable(chunk, chunk_masks, preprocessing, skipped)
                if chunk:
                    x, masks = _image_batch(chunk, preprocessing, chunk_masks)
                    evaluator.add(x, [item.name for item in chunk], masks)
                advance(len(items[start : start + batch_size]))
    result = evaluator.result()
    seconds = time.perf_counter() - started

    out = Path(options["out"] or DEFAULT_OUT)
    classes = spec.classes if spec else None
    if options["classes_file"]:
        from ..sources.files import load_class_names

        classes = load_class_names(options["classes_file"])
    written = _write_outputs(result, out, model, inputs, {**options, "_classes": classes}, seconds)
    if options["save_arrays"]:
        written.append(_save_arrays(result, Path(options["save_arrays"])))
    for line in result.notes:
        note(line)
    if not options["quiet"]:
        _print_table(result, options["score"])
    for name in result.methods:
        summary = result.summary(name)
        if summary.get("sanity_flagged"):
            warn(
                f"{name}: its heatmaps barely change when the model's top layers are randomised "
                f"(Spearman >= {settings.sanity_threshold:g}): the explanation does not depend on the model"
            )
    if not options["quiet"]:
        info(f"evaluated {len(result.names)} input(s) with {len(result.methods)} method(s) in {seconds:.1f}s -> {', '.join(written)}")
    if skipped:
        from ..errors import InputError

        for message in skipped:
            failed("skipped", message)
        raise InputError(f"{len(skipped)} input(s) could not be read and were left out; the others were evaluated")


def _settings(options: dict[str, Any], text: bool = False, tabular: bool = False) -> Any:
    from ..errors import UsageError
    from ..evaluate import Settings

    sanity_layers = options["sanity_layers"]
    if sanity_layers is not None and sanity_layers < 1:
        raise UsageError(f"--sanity-layers must be at least 1, got {sanity_layers}")
    if options["sanity"] or sanity_layers is not None:
        sanity_layers = sanity_layers or DEFAULT_SANITY_LAYERS
    return Settings(
        steps=options["steps"],
        max_fraction=options["max_fraction"],
        patch=options["patch"],
        replace=options["replace"],
        blur_sigma=options["blur_sigma"],
        seed=options["seed"],
        sanity_layers=sanity_layers or 0,
        sanity_threshold=options["sanity_threshold"],
    ).check(tabular=tabular, text=text)


def _evaluate_texts(model: str, spec: Any, inputs: tuple[str, ...], options: dict[str, Any]) -> None:
    """Token deletion on a file of texts (see lrpcli/evaluate/tokens.py)."""
    import time

    from ..errors import UsageError
    from ..evaluate import BASELINES, TokenEvaluator, resolve_baseline
    from ..runs.choices import resolve_device
    from ..runs.texts import check_vocabulary, mask_input
    from .evaluate_text import open_texts, text_batches

    for flag in ("size", "resize", "crop", "mode", "mean", "std", "masks_dir", "save_arrays", "blur_sigma"):
        if options.get(flag):
            name = {"masks_dir": "--masks", "save_arrays": "--save-arrays"}.get(flag, f"--{flag.replace('_', '-')}")
            raise UsageError(f"{name} applies to images or CSV rows, not texts")
    if options["json_path"] == "-" and options["csv_path"] == "-":
        raise UsageError("--json - and --csv - would both write to stdout; send one of them to a file")
    _check_report_options(options)
    settings = _settings(options, text=True)
    baselines = _baselines(options["baselines"], resolve_baseline, BASELINES)
    tokenizer = open_texts(inputs[0], spec, options)
    params = parse_params(options["params"])
    methods: dict[str, Any] = {}
    for name in options["composites"] or (None,):
        composite = build_composite(name, spec, params, default="epsilon")
        if composite.name in methods:
            raise UsageError(f"composite '{composite.name}' is given twice")
        methods[composite.name] = composite
    loaded = load_model_option(model, spec, options)
    evaluator = TokenEvaluator(
        loaded,
        methods,
        baselines,
        settings,
        pad_id=tokenizer.pad_id,
        unk_id=tokenizer.unk_id,
        mask_name=mask_input(loaded, spec.input.get("mask") if spec else None),
        device=resolve_device(options["device"]),
    )
    _use_graph_cache(evaluator, model, spec, options)
    started = time.perf_counter()
    with progress("evaluating texts", None, options["quiet"]) as advance:
        for index, (ids, attention, units, names, planted) in enumerate(text_batches(inputs[0], spec, options, tokenizer, evaluator.scorer.model, options["batch_size"] or 32)):
            if index == 0:  # a tokenizer that does not fit the model: named before any lookup
                mask = {evaluator.mask_name: attention.to(evaluator.device)} if evaluator.mask_name else None
                check_vocabulary(evaluator.scorer, tokenizer, ids.to(evaluator.device), mask)
            evaluator.add(ids, attention, units, names, planted)
            advance(len(names))
    result = evaluator.result()
    seconds = time.perf_counter() - started
    classes = spec.classes if spec else None
    if options["classes_file"]:
        from ..sources.files import load_class_names

        classes = load_class_names(options["classes_file"])
    written = _write_outputs(result, Path(options["out"] or DEFAULT_OUT), model, inputs, {**options, "_classes": classes}, seconds)
    for line in result.notes:
        note(line)
    if not options["quiet"]:
        _print_table(result, options["score"])
        info(f"evaluated {len(result.names)} text(s) with {len(result.methods)} method(s) in {seconds:.1f}s -> {', '.join(written)}")


def _use_graph_cache(evaluator: Any, model: str, spec: Any, options: dict[str, Any]) -> None:
    """The evaluation's explainers load the model's graph from the disk cache, as lrp explain's do."""
    from .options import graph_store

    store = graph_store(model, spec, options)
    for explainer in [evaluator.scorer] + [m.explainer for m in evaluator.methods.values() if m.explainer is not None]:
        explainer.graph_store = store


def _baselines(given: tuple[str, ...], resolve: Any, registry: Any) -> list[str]:
    from ..errors import UsageError

    if not given:
        return registry.names()  # gradient_x_input, random
    names = [part.strip() for item in given for part in str(item).split(",") if part.strip()]
    if any(name.lower() == "none" for name in names):
        if len(names) > 1:
            raise UsageError("--baseline none excludes other baselines")
        return []
    resolved: list[str] = []
    for name in names:
        key = resolve(name)
        if key not in resolved:
            resolved.append(key)
    return resolved


def _mask_paths(items: list[Any], folder: str) -> list[Path]:
    """The mask of each image: FOLDER/<image's relative path>, or the same with a .png suffix."""
    from ..errors import InputError

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--masks: folder not found: {folder}")
    found: list[Path] = []
    missing: list[str] = []
    for item in items:
        candidates = [root / item.name, (root / item.name).with_suffix(".png")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(item.name)
        else:
            found.append(path)
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
        raise InputError(
            f"--masks {folder}: no mask for {len(missing)} of {len(items)} image(s): {shown}",
            hint="a mask is a PNG with the image's file name (and sub-folder), 255 on the object, 0 elsewhere",
        )
    return found


def _readable(chunk: list[Any], mask_paths: list[Path] | None, preprocessing: Any, skipped: list[str]) -> tuple[list[Any], list[Path] | None]:
    """The images of ``chunk`` that can be read (with their masks); the others' messages go to ``skipped``."""
    from ..errors import InputError

    good, masks = [], []
    for index, item in enumerate(chunk):
        try:
            preprocessing.pixels(item.path)
        except InputError as exc:
            skipped.append(exc.message)
            continue
        good.append(item)
        if mask_paths:
            masks.append(mask_paths[index])
    return good, (masks if mask_paths else None)


def _image_batch(chunk: list[Any], preprocessing: Any, mask_paths: list[Path] | None) -> tuple[Any, Any]:
    import dataclasses

    import numpy as np
    import torch

    from ..errors import InputError

    tensors = [preprocessing.tensor(preprocessing.pixels(item.path)) for item in chunk]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise InputError(
            f"images differ in size ({', '.join('x'.join(map(str, s)) for s in sorted(shapes))})",
            hint="pass --size H,W so that every image is resized to the model's input",
        )
    x = torch.stack(tensors)
    if mask_paths is None:
        return x, None
    geometry = dataclasses.replace(preprocessing, mode="L", mean=None, std=None)  # every step of the images' geometry
    masks = []
    for item, path in zip(chunk, mask_paths):
        mask = geometry.pixels(path)[:, :, 0] > 127
        if mask.shape != tuple(x.shape[2:]):
            raise InputError(f"{path}: the mask is {mask.shape[0]}x{mask.shape[1]}, its image {item.name} is {x.shape[2]}x{x.shape[3]}")
        masks.append(mask)
    return x, torch.from_numpy(np.stack(masks))


def _csv_inputs(source: str, spec: Any, options: dict[str, Any], batch_size: int, model: Any) -> list:
    from ..errors import InputError
    from ..runs.rows import expected_features
    from .check import _csv_batches

    batches = _csv_batches(source, spec, {"mean": options["mean"], "std": options["std"], "batch_size": batch_size})
    width = expected_features(model)
    features = batches[0][0].shape[1]
    if width is not None and width != features:
        raise InputError(
            f"{source}: {features} feature columns but the model takes {width}",
            hint="use a model spec whose input.features names the model's columns",
        )
    return batches


def _write_outputs(result: Any, out: Path, model: str, inputs: tuple[str, ...], options: dict[str, Any], seconds: float) -> list[str]:
    import platform
    from datetime import datetime, timezone

    import torch

    from .. import __version__
    from ..evaluate import CSV_COLUMNS
    from ..outputs import atomic_text
    from ..render.plots import perturbation_plot
    from .options import write_json  # OUT/evaluation.json or --json FILE, as outputs.open_output decides

    written: list[str] = []
    plot = Path(options["plot_path"]) if options["plot_path"] else out / "evaluation.png"
    title = f"Perturbation curves: {Path(model).parent.name or Path(model).stem}/{Path(model).name}, {len(result.names)} inputs"
    perturbation_plot(result, plot, score=options["score"] if result.classes > 1 else "logit", title=title)
    written.append(str(plot))

    data = {
        "lrpcli": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "model": str(model),
        "arguments": {"inputs": list(inputs), **{k: v for k, v in options.items() if not k.startswith("_")}},
        **result.to_dict(),
    }
    classes = options.get("_classes")
    if classes:
        data["target_labels"] = [classes[t] if 0 <= t < len(classes) else str(t) for t in data["targets"]]
    if options["json_path"] == "-":
        click.echo(json.dumps(data, indent=2, default=str))
        written.append("stdout (JSON)")
    else:
        path = Path(options["json_path"]) if options["json_path"] else out / "evaluation.json"
        write_json(str(path), data)
        written.append(str(path))

    import csv

    def write_rows(handle: Any) -> None:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in result.rows():
            writer.writerow({k: ("" if v is None else format(v, ".9g") if isinstance(v, float) else v) for k, v in row.items()})

    if options["csv_path"] == "-":
        write_rows(sys.stdout)
        written.append("stdout (CSV)")
    else:
        path = Path(options["csv_path"]) if options["csv_path"] else out / "evaluation.csv"
        with atomic_text(path) as handle:
            write_rows(handle)
        written.append(str(path))
    if not options.get("no_report"):
        page = _write_report(out, options.get("report_path"), data)
        if page:
            written.append(page)
    return written


def _check_report_options(options: dict[str, Any]) -> None:
    from ..errors import UsageError

    if options.get("report_path") and options.get("no_report"):
        raise UsageError("--report FILE and --no-report exclude each other")
    if options.get("report_path") == "-":
        raise UsageError("--report takes a file name, not -", hint="the page is a file to open in a browser")


def _write_report(out: Path, where: str | None, data: dict[str, Any]) -> str | None:
    """OUT/report.html (or --report FILE) from the same numbers as evaluation.json; a page that cannot
    be written is a warning, not a failed evaluation."""
    from ..errors import LrpError
    from ..report.evaluation import write_evaluation_report

    path = Path(where) if where else out / "report.html"
    try:
        # through JSON, so that the page equals the one `lrp report OUT` builds from evaluation.json
        return str(write_evaluation_report(out, path, json.loads(json.dumps(data, default=str))))
    except (LrpError, OSError) as exc:
        warn(f"could not write {path}: {getattr(exc, 'message', None) or exc}")
        return None


def _save_arrays(result: Any, folder: Path) -> str:
    """Quantus's layout: x_batch (N, C, H, W) float32, y_batch (N,) int64, a_batch_<method> like x, s_batch (N, 1, H, W)."""
    import numpy as np

    from ..outputs import safe_label, save_array

    folder.mkdir(parents=True, exist_ok=True)
    save_array(folder / "x_batch.npy", result.inputs.astype(np.float32))
    save_array(folder / "y_batch.npy", result.targets.astype(np.int64))
    for name, entry in result.methods.items():
        save_array(folder / f"a_batch_{safe_label(name)}.npy", entry["relevance"].astype(np.float32))
    if result.masks is not None:
        save_array(folder / "s_batch.npy", result.masks[:, None].astype(np.uint8))
    return f"{folder}/ (x_batch.npy, y_batch.npy, a_batch_*.npy{', s_batch.npy' if result.masks is not None else ''})"


def _print_table(result: Any, score: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    def number(value: Any, digits: str = ".3f") -> str:
        return "-" if value is None else format(value, digits)

    settings = result.settings
    unit = result.unit_label
    table = Table(
        title=f"perturbation: {unit} removed in {settings.steps} steps up to {settings.max_fraction:.0%}, replaced by '{settings.replace}' "
        f"({len(result.names)} inputs; higher AOPC and gap are better)"
    )
    probabilities = result.classes > 1
    columns = ["method", "kind", "AOPC logit", "gap logit"]
    if probabilities:
        columns += ["AOPC prob", "gap prob", "confidence"]
    masks = result.mask_area is not None
    if masks:
        columns.append("mass on planted" if result.input_kind == "text" else "mass in mask")
    sanity = any(entry["sanity"] for entry in result.methods.values())
    if sanity:
        columns += ["Spearman (top 1..N randomised)", "flag"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("method", "kind", "flag") else "right")
    key = "aopc_morf" if score == "logit" or not probabilities else "aopc_probability_morf"
    order = sorted(result.methods, key=lambda name: -(result.summary(name)[key] or float("-inf")))
    for name in order:
        s = result.summary(name)
        row = [escape(name), s["kind"], number(s["aopc_morf"]), number(s["gap"])]
        if probabilities:
            row += [number(s["aopc_probability_morf"]), number(s["gap_probability"]), number(s["confidence_morf_mean"])]
        if masks:
            row.append(number(s["relevance_mass_accuracy"]))
        if sanity:
            levels = s.get("sanity_spearman")
            row.append(" ".join(number(v, ".2f") for v in levels) if levels else "-")
            row.append("[red]model-independent[/]" if s.get("sanity_flagged") else ("ok" if levels else "-"))
        table.add_row(*row)
    console.print(table)
    if masks and result.input_kind == "text":
        info(f"planted words: {float(result.mask_area.mean()):.1%} of the tokens on average (what a random attribution puts on them)")
    elif masks:
        info(f"mask area: {float(result.mask_area.mean()):.1%} of the image on average (what a random attribution puts inside)")
