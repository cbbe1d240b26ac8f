"""Charts of evaluation results (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCORES = {"logit": "mean target logit", "probability": "mean target probability (softmax)"}


def perturbation_plot(evaluation: Any, path: Path, *, score: str = "logit", title: str | None = None) -> None:
    """MoRF (solid) and LeRF (dashed) curves of every method on one chart, written as PNG (atomically).

    One colour per method; baselines are drawn thinner. The legend gives each method's AOPC
    and MoRF-LeRF gap for the plotted score.
    """
    import io

    import matplotlib
    import numpy as np
    from matplotlib.lines import Line2D

    from ..outputs import write_output
    from .charts import figure as plain_figure

    if score not in SCORES:
        raise ValueError(f"unknown score '{score}'")
    figure = plain_figure(10, 6)  # no pyplot: no global state, no display; method names drawn as plain text
    axes = figure.subplots()
    colours = matplotlib.colormaps["tab10"].colors
    fractions = np.asarray(evaluation.fractions) * 100
    names = list(evaluation.methods)
    legend: dict[str, tuple[Any, str]] = {}
    # baselines first, so composites are drawn over them where curves coincide (e.g. LRP-epsilon
    # and gradient x input on ReLU networks); one colour per method, in the given order
    for name in sorted(names, key=lambda n: evaluation.methods[n]["kind"] == "composite"):
        entry = evaluation.methods[name]
        if score not in entry["curves"]["morf"]:
            continue
        colour = colours[names.index(name) % len(colours)]
        composite = entry["kind"] == "composite"
        width = 2.2 if composite else 1.6
        morf = entry["curves"]["morf"][score].mean(axis=0)
        lerf = entry["curves"]["lerf"][score].mean(axis=0)
        aopc_key = "aopc" if score == "logit" else "aopc_probability"
        aopc_morf = float(entry[aopc_key]["morf"].mean())
        gap = aopc_morf - float(entry[aopc_key]["lerf"].mean())
        suffix = "" if composite or "baseline" in name else " (baseline)"
        style = dict(color=colour, alpha=0.9, marker="o" if composite else "s")
        (line,) = axes.plot(fractions, morf, linewidth=width, markersize=4 if composite else 5, **style)
        axes.plot(fractions, lerf, linewidth=width * 0.8, linestyle="--", markersize=2, **style)
        legend[name] = (line, f"{name}{suffix}: AOPC {aopc_morf:.3g}, gap {gap:.3g}")
    handles = [legend[name][0] for name in names if name in legend]
    labels = [legend[name][1] for name in names if name in legend]
    handles += [Line2D([], [], color="grey", linestyle="-"), Line2D([], [], color="grey", linestyle="--")]
    labels += ["MoRF: most relevant removed first", "LeRF: least relevant removed first"]
    settings = evaluation.settings
    unit = evaluation.unit_label
    axes.set_xlabel(f"{unit} removed (%), replaced by '{settings.replace}'")
    axes.set_ylabel(SCORES[score])
    axes.set_title(title or f"Perturbation curves ({len(evaluation.names)} inputs, {settings.steps} steps)")
    axes.grid(True, alpha=0.3)
    axes.legend(handles, labels, fontsize=8, loc="best", framealpha=0.85)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_output(Path(path), buffer.getvalue())  # --plot FILE or OUT/evaluation.png
