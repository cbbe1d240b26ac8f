"""The files of an image run in OUT: where each input's heatmap and relevance array go, what a resumed run
finds done, what an interrupted one left, the heatmaps redrawn at a shared scale, and run.json."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import functools
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.images import ImageInput, Preprocessing
from ..outputs import file_labels, read_summary, safe_label, save_array
from ..render.heatmaps import COLORMAPS, MIN_SIDE, Scale, at_input_size, relevance_map, save_heatmap
from .choices import TargetSpec, resolve_device
from .shards import fingerprint

if TYPE_CHECKING:  # (images.py imports this module)
    from .images import ImageRunOptions


def output_paths(name: str, label: str | None) -> tuple[str, str]:
    """Relative heatmap and relevance paths for an input (and a target's file label when several)."""
    suffix = "" if label is None else f".{safe_label(label)}"
    return f"heatmaps/{name}{suffix}.png", f"relevance/{name}{suffix}.npy"


@functools.lru_cache(maxsize=4)
def file_labels_for(classes: tuple[str, ...]) -> list[str]:
    return file_labels(classes)


def file_label(index: int, classes: list[str] | None) -> str:
    """The class's name in file names, unique per class (see outputs.file_labels), else its index."""
    labels = file_labels_for(tuple(classes)) if classes else []
    return labels[index] if 0 <= index < len(labels) else str(index)


def done_inputs(out: Path, sfx: str) -> dict[str, list[dict[str, str]]]:
    """Rows of inputs whose outputs all exist, from a previous (possibly interrupted) run."""
    done: dict[str, list[dict[str, str]]] = {}
    for row in read_summary(out / f"summary{sfx}.csv") + read_summary(out / f"summary{sfx}.partial.csv"):
        files = [row.get("heatmap"), row.get("relevance")]
        if all((out / f).is_file() for f in files if f):
            rows = done.setdefault(row["input"], [])
            if not any(r.get("target") == row.get("target") for r in rows):
                rows.append(row)
    return done


def remove_stale_temporaries(out: Path, items: list[ImageInput], targets: TargetSpec) -> None:
    """Temporary files a killed run left behind (outputs are renamed into place only when complete).

    Only this run's own outputs are touched: other shards may be writing into the same folder.
    """
    stale = [p for folder in ("heatmaps", "relevance") if (out / folder).is_dir() for p in (out / folder).rglob(".*.tmp")]
    if not stale:
        return
    mine = {item.output_name or item.name for item in items}
    for path in stale:
        folder = path.parent.relative_to(out).as_posix().split("/", 1)  # ["heatmaps", "sub/dir"]
        target = path.name[1:].rsplit(".", 2)[0]  # ".name.png.RANDOM.tmp" -> "name.png"
        stem = target.rsplit(".", 1)[0]  # drop .png / .npy
        name = f"{folder[1]}/{stem}" if len(folder) > 1 else stem
        owner = name if targets.single else name.rsplit(".", 1)[0]  # drop the class label suffix
        if owner in mine:
            path.unlink(missing_ok=True)


def remove_if_only(out: Path, names: set[str]) -> None:
    """Remove ``out`` (made by this run) if it holds nothing but ``names``."""
    try:
        entries = list(out.iterdir())
        if all(entry.name in names and entry.is_file() for entry in entries):
            for entry in entries:
                entry.unlink()
            out.rmdir()
    except OSError:
        pass


def result_settings(preprocessing: Preprocessing, options: ImageRunOptions, targets: TargetSpec, classes: list[str] | None) -> dict[str, Any]:
    """The options that change what a run writes, keyed by their flag: the manifest keeps them and a
    --resume must repeat them (the model and composite are checked by their hashes)."""
    return {
        "--target": None if targets.mode == "topk" else targets.index if targets.mode == "index" else targets.mode,
        "--top-k": targets.k if targets.mode == "topk" else None,
        "--init": options.init,
        "--dtype": options.dtype,
        **{f"--{key}": value for key, value in preprocessing.to_dict().items()},
        "--cmap": COLORMAPS.resolve(options.cmap) if options.heatmaps else None,
        "--overlay": options.overlay if options.heatmaps else None,
        "--no-heatmaps": not options.heatmaps,
        "--no-arrays": not options.arrays,
        "--classes": fingerprint(classes)[:16] if classes else None,
        **({"--layers": ",".join(options.layers)} if options.layers else {}),
        **({"--legend": True} if options.legend and options.heatmaps else {}),
        **({"--scale": str(Scale.parse(options.scale))} if options.heatmaps and Scale.parse(options.scale).mode != "per-image" else {}),
        **({"--overlay-style": options.overlay_style} if options.heatmaps and options.overlay and options.overlay_style != "colour" else {}),
        **({"--heatmap-size": options.heatmap_size} if options.heatmaps and options.heatmap_size != "model" else {}),
    }


def input_roots(items: list[ImageInput], out: Path) -> dict[str, Any]:
    """Where the summary's input names are relative to, for run.json: the inputs' common folder (absolute,
    resolved), the folder lrp ran in, and the common folder relative to OUT where it lies inside OUT, so
    that `lrp report` finds input images inside OUT from any folder, and after OUT was moved."""
    info: dict[str, Any] = {"working_folder": os.getcwd()}
    if not items:
        return info
    try:
        root = Path(os.path.commonpath([str(item.path.resolve().parent) for item in items]))
    except (OSError, ValueError):
        return info
    if (root / items[0].name).resolve() != items[0].path.resolve():
        return info  # names not relative to one folder (items made by hand)
    info["input_root"] = str(root)
    real_out = Path(os.path.realpath(out))
    if root == real_out or root.is_relative_to(real_out):
        info["input_root_in_out"] = root.relative_to(real_out).as_posix()
    return info


def save_outputs(
    relevance: np.ndarray, pixels: np.ndarray, array_path: Path | None, heatmap_path: Path | None, options: ImageRunOptions, preprocessing: Preprocessing | None = None
) -> None:
    """One input's files (run in the writer pool). With ``--heatmap-size input`` ``pixels`` is the file at its
    own size and ``preprocessing`` says which part of it the model saw."""
    if array_path is not None:
        save_array(array_path, relevance)
    if heatmap_path is not None:
        draw_heatmap(heatmap_path, relevance, pixels, options, options.scale, preprocessing)


def draw_heatmap(path: Path, relevance: np.ndarray, pixels: np.ndarray | None, options: ImageRunOptions, scale: Scale, preprocessing: Preprocessing | None) -> None:
    """A heatmap at the model's input size, or (``--heatmap-size input``) at the size of ``pixels``, the input
    file's own, with the colour scale of the model-sized map (a crop's zero border does not change it)."""
    min_side = MIN_SIDE
    if options.heatmap_size == "input" and pixels is not None and preprocessing is not None:
        heat = relevance_map(relevance)
        value = Scale.parse(scale).of(heat)
        size = (int(pixels.shape[0]), int(pixels.shape[1]))
        relevance, scale, min_side = at_input_size(heat, preprocessing.source_box(*size), size), value, 1  # the file's size, not enlarged
    save_heatmap(path, relevance, pixels, options.cmap, options.overlay, options.legend, scale, options.overlay_style, min_side)


def class_label(index: int, classes: list[str] | None, blank: bool = False) -> str:
    if classes and 0 <= index < len(classes):
        return classes[index]
    return "" if blank else str(index)


def run_json(explainer, preprocessing, options, targets, report, run_info) -> dict[str, Any]:
    from .. import __version__

    return {
        "lrpcli": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **run_info,
        "composite": explainer.composite.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "targets": {"mode": targets.mode, "index": targets.index, "k": targets.k},
        "init": options.init,
        "heatmaps": {
            "cmap": COLORMAPS.resolve(options.cmap),
            "overlay": options.overlay_style if options.overlay else None,
            "legend": options.legend,
            "scale": {**options.scale.to_dict(), **({"value": report.scale} if report.scale is not None else {})},
            "size": options.heatmap_size,
        }
        if options.heatmaps
        else None,
        "shard": str(options.shard) if options.shard else None,
        "device": str(resolve_device(options.device)),
        "dtype": options.dtype,
        "inputs": report.total,
        "explained": report.explained,
        "skipped_done": report.skipped,
        "failures": [{"input": f.input, "message": f.message} for f in report.failures],
        "notes": report.notes,
        "seconds": round(report.seconds, 3),
    }
