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
"""
)
@click.argument("out", type=click.Path(file_okay=False))
def report(out: str) -> None:
    """Write OUT/report.html: one card per input and target (heatmap, prediction, probability,
    relevance sum, conservation gap), with sorting, filtering and paging in the page.

    OUT is the output folder of `lrp explain` on images: the page is built from its summary.csv
    (or the shards' summaries), run.json and the heatmaps. It is self-contained (nothing is
    fetched from the network) and links only files inside OUT, so OUT can be zipped or moved
    as it is. `lrp explain` writes it at the end of every image run.

    For the output folder of `lrp evaluate` (evaluation.json, no summary.csv) the page shows
    the evaluation: the run, the perturbation curves per method, the metrics table (AOPC, gap,
    with what is better), sanity and localisation results; built from evaluation.json alone.
    """
    from ..errors import InputError
    from ..report import write_report

    folder = Path(out)
    if not folder.exists():
        raise InputError(f"{out}: no such folder", hint="give the output folder of `lrp explain` (its -o)")
    path = write_report(folder)
    info(f"wrote {path}")
