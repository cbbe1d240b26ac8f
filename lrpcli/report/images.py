"""One static HTML page that shows an image run: ``OUT/report.html``.

Built from what the run left in its output folder: ``summary.csv`` (or the shards'
``summary.shard-K-of-N.csv``), ``run.json`` (or the shards' ``run.shard-K-of-N.json``) and the
heatmaps on disk. At the top, the global view: per predicted class, the mean of the inputs'
relevance maps (from ``relevance/*.npy`` as summary.csv lists them, one class summed at a time),
drawn to ``OUT/report/class-<class>.png``. The page is self-contained (inline CSS and script, nothing fetched from the
network) and references files only by relative paths that stay inside OUT: a heatmap or input
image outside OUT is named, not linked. Rows travel as one inline JSON array and the script draws
them as cards a page at a time, so a run of 10,000 inputs opens at once.

The library never prints: a folder without a summary is an :class:`InputError`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import numpy as np

from ..errors import InputError
from ..outputs import file_labels, output_errors, write_atomic
from .page import finite_number, render_page
from .concepts import concepts_section
from .spray import spray_section

REPORT_NAME = "report.html"
CLASS_MAPS = "report"  # OUT/report/class-<class>.png: the per-class mean relevance maps
CLASS_MAP_SIDE = 256  # pixels at least: the colour bar's labels stay legible in the page
PAGE_SIZE = 200
TRUTH_COLUMNS = ("label", "true_label", "truth", "ground_truth", "y_true")  # a column of the true class, where a summary has one
_SHARD_SUMMARY = re.compile(r"^summary\.shard-(\d+)-of-(\d+)\.csv$")
_SHARD_RUN = re.compile(r"^run\.shard-(\d+)-of-(\d+)\.json$")


def _whole_or_shards(out: Path, whole: str, shard: re.Pattern) -> list[Path]:
    """OUT/<whole>, else the shards' files matching ``shard`` (in shard order)."""
    out = Path(out)
    if (out / whole).is_file():
        return [out / whole]
    stem, suffix = whole.rsplit(".", 1)
    shards = [(m, p) for p in out.glob(f"{stem}.shard-*-of-*.{suffix}") if (m := shard.match(p.name))]
    return [p for _, p in sorted(shards, key=lambda mp: (int(mp[0].group(2)), int(mp[0].group(1))))]


def summary_files(out: Path) -> list[Path]:
    """The summaries the page is built from: OUT/summary.csv, else the shards' summaries (in shard order)."""
    return _whole_or_shards(out, "summary.csv", _SHARD_SUMMARY)


def run_files(out: Path) -> list[Path]:
    """OUT/run.json, else the shards' run files (in shard order)."""
    return _whole_or_shards(out, "run.json", _SHARD_RUN)


def write_report(out: Path) -> Path:
    """Write OUT/report.html from the run in OUT and return its path.

    Raises InputError when OUT holds no summary (not an image run's output folder, or unfinished)."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out} is not a folder", hint="give the output folder of `lrp explain` (its -o)")
    summaries = summary_files(out)
    if not summaries:
        unfinished = sorted(p.name for p in out.glob("summary*.partial.csv"))
        raise InputError(
            f"{out}: no summary.csv to build a report from" + (f" (only the unfinished {', '.join(unfinished)})" if unfinished else ""),
            hint="give the output folder of a finished `lrp explain` image run" + (" (finish it with --resume)" if unfinished else ""),
        )
    html = render_report(out, summaries, run_files(out))
    path = out / REPORT_NAME
    with output_errors(out):
        write_atomic(path, html.encode("utf-8"))
    return path


# --------------------------------------------------------------------------- reading the run


def _read_rows(paths: list[Path]) -> tuple[list[str], list[dict[str, str]]]:
    columns: list[str] = []
    return columns, list(summary_rows(paths, columns))


def summary_rows(paths: list[Path], columns: list[str] | None = None) -> Iterator[dict[str, str]]:
    """The summaries' rows one at a time (rows cut short skipped), the columns seen added to ``columns``; a file
    that is not a summary, cannot be read or holds a NUL byte is an InputError naming it."""
    columns = columns if columns is not None else []
    for path in paths:
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                if "input" not in (reader.fieldnames or []):
                    raise InputError(f"{path}: not a summary of `lrp explain` (no 'input' column)")
                for name in reader.fieldnames or []:
                    if name not in columns:
                        columns.append(name)
                for row in reader:
                    if None in row.values():
                        continue  # a row cut short
                    if any("\0" in value for value in row.values() if isinstance(value, str)):
                        raise InputError(f"{path}:{reader.line_num}: a NUL byte in the row: not a summary written by `lrp explain`")
                    yield row
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"{path}: cannot read the summary: {exc}") from exc


def _read_runs(paths: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # the page says run.json could not be read
        if isinstance(data, dict):
            runs.append(_run_fields(data))
    return runs


_RUN_TEXTS = ("model", "weights", "weights_sha256", "device", "dtype", "finished", "shard", "lrpcli", "torch", "python")


def _run_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A run file's fields the page shows, those of another type than lrp writes left out (a hand-edited
    run.json): texts, whole counts, lists of failures and notes, the composite as an object."""
    run = dict(data)
    for key in _RUN_TEXTS:
        if key in run and not isinstance(run[key], str):
            del run[key]
    for key in ("inputs", "explained"):
        if key in run and not (isinstance(run[key], int) and not isinstance(run[key], bool)):
            del run[key]
    for key in ("failures", "notes"):
        if key in run and not isinstance(run[key], list):
            del run[key]
    if "composite" in run and not isinstance(run["composite"], dict):
        del run["composite"]
    return run


