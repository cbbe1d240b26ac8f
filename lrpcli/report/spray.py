"""The SpRAy section of an image run's page: what ``lrp spray`` left in OUT/spray/ (spray.json and the clusters'
mean maps), per class its spectrum and its clusters with their sizes. Read from files only: the report layer
does not run the analysis, so a run without ``lrp spray`` has no section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

SPRAY_SUMMARY = ("spray", "spray.json")  # written by runs/spray.py
EIGENVALUES_SHOWN = 9


def spray_section(out: Path, url: Callable[[str], str | None]) -> dict[str, Any] | None:
    """The section's data, or None without a readable OUT/spray/spray.json; ``url`` maps a path relative to OUT
    to the page's link (None for a file that is missing)."""
    path = Path(out).joinpath(*SPRAY_SUMMARY)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        return None
    classes = []
    for entry in data["classes"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("sizes"), list) or not isinstance(entry.get("folder"), str):
            continue
        sizes = [int(size) for size in entry["sizes"] if isinstance(size, int)]
        total = sum(sizes) or 1
        clusters = [
            {
                "index": index,
                "size": size,
                "share": size / total,
                "src": url(f"spray/{entry['folder']}/cluster-{index}.png"),
            }
            for index, size in enumerate(sizes)
        ]
        values = [float(v) for v in entry.get("eigenvalues") or [] if isinstance(v, (int, float))][:EIGENVALUES_SHOWN]
        layout = url(f"spray/{entry['folder']}/layout.png")
        classes.append({"name": str(entry.get("name", "")), "inputs": sum(sizes), "clusters": clusters, "eigenvalues": values, "layout": layout})
    return {"by": str(data.get("by", "prediction")), "classes": classes, "csv": quote("spray/clusters.csv")} if classes else None
