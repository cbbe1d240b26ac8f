"""The page of ``lrp concepts``: OUT/concepts.html, built from the run's files (concepts.csv and the conditional
heatmaps, or references.csv and the crops): per input its chosen concepts, or per channel its reference grid."""

from __future__ import annotations

import csv
from pathlib import Path

from ..outputs import write_atomic
from .page import render_page

PAGE = "concepts.html"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_concepts_page(out: Path, shown: list[dict[str, object]] | None = None) -> Path:
    """OUT/concepts.html. ``shown``: the conditional heatmaps drawn (input, channel, rank, relevance, picture);
    without it, the page shows references.csv's grids."""
    out = Path(out)
    groups = []
    if shown is not None:
        layer = ""
        by_input: dict[str, list[dict[str, object]]] = {}
        for row in shown:
            by_input.setdefault(str(row["input"]), []).append(row)
        for name, rows in by_input.items():
            items = [{"picture": r["picture"], "caption": f"#{r['rank']} channel {r['channel']}: R={float(r['relevance']):.3g}"} for r in rows]
            groups.append({"title": name, "items": items})
        if (out / "concepts.csv").exists():
            layer = next(iter(_rows(out / "concepts.csv")), {}).get("layer", "")
        what = "each input's most relevant (or named) channels: the heatmap conditioned on that channel"
    else:
        rows = _rows(out / "references.csv")
        layer = rows[0]["layer"] if rows else ""
        for channel in dict.fromkeys(r["channel"] for r in rows):
            for kind in ("relevance", "activation"):
                items = [
                    {"picture": r["crop"], "caption": f"#{r['rank']} {r['input']} ({float(r['value']):.3g})"}
                    for r in rows
                    if r["channel"] == channel and r["kind"] == kind
                ]
                groups.append({"title": f"channel {channel}: most {'relevant' if kind == 'relevance' else 'active'}", "items": items})
        what = "per channel the inputs where it is most relevant, and most active: the crop holding most of its conditional relevance"
    html = render_page("concepts.html.j2", title=f"lrp concepts: {layer}", layer=layer, what=what, groups=groups)
    path = out / PAGE
    write_atomic(path, html.encode("utf-8"))
    return path
