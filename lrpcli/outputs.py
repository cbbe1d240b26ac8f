"""The output folder: layout, atomic writes, summary.csv and run.json.

Layout (design.md section 5)::

    OUT/heatmaps/<input path>.png
    OUT/relevance/<input path>.npy
    OUT/summary.csv     one row per input and target
    OUT/run.json        model, resolved composite, versions, arguments

Every file is written to a temporary name in the same folder and renamed, so an
interrupted run leaves no half-written file; paths never escape OUT.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np

from .errors import InputError

SUMMARY_COLUMNS = (
    "input",
    "prediction",
    "prediction_label",
    "probability",
    "target",
    "target_label",
    "logit",
    "relevance_sum",
    "conservation_gap",
    "heatmap",
    "relevance",
)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename.

    The temporary name is this process's and thread's own, and the folder is made only when missing (no
    ``mkstemp`` and ``mkdir`` per file: 0.24 -> 0.18 ms per 12 kB file, measured); a killed run's leftovers
    are removed by the next run (runner)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        handle = open(temporary, "wb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(temporary, "wb")
    try:
        with handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_text(path: Path) -> Iterator[IO[str]]:
    """A text file written in place of ``path`` only when the block ends without an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())


def inside(out: Path, relative: str) -> Path:
    """``out / relative``, refusing anything that would land outside ``out`` (an absolute path, or ``..``
    above it). Checked on the names alone: resolving every output path through the file system cost
    ~1.3 ms per image (16 lstat calls) in a profile of ``lrp explain``."""
    normal = os.path.normpath(relative)
    if os.path.isabs(normal) or normal == os.pardir or normal.startswith(os.pardir + os.sep) or normal == os.curdir:
        raise InputError(f"output path '{relative}' would escape the output folder {out}")
    return Path(os.path.abspath(out)) / normal


def safe_label(label: str) -> str:
    """A class name usable in a file name."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(label))
    return keep.strip(".") or "class"


def file_labels(classes: Sequence[str]) -> list[str]:
    """One file-name label per class, no two alike even ignoring case (macOS): names that sanitise
    alike (``cat/dog``, ``cat?dog``, ``cat_dog``; ImageNet's two ``crane``s) get their class index
    appended (``crane-134``, ``crane-517``), where they would have shared one heatmap file."""
    labels = [safe_label(name) for name in classes]
    while True:
        counts = Counter(label.lower() for label in labels)
        clashes = [index for index, label in enumerate(labels) if counts[label.lower()] > 1]
        if not clashes:
            return labels
        for index in clashes:
            labels[index] = f"{labels[index]}-{index}"


def write_summary(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _format(row.get(key)) for key in SUMMARY_COLUMNS})
    write_atomic(path, buffer.getvalue().encode("utf-8"))


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.9g}"
    return "" if value is None else value


def read_summary(path: Path) -> list[dict[str, str]]:
    """Rows of a (possibly partial) summary; rows cut short by an interruption are dropped."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if None not in row.values() and row.get("relevance") is not None]


class SummaryLog:
    """Appends summary rows as they are produced (flushed per batch), for --resume after a crash."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self.handle = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        if fresh:
            self.writer.writeheader()

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.writer.writerow({key: _format(row.get(key)) for key in SUMMARY_COLUMNS})
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))
