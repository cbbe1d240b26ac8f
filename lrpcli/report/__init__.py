"""Static report pages that show a run: ``OUT/report.html``.

One module per kind of run (images.py for image folders); page.py holds the shared template
environment and templates/ the pages. Pages are self-contained and link only files inside OUT."""

from .images import REPORT_NAME, render_report, report_data, run_files, summary_files, write_report

__all__ = ["REPORT_NAME", "render_report", "report_data", "run_files", "summary_files", "write_report"]
