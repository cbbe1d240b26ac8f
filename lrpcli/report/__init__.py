"""Static report pages that show a run: ``OUT/report.html``.

One module per kind of run (images.py for image folders, evaluation.py for `lrp evaluate`, table.py for CSV-row results, text.py for text results, generation.py for a language model's generations,
conservation.py for `lrp check-conservation --report`, concepts.py for `lrp concepts`' concepts.html); page.py holds the shared template
environment and templates/ the pages; the charts are render/charts.py's. Pages are self-contained and
link only files inside OUT.

May import: render, data and the ground: a page is built from a run's files, never by running one (so
nothing of the engine, sources, runs or cli)."""

from pathlib import Path

from .images import REPORT_NAME, render_report, report_data, run_files, summary_files
from .images import write_report as write_image_report


def write_report(out: Path, page: Path | None = None) -> Path:
    """Write OUT/report.html for the run in OUT, whichever command made it, and return its path.

    OUT may also be a result file of `lrp explain` on CSV rows (CSV, JSONL, Parquet, Arrow) or on
    texts (JSONL): its page goes to ``page``, by default beside it (rel.csv -> rel.report.html)."""
    out = Path(out)
    if out.is_file():
        from .table import ROW_SUFFIXES, write_table_report
        from .generation import is_generation_results, write_generation_report
        from .text import is_text_results, write_text_report

        if out.suffix.lower() in (".jsonl", ".ndjson") and is_generation_results(out):
            return write_generation_report(out, page)
        if out.suffix.lower() in (".jsonl", ".ndjson") and is_text_results(out):
            return write_text_report(out, page)
        if out.suffix.lower() in ROW_SUFFIXES:
            return write_table_report(out, page)
        from ..errors import InputError

        raise InputError(f"{out}: not an output folder or a result file (.csv, .jsonl, .parquet, .arrow)", hint="give the -o of `lrp explain`")
    if out.is_dir() and not summary_files(out):
        from .evaluation import is_evaluation_folder, write_evaluation_report

        if is_evaluation_folder(out):  # `lrp evaluate`: evaluation.json and no summary.csv
            return write_evaluation_report(out)
    return write_image_report(out)


__all__ = ["REPORT_NAME", "render_report", "report_data", "run_files", "summary_files", "write_image_report", "write_report"]
