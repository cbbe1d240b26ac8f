"""The page of an ``lrp check-conservation`` run (``--report FILE``): verdict, per-input gaps, per-layer ledger.

Built from the report's dictionary (:meth:`lrpcli.runs.conservation.ConservationReport.to_dict`, the same
data as ``--json``) and a few facts about the run (model, inputs, versions). The ledger of a sample
lists, layer by layer from the output down, the relevance each layer received and handed on and how
what it kept splits into bias, stabiliser, a non-conservative rule's share and the rest ("other");
the layers' ``absorbed`` add up to the sample's gap (logit - input relevance). The page shows the
ledger of every sample (up to :data:`LEDGER_SAMPLES`, failures first; a menu switches between them)
and a bar chart of the worst sample's and the mean ledger; the per-input table holds up to
:data:`SAMPLE_ROWS` inputs (failures first, then by error) so a large gate's page stays light. Self-contained: the chart is a
``data:`` PNG, nothing is linked or fetched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..outputs import output_errors, write_output
from ..render.charts import data_uri, figure
from .page import render_page

LEDGER_SAMPLES = 200  # samples whose ledger the page holds (failures first, then by error)
SAMPLE_ROWS = 5000  # rows of the per-input table (failures first, then by error; the JSON holds them all)
PARTS = (("bias", "bias"), ("stabilizer", "stabiliser"), ("rule_share", "rule took"), ("other", "other"))


def write_conservation_report(path: Path, data: dict[str, Any], run: dict[str, Any] | None = None) -> Path:
    """Write the page of a conservation report (``ConservationReport.to_dict()``) to ``path``."""
    path = Path(path)
    html = render_conservation(data, run or {})
    with output_errors(path.parent):
        write_output(path, html.encode("utf-8"))  # --report FILE
    return path


def render_conservation(data: dict[str, Any], run: dict[str, Any] | None = None) -> str:
    return render_page("conservation.html.j2", **conservation_data(data, run or {}))


def _error(sample: dict[str, Any]) -> float:
    """A sample's error for ordering: a non-finite one (NaN relevance) counts as the largest."""
    error = float(sample["error"])
    return error if math.isfinite(error) else math.inf


def focus_sample(samples: list[dict[str, Any]]) -> int:
    """The sample the page opens on: the failing one with the largest error (the one the verdict names),
    else the one with the largest error."""
    failing = [i for i, sample in enumerate(samples) if not sample["passed"]]
    return max(failing or range(len(samples)), key=lambda i: _error(samples[i])) if samples else 0


def mean_ledger(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer (same nodes in every sample), the mean over samples of each ledger column."""
    if not samples or not samples[0]["layers"]:
        return []
    rows = []
    count = len(samples)
    for index, layer in enumerate(samples[0]["layers"]):
        row = {key: layer[key] for key in ("node", "layer", "type", "rule")}
        for key in ("relevance_out", "relevance_in", "absorbed", "bias", "stabilizer", "rule_share", "other"):
            row[key] = sum(float(s["layers"][index][key]) for s in samples if index < len(s["layers"])) / count
        rows.append(row)
    return rows


def conservation_data(data: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    samples = list(data["samples"])
    failed = [s for s in samples if not s["passed"]]
    focus = focus_sample(samples)
    order = sorted(range(len(samples)), key=lambda i: (samples[i]["passed"], -_error(samples[i])))
    ledger_ids = [i for i in order if i != focus][: max(LEDGER_SAMPLES - 1, 0)]
    ledgers = [focus] + sorted(ledger_ids) if samples else []
    shown = sorted(set(order[:SAMPLE_ROWS]) | set(ledgers))  # in input order; every ledger's row is shown
    mean = mean_ledger(samples)
    show_rule = any(abs(float(layer["rule_share"])) > 0 for s in samples for layer in s["layers"])
    kind = "relative" if data["relative"] else "absolute"
    return {
        "title": f"Conservation: {data['composite']}" + (f" on {Path(run['model']).name}" if run.get("model") else ""),
        "passed": data["passed"],
        "failed": len(failed),
        "total": len(samples),
        "composite": data["composite"],
        "tolerance": data["tolerance"],
        "kind": kind,
        "count": data["count"],
        "dtype": data["dtype"],
        "run": run,
        "samples": [(i, samples[i]) for i in shown],
        "focus": focus,
        "ledgers": [{"index": i, "sample": samples[i], "total": sum(float(layer["absorbed"]) for layer in samples[i]["layers"])} for i in ledgers],
        "ledger_total": len(samples),
        "mean": mean,
        "mean_total": sum(row["absorbed"] for row in mean),
        "show_rule": show_rule,
        "chart": ledger_chart(samples[focus] if samples else None, mean, len(samples), show_rule) if mean else None,
    }


def ledger_chart(sample: dict[str, Any] | None, mean: list[dict[str, Any]], count: int, show_rule: bool) -> str:
    """Grouped horizontal bars per layer (output at the top): what each layer kept, split into its parts;
    left the focus sample, right the mean over all samples. Layers that keep nothing are left out."""
    import numpy as np

    parts = [p for p in PARTS if show_rule or p[0] != "rule_share"]
    panels = [(f"sample {sample['sample']}", sample["layers"])] if sample is not None else []
    if count > 1:
        panels.append((f"mean over {count} samples", mean))
    # layers that keep nothing in any panel (shape and element-wise nodes) are left out of the chart
    keep = [i for i in range(len(mean)) if any(float(rows[i][key]) != 0 for _, rows in panels for key, _ in parts)] or list(range(len(mean)))
    panels = [(title, [rows[i] for i in keep]) for title, rows in panels]
    layers = [f"{mean[i]['layer']} ({mean[i]['rule']})" for i in keep]
    height = 0.8 / len(parts)
    fig = figure(5.2 * len(panels), 0.32 * len(layers) * max(1, len(parts) / 3) + 1.4)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    palette = {"bias": "#1f77b4", "stabilizer": "#ff7f0e", "rule_share": "#9467bd", "other": "#d62728"}
    positions = np.arange(len(layers))  # the output's layer on top, as in the table
    for ax, (title, rows) in zip(axes, panels):
        for offset, (key, label) in enumerate(parts):
            values = [float(row[key]) for row in rows]
            ax.barh(positions + (offset - (len(parts) - 1) / 2) * height, values, height=height, color=palette[key], label=label)
        ax.axvline(0, color="#667085", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_xlabel("relevance kept by the layer", fontsize=8)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels(layers, fontsize=8)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return data_uri(fig)
