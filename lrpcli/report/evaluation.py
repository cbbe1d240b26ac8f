"""The page of an ``lrp evaluate`` run: ``OUT/report.html``, built from ``OUT/evaluation.json`` alone.

It shows the run (model, composites with their rules, baselines, settings, versions), the
perturbation curves of every method (MoRF solid, LeRF dashed; one panel per method, drawn with
matplotlib and embedded as ``data:`` PNGs, so the page links no file at all), the metrics table
with what is better for each column, the sanity check (cascading randomisation) and the
localisation (relevance mass in --masks, or on the planted words of texts) where the run measured
them, and the per-input AOPC. The page is a function of evaluation.json: ``lrp report OUT``
rebuilds it byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..outputs import output_errors, write_output
from ..render.charts import colours, data_uri, figure
from .page import render_page

EVALUATION_JSON = "evaluation.json"
PER_INPUT_ROWS = 1000  # rows of the per-input table (the JSON holds them all)

#: the metrics table's columns: key, heading, what is better ("high" / "low"), help text
METRICS = (
    ("aopc_morf", "AOPC MoRF", "high", "mean drop of the target logit when the most relevant units go first: higher is better"),
    ("aopc_lerf", "AOPC LeRF", "low", "mean drop when the least relevant units go first: lower is better"),
    ("gap", "gap", "high", "AOPC MoRF - AOPC LeRF, the area between the curves: higher is better"),
    ("aopc_probability_morf", "AOPC MoRF (prob.)", "high", "as AOPC MoRF, of the target's softmax probability: higher is better"),
    ("aopc_probability_lerf", "AOPC LeRF (prob.)", "low", "as AOPC LeRF, of the probability: lower is better"),
    ("gap_probability", "gap (prob.)", "high", "the probability's MoRF - LeRF gap: higher is better"),
    ("confidence_morf_mean", "confidence MoRF", "low", "mean (p_max - p_2nd) / p_max along the MoRF curve: lower is better (the model's certainty falls)"),
    ("relevance_mass_accuracy", "mass accuracy", "high", "share of the positive relevance inside the mask (on the planted words for texts): higher is better"),
    ("sanity_max_spearman", "sanity: max Spearman", "low", "the highest rank correlation with the heatmaps of a randomised model: lower is better (flagged at or above the threshold)"),
)


def is_evaluation_folder(out: Path) -> bool:
    return (Path(out) / EVALUATION_JSON).is_file()


def read_evaluation(out: Path) -> dict[str, Any]:
    path = Path(out) / EVALUATION_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the evaluation: {exc}", hint="run `lrp evaluate` again with -o OUT") from exc
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict) or "fractions" not in data:
        raise InputError(f"{path}: not the evaluation.json of `lrp evaluate` (no methods and curves)")
    return data


def write_evaluation_report(out: Path, path: Path | None = None, data: dict[str, Any] | None = None) -> Path:
    """Write the evaluation page of the run in OUT (its evaluation.json, or ``data``) to ``path``
    (default OUT/report.html) and return the path."""
    out = Path(out)
    data = read_evaluation(out) if data is None else data
    path = Path(path) if path is not None else out / "report.html"
    html = render_evaluation(data)
    with output_errors(path.parent):
        write_output(path, html.encode("utf-8"))  # --report FILE, or OUT/report.html
    return path


def render_evaluation(data: dict[str, Any]) -> str:
    return render_page("evaluation.html.j2", **evaluation_data(data))


# --------------------------------------------------------------------------- the page's data


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def method_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One method's means, keyed like the CLI's table (from its evaluation.json entry)."""
    aopc = entry.get("aopc") or {}
    prob = entry.get("aopc_probability") or {}
    sanity = entry.get("sanity") or {}
    return {
        "aopc_morf": _number(aopc.get("morf")),
        "aopc_lerf": _number(aopc.get("lerf")),
        "gap": _number(aopc.get("gap")),
        "aopc_probability_morf": _number(prob.get("morf")),
        "aopc_probability_lerf": _number(prob.get("lerf")),
        "gap_probability": _number(prob.get("gap")),
        "confidence_morf_mean": _number(entry.get("confidence_morf_mean")),
        "relevance_mass_accuracy": _number((entry.get("localisation") or {}).get("relevance_mass_accuracy")),
        "sanity_max_spearman": _number(sanity.get("max_spearman")),
    }


def _rules(composite: dict[str, Any] | None) -> list[str]:
    if not composite:
        return []
    lines = []
    for rule in composite.get("rules") or []:
        match = ", ".join(f"{k}: {v if not isinstance(v, list) else '/'.join(map(str, v))}" for k, v in (rule.get("match") or {}).items())
        extra = ", ".join(f"{k}={v}" for k, v in rule.items() if k not in ("match", "rule"))
        lines.append(f"{match or 'any'} \u2192 {rule.get('rule')}" + (f" ({extra})" if extra else ""))
    return lines