class _Locator:
    """Relative URLs (from report.html) of files that lie inside OUT; None for anything outside it."""

    def __init__(self, out: Path):
        self.root = os.path.realpath(out)

    def url(self, path: str | os.PathLike) -> str | None:
        real = os.path.realpath(path)
        if real != self.root and not real.startswith(self.root.rstrip(os.sep) + os.sep):
            return None
        if not os.path.isfile(real):
            return None
        relative = os.path.relpath(real, self.root)
        return quote(Path(relative).as_posix())

    def output(self, relative: str) -> str | None:
        """A path summary.csv gives relative to OUT (heatmaps/x.png)."""
        if not relative or os.path.isabs(relative):
            return None
        return self.url(os.path.join(self.root, relative))

    def file(self, relative: str) -> str | None:
        """The real path of a file summary.csv names relative to OUT, if it lies inside OUT; else None."""
        if not relative or os.path.isabs(relative):
            return None
        real = os.path.realpath(os.path.join(self.root, relative))
        if not real.startswith(self.root.rstrip(os.sep) + os.sep) or not os.path.isfile(real):
            return None
        return real


def _input_roots(runs: list[dict[str, Any]], locator: _Locator) -> list[Path]:
    """Folders the summary's input names may be relative to, for inputs that could lie inside OUT.

    summary.csv names inputs relative to the inputs' common folder. run.json records that folder
    relative to OUT where it lies inside OUT (``input_root_in_out``: found wherever OUT was moved), as
    an absolute path (``input_root``), and the arguments as given with the folder lrp ran in
    (``working_folder``; older run.json files: the arguments relative to the current folder). Only roots
    that meet OUT matter: an input under a folder that neither lies in OUT nor holds it lies outside OUT."""
    found: list[Path] = []
    for run in runs:
        inner = run.get("input_root_in_out")
        if isinstance(inner, str) and not os.path.isabs(inner):
            root = os.path.realpath(os.path.join(locator.root, inner))
            if (root == locator.root or root.startswith(locator.root.rstrip(os.sep) + os.sep)) and os.path.isdir(root):
                if Path(root) not in found:
                    found.append(Path(root))
                continue
        recorded = run.get("input_root")
        if isinstance(recorded, str) and os.path.isabs(recorded) and os.path.isdir(recorded):
            candidates = [os.path.realpath(recorded)]
        else:
            candidates = []
        arguments = run.get("arguments") if isinstance(run.get("arguments"), dict) else {}
        inputs = arguments.get("inputs") if isinstance(arguments.get("inputs"), list) else []
        working = run.get("working_folder") if isinstance(run.get("working_folder"), str) else ""
        parents = list(candidates)
        for text in inputs if not candidates else ():
            given = Path(str(text))
            tries = [Path(working) / given] if not given.is_absolute() and working and os.path.isabs(working) else []
            for path in tries + [given]:
                if path.is_dir():
                    parents.append(os.path.realpath(path))
                    break
                if path.is_file():
                    parents.append(os.path.realpath(path.parent))
                    break
        if not parents:
            continue
        common = os.path.commonpath(parents)
        root = locator.root
        if common == root or common.startswith(root.rstrip(os.sep) + os.sep) or root.startswith(common.rstrip(os.sep) + os.sep):
            if Path(common) not in found:
                found.append(Path(common))
    return found


