"""The pages of ``lrp concepts``, built from the files it left in OUT (so that a rebuild, a later run into the same
folder or ``lrp merge`` shows everything there): OUT/concepts.html (per input its conditional heatmaps, from
concepts.csv's ``heatmap`` column; per ranked channel its grids of reference crops, from references.csv), and the
section of an image run's OUT/report.html that sums them up and links to concepts.html (which links back)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from ..outputs import write_atomic
from .page import finite_number, render_page

PAGE = "concepts.html"
REPORT = "report.html"  # the image run's page, when lrp concepts wrote into a run's folder
INPUTS_SHOWN = 500  # inputs with conditional heatmaps on concepts.html; all of them are in concepts.csv
CHANNELS_SHOWN = 6  # channels in the report's section
CROPS_SHOWN = 4  # reference crops per channel in the report's section
LARGEST_TABLE = 256 * 2**20  # bytes of concepts.csv read for the report's summary; a larger file is only linked


def _rows(path: Path):
    with path.open(newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def _url(out: Path, relative: str) -> str | None:
    """The link to a file OUT holds (a path relative to OUT), None for a missing file or one outside OUT."""
    root = os.path.realpath(out)
    real = os.path.realpath(os.path.join(root, relative)) if relative and not os.path.isabs(relative) else ""
    if not real.startswith(root.rstrip(os.sep) + os.sep) or not os.path.isfile(real):
        return None
    return quote(Path(os.path.relpath(real, root)).as_posix())


@dataclass
class _Channel:
    top: int = 0  # inputs for which it is the most relevant channel
    total: float = 0.0  # its relevance summed over the inputs
    example: str | None = None  # the first input where it is the most relevant and its heatmap was drawn
    picture: str | None = None


@dataclass
class ConceptTable:
    """What concepts.csv says: its layer(s), the inputs, the drawn heatmaps of the first ``INPUTS_SHOWN`` inputs,
    and per channel how often it is an input's most relevant one."""

    layers: list[str] = field(default_factory=list)
    inputs: int = 0
    drawn: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    channels: dict[int, _Channel] = field(default_factory=dict)


def read_concepts(out: Path, summary: bool = True) -> ConceptTable | None:
    """One pass over OUT/concepts.csv (None without it); ``summary``: count each channel's top places too."""
    path = Path(out) / "concepts.csv"
    if not path.is_file():
        return None
    table = ConceptTable()
    current, best = None, None  # the input being read (its rows are together) and its most relevant row

    def close() -> None:
        if best is not None and summary:
            channel = table.channels.setdefault(int(best["channel"]), _Channel())
            channel.top += 1
            if channel.picture is None and best.get("heatmap"):
                channel.example, channel.picture = current, best["heatmap"]

    for row in _rows(path):
        if row.get("layer") and row["layer"] not in table.layers:
            table.layers.append(row["layer"])
        if row["input"] != current:
            close()
            current, best = row["input"], None
            table.inputs += 1
        value = finite_number(row.get("relevance"))
        if value is None:
            continue
        if summary:
            table.channels.setdefault(int(row["channel"]), _Channel()).total += value
            if best is None or value > float(best["relevance"]):
                best = row
        if row.get("heatmap") and (current in table.drawn or len(table.drawn) < INPUTS_SHOWN):
            table.drawn.setdefault(current, []).append(row)
    close()
    return table


def read_references(out: Path) -> list[dict[str, str]]:
    path = Path(out) / "references.csv"
    return list(_rows(path)) if path.is_file() else []


def write_concepts_page(out: Path) -> Path:
    """OUT/concepts.html from OUT's concepts.csv and references.csv (whichever there are)."""
    out = Path(out)
    concepts = read_concepts(out, summary=False)
    references = read_references(out)
    groups = []
    if concepts is not None:
        for name, rows in concepts.drawn.items():
            rows = sorted(rows, key=lambda r: -float(r["relevance"]))
            items = [
                {"picture": quote(r["heatmap"]), "caption": f"#{rank} channel {r['channel']}: R={float(r['relevance']):.3g}"}
                for rank, r in enumerate(rows, 1)
            ]
            groups.append({"title": name, "items": items})
    for channel in dict.fromkeys(r["channel"] for r in references):
        for kind in ("relevance", "activation"):
            items = [
                {"picture": quote(r["crop"]), "caption": f"#{r['rank']} {r['input']} ({float(r['value']):.3g})"}
                for r in references
                if r["channel"] == channel and r["kind"] == kind
            ]
            groups.append({"title": f"channel {channel}: most {'relevant' if kind == 'relevance' else 'active'}", "items": items})
    layers = list(dict.fromkeys((concepts.layers if concepts else []) + [r["layer"] for r in references]))
    what = []
    if concepts is not None:
        shown = f" (the first {INPUTS_SHOWN} of {concepts.inputs} inputs; all in concepts.csv)" if concepts.inputs > len(concepts.drawn) and concepts.drawn else ""
        what.append(f"each input's most relevant (or named) channels: the heatmap conditioned on that channel{shown}")
    if references:
        what.append("per channel the inputs where it is most relevant, and most active: the crop holding most of its conditional relevance")
    html = render_page(
        "concepts.html.j2",
        title=f"lrp concepts: {', '.join(layers)}",
        layer=", ".join(layers),
        what="; ".join(what),
        groups=groups,
        report=REPORT if (out / REPORT).is_file() else None,
    )
    path = out / PAGE
    write_atomic(path, html.encode("utf-8"))
    return path


def concepts_section(out: Path, url: Callable[[str], str | None] | None = None) -> dict[str, Any] | None:
    """The report's section on what ``lrp concepts`` left in OUT, or None where it left nothing: per layer the
    channels most often an input's most relevant one (with one of their conditional heatmaps) and the ranked
    channels' most relevant reference crops, and the link to concepts.html."""
    out = Path(out)
    url = url or (lambda relative: _url(out, relative))
    page = url(PAGE)
    if page is None:
        return None
    path = out / "concepts.csv"
    large = path.is_file() and path.stat().st_size > LARGEST_TABLE
    concepts = None if large else read_concepts(out)
    channels = []
    if concepts is not None:
        ranked = sorted(concepts.channels.items(), key=lambda item: (-item[1].top, -item[1].total, item[0]))
        for channel, found in ranked[:CHANNELS_SHOWN]:
            if found.top:
                channels.append({
                    "channel": channel, "top": found.top, "mean": found.total / max(concepts.inputs, 1),
                    "example": found.example, "src": url(found.picture) if found.picture else None,
                })
    references = []
    rows = read_references(out)
    for channel in dict.fromkeys(r["channel"] for r in rows):
        crops = sorted((r for r in rows if r["channel"] == channel and r["kind"] == "relevance"), key=lambda r: int(r["rank"]))
        references.append({
            "channel": channel,
            "crops": [{"src": url(r["crop"]), "input": r["input"], "value": finite_number(r["value"])} for r in crops[:CROPS_SHOWN]],
        })
    layers = list(dict.fromkeys((concepts.layers if concepts else []) + [r["layer"] for r in rows]))
    return {
        "page": page,
        "layers": layers,
        "inputs": concepts.inputs if concepts else None,
        "large": large,
        "channels": channels,
        "references": references,
    }
