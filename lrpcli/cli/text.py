"""``lrp explain`` on texts: token and word relevance, streamed as JSONL or CSV, shown coloured, or a page."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from .console import console, info, note, progress
from .options import build_composite, load_model_option, new_explainer, parse_params


def is_text_run(spec: Any, options: dict[str, Any]) -> bool:
    """Texts when the spec says so, or a tokenizer or text column is given."""
    kind = (spec.input.get("kind") if spec else None) or ""
    return kind == "text" or bool(options.get("tokenizer") or options.get("text_col"))


def explain_text(model: str, spec: Any, source: str, options: dict[str, Any]) -> None:
    from ..data.tabular import open_csv
    from ..data.text import read_texts, text_format
    from ..errors import InputError, UsageError
    from ..sources.files import load_class_names
    from ..outputs import atomic_text
    from ..runs.choices import TargetSpec, walk_start
    from ..runs.shards import Shard
    from ..render.text import HtmlWriter, TextWriter
    from ..runs.texts import TEXT_COMPOSITE, explain_texts, text_tokenizer

    spec_input = spec.input if spec else {}
    for flag in ("size", "resize", "crop", "mode", "mean", "std", "features", "drop"):
        if options.get(flag):
            raise UsageError(f"--{flag} applies to images or CSV rows, not texts")
    tokenizer = text_tokenizer(spec_input, options["tokenizer"], options["max_length"])
    classes = spec.classes if spec else None
    if options["classes_file"]:
        classes = load_class_names(options["classes_file"])
    if options["top_k"] is not None and options["top_k"] < 1:
        raise UsageError(f"--top-k must be at least 1, got {options['top_k']}")
    targets = TargetSpec.parse(options["target"], None, classes)  # (--top-k picks words here, not classes)
    composite = build_composite(options["composite"], spec, parse_params(options["params"]), default=TEXT_COMPOSITE)
    explainer = new_explainer(load_model_option(model, spec, options), composite, model, spec, options)
    text_col = options["text_col"] or spec_input.get("text_col")
    name = "<stdin>" if source == "-" else source
    fmt = text_format(source, text_col)
    if source != "-" and not Path(source).is_file():
        raise InputError(f"input not found: {source}")
    out_format = options["fmt"] or ("pretty" if not options["out"] and sys.stdout.isatty() else "jsonl")
    if out_format in ("parquet", "arrow"):
        raise UsageError(f"texts are written as jsonl, csv (one row per token) or pretty, not {out_format}")
    if out_format == "pretty" and options["out"]:
        raise UsageError("--format pretty draws on the terminal; with -o FILE choose jsonl or csv")
    from ..report.text import TextReport
    from .tabular import report_page, write_run_page

    page_path = report_page(options, options["out"])
    if page_path and options["html"] and page_path.resolve() == Path(options["html"]).resolve():
        raise UsageError("--report and --html name the same file", hint="--html writes the script-free page of every text; --report the report page")
    page_report = TextReport() if page_path else None
    kwargs = dict(
        targets=targets,
        classes=classes,
        top_k=options["top_k"],
        batch_size=options["batch_size"] or 32,
        on_error=options["on_error"],
        device=options["device"],
        dtype=options["dtype"],
        init=walk_start(options["init"], options["contrast"], classes),
        mask=spec_input.get("mask"),
        shard=Shard.parse(options["shard"]),
    )
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(open_csv(source))
        records = read_texts(
            handle,
            name,
            fmt,
            text_col=text_col,
            id_col=options["id_col"] or spec_input.get("id_col"),
            label_col=options["label_col"] or spec_input.get("label_col"),
        )
        writers: list[Any] = []
        if out_format == "pretty":
            writers.append(_Terminal(terminal_text))
        else:
            target = stack.enter_context(atomic_text(Path(options["out"]))) if options["out"] else sys.stdout
            writers.append(TextWriter(target, out_format))
        if options["html"]:
            page = stack.enter_context(atomic_text(Path(options["html"])))
            html = HtmlWriter(page, f"lrp explain: {Path(str(model)).name}", f"{name}, composite {composite.name}")
            writers.append(html)
        if page_report is not None:
            writers.append(page_report)
        with progress("explaining texts", None, options["quiet"]) as advance:
            explainer.stages = advance.stage
            run = explain_texts
            if options.get("ray"):  # the same batches, explained by a pool of Ray actors
                from .ray_hooks import ray_texts

                run = ray_texts(model, spec_input, options)
            report = run(explainer, records, tokenizer, writers, progress=advance, **kwargs)
        if options["html"]:
            html.close()
    wrote = page_report is not None and write_run_page(page_report, page_path, model, composite, name, options)
    for line in report.notes:
        note(line)
    if report.truncated:
        note(f"{report.truncated} text(s) were cut to {tokenizer.max_length} tokens (max_length); their rows say truncated: true")
    if not options["quiet"]:
        where = f" -> {options['out']}" if options["out"] else ""
        where += f", page {options['html']}" if options["html"] else ""
        where += f", report page {page_path}" if wrote else ""
        info(f"explained {report.texts_in - len(report.failures)} of {report.texts_in} text(s) ({report.rows_out} result row(s)) with {composite.name}{where}")
    if report.failures:
        for failure in report.failures[:20]:
            console.print(f"  bad text: {failure.message}", markup=False, highlight=False)
        if len(report.failures) > 20:
            console.print(f"  ... and {len(report.failures) - 20} more", markup=False)
        raise InputError(f"{len(report.failures)} of {report.texts_in} text(s) failed; the others were written")


class _Terminal:
    """Each text with its words coloured, on stdout (a terminal)."""

    def __init__(self, render):
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        self.render = render

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.console.print(self.render(row))
            if row.get("top_positive") is not None:
                self.console.print(
                    "  for: " + ", ".join(f"{w['word']} ({w['relevance']:.3g})" for w in row["top_positive"])
                    + "\n  against: " + ", ".join(f"{w['word']} ({w['relevance']:.3g})" for w in row["top_negative"]),
                    markup=False,
                )


def terminal_text(row: dict[str, Any]):
    """A rich Text of the row's text with its words shaded: red for, blue against the target."""
    from rich.text import Text

    from ..render.text import shades

    label = row.get("target_label") or row["target"]
    head = Text(f"{row['id']}: ", style="bold")
    head.append(f"target {label}, logit {row['logit']:.4g}, sum of relevance {row['relevance_sum']:.4g}\n", style="dim")
    body = Text(row["text"])
    scale, values = shades(row["words"])
    for word, value in zip(row["words"], values):
        if abs(value) < 0.05:
            continue
        strength = int(80 + 175 * abs(value))
        colour = f"rgb({strength},0,0)" if value > 0 else f"rgb(0,{strength // 3},{strength})"
        body.stylize(f"bold white on {colour}", word["start"], word["end"])
    return head + body
