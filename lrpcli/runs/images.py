"""Batched LRP over many images: decode in DataLoader workers, explain on the device,
write PNG/NPY files in a thread pool, log summary rows as batches finish.

The CLI's ``lrp explain`` is a thin layer over :func:`explain_images`; progress is
reported through a callback so the library itself never prints.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data.images import ImageDataset, ImageInput, Preprocessing, collate
from ..engine.explainer import Explainer
from ..errors import ConfigError, InputError, LrpError, ModelError, OutputError, UnsupportedOpError, UsageError
from ..outputs import SummaryLog, inside, output_errors, refuse_links_out, safe_label, save_array, write_json, write_summary
from ..render.heatmaps import Scale, relevance_map
from .image_files import class_label, done_inputs, draw_heatmap, file_label, input_roots, output_paths, remove_if_only, remove_stale_temporaries, result_settings, run_json, save_outputs
from .choices import Failure, TargetSpec, non_finite_reasons, resolve_device, resolve_dtype
from .shards import Manifest, Shard, fingerprint, output_lock, suffix


@dataclass
class ImageRunOptions:
    out: Path
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "float32"
    cmap: str = "bwr"
    overlay: bool = False
    heatmaps: bool = True
    arrays: bool = True
    on_error: str = "skip"  # or "fail"
    resume: bool = False
    workers: int | None = None  # DataLoader workers; None: chosen from the CPU count
    init: str = "value"
    shard: Shard | None = None  # this process's part of the inputs
    overwrite: bool = False  # replace another model's / composite's results in ``out``
    model_sha256: str = ""  # recorded in the manifest, so a resume checks it is the same model
    layers: tuple[str, ...] = ()  # inner layers whose relevance maps go to OUT/layers/<layer>/<input>.npy
    legend: bool = False  # a colour bar with the heatmap's scale under each heatmap
    scale: Scale = field(default_factory=Scale)  # per-image, shared (given or found after the last batch), percentile
    overlay_style: str = "colour"  # overlays over the input's own colours, or over a grey copy ("grey")
    heatmap_size: str = "model"  # heatmaps at the model's input size, or at each input file's own ("input")


@dataclass
class RunReport:
    out: Path
    total: int
    explained: int = 0
    skipped: int = 0  # already done (--resume)
    failures: list[Failure] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    scale: float | None = None  # the run's shared scale (--scale shared), once found


def _workers(requested: int | None, count: int) -> int:
    """DataLoader worker processes: none where there are no cores to spare.

    On 2 cores torch's two threads keep both busy, and a decoding process next to them slowed ``lrp explain``
    more (1.55x the engine's time) than decoding in the main thread did (1.37x): see benchmarks/speed.py."""
    if requested is not None:
        return max(0, requested)
    cores = os.cpu_count() or 1
    if count < 8 or cores <= 2:
        return 0  # starting worker processes costs more than decoding a handful of images
    return max(1, min(4, cores - 1))


def _writers(device: torch.device) -> int:
    """Threads that encode and write PNG/NPY files; 0: written in the main thread, between batches.

    On a CPU with 2 cores torch's two threads keep both busy, and a writer thread next to them slowed every
    batch (measured: the engine's calls took 20-30 % longer inside ``lrp explain``) by more than writing
    in between costs."""
    cores = os.cpu_count() or 1
    if device.type == "cpu" and cores <= 2:
        return 0
    return 2


class _Inline:
    """A stand-in for the writer pool that runs each task at once (see ``_writers``)."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def submit(self, task: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(task(*args))
        except BaseException as exc:  # noqa: BLE001 - handed over like a pool's future would
            future.set_exception(exc)
        return future


def explain_images(
    explainer: Explainer,
    items: list[ImageInput],
    preprocessing: Preprocessing,
    options: ImageRunOptions,
    targets: TargetSpec,
    classes: list[str] | None = None,
    run_info: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunReport:
    """Explain every image in ``items`` and write heatmaps, relevance arrays, summary.csv and run.json.

    The output folder (this shard's part of it) is locked for the whole run: a second run into it at
    once is refused (UsageError) rather than left to truncate the manifest."""
    out = options.out
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out} is a file: image results go to a folder", hint=f"give a folder, e.g. -o {out.with_suffix('')}-lrp (it is made if missing)")
    made = not out.exists()
    sfx = suffix(options.shard)
    options.scale = Scale.parse(options.scale)
    if options.scale.found_by_run and options.heatmaps and not options.arrays:
        raise UsageError(
            "--scale shared finds the run's largest |relevance| in its relevance arrays, and --no-arrays writes none",
            hint="drop --no-arrays, or give the scale: --scale shared:VALUE",
        )
    run_info = {**(run_info or {}), **input_roots(items, out)}
    with output_errors(out):
        refuse_links_out(out, [f".lock{sfx}", f"manifest{sfx}.jsonl", f"summary{sfx}.partial.csv", "heatmaps", "relevance"])
        try:
            with output_lock(out, options.shard):
                return _explain_images(explainer, items, preprocessing, options, targets, classes, run_info, progress)
        except LrpError as exc:
            if made and not isinstance(exc, InputError):  # a model or config error before anything was written
                remove_if_only(out, {f".lock{sfx}"})
            raise


def _explain_images(explainer, items, preprocessing, options, targets, classes, run_info, progress) -> RunReport:
    started = time.perf_counter()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    device, dtype = resolve_device(options.device), resolve_dtype(options.dtype)
    if options.shard is not None:
        items = options.shard.select(items)
    report = RunReport(out=out, total=len(items))
    sfx = suffix(options.shard)
    partial = out / f"summary{sfx}.partial.csv"
    manifest = Manifest(out, options.shard)
    fresh = not manifest.path.exists()
    manifest.open(
        options.model_sha256,
        fingerprint(explainer.composite.to_dict()),
        len(items),
        resume=options.resume,
        overwrite=options.overwrite,
        settings=result_settings(preprocessing, options, targets, classes),
    )

    todo, done = inputs_to_do(out, items, targets, sfx, options.resume, partial, report, progress)
    log = SummaryLog(partial)

    def forget() -> None:
        """A model or config error before any input was explained: no manifest and no header-only partial
        summary are left to suggest a run to resume (a folder that held results before keeps them)."""
        if fresh and not report.explained and not done:
            log.close()
            manifest.close()
            partial.unlink(missing_ok=True)
            manifest.path.unlink(missing_ok=True)

    loader = torch.utils.data.DataLoader(
        ImageDataset(todo, preprocessing, originals=options.heatmaps and options.heatmap_size == "input"),
        batch_size=options.batch_size,
        num_workers=_workers(options.workers, len(todo)),
        collate_fn=collate,
    )
    new_rows: dict[str, list[dict[str, Any]]] = {}
    shape_errors: dict[tuple[int, ...], str] = {}  # input shapes the model cannot take, with why
    in_flight: list[tuple[list[Future], list[dict[str, Any]]]] = []

    def settle(keep: int) -> None:
        """Wait for all but the last ``keep`` batches' files; then log their rows (now safe to resume from)."""
        while len(in_flight) > keep:
            futures, rows = in_flight.pop(0)
            for future in futures:
                future.result()
            log.add(rows)
            manifest.record(dict.fromkeys(row["input"] for row in rows), "done")

    def fail(item: ImageInput, message: str) -> None:
        manifest.record([item.name], "failed")
        if options.on_error == "fail":
            raise InputError(message)
        report.failures.append(Failure(item.name, message))

    writers = _writers(device)
    with ThreadPoolExecutor(max_workers=writers) if writers else _Inline() as pool:
        try:
            for batch in loader:
                groups: dict[tuple[int, ...], list[tuple[ImageInput, torch.Tensor, np.ndarray]]] = {}
                for index, tensor, pixels, error in batch:
                    item = todo[index]
                    if error is not None:
                        fail(item, error)
                    else:
                        groups.setdefault(tuple(tensor.shape), []).append((item, tensor, pixels))
                for shape, good in groups.items():  # images of other sizes are tried as their own batch
                    if shape not in shape_errors:
                        try:
                            futures, rows, non_finite = _explain_batch(explainer, good, targets, classes, options, device, dtype, out, pool, report, preprocessing)
                        except (ModelError, RuntimeError) as exc:
                            if isinstance(exc, (UnsupportedOpError, ConfigError)):
                                raise
                            shape_errors[shape] = _first_line(exc)
                        else:
                            for item, message in non_finite:
                                fail(item, message)
                            in_flight.append((futures, rows))
                            for row in rows:
                                new_rows.setdefault(row["input"], []).append(row)
                            settle(keep=1)
                            continue
                    for item, _, _ in good:
                        fail(
                            item,
                            f"{item.path}: the model does not take a {'x'.join(map(str, shape))} input "
                            f"({shape_errors[shape]}); pass --size H,W to resize images",
                        )
                if progress:
                    progress(len(batch))
            settle(keep=0)
        except (ModelError, ConfigError):
            forget()
            raise
        finally:
            log.close()
            manifest.close()

    if report.failures and not report.explained and not done and shape_errors and len(shape_errors) == 1:
        # nothing worked at all: the model, not an image, is the problem
        partial.unlink(missing_ok=True)
        forget()
        raise ModelError(f"the model failed on every input: {next(iter(shape_errors.values()))}", hint="check the model and the input size (--size)")
    rows: list[dict[str, Any]] = []
    for item in items:
        rows += done.get(item.name, []) or new_rows.get(item.name, [])
    report.rows = rows
    if options.heatmaps and options.scale.mode == "shared":
        report.scale = options.scale.value
        if options.scale.found_by_run:  # before summary.csv: an interrupted re-render is redone by --resume
            report.scale = render_shared(out, rows, {item.name: item for item in items}, preprocessing, options, device, report)
    write_summary(out / f"summary{sfx}.csv", rows)
    partial.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - started
    info = run_json(explainer, preprocessing, options, targets, report, run_info or {})
    info["runs"] = manifest.runs()  # a resumed folder holds the results of all of them (same settings)
    write_json(out / f"run{sfx}.json", info)
    return report


def inputs_to_do(out: Path, items: list[ImageInput], targets, sfx: str, resume: bool, partial: Path, report: RunReport, progress) -> tuple[list[ImageInput], dict]:
    """The inputs a run still has to explain (all of them, or with ``resume`` those a previous run did not finish,
    counted as skipped) and the finished ones' rows. Temporaries of an interrupted run are removed; a fresh run
    starts a new partial summary."""
    remove_stale_temporaries(out, items, targets)
    done = done_inputs(out, sfx) if resume else {}
    if not resume:
        partial.unlink(missing_ok=True)
    todo = [item for item in items if item.name not in done]
    report.skipped = len(items) - len(todo)
    if progress and report.skipped:
        progress(report.skipped)
    return todo, done


def _explain_batch(explainer, good, targets, classes, options, device, dtype, out, pool, report, preprocessing=None):
    x = torch.stack([tensor for _, tensor, _ in good]).to(device=device, dtype=dtype)
    if options.layers:  # named before any target is explained, so that the message names the option
        from ..engine.explainer import layer_outputs

        try:
            layer_outputs(explainer.prepare(x)[0], options.layers)
        except UsageError as exc:
            raise UsageError(f"--layers: {exc.message}", hint=exc.hint) from exc
    if targets.mode in ("pred", "index"):
        chosen = None
        outputs = None
    else:
        outputs = explainer.forward(x)
        chosen = targets.choose(outputs)
    if chosen is None:
        target_arg = None if targets.mode == "pred" else int(targets.index)
        try:
            result = explainer.explain(x, target_arg, init=options.init, layers=options.layers)
        except UsageError as exc:  # e.g. an index past the model's outputs: name the option
            raise UsageError(f"--target {target_arg}: {exc.message}", hint=exc.hint) from exc
        pairs = [(i, int(t)) for i, t in enumerate(result.targets)]
        results = [(pairs, result)]
    else:
        pairs_all = [(i, t) for i, row in enumerate(chosen) for t in row]
        results = []
        for start in range(0, len(pairs_all), options.batch_size):
            pairs = pairs_all[start : start + options.batch_size]
            rows_x = x[[i for i, _ in pairs]]
            result = explainer.explain(rows_x, torch.tensor([t for _, t in pairs], device=device), init=options.init, layers=options.layers)
            results.append((pairs, result))
    for note in results[0][1].notes:
        if note not in report.notes:
            report.notes.append(note)
    bad = _non_finite(results, [item for item, _, _ in good])
    futures: list[Future] = []
    rows: list[dict[str, Any]] = []
    for pairs, result in results:
        # saved as computed in float64 (--dtype float64); half precision is widened to float32 (numpy has no bfloat16)
        relevance = result.relevance.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).cpu().numpy()
        logits = result.outputs.detach().double().cpu()
        logits = logits if logits.ndim == 2 else logits.reshape(logits.shape[0], -1)
        probabilities = torch.softmax(logits, dim=1) if logits.shape[1] > 1 else None
        initial = result.initial.detach().double().cpu().reshape(logits.shape[0], -1).sum(1)
        for row_index, (sample, target) in enumerate(pairs):
            if sample in bad:
                continue
            item, _, pixels = good[sample]
            prediction = int(logits[row_index].argmax())
            label = None if targets.single else file_label(target, classes)
            heat_rel, array_rel = output_paths(item.output_name or item.name, label)
            rel = relevance[row_index]
            total = float(rel.sum(dtype=np.float64))
            row = {
                "input": item.name,
                "prediction": prediction,
                "prediction_label": class_label(prediction, classes, blank=True),
                "probability": float(probabilities[row_index, prediction]) if probabilities is not None else None,
                "target": target,
                "target_label": class_label(target, classes, blank=True),
                "logit": float(logits[row_index, target]),
                "relevance_sum": total,
                "conservation_gap": float(initial[row_index]) - total,
                "heatmap": heat_rel if options.heatmaps else "",
                "relevance": array_rel if options.arrays else "",
            }
            rows.append(row)
            if options.arrays or options.heatmaps:
                array_path = inside(out, array_rel) if options.arrays else None
                heatmap_path = inside(out, heat_rel) if options.heatmaps else None
                futures.append(pool.submit(save_outputs, rel, pixels, array_path, heatmap_path, options, preprocessing))
            for layer, relevance_map in result.layer_maps.items():
                layer_rel = f"layers/{safe_label(layer)}/" + array_rel.split("/", 1)[1]
                layer_map = relevance_map[row_index].detach().to(torch.float32).cpu().numpy()
                futures.append(pool.submit(save_array, inside(out, layer_rel), layer_map))
    report.explained += len(good) - len(bad)
    return futures, rows, [(good[sample][0], message) for sample, message in bad.items()]


def _non_finite(results, items: list[ImageInput]) -> dict[int, str]:
    """Why each sample whose logits or relevance hold NaN/inf fails (it would give a blank heatmap and
    NaN sums that look like results); keyed by the sample's place in the batch."""
    bad: dict[int, str] = {}
    for pairs, result in results:
        for (sample, _), why in zip(pairs, non_finite_reasons(result, [target for _, target in pairs])):
            if why and sample not in bad:
                bad[sample] = f"{items[sample].path}: {why}"
    return bad


def _first_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def render_shared(out: Path, rows: list[dict[str, Any]], items: dict[str, ImageInput], preprocessing: Preprocessing, options, device, report) -> float:
    """--scale shared: the largest |relevance| over all of the run's relevance arrays (those this run wrote
    and those a resumed run found), then every heatmap drawn again at that scale. Two passes over the
    arrays on disk, one array in memory at a time; inputs are decoded again only for overlays."""
    listed = [(row, inside(out, row["relevance"]), inside(out, row["heatmap"])) for row in rows if row.get("relevance") and row.get("heatmap")]
    scale = 0.0
    for _, array_path, _ in listed:
        heat = relevance_map(np.load(array_path, mmap_mode="r"))
        finite = np.abs(heat[np.isfinite(heat)])
        if finite.size:
            scale = max(scale, float(finite.max()))
    fixed = Scale("shared", value=scale) if scale > 0 else Scale()

    def draw(row: dict[str, Any], array_path: Path, heatmap_path: Path) -> None:
        pixels = None
        at_input = options.heatmap_size == "input"
        if options.overlay or at_input:
            item = items.get(row["input"])
            try:
                pixels = (preprocessing.original if at_input else preprocessing.pixels)(item.path) if item is not None else None
            except InputError:
                pixels = None
            message = f"{row['input']}: the input could not be read again: its heatmap is drawn " + ("at the model's input size" if at_input else "without the overlay")
            if pixels is None and message not in report.notes:
                report.notes.append(message)
        draw_heatmap(heatmap_path, np.load(array_path), pixels, options, fixed, preprocessing)

    writers = _writers(device)
    with ThreadPoolExecutor(max_workers=writers) if writers else _Inline() as pool:
        for future in [pool.submit(draw, *entry) for entry in listed]:
            future.result()
    return scale
