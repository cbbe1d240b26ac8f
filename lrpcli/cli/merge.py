"""``lrp merge``: join the outputs of shards (or runs) into one summary and one conservation report."""

from __future__ import annotations

from pathlib import Path

import click

from .console import info


@click.command(
    epilog="""\b
Examples:
  lrp merge out                     shards that wrote into one folder: out/summary.csv
  lrp merge out-1 out-2 out-3 -o out
"""
)
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Where the merged summary.csv and conservation.json go (default: the single source).")
def merge(sources: tuple[str, ...], out: str | None) -> None:
    """Join the summaries of shards or runs (SOURCES are their output folders).

    Writes OUT/summary.csv (rows in input order, file paths relative to OUT),
    OUT/conservation.json (the shards' check-conservation reports joined, or the
    conservation gaps of the merged rows) and OUT/merge.json. Refuses unfinished runs,
    shards of different models or composites, and missing or repeated shards.
    """
    from ..errors import CheckFailed, UsageError
    from ..runs.concepts import merge_references, reference_shards
    from ..runs.merge import merge as merge_runs

    if out is None:
        if len(sources) != 1:
            raise UsageError("give -o OUT when merging several folders")
        out = sources[0]
    if any(reference_shards(Path(s)) for s in sources):  # `lrp concepts --reference K --shard I/N`
        from .concepts import write_pages

        joined = merge_references([Path(s) for s in sources], Path(out))
        write_pages(Path(out))  # concepts.html, and report.html's concepts section where OUT is an image run's
        info(f"merged the references of {joined['shards']} shard(s) -> {out}/references.csv")
        if not any(any(Path(s).glob("summary*.csv")) for s in sources):
            return
    result = merge_runs([Path(s) for s in sources], Path(out))
    shards = f" from shards {', '.join(result['shards'])}" if result["shards"] else ""
    info(f"merged {result['rows']} row(s){shards} -> {out}/summary.csv, {out}/conservation.json")
    if result.get("passed") is False:
        raise CheckFailed("some samples in the joined conservation reports are outside tolerance")
