"""Static report pages that show a run: ``OUT/report.html``.

One module per kind of run (images.py for image folders, evaluation.py for `lrp evaluate`,
conservation.py for `lrp check-conservation --report`); page.py holds the shared template
environment, charts.py the matplotlib charts embedded as data: URIs, and templates/ the pages. Pages are self-contained and link only files inside OUT."""

from pathlib import Path

from .images import REPORT_NAME, render_report, report_data, run_files, summary_files
from .images import write_report as write_image_report


def write_report(out: Path) -> Path:
    """Write OUT/report.html for the run in OUT, whichever command made it, and return its path."""
    out = Path(out)
    if out.is_dir() and not summary_files(out):
        from .evaluation import is_evaluation_folder, write_evaluation_report

        if is_evaluation_folder(out):  # `lrp evaluate`: evaluation.json and no summary.csv
            return write_evaluation_report(out)
    return write_image_report(out)


__all__ = ["REPORT_NAME", "render_report", "report_data", "run_files", "summary_files", "write_image_report", "write_report"]
