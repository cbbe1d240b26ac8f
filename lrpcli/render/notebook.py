"""An explanation where people look at it in Python: ``Explanation.plot()`` (one matplotlib figure with a
colour bar) and ``Explanation._repr_html_()`` (what a notebook shows for the result: the heatmaps of images,
a table of the most relevant features of rows, texts with their words and tokens shaded)."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from .charts import figure
from .heatmaps import colormap, enlarge, heatmap_rgb, largest_magnitude, png_bytes, relevance_map
from .text import text_pieces, word_style

#: samples a notebook shows at most (the rest are counted)
SHOWN = 8
TOP_FEATURES = 5


def relevance_figure(relevance: np.ndarray, cmap: str = "bwr", title: str = "", ax: Any = None, labels: list[str] | None = None) -> Any:
    """One sample's relevance: an image (channels summed) or, for rows and tokens, a bar per feature (named by
    ``labels``); 0 at the colour map's centre, a colour bar (images) or a zero line (bars). Draws into ``ax``
    where given; returns the figure."""
    relevance = np.asarray(relevance, dtype=np.float64)
    if ax is None:
        fig = figure(5.0, 4.0) if relevance.ndim >= 2 else figure(6.0, max(2.0, 0.3 * relevance.size + 1))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    if relevance.ndim >= 2:
        heat = relevance_map(relevance)
        limit = largest_magnitude(heat) or 1.0
        shown = ax.imshow(heat, cmap=colormap(cmap), vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, label="relevance")
    else:
        values = relevance.reshape(-1)
        positions = np.arange(values.size)
        ax.barh(positions, values, color=np.where(values >= 0, "#c62828", "#1565c0"))
        ax.axvline(0, color="#444", linewidth=0.8)
        ax.set_yticks(positions, labels=labels)
        ax.invert_yaxis()
        ax.set_xlabel("relevance")
    if title:
        ax.set_title(title)
    return fig


def explanation_html(relevance: np.ndarray, outputs: np.ndarray, targets: np.ndarray, cmap: str = "bwr") -> str:
    """What a notebook shows for an Explanation (self-contained: images inline as data URIs)."""
    relevance = np.asarray(relevance, dtype=np.float64)
    count = relevance.shape[0]
    captions = []
    for i in range(min(count, SHOWN)):
        target = int(targets[i])
        logit = float(np.asarray(outputs[i]).reshape(-1)[target]) if np.asarray(outputs[i]).size > target else float("nan")
        captions.append(f"sample {i}: target {target}, logit {logit:.4g}, sum of relevance {relevance[i].sum():.4g}")
    if relevance.ndim in (3, 4):  # images: (N, H, W) or (N, C, H, W)
        cells = []
        for i, caption in enumerate(captions):
            image = enlarge(heatmap_rgb(relevance[i], cmap), 96)
            uri = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
            cells.append(
                f'<figure style="display:inline-block;margin:4px"><img src="{uri}" alt="heatmap of sample {i}">'
                f'<figcaption style="font-size:small;max-width:200px">{html.escape(caption)}</figcaption></figure>'
            )
        body = "".join(cells)
    else:  # rows or tokens: (N, F)
        flat = relevance.reshape(count, -1)
        rows = []
        for i, caption in enumerate(captions):
            order = np.argsort(-np.abs(flat[i]))[:TOP_FEATURES]
            top = ", ".join(f"{int(j)}: {flat[i, j]:+.3g}" for j in order)
            rows.append(f"<tr><td>{html.escape(caption)}</td><td>{html.escape(top)}</td></tr>")
        body = f"<table><tr><th>sample</th><th>most relevant features (index: relevance)</th></tr>{''.join(rows)}</table>"
    more = f"<p>... and {count - SHOWN} more</p>" if count > SHOWN else ""
    return f"<div><p><b>lrpcli Explanation</b>: {count} sample(s), relevance shaped {tuple(relevance.shape)}</p>{body}{more}</div>"


def _shaded(piece: str, value: float | None, relevance: float) -> str:
    if value is None:
        return html.escape(piece)
    return f'<span style="background:{word_style(value)};border-radius:3px" title="{relevance:.4g}">{html.escape(piece)}</span>'


def texts_html(rows: list[dict[str, Any]], composite: str = "") -> str:
    """What a notebook shows for explained texts: each text with its words shaded as on the page ``lrp explain
    --html`` writes (red for, blue against the target, each text scaled to its own largest |relevance|), then
    its tokens shaded (special tokens included; scaled to the largest |token relevance|)."""
    blocks = []
    for row in rows[:SHOWN]:
        scale, pieces = text_pieces(row)
        target = row.get("target_label") or row["target"]
        predicted = row.get("prediction_label") or row["prediction"]
        meta = (
            f"{row['id']}: prediction {predicted}, target {target}, logit {row['logit']:.4g}, "
            f"sum of relevance {row['relevance_sum']:.4g}, scale {scale:.3g}" + (", truncated" if row.get("truncated") else "")
        )
        words = "".join(_shaded(piece, value, relevance) for piece, value, relevance in pieces)
        token_scale = max((abs(t["relevance"]) for t in row["tokens"]), default=0.0) or 1.0
        tokens = " ".join(_shaded(t["token"], t["relevance"] / token_scale, t["relevance"]) for t in row["tokens"])
        blocks.append(
            f'<div style="margin:0 0 .8em"><div style="font-size:small;color:#666">{html.escape(meta)}</div>'
            f'<div style="line-height:1.7">{words}</div>'
            f'<div style="font-size:small;line-height:1.9;color:#444">tokens: {tokens}</div></div>'
        )
    more = f"<p>... and {len(rows) - SHOWN} more</p>" if len(rows) > SHOWN else ""
    using = f" with {html.escape(composite)}" if composite else ""
    return f"<div><p><b>lrpcli TextExplanation</b>: {len(rows)} text(s){using}</p>{''.join(blocks)}{more}</div>"