def _find_root(roots: list[Path], name: str) -> list[Path]:
    """The common folder may lie below the arguments' (all inputs in one subfolder): look a few levels down."""
    for root in roots:
        if (root / name).is_file():
            return [root]
    visited = 0
    for root in roots:
        for folder, subfolders, _ in os.walk(root):
            visited += 1
            if visited > 2000 or len(Path(folder).relative_to(root).parts) >= 4:
                subfolders[:] = []
                continue
            if (Path(folder) / name).is_file():
                return [Path(folder)]
    return roots


def report_data(out: Path, summaries: list[Path], runs_paths: list[Path]) -> dict[str, Any]:
    """Everything the page shows, as plain data (the template escapes it)."""
    out = Path(out)
    locator = _Locator(out)
    columns, rows = _read_rows(summaries)
    runs = _read_runs(runs_paths)
    truth = next((c for c in TRUTH_COLUMNS if c in columns and any(r.get(c) for r in rows)), None)
    roots = _input_roots(runs, locator)
    if roots and rows:
        roots = _find_root(roots, rows[0]["input"])
    cards = []
    heat_cache: dict[str, str | None] = {}
    for row in rows:
        heat = row.get("heatmap") or ""
        if heat not in heat_cache:
            heat_cache[heat] = locator.output(heat) if heat else None
        image = None
        for root in roots:
            image = locator.url(root / row["input"])
            if image:
                break
        prediction = row.get("prediction_label") or row.get("prediction", "")
        target = row.get("target_label") or row.get("target", "")
        card = {
            "input": row["input"],
            "pred": prediction,
            "prob": finite_number(row.get("probability")),
            "target": target,
            "logit": finite_number(row.get("logit")),
            "sum": finite_number(row.get("relevance_sum")),
            "gap": finite_number(row.get("conservation_gap")),
            "heat": heat_cache[heat],
            "heat_name": heat,
            "img": image,
        }
        if truth:
            card["truth"] = row.get(truth, "")
            card["wrong"] = bool(card["truth"]) and card["truth"] not in (row.get("prediction_label"), row.get("prediction"))
        cards.append(card)
    classes = sorted({c["pred"] for c in cards}, key=_class_order)
    gaps = [abs(c["gap"]) for c in cards if c["gap"] is not None]
    first = runs[0] if runs else {}
    composite = first.get("composite") if isinstance(first.get("composite"), dict) else {}
    failures = [f for run in runs for f in (run.get("failures") or []) if isinstance(f, dict)]
    notes = list(dict.fromkeys(n for run in runs for n in (run.get("notes") or []) if isinstance(n, str)))
    class_maps, class_note = class_means(out, rows, locator, _run_cmap(first))
    return {
        "title": f"lrp report: {out.name or out}",
        "summaries": [p.name for p in summaries],
        "runs": [p.name for p in runs_paths],
        "run_found": bool(runs),
        "model": first.get("model", ""),
        "weights": first.get("weights", ""),
        "weights_sha256": (first.get("weights_sha256") or "")[:16],
        "composite": composite.get("name", ""),
        "versions": {key: first.get(key) for key in ("lrpcli", "torch", "python") if first.get(key)},
        "finished": max((str(r.get("finished")) for r in runs if r.get("finished")), default=""),
        "device": first.get("device", ""),
        "dtype": first.get("dtype", ""),
        "shards": [r.get("shard") for r in runs if r.get("shard")],
        "inputs": sum(int(r.get("inputs") or 0) for r in runs) if runs else len({c["input"] for c in cards}),
        "explained": sum(int(r.get("explained") or 0) for r in runs) if runs else None,
        "failures": [{"input": str(f.get("input", "")), "message": str(f.get("message", ""))} for f in failures],
        "notes": notes,
        "rows": len(cards),
        "max_gap": max(gaps) if gaps else None,
        "mean_gap": sum(gaps) / len(gaps) if gaps else None,
        "classes": classes,
        "truth": truth,
        "inputs_inside": any(c["img"] for c in cards),
        "page_size": PAGE_SIZE,
        "cards": cards,
        "class_maps": class_maps,
        "class_note": class_note,
        "spray": spray_section(out, locator.output),
        "concepts": concepts_section(out, locator.output),
    }