def evaluation_data(data: dict[str, Any]) -> dict[str, Any]:
    methods = data["methods"]
    names = list(methods)
    kind = data.get("input_kind", "image")
    settings = data.get("settings") or {}
    arguments = data.get("arguments") or {}
    summaries = {name: method_summary(methods[name]) for name in names}
    columns = [c for c in METRICS if any(summaries[n][c[0]] is not None for n in names)]
    best: dict[str, set[str]] = {}  # per column, the methods with the best value (ties all marked)
    for key, _, better, _ in columns:
        known = {n: summaries[n][key] for n in names if summaries[n][key] is not None and summaries[n][key] == summaries[n][key]}
        if len(known) > 1:
            top = (max if better == "high" else min)(known.values())
            best[key] = {n for n, v in known.items() if abs(v - top) <= 1e-12 * max(1.0, abs(top))}
    unit = {"text": "tokens", "csv": "features"}.get(kind) or ("pixels" if int(settings.get("patch") or 1) == 1 else f"{settings.get('patch')}x{settings.get('patch')} patches")
    rows = []
    for name in names:
        entry = methods[name]
        rows.append(
            {
                "name": name,
                "kind": entry.get("kind", ""),
                "values": [(key, summaries[name][key], name in best.get(key, ())) for key, *_ in columns],
                "flagged": bool((entry.get("sanity") or {}).get("flagged")),
                "sanity": bool(entry.get("sanity")),
            }
        )
    composites = [
        {"name": name, "rules": _rules(methods[name].get("composite")), "canonizers": (methods[name].get("composite") or {}).get("canonizers") or []}
        for name in names
        if methods[name].get("kind") == "composite"
    ]
    fractions = [float(f) for f in data["fractions"]]
    removed = data.get("removed") if isinstance(data.get("removed"), list) else None
    curves = []
    for name in names:
        entry_curves = methods[name].get("curves") or {}
        morf, lerf = entry_curves.get("morf") or {}, entry_curves.get("lerf") or {}
        steps = []
        for step, fraction in enumerate(fractions):
            steps.append(
                {
                    "step": step,
                    "fraction": fraction,
                    "removed": removed[step] if removed and step < len(removed) else None,
                    **{f"{order}_{metric}": (values[metric][step] if metric in values and step < len(values[metric]) else None) for order, values in (("morf", morf), ("lerf", lerf)) for metric in ("logit", "probability", "confidence")},
                }
            )
        curves.append({"name": name, "steps": steps, "probability": "probability" in morf})
    sanity = [
        {"name": name, **methods[name]["sanity"]}
        for name in names
        if methods[name].get("sanity")
    ]
    localisation = [(name, summaries[name]["relevance_mass_accuracy"]) for name in names if summaries[name]["relevance_mass_accuracy"] is not None]
    per_input = _per_input(data, names)
    charts = [{"score": "logit", "label": "mean target logit", "src": curve_chart(data, "logit")}]
    if any(c["probability"] for c in curves):
        charts.append({"score": "probability", "label": "mean target probability (softmax)", "src": curve_chart(data, "probability")})
    model = str(data.get("model") or "")
    return {
        "title": f"Evaluation: {Path(model).parent.name + '/' if Path(model).parent.name else ''}{Path(model).name}" if model else "Evaluation",
        "model": model,
        "inputs": data.get("inputs"),
        "input_kind": kind,
        "sources": arguments.get("inputs") or [],
        "composites": composites,
        "baselines": [name for name in names if methods[name].get("kind") == "baseline"],
        "settings": settings,
        "unit": unit,
        "units": data.get("units"),
        "score_choice": arguments.get("score"),
        "masks": arguments.get("masks_dir"),
        "planted_col": arguments.get("planted_col"),
        "mask_area": _number(data.get("mask_area")),
        "versions": {key: data[key] for key in ("lrpcli", "torch", "python", "platform") if data.get(key)},
        "finished": data.get("finished"),
        "seconds": data.get("seconds"),
        "notes": data.get("notes") or [],
        "columns": columns,
        "rows": rows,
        "charts": charts,
        "curves": curves,
        "sanity": sanity,
        "sanity_settings": data.get("sanity"),
        "localisation": localisation,
        "per_input": per_input,
        "per_input_total": len(data.get("names") or []),
    }


def _per_input(data: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    inputs = data.get("names") or []
    labels = data.get("target_labels") or data.get("targets") or []
    rows = []
    for index, name in enumerate(inputs[:PER_INPUT_ROWS]):
        values = []
        for method in names:
            per_input = data["methods"][method].get("per_input") or {}
            morf, lerf = per_input.get("aopc_morf") or [], per_input.get("aopc_lerf") or []
            values.append((morf[index] if index < len(morf) else None, lerf[index] if index < len(lerf) else None))
        rows.append({"input": name, "target": labels[index] if index < len(labels) else "", "values": values})
    return rows


# --------------------------------------------------------------------------- charts


def curve_chart(data: dict[str, Any], score: str) -> str:
    """One panel per method: the MoRF (solid) and LeRF (dashed) curve of ``score``, as a data: URI."""
    methods = data["methods"]
    names = [n for n in methods if score in ((methods[n].get("curves") or {}).get("morf") or {})]
    fractions = [100 * float(f) for f in data["fractions"]]
    columns = min(len(names), 4) or 1
    rows = (len(names) + columns - 1) // columns or 1
    fig = figure(3.2 * columns, 2.6 * rows + 0.3)
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    palette = colours()
    for index, name in enumerate(names):
        ax = axes[index // columns][index % columns]
        curves = methods[name]["curves"]
        colour = palette[index % len(palette)]
        ax.plot(fractions, curves["morf"][score], color=colour, marker="o", markersize=3, linewidth=1.8, label="MoRF")
        ax.plot(fractions, curves["lerf"][score], color=colour, marker="o", markersize=2, linewidth=1.4, linestyle="--", label="LeRF")
        ax.set_title(name + (" (baseline)" if methods[name].get("kind") == "baseline" else ""), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if index % columns == 0:
            ax.set_ylabel(score, fontsize=8)
        if index == 0:
            ax.legend(fontsize=7, loc="best")
    for index in range(len(names), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("removed (%)", fontsize=8)
    fig.tight_layout()
    return data_uri(fig)
