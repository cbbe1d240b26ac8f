"""Side-by-side comparison of composites: one figure per input, or one sheet for many.

A row shows the input image, then its heatmap under each composite (as in Montavon
et al.'s figure of one image under LRP-0, LRP-epsilon and LRP-gamma). Every composite
explains the same target, so the panels differ only by the rules. The CLI's
``lrp compare`` is a thin layer over :func:`compare_images` and :func:`compose`.

Heatmaps are normalised symmetrically (0 at the colour map's centre): by each panel's
own largest |relevance| by default, or by the row's largest (``shared_scale``) so that
magnitudes can be compared across rules. Small inputs are enlarged (nearest neighbour)
so a 8x8 or 32x32 image and its labels stay readable.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, InputError, ModelError, UnsupportedOpError, UsageError

#: composites shown when none are given: plain LRP-0 (noisy, the baseline), the model's
#: default (what ``lrp explain`` would draw) and the gamma composite -- seed 000's 0 / epsilon / gamma
#: progression with built-ins that look different (``epsilon`` at its default 1e-6 looks like LRP-0).
DEFAULT_COMPOSITES = ("lrp_0", None, "epsilon_gamma_box")
MAX_SHEET_ROWS = 100  # a sheet of more inputs is too tall to look at (and to hold in memory)
MIN_SIDE = 128  # panels are enlarged until their shorter side is at least this
PAD = 8
FONT_SIZE = 13


# --------------------------------------------------------------------------- choosing composites


# --------------------------------------------------------------------------- explaining


@dataclass
class Row:
    """One input under every composite."""

    name: str
    pixels: np.ndarray  # (H, W, 3) uint8: the input after mode conversion, resize and crop
    prediction: int
    prediction_label: str
    probability: float | None  # softmax of the prediction (None for one-output models)
    target: int
    target_label: str
    logit: float  # the target's score
    heats: list[np.ndarray]  # per composite: (H, W) float32 relevance summed over channels
    sums: list[float]  # per composite: total relevance


@dataclass
class Failure:
    input: str
    message: str


@dataclass
class CompareOptions:
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "float32"
    init: str = "value"
    on_error: str = "skip"  # or "fail"


def explain_rows(
    explainers: Sequence[Any],
    items: Sequence[Any],
    preprocessing: Any,
    targets: Any,
    classes: list[str] | None = None,
    options: CompareOptions | None = None,
    failures: list[Failure] | None = None,
    notes: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Row]:
    """Explain each input (``ImageInput``) under every explainer, batch by batch; yield one Row per input.

    ``targets`` is a runner.TargetSpec with one target per input (pred or an index); the first
    explainer's choice of target is passed to the others, so every column explains the same output.
    Unreadable inputs are appended to ``failures`` (or raise, with on_error="fail").
    """
    import torch

    from .choices import resolve_device, resolve_dtype

    options = options or CompareOptions()
    failures = failures if failures is not None else []
    notes = notes if notes is not None else []
    if not explainers:
        raise UsageError("no composites to compare")
    if targets.mode not in ("pred", "index"):
        raise UsageError(
            f"--target {targets.mode}: compare shows one target per input", hint="use pred, a class index or a class name"
        )
    device, dtype = resolve_device(options.device), resolve_dtype(options.dtype)
    shape_errors: dict[tuple[int, ...], str] = {}  # input shapes the model cannot take, with why
    explained = 0

    def fail(name: str, message: str) -> None:
        if options.on_error == "fail":
            raise InputError(message)
        failures.append(Failure(name, message))

    for start in range(0, len(items), options.batch_size):
        chunk = items[start : start + options.batch_size]
        groups: dict[tuple[int, ...], list[tuple[Any, Any, np.ndarray]]] = {}
        for item in chunk:
            try:
                pixels = preprocessing.pixels(item.path)
                tensor = preprocessing.tensor(pixels)
            except InputError as exc:
                fail(item.name, exc.message)
                continue
            groups.setdefault(tuple(tensor.shape), []).append((item, tensor, pixels))
        for shape, good in groups.items():  # images of other sizes are tried as their own batch
            if shape not in shape_errors:
                try:
                    rows = _explain_group(explainers, good, targets, classes, options, device, dtype, notes, torch)
                except (ModelError, RuntimeError) as exc:
                    if isinstance(exc, (UnsupportedOpError, ConfigError)):
                        raise
                    shape_errors[shape] = _first_line(exc)
                else:
                    explained += len(rows)
                    yield from rows
                    continue
            for item, _, _ in good:
                fail(
                    item.name,
                    f"{item.path}: the model does not take a {'x'.join(map(str, shape))} input "
                    f"({shape_errors[shape]}); pass --size H,W to resize images",
                )
        if progress:
            progress(len(chunk))
    if not explained and len(shape_errors) == 1:  # nothing worked at all: the model, not an image, is the problem
        raise ModelError(f"the model failed on every input: {next(iter(shape_errors.values()))}", hint="check the model and the input size (--size)")


def _explain_group(explainers, good, targets, classes, options, device, dtype, notes, torch) -> list[Row]:
    x = torch.stack([tensor for _, tensor, _ in good]).to(device=device, dtype=dtype)
    target_arg: Any = None if targets.mode == "pred" else int(targets.index)
    heats: list[np.ndarray] = []
    sums: list[np.ndarray] = []
    first = None
    for explainer in explainers:
        try:
            result = explainer.explain(x, target_arg, init=options.init)
        except UsageError as exc:  # e.g. an index past the model's outputs: name the option
            if first is None and targets.mode == "index":
                raise UsageError(f"--target {targets.index}: {exc.message}", hint=exc.hint) from exc
            raise
        if first is None:
            first = result
            target_arg = result.targets  # the others explain the same output
        for note in result.notes:
            if note not in notes:
                notes.append(note)
        relevance = result.relevance.detach().float().cpu()
        heat = relevance.sum(dim=1)  # (batch, C, H, W) -> (batch, H, W), as render.relevance_map does
        heats.append(heat.numpy().astype(np.float32))
        sums.append(relevance.double().reshape(relevance.shape[0], -1).sum(1).numpy())
    logits = first.outputs.detach().double().cpu()
    logits = logits if logits.ndim == 2 else logits.reshape(logits.shape[0], -1)
    probabilities = torch.softmax(logits, dim=1) if logits.shape[1] > 1 else None
    rows = []
    for index, (item, _, pixels) in enumerate(good):
        prediction = int(logits[index].argmax())
        target = int(first.targets[index])
        rows.append(
            Row(
                name=item.name,
                pixels=_rgb(pixels),
                prediction=prediction,
                prediction_label=_label(prediction, classes),
                probability=float(probabilities[index, prediction]) if probabilities is not None else None,
                target=target,
                target_label=_label(target, classes),
                logit=float(logits[index, target]),
                heats=[heat[index] for heat in heats],
                sums=[float(total[index]) for total in sums],
            )
        )
    return rows


def _rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels.repeat(3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]


def _label(index: int, classes: list[str] | None) -> str:
    return classes[index] if classes and 0 <= index < len(classes) else ""


def _first_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


# --------------------------------------------------------------------------- drawing


def heat_colours(heat: np.ndarray, scale: float, cmap: str = "bwr", pixels: np.ndarray | None = None, style: str = "colour") -> np.ndarray:
    """(H, W) relevance -> uint8 RGB, symmetric around 0 with ``scale`` (a max |relevance|) at the ends.

    With ``pixels`` the heatmap is drawn over the input as `lrp explain --overlay` draws it
    (render.overlay_rgb: ``style`` colour keeps the input's colours, grey greys them)."""
    from ..render.heatmaps import colormap, overlay_rgb

    heat = np.asarray(heat, dtype=np.float64)
    if pixels is not None:
        return overlay_rgb(heat, _rgb(pixels), cmap, scale=scale, style=style)
    unit = np.zeros_like(heat) if scale <= 0 else np.clip(heat / scale, -1.0, 1.0)
    return (colormap(cmap)(0.5 + 0.5 * unit)[..., :3] * 255.0).round().astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _font(size: int = FONT_SIZE):
    """DejaVu Sans (shipped with matplotlib, so it is always here), else Pillow's default font."""
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (OSError, ImportError):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            return ImageFont.load_default()


def _enlarge(rgb: np.ndarray, factor: int) -> np.ndarray:
    return rgb if factor == 1 else rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def _fit(draw, text: str, font, width: int, middle: bool = False) -> str:
    """``text`` shortened with an ellipsis (at the end, or in the middle for file names) to fit ``width``."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        if middle:
            head = (keep + 1) // 2
            short = text[:head] + "…" + text[len(text) - (keep - head) :]
        else:
            short = text[:keep] + "…"
        if draw.textlength(short, font=font) <= width:
            return short
    return "…"


def _number(value: float) -> str:
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def input_caption(row: Row) -> list[str]:
    """The lines under the input panel: file name, prediction (and its probability), target."""
    prediction = row.prediction_label or str(row.prediction)
    probability = f" ({row.probability:.2f})" if row.probability is not None else ""
    target = f"{row.target_label} [{row.target}]" if row.target_label and row.target_label != str(row.target) else str(row.target)
    return [row.name, f"pred: {prediction}{probability}", f"target: {target}, score {_number(row.logit)}"]


def heat_caption(row: Row, column: int) -> list[str]:
    """The lines under a heatmap: total relevance (compare with the target's score) and the largest |R|."""
    heat = row.heats[column]
    return [f"sum R = {_number(row.sums[column])}", f"max |R| = {_number(float(np.abs(heat).max()) if heat.size else 0.0)}"]


def compose(
    rows: Sequence[Row],
    labels: Sequence[str],
    *,
    cmap: str = "bwr",
    overlay: bool = False,
    overlay_style: str = "colour",
    shared_scale: bool = False,
    footer: str | None = None,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """The figure as a uint8 RGB array: a header row (``input`` and each composite's label), then one
    row per input: the input image (captioned with its name, prediction and target) and a heatmap
    per composite (captioned with the relevance sum and max |R|); a colour-scale legend at the bottom.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise UsageError("nothing to draw: no input was explained")
    if any(len(row.heats) != len(labels) for row in rows):
        raise ValueError("every row needs one heatmap per label")
    font = _font()
    ascent, descent = font.getmetrics()
    line = ascent + descent + 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    height = max(row.pixels.shape[0] for row in rows)
    width = max(row.pixels.shape[1] for row in rows)
    # nearest-neighbour enlargement so the shorter side reaches min_side (not past 4 * min_side on the longer)
    factor = max(1, min(-(-min_side // max(1, min(height, width))), 4 * min_side // max(1, height, width)))
    panel_h, panel_w = height * factor, width * factor

    in_lines = max(len(input_caption(row)) for row in rows)
    heat_lines = 2
    text_w = lambda t: int(measure.textlength(t, font=font)) + 1  # noqa: E731
    heat_col = max([panel_w] + [text_w(label) for label in labels] + [text_w(t) for row in rows for c in range(len(labels)) for t in heat_caption(row, c)])
    heat_col = min(heat_col, max(panel_w, 320))
    input_col = max([panel_w] + [text_w(t) for row in rows for t in input_caption(row)[1:]])
    input_col = min(max(input_col, panel_w, min(text_w(max((r.name for r in rows), key=len)), 2 * panel_w)), max(panel_w, 360))
    columns = [input_col] + [heat_col] * len(labels)

    header_h = line + PAD
    row_h = panel_h + PAD // 2 + max(in_lines, heat_lines) * line + 2 * PAD
    legend_h = 10 + line + 2 * PAD + (line if footer else 0)
    total_w = PAD + sum(c + PAD for c in columns)
    total_h = PAD + header_h + row_h * len(rows) + legend_h
    canvas = Image.new("RGB", (total_w, total_h), "white")
    draw = ImageDraw.Draw(canvas)
    ink, soft = (0, 0, 0), (90, 90, 90)

    lefts = [PAD + sum(c + PAD for c in columns[:i]) for i in range(len(columns))]
    for left, col_w, text in zip(lefts, columns, ["input", *labels]):
        text = _fit(draw, text, font, col_w)
        draw.text((left + (col_w - draw.textlength(text, font=font)) / 2, PAD), text, fill=ink, font=font)

    for r, row in enumerate(rows):
        top = PAD + header_h + r * row_h
        scale = max((float(np.abs(h).max()) if h.size else 0.0) for h in row.heats) if shared_scale else None
        images = [row.pixels] + [
            heat_colours(h, scale if scale is not None else float(np.abs(h).max()) if h.size else 0.0, cmap, row.pixels if overlay else None, overlay_style)
            for h in row.heats
        ]
        captions = [input_caption(row)] + [heat_caption(row, c) for c in range(len(labels))]
        for c, (left, col_w, image, caption) in enumerate(zip(lefts, columns, images, captions)):
            big = _enlarge(image, factor)
            x0 = left + (col_w - big.shape[1]) // 2
            canvas.paste(Image.fromarray(big), (x0, top))
            draw.rectangle((x0 - 1, top - 1, x0 + big.shape[1], top + big.shape[0]), outline=(200, 200, 200))
            for k, text in enumerate(caption):
                text = _fit(draw, text, font, col_w, middle=(c == 0 and k == 0))
                colour = ink if k == 0 else soft
                draw.text((left + (col_w - draw.textlength(text, font=font)) / 2, top + panel_h + PAD // 2 + k * line), text, fill=colour, font=font)

    # legend: the colour bar from -max to +max, and what max means
    top = PAD + header_h + row_h * len(rows) + PAD
    bar_w = max(96, min(panel_w, 192))
    ramp = np.linspace(-1.0, 1.0, bar_w)[None, :].repeat(10, axis=0)
    canvas.paste(Image.fromarray(heat_colours(ramp, 1.0, cmap)), (PAD, top))
    draw.rectangle((PAD - 1, top - 1, PAD + bar_w, top + 10), outline=(200, 200, 200))
    for text, x in (("-max", PAD), ("0", PAD + bar_w / 2 - draw.textlength("0", font=font) / 2), ("+max", PAD + bar_w - draw.textlength("+max", font=font))):
        draw.text((x, top + 12), text, fill=soft, font=font)
    scope = "the largest |R| in each row (--shared-scale)" if shared_scale else "the largest |R| in each panel"
    explanation = f"relevance; max = {scope}"
    draw.text((2 * PAD + bar_w, top - 2), _fit(draw, explanation, font, max(40, total_w - 3 * PAD - bar_w)), fill=soft, font=font)
    if footer:
        draw.text((2 * PAD + bar_w, top - 2 + line), _fit(draw, footer, font, max(40, total_w - 3 * PAD - bar_w)), fill=soft, font=font)
    return np.asarray(canvas)


# --------------------------------------------------------------------------- the whole run


@dataclass
class CompareReport:
    total: int
    written: list[Path] = field(default_factory=list)
    explained: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def compare_images(
    explainers: Sequence[Any],
    labels: Sequence[str],
    items: Sequence[Any],
    preprocessing: Any,
    targets: Any,
    *,
    out: Path,
    sheet: Path | None = None,
    classes: list[str] | None = None,
    options: CompareOptions | None = None,
    cmap: str = "bwr",
    overlay: bool = False,
    overlay_style: str = "colour",
    shared_scale: bool = False,
    footer: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> CompareReport:
    """Write one figure per input under ``out`` (``<input path>.png``), or, with ``sheet``, one
    figure with a row per input to that path. Files are written atomically."""
    from ..outputs import inside, write_atomic, write_output
    from ..render.heatmaps import png_bytes

    started = time.perf_counter()
    if len(labels) != len(explainers):
        raise ValueError("one label per explainer")
    if sheet is not None and len(items) > MAX_SHEET_ROWS:
        raise UsageError(
            f"a sheet holds at most {MAX_SHEET_ROWS} inputs, got {len(items)}",
            hint="write one figure per input (no --sheet), or pass fewer inputs",
        )
    report = CompareReport(total=len(items))
    style = {"cmap": cmap, "overlay": overlay, "overlay_style": overlay_style, "shared_scale": shared_scale, "footer": footer}
    kept: list[Row] = []
    names = {item.name: item.output_name or item.name for item in items}
    for row in explain_rows(explainers, items, preprocessing, targets, classes, options, report.failures, report.notes, progress):
        report.explained += 1
        if sheet is not None:
            kept.append(row)
            continue
        path = inside(out, f"{names.get(row.name, row.name)}.png")
        write_atomic(path, png_bytes(compose([row], labels, **style)))
        report.written.append(path)
    if sheet is not None and kept:
        write_output(sheet, png_bytes(compose(kept, labels, **style)))  # a file the user named (-o NAME.png)
        report.written.append(sheet)
    report.seconds = time.perf_counter() - started
    return report
