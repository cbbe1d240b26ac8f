"""``lrp explain`` on CSV rows: the shell-pipeline side of the explain command."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from .console import console, info, note, failed, warn
from .options import build_composite, floats, load_model_option, new_explainer, parse_params


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def report_page(options: dict[str, Any], out: str | None) -> Path | None:
    """Where a rows or texts run writes its report page: --report FILE; else beside -o FILE
    (FILE.report.html) unless --no-report; none on stdout, nor beside a FIFO or device (-o /dev/null)."""
    from ..errors import UsageError
    from ..outputs import destination, is_stream
    from ..report.table import report_path_for

    where = options.get("report_path")
    if where and options.get("no_report"):
        raise UsageError("--report FILE and --no-report exclude each other")
    if where == "-":
        raise UsageError("--report takes a file name, not -", hint="the page is a file to open in a browser")
    if where:
        page = Path(where)
        destination(page)  # a folder, block device or socket: refused before the run, not after it
    elif out and not options.get("no_report") and not is_stream(out):
        page = report_path_for(Path(out))
    else:
        return None
    if out and page.resolve() == Path(out).resolve():
        raise UsageError(f"--report {page} would replace the results (-o {out})", hint="give the page another name")
    return page


def write_run_page(gathered: Any, page: Path, model: str, composite: Any, source: str, options: dict[str, Any]) -> bool:
    """Write the page a texts or generation run gathered; whether it was written. The page is extra: one that cannot
    be written is a warning and leaves the results as they are."""
    try:
        gathered.write_page(page, Path(options["out"]).name if options["out"] else source, run_metadata(model, composite, source, options))
    except OSError as exc:
        warn(f"could not write the report page {page}: {exc}")
        return False
    return True


def run_metadata(model: str, composite: Any, source: str, options: dict[str, Any]) -> dict[str, Any]:
    """What the page says about the run (the rows output holds none of it)."""
    import platform
    from datetime import datetime, timezone

    import torch

    from .. import __version__

    return {
        "model": str(model),
        "composite": composite.name,
        "versions": {"lrpcli": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "input": source,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": options.get("device"),
        "dtype": options.get("dtype"),
    }


class _Tee:
    """stdout that also writes to a file (text or, via .buffer, bytes): the rows for the page of a run on stdout."""

    def __init__(self, first: Any, second: Any):
        self.first, self.second = first, second
        self.buffer = _BytesTee(first.buffer, second.buffer) if hasattr(first, "buffer") and hasattr(second, "buffer") else None

    def write(self, data: Any) -> int:
        self.second.write(data)
        return self.first.write(data)

    def flush(self) -> None:
        self.first.flush()
        self.second.flush()

    def isatty(self) -> bool:
        return False


class _BytesTee(io.RawIOBase):
    """The binary side of :class:`_Tee` (Arrow and Parquet write bytes), a file object as pyarrow wants one."""

    def __init__(self, first: Any, second: Any):
        super().__init__()
        self.first, self.second, self.position = first, second, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.second.write(data)
        self.first.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self.first.flush()
        self.second.flush()


def _write_rows_page(page: Path, results: Path, run: dict[str, Any]) -> bool:
    """The page of a rows run; a page that cannot be written is a warning, the results stand."""
    from ..errors import LrpError
    from ..report.table import write_table_report

    try:
        write_table_report(results, page, run)
        return True
    except (LrpError, OSError, ValueError) as exc:
        warn(f"could not write the report page {page}: {getattr(exc, 'message', None) or exc}")
        return False


def _rows_copy(page: Path, fmt: str) -> Path:
    """Where the rows of a run on stdout wait for the page: beside the page's file, or in the temporary
    folder when the page goes into a FIFO or device (nothing of ours is made in /dev)."""
    import os
    import tempfile

    from ..outputs import destination

    target = destination(page)
    folder = None if target.stream else target.file.parent
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{page.name}.rows.", suffix=f".{fmt}", dir=folder)
    os.close(handle)
    return Path(name)


def explain_csv(model: str, spec: Any, source: str, options: dict[str, Any]) -> None:
    import contextlib

    from ..errors import InputError, UsageError
    from ..sources.files import load_class_names
    from ..outputs import atomic_text, is_stream
    from ..runs.choices import TargetSpec
    from ..runs.shards import Shard
    from ..runs.rows import explain_rows

    spec_input = spec.input if spec else {}
    for flag in ("size", "resize", "crop", "mode"):
        if options.get(flag):
            raise UsageError(f"--{flag} applies to images, not CSV rows")
    classes = spec.classes if spec else None
    if options["classes_file"]:
        classes = load_class_names(options["classes_file"])
    targets = TargetSpec.parse(options["target"], None, classes)
    from ..runs.choices import walk_start

    # tabular inputs have no pixel neighbourhood: flat on the first layer would say nothing
    composite = build_composite(options["composite"], spec, parse_params(options["params"]), default="epsilon")
    loaded = load_model_option(model, spec, options)
    explainer = new_explainer(loaded, composite, model, spec, options)
    mean = floats(options["mean"], "--mean") or spec_input.get("mean")
    std = floats(options["std"], "--std") or spec_input.get("std")
    out = options["out"]
    suffix = Path(out).suffix.lower() if out else ""
    fmt = options["fmt"] or {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".arrows": "arrow", ".jsonl": "jsonl"}.get(suffix, "csv")
    kwargs = dict(
        fmt=fmt,
        features=_names(options["features"]) or spec_input.get("features"),
        drop=_names(options["drop"]) or spec_input.get("drop") or [],
        id_col=options["id_col"] or spec_input.get("id_col"),
        label_col=options["label_col"] or spec_input.get("label_col"),
        optional_columns=tuple(
            spec_input[key] for key in ("id_col", "label_col") if spec_input.get(key) and not options[key]
        ),
        mean=mean,
        std=std,
        targets=targets,
        classes=classes,
        top_k=options["top_k"],
        batch_size=options["batch_size"] or 1024,
        on_error=options["on_error"],
        device=options["device"],
        dtype=options["dtype"],
        init=walk_start(options["init"], options["contrast"], classes),
        shard=Shard.parse(options["shard"]),
    )
    if options["top_k"] is not None and options["top_k"] < 1:
        raise UsageError(f"--top-k must be at least 1, got {options['top_k']}")
    name = "<stdin>" if source == "-" else source
    if source != "-" and not Path(source).is_file():
        raise InputError(f"input not found: {source}")
    if fmt in ("parquet", "arrow") and not out and sys.stdout.isatty():
        raise UsageError(f"{fmt.capitalize()} results are binary: give -o FILE.{fmt} or redirect stdout")
    stream = bool(out) and is_stream(out)  # a FIFO, a device, /dev/stdout: written into, not read back
    page = report_page(options, out)
    run = explain_rows
    if options.get("ray"):  # the same rows, explained by a pool of Ray actors
        from .ray_hooks import ray_rows

        run = ray_rows(model, options)
    # read by path, stdin too (column-wise by pyarrow; stdin as its lines arrive)
    if out and not stream:
        with atomic_text(Path(out)) as target:  # streamed to a temporary file, renamed at the end
            report = run(explainer, None, name, target, path=source, **kwargs)
    elif page:  # stdout (or a stream), and a copy of the rows for the page (removed once it is written)
        copy = _rows_copy(page, fmt)
        try:
            with contextlib.ExitStack() as stack:
                first = stack.enter_context(atomic_text(Path(out))) if out else sys.stdout
                second = stack.enter_context(open(copy, "w", encoding="utf-8", newline=""))
                report = run(explainer, None, name, _Tee(first, second), path=source, **kwargs)
            wrote = _write_rows_page(page, copy, run_metadata(model, composite, name, options))
        finally:
            copy.unlink(missing_ok=True)
    else:
        with atomic_text(Path(out)) if out else contextlib.nullcontext(sys.stdout) as target:
            report = run(explainer, None, name, target, path=source, **kwargs)
    if out and page and not stream:
        wrote = _write_rows_page(page, Path(out), run_metadata(model, composite, name, options))
    for line in report.notes:
        note(line)
    if not options["quiet"]:
        where = f" -> {out}" if out else ""
        where += f", page {page}" if page and wrote else ""
        resumed = f" ({report.skipped} batch(es) from the interrupted run)" if report.skipped else ""
        info(f"explained {report.rows_out} result row(s) from {report.rows_in - len(report.failures)} of {report.rows_in} input row(s){resumed} with {composite.name}{where}")
    if report.failures:
        shown = report.failures[:20]
        for failure in shown:
            failed("bad row", failure.message)
        if len(report.failures) > len(shown):
            console.print(f"  ... and {len(report.failures) - len(shown)} more", markup=False)
        raise InputError(f"{len(report.failures)} of {report.rows_in} row(s) failed; the good rows were written")
