"""``lrp spray``: SpRAy on an image run's relevance maps: the strategies a model uses across a class."""

from __future__ import annotations

import click

from .console import info, warn


def _clusters(value: str) -> int | str:
    from ..errors import UsageError

    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UsageError(f"--clusters must be a whole number >= 1 or auto, not {value!r}")
    return number


@click.command(
    epilog="""\b
Examples:
  lrp explain sample_models/clever_hans_digits/model.yaml sample_models/clever_hans_digits/images -o out
  lrp spray out                     clusters per predicted class -> out/spray/
  lrp spray out --class 7 --clusters 2
  lrp spray out --by target         group every explained row by its target (with --target all)
"""
)
@click.argument("out", type=click.Path())
@click.option("--by", type=click.Choice(["prediction", "target"]), default="prediction", show_default=True, help="Group the maps by predicted class or by explained target.")
@click.option("--clusters", default="auto", show_default=True, metavar="K|auto", help="Clusters per class; auto: the largest eigengap (at most 8).")
@click.option("--grid", type=click.IntRange(min=1), default=8, show_default=True, help="Cells a side the maps are pooled to before comparing.")
@click.option("--neighbors", type=click.IntRange(min=1), default=10, show_default=True, help="k of the k-nearest-neighbour graph.")
@click.option("--class", "classes", multiple=True, metavar="NAME", help="Only this class (repeatable); names as in summary.csv.")
@click.option("--cmap", default="bwr", show_default=True, help="Colour map of the clusters' mean maps.")
def spray(out: str, by: str, clusters: str, grid: int, neighbors: int, classes: tuple[str, ...], cmap: str) -> None:
    """Cluster the relevance maps of an image run per class (SpRAy, Lapuschkin et al. 2019).

    OUT is the output folder of `lrp explain` on images (plain, resumed, sharded or merged).
    Per class, the maps (summed over channels, pooled to a grid, scaled to unit length) form
    a nearest-neighbour graph; its spectrum gives the clusters and a 2-D layout. A small,
    well-separated cluster is a distinct strategy, often a spurious one (a watermark, a
    border, a tag). Writes OUT/spray/clusters.csv (input, class, cluster, x, y: cluster 0
    is the largest), OUT/spray/eigenvalues.csv, OUT/spray/<class>/cluster-<k>.npy and .png
    (each cluster's mean map) and OUT/spray/<class>/layout.png (the inputs in 2-D, coloured
    by cluster); an existing OUT/report.html gets a section with them. Needs scikit-learn:
    pip install 'lrpcli[spray]'.
    """
    from pathlib import Path

    from ..report import write_report
    from ..report.images import REPORT_NAME
    from ..runs.spray import SPRAY, spray as run_spray

    result = run_spray(Path(out), by=by, clusters=_clusters(clusters), grid=grid, neighbors=neighbors, classes=list(classes) or None, cmap=cmap)
    for cls in result.classes.values():
        sizes = ", ".join(str(size) for size in cls.sizes())
        info(f"class {cls.name}: {len(cls.inputs)} input(s), {cls.clusters} cluster(s) of {sizes}")
    if result.left_out:
        warn(f"{result.left_out} input(s) left out (relevance array missing, unreadable or of another size)")
    info(f"wrote {Path(out) / SPRAY}/ (clusters.csv, eigenvalues.csv, the clusters' mean maps)")
    if (Path(out) / REPORT_NAME).is_file():  # the page shows the clusters: rebuild it (a run with --no-report has none)
        info(f"updated {write_report(Path(out))}")
