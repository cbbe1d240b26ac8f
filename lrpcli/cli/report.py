"""``lrp report``: (re)build the static report page of an image run's output folder."""

from __future__ import annotations

from pathlib import Path

import click

from .console import info


@click.command(
    epilog="""\b
Examples:
  lrp explain sample_models/shapes_minivgg/model.yaml sample_models/shapes_minivgg/images -o out
  lrp report out                    rebuild out/report.html (e.g. after `lrp merge out`)
  lrp evaluate sample_models/diabetes_mlp/model.yaml sample_models/diabetes_mlp/sample.csv --steps 4 -o eval
  lrp report eval                   rebuild eval/report.html from eval/evaluation.json
  lrp explain sample_models/diabetes_mlp/model.yaml sample_models/diabetes_mlp/sample.csv -o rel.csv
  lrp report rel.csv                rebuild rel.report.html from the rows' relevance (also .jsonl, .parquet, .arrow)
  lrp explain sample_models/text_sentiment/bag.yaml sample_models/text_sentiment/texts.txt -o words.jsonl
  lrp report words.jsonl            rebuild words.report.html from a text run's JSON lines
"""
)
@click.argument("out", type=click.Path())
@click.option("--report", "report_path", metavar="FILE", help="For a result file: where the page goes (default: FILE.report.html beside it).")
def report(out: str, report_path: str | None) -> None:
    """Write OUT/report.html: one card per input and target (heatmap, prediction, probability,
    relevance sum, conservation gap), with sorting, filtering and paging in the page.

    OUT is the output folder of `lrp explain` on images: the page is built from its summary.csv
    (or the shards' summaries), run.json and the heatmaps. It is self-contained (nothing is
    fetched from the network) and links only files inside OUT, so OUT can be zipped or moved
    as it is. `lrp explain` writes it at the end of every image run.

    For the output folder of `lrp evaluate` (evaluation.json, no summary.csv) the page shows
    the evaluation: the run, the perturbation curves per method, the metrics table (AOPC, gap,
    with what is better), sanity and localisation results; built from evaluation.json alone.

    For a result file of `lrp explain` on CSV rows (rel.csv, .jsonl, .parquet, .arrow) the page
    (rel.report.html) shows the features by mean |relevance| (over all rows, one streaming pass),
    the spread of signed relevance per feature and a table of rows with their top features (a
    uniform sample of 2,000 rows for a larger file); for a text run's JSON lines, the highlighted
    texts and the words most often for and against each predicted class. These files hold no run
    metadata: the page carries it over from the page it replaces, or says it is unknown.
    """
    from ..errors import InputError, UsageError
    from ..outputs import refuse_inputs_as_outputs
    from ..report import write_report

    folder = Path(out)
    if not folder.exists():
        raise InputError(f"{out}: no such folder or file", hint="give the output folder of `lrp explain` (its -o), or its result file for CSV rows or texts")
    if report_path and not folder.is_file():
        raise UsageError("--report FILE applies to a result file; a folder's page is OUT/report.html")
    refuse_inputs_as_outputs([("--report", report_path)], [("result file", out)])
    path = write_report(folder, Path(report_path) if report_path else None)
    info(f"wrote {path}")
