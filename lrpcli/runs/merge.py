"""``lrp merge``: join the output folders of shards (or of resumed runs) into one, reading back what each
wrote with every file checked: a damaged summary, manifest or report is named by file and line (exit 5),
never an internal error or rows silently lost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

from ..errors import InputError, UsageError
from ..outputs import write_json, write_summary
from .shards import Shard

T = TypeVar("T")


def _summaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("summary*.csv") if not p.name.endswith(".partial.csv"))


# What merge reads is checked as it is read: a file damaged or edited by hand after its run is an
# InputError that names the file and line (exit 5), never a KeyError or a row silently dropped.

_DAMAGED = "the file was changed after its run finished: restore it, or run that run (or shard) again into a fresh folder"
_WHOLE_NUMBERS = ("prediction", "target")
_NUMBERS = ("probability", "logit", "relevance_sum", "conservation_gap")
_OUTPUT_PATHS = ("heatmap", "relevance")
_NEEDED = ("input", "target", *_OUTPUT_PATHS)  # what merge reads of every row (a check-conservation shard's summary may hold no more)


def _damaged(path: Path, line: int | None, message: str) -> InputError:
    return InputError(f"{path}:{line}: {message}" if line else f"{path}: {message}", hint=_DAMAGED)


def _read_text(path: Path, what: str) -> str:
    """The file as UTF-8 text (a byte order mark dropped); unreadable or other bytes are named by line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _damaged(path, line, f"the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x})") from None


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def read_finished_summary(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of a finished run's summary with the line each starts on.

    Unlike :func:`outputs.read_summary` (which drops rows an interruption cut short, for --resume), a
    finished summary is written whole: a missing column merge needs, a row with too few or too many
    cells, a cell that is not a number where one belongs, a NUL byte or a file path that leads out of
    the folder is an InputError naming the file and line."""
    import csv
    import io

    text = _read_text(path, "summary")
    if "\0" in text:
        raise _damaged(path, _line_of(text, text.index("\0")), "a NUL byte: not a summary written by `lrp explain`")
    if text and not text.endswith("\n"):  # lrp ends every row with a line end: the file was cut short
        raise _damaged(path, _line_of(text, len(text)), "the last row is cut short (no line end): the file was truncated")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, str]]] = []
    line = 1
    try:
        header = next(reader, None)
        if not header:
            raise _damaged(path, None, "empty: no header line (input, prediction, ...)")
        missing = [name for name in _NEEDED if name not in header]
        repeated = sorted({name for name in header if header.count(name) > 1})
        if missing or repeated:
            said = "; ".join(part for part in (f"no {', '.join(missing)} column" if missing else "", f"{', '.join(repeated)} twice" if repeated else "") if part)
            raise _damaged(path, 1, f"not the header of a summary of `lrp explain` ({said})")
        line = reader.line_num + 1
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not cells:
                continue  # a blank line
            if len(cells) != len(header):
                raise _damaged(path, start, f"the row has {len(cells)} cell(s), the header {len(header)} (a row cut short, or a stray comma)")
            row = dict(zip(header, cells))
            _check_summary_row(path, start, row)
            rows.append((start, row))
    except csv.Error as exc:
        raise _damaged(path, line, f"not a CSV summary ({exc})") from None
    return rows


def _check_summary_row(path: Path, line: int, row: dict[str, str]) -> None:
    if not row["input"].strip():
        raise _damaged(path, line, "the row names no input")
    for key in _WHOLE_NUMBERS:
        if key in row:
            try:
                int(row[key])
            except ValueError:
                raise _damaged(path, line, f"{key} is {row[key]!r}, not a class index") from None
    for key in _NUMBERS:
        if row.get(key):
            try:
                float(row[key])
            except ValueError:
                raise _damaged(path, line, f"{key} is {row[key]!r}, not a number") from None
    for key in _OUTPUT_PATHS:
        value = row[key]
        if value and (os.path.isabs(value) or ".." in Path(value).parts):
            raise _damaged(path, line, f"{key} {value!r} is not a path inside the run's folder")


def read_manifest_header(path: Path) -> dict[str, Any]:
    """A finished run's manifest header (line 1), its fields checked; the other lines must be objects
    with a ``kind`` (a line a kill cut short, which lrp wrote and a resume went past, is let be)."""
    text = _read_text(path, "manifest")
    lines = text.split("\n")
    try:
        header = json.loads(lines[0])
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, 1, f"the manifest's header is not JSON ({_reason(exc)})") from None
    if not isinstance(header, dict) or header.get("kind") != "header":
        raise _damaged(path, 1, 'the manifest\'s first line is not its header (a JSON object with "kind": "header")')
    for key in ("model_sha256", "composite_sha256"):
        if not isinstance(header.get(key), str):
            raise _damaged(path, 1, f"{key} in the manifest's header is {_json_type(header.get(key))}, not a text")
    shard = header.get("shard")
    if shard is not None:
        try:
            Shard.parse(shard if isinstance(shard, str) else "")
        except UsageError:
            raise _damaged(path, 1, f"shard in the manifest's header is {json.dumps(shard)}, not K/N") from None
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as exc:
            if line.startswith('{"kind": "'):
                continue  # what lrp writes, cut short by a kill (the run was resumed past it)
            raise _damaged(path, number, f"not JSON ({_reason(exc)})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            raise _damaged(path, number, f'{_json_type(entry)} where the manifest holds objects with a "kind"')
        if entry["kind"] == "input" and not (isinstance(entry.get("input"), str) and isinstance(entry.get("status"), str)):
            raise _damaged(path, number, "an input entry without a text input and status")
    return header


def read_conservation_report(path: Path) -> dict[str, Any]:
    """A shard's check-conservation report (JSON): an object whose samples are objects."""
    text = _read_text(path, "conservation report")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(path, exc.lineno, f"not JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, None, f"not JSON ({_reason(exc)})") from None
    if not isinstance(data, dict):
        raise _damaged(path, 1, f"{_json_type(data)} where a conservation report (a JSON object) belongs")
    samples = data.get("samples", [])
    if not isinstance(samples, list) or not all(isinstance(sample, dict) for sample in samples):
        raise _damaged(path, None, "samples is not a list of objects")
    return data


def _reason(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg}, column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return str(exc)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "a text", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def merge(sources: Sequence[Path], out: Path) -> dict[str, Any]:
    """Join the summaries (and conservation reports) of finished runs or shards into ``out``."""
    if not sources:
        raise UsageError("give the output folders of the runs to merge")
    rows: list[dict[str, str]] = []
    headers: list[tuple[Path, dict[str, Any]]] = []
    shards: list[str] = []
    reports: list[dict[str, Any]] = []
    origins: list[str] = []  # FILE:LINE of each row, to name both copies of a repeated row
    for folder in sources:
        if not folder.is_dir():
            raise InputError(f"not a folder: {folder}")
        unfinished = [p.name for p in folder.glob("summary*.partial.csv")]
        if unfinished:
            raise InputError(f"{folder}: unfinished run ({', '.join(sorted(unfinished))})", hint="finish it with --resume first")
        summaries = [p for p in _summaries(folder) if not (folder == out and p.name == "summary.csv" and len(_summaries(folder)) > 1)]
        if not summaries:
            raise InputError(f"{folder}: no summary.csv to merge")
        for manifest in sorted(folder.glob("manifest*.jsonl")):
            data = read_manifest_header(manifest)
            headers.append((manifest, data))
            if data.get("shard"):
                shards.append(data["shard"])
        for summary in summaries:
            for line, row in read_finished_summary(summary):
                for key in ("heatmap", "relevance"):
                    if row.get(key):
                        row[key] = os.path.relpath(folder / row[key], out)
                rows.append(row)
                origins.append(f"{summary}:{line}")
        for report in sorted(folder.glob("conservation*.json")):
            if folder == out and report.name == "conservation.json":
                continue
            reports.append(read_conservation_report(report))
    hashes = {(h.get("model_sha256"), h.get("composite_sha256")) for _, h in headers}
    if len(hashes) > 1:
        raise InputError("the runs used different models or composites: " + ", ".join(str(path) for path, _ in headers))
    if shards:
        counts = {int(s.split("/")[1]) for s in shards}
        if len(counts) > 1:
            raise InputError(f"shards of different splits: {', '.join(sorted(shards))}")
        count = counts.pop()
        missing = sorted(set(range(1, count + 1)) - {int(s.split("/")[0]) for s in shards})
        duplicated = sorted({s for s in shards if shards.count(s) > 1})
        if missing or duplicated:
            raise InputError(
                f"shards do not cover the inputs once: missing {', '.join(f'{m}/{count}' for m in missing) or 'none'}, "
                f"twice {', '.join(duplicated) or 'none'}"
            )
    seen: dict[tuple[str, str], str] = {}
    for row, origin in zip(rows, origins):
        key = (row["input"], row["target"])
        if key in seen:
            raise InputError(f"input {row['input']} (target {row['target']}) appears in more than one run: {seen[key]} and {origin}")
        seen[key] = origin
    rows.sort(key=lambda row: row["input"])  # stable: targets keep their order within an input
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out / "summary.csv", rows)
    conservation = _merge_reports(reports) if reports else _gap_report(rows)
    write_json(out / "conservation.json", conservation)
    info = {"sources": [str(s) for s in sources], "rows": len(rows), "shards": sorted(shards), "conservation": "conservation.json"}
    write_json(out / "merge.json", info)
    return {**info, "passed": conservation.get("passed")}


def _merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    first = reports[0]
    samples = [sample for report in reports for sample in report.get("samples", [])]
    return {**{k: v for k, v in first.items() if k not in ("samples", "passed")}, "samples": samples, "passed": all(s.get("passed") for s in samples)}


def _gap_report(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Conservation over the merged rows: the gaps summary.csv recorded, worst first."""
    gaps = []
    for row in rows:
        try:
            gap, logit = float(row["conservation_gap"]), float(row["logit"])
        except (KeyError, ValueError):
            continue
        gaps.append({"input": row["input"], "target": row["target"], "gap": gap, "relative_gap": abs(gap) / max(abs(logit), 1e-30)})
    gaps.sort(key=lambda g: -abs(g["gap"]))
    return {
        "rows": len(gaps),
        "max_abs_gap": max((abs(g["gap"]) for g in gaps), default=0.0),
        "mean_abs_gap": sum(abs(g["gap"]) for g in gaps) / len(gaps) if gaps else 0.0,
        "worst": gaps[:20],
        "passed": None,
    }
