"""``lrp explain`` on CSV rows: the shell-pipeline side of the explain command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .console import console, info, note, failed
from .options import build_composite, floats, load_model_option, new_explainer, parse_params


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def explain_csv(model: str, spec: Any, source: str, options: dict[str, Any]) -> None:
    from ..errors import InputError, UsageError
    from ..models import load_class_names
    from ..outputs import atomic_text
    from ..runner import TargetSpec
    from ..shards import Shard
    from ..stream import explain_rows

    spec_input = spec.input if spec else {}
    for flag in ("size", "resize", "crop", "mode"):
        if options.get(flag):
            raise UsageError(f"--{flag} applies to images, not CSV rows")
    classes = spec.classes if spec else None
    if options["classes_file"]:
        classes = load_class_names(options["classes_file"])
    targets = TargetSpec.parse(options["target"], None, classes)
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
        init=options["init"],
        shard=Shard.parse(options["shard"]),
    )
    if options["top_k"] is not None and options["top_k"] < 1:
        raise UsageError(f"--top-k must be at least 1, got {options['top_k']}")
    name = "<stdin>" if source == "-" else source
    if source != "-" and not Path(source).is_file():
        raise InputError(f"input not found: {source}")
    if fmt in ("parquet", "arrow") and not out and sys.stdout.isatty():
        raise UsageError(f"{fmt.capitalize()} results are binary: give -o FILE.{fmt} or redirect stdout")
    # read by path, stdin too (column-wise when pyarrow is installed; stdin as its lines arrive)
    if out:
        with atomic_text(Path(out)) as target:  # streamed to a temporary file, renamed at the end
            report = explain_rows(explainer, None, name, target, path=source, **kwargs)
    else:
        report = explain_rows(explainer, None, name, sys.stdout, path=source, **kwargs)
    for line in report.notes:
        note(line)
    if not options["quiet"]:
        info(f"explained {report.rows_out} result row(s) from {report.rows_in - len(report.failures)} of {report.rows_in} input row(s) with {composite.name}")
    if report.failures:
        shown = report.failures[:20]
        for failure in shown:
            failed("bad row", failure.message)
        if len(report.failures) > len(shown):
            console.print(f"  ... and {len(report.failures) - len(shown)} more", markup=False)
        raise InputError(f"{len(report.failures)} of {report.rows_in} row(s) failed; the good rows were written")