def _class_order(name: str) -> tuple:
    return (not name.isdigit(), int(name) if name.isdigit() else 0, name)


def _run_cmap(run: dict[str, Any]) -> str:
    """The run's colour map (run.json), for the class maps to look like its heatmaps; bwr if unknown."""
    from ..render.heatmaps import COLORMAPS

    heatmaps = run.get("heatmaps") if isinstance(run.get("heatmaps"), dict) else {}
    arguments = run.get("arguments") if isinstance(run.get("arguments"), dict) else {}
    for name in (heatmaps.get("cmap"), arguments.get("cmap")):
        if isinstance(name, str) and name:
            try:
                return COLORMAPS.resolve(name)
            except Exception:  # noqa: BLE001 - an unknown name in a hand-edited run.json: the default
                pass
    return "bwr"


def class_means(out: Path, rows: list[dict[str, str]], locator: _Locator, cmap: str = "bwr") -> tuple[list[dict[str, Any]], str | None]:
    """The global view: per predicted class, the mean of its inputs' relevance maps (summed over channels),
    drawn to OUT/report/class-<class>.png with a colour bar of its scale.

    Each input counts once: its row whose target is its prediction, else (a fixed --target) its first
    row, whose target then names the map. The arrays are read from relevance/*.npy as summary.csv lists
    them, one class at a time (one running sum in memory). Returns the maps for the page and a note
    (why there are none, or what was left out); class-*.png files of earlier builds that are no longer
    drawn are removed."""
    from ..render.heatmaps import relevance_map, save_heatmap

    chosen: dict[str, dict[str, str]] = {}
    for row in rows:
        name = row["input"]
        if name not in chosen or (row.get("target") == row.get("prediction") and chosen[name].get("target") != chosen[name].get("prediction")):
            chosen[name] = row
    groups: dict[tuple[str, str], list[str]] = {}
    missing = 0
    folder = Path(out) / CLASS_MAPS
    if chosen and not any(row.get("heatmap") for row in chosen.values()):  # --no-heatmaps: no pictures asked for
        for stale in folder.glob("class-*.png") if folder.is_dir() else ():
            stale.unlink(missing_ok=True)
        return [], "the run wrote no heatmaps (--no-heatmaps): no mean relevance maps per class drawn either"
    for row in chosen.values():
        path = locator.file(row.get("relevance") or "")
        if path is None:
            missing += 1
            continue
        pred = row.get("prediction_label") or row.get("prediction", "")
        target = row.get("target_label") or row.get("target", "")
        groups.setdefault((pred, target), []).append(path)
    written: set[str] = set()
    maps: list[dict[str, Any]] = []
    unreadable = 0
    keys = sorted(groups, key=lambda k: (_class_order(k[0]), k[0] != k[1], _class_order(k[1])))
    labels = file_labels([pred if pred == target else f"{pred}.for-{target}" for pred, target in keys])
    for (pred, target), label in zip(keys, labels):
        total: np.ndarray | None = None
        count = 0
        for path in groups[(pred, target)]:
            try:
                heat = relevance_map(np.load(path, mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError):
                unreadable += 1
                continue
            if heat.ndim != 2 or (total is not None and heat.shape != total.shape):
                unreadable += 1  # another size than the class's first input (a model that takes any size)
                continue
            total = heat.copy() if total is None else total + heat
            count += 1
        if total is None:
            continue
        file_name = f"class-{label}.png"
        with output_errors(out):
            scale = save_heatmap(folder / file_name, total / count, cmap=cmap, legend=True, min_side=CLASS_MAP_SIDE)
        written.add(file_name)
        maps.append(
            {
                "cls": pred,
                "target": target,
                "count": count,
                "scale": scale,
                "src": quote(f"{CLASS_MAPS}/{file_name}"),
            }
        )
    if folder.is_dir():
        for stale in folder.glob("class-*.png"):
            if stale.name not in written:
                stale.unlink(missing_ok=True)
    note = None
    if not chosen:
        note = None
    elif not groups:
        note = "no relevance arrays in this folder (written without them, --no-arrays, or removed): no mean relevance maps per class"
    elif missing or unreadable:
        note = f"{missing + unreadable} of {len(chosen)} input(s) left out of the class means (relevance array missing, unreadable or of another size)"
    return maps, note


def render_report(out: Path, summaries: list[Path], runs_paths: list[Path]) -> str:
    return render_page("images.html.j2", **report_data(out, summaries, runs_paths))
