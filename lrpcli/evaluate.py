"""Evaluating explanations: pixel flipping / region perturbation, localisation, sanity checks.

Small pure functions on tensors, and one driver (:class:`Evaluator`) that the CLI's
``lrp evaluate`` feeds batch by batch. Nothing here prints; errors are ``LrpError`` kinds.

Definitions (N inputs, L steps, k = 0..L; see ``docs`` in each function):

- **Units** are what is removed together: a pixel (all its channels), a ``patch x patch``
  region (its relevance is the sum over its pixels and channels), or a CSV feature.
- **Perturbation curve** (Samek et al. 2017): remove the units in order of relevance,
  most relevant first (MoRF) or least relevant first (LeRF), ``n_k = round(k / L *
  max_fraction * U)`` of the U units at step k, replacing them with a reference value;
  record the target's logit f(x^(k)). The target is the prediction on the clean input.
- **AOPC** (area over the MoRF perturbation curve): ``1/(L+1) * sum_k (f(x^(0)) - f(x^(k)))``,
  averaged over inputs. Higher is better for MoRF: the score falls fast when the
  features the explanation calls relevant are removed.
- **MoRF/LeRF gap**: ``AOPC_morf - AOPC_lerf``, which equals the (discrete) area between the
  LeRF and MoRF curves, ``1/(L+1) * sum_k (f_lerf(x^(k)) - f_morf(x^(k)))``. Higher is better:
  it rewards explanations that also know which features do *not* matter, and cancels the
  part of the drop that any removal causes (the perturbation leaving the data's manifold).
- **Confidence** (seed 003): ``(p_max - p_second) / p_max`` of the softmax probabilities of
  the perturbed input, over all classes.
- **Relevance mass accuracy** (Arras et al. 2022): the share of the positive relevance
  (summed over channels, then clamped at 0) that lies inside the ground-truth mask.
- **Sanity check** (Adebayo et al. 2018, cascading model randomisation): the weights of the
  top 1, 2, ... weighted layers (conv/linear, output side first) are replaced by random
  ones; the Spearman rank correlation between the original and the randomised heatmaps
  (summed over channels; also of their absolute values) measures how much the explanation
  depends on those weights. A method is *flagged* ("does not depend on the model") when at
  some level either correlation is still at or above the threshold (default 0.9). The
  target stays the class predicted by the original model.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import ConfigError, InputError, ModelError, UsageError
from .registry import Registry, suggest

ORDERS = ("morf", "lerf")
REPLACEMENTS = ("zero", "mean", "blur", "uniform")
IMAGE_ONLY_REPLACEMENTS = ("blur",)

#: explanation methods that are not LRP composites, to compare against
BASELINES: Registry[str] = Registry("baseline")
BASELINES.register(
    "gradient_x_input",
    "the gradient of the target logit times the input (autograd on the captured graph)",
    aliases=("gradient_input", "input_x_gradient", "gxi", "grad_x_input"),
)
BASELINES.register("random", "seeded uniform random relevance in [0, 1)")


# --------------------------------------------------------------------------- names and settings


def resolve_baseline(name: str) -> str:
    """The canonical baseline name; UsageError with a suggestion on a miss."""
    try:
        return BASELINES.resolve(name)
    except ConfigError as exc:
        raise UsageError(f"unknown baseline '{name}' (known: {', '.join(BASELINES.names())})", hint=exc.hint) from None


def resolve_replacement(name: str, tabular: bool = False) -> str:
    key = str(name).strip().lower()
    if key not in REPLACEMENTS:
        raise UsageError(f"unknown replacement '{name}' (known: {', '.join(REPLACEMENTS)})", hint=suggest(key, list(REPLACEMENTS)))
    if tabular and key in IMAGE_ONLY_REPLACEMENTS:
        raise UsageError(f"replacement '{key}' needs images; CSV rows have no neighbourhood", hint="use zero, mean or uniform for CSV input")
    return key


@dataclass
class Settings:
    """How ``lrp evaluate`` perturbs and scores (defaults are the CLI's)."""

    steps: int = 10  # L: the curve has L + 1 points, k = 0..L
    max_fraction: float = 1.0  # the share of units removed at the last step
    patch: int = 1  # images: remove patch x patch regions (1: single pixels)
    replace: str = "zero"  # zero, mean, blur (images), uniform
    blur_sigma: float | None = None  # None: max(1, min(H, W) / 16) pixels
    seed: int = 0  # random baseline, uniform replacement, tie breaking
    sanity_layers: int = 0  # 0: no sanity check; N: randomise the top 1..N weighted layers (cascading)
    sanity_threshold: float = 0.9  # flag a method whose rank correlation is at or above this at some level
    init: str = "value"

    def check(self, tabular: bool = False) -> "Settings":
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise UsageError(f"--steps must be an integer of at least 1, got {self.steps!r}")
        if not (0.0 < float(self.max_fraction) <= 1.0):
            raise UsageError(f"--max-fraction must be in (0, 1], got {self.max_fraction!r}")
        if not isinstance(self.patch, int) or self.patch < 1:
            raise UsageError(f"--patch must be a positive integer, got {self.patch!r}")
        if tabular and self.patch != 1:
            raise UsageError("--patch applies to images; CSV rows are perturbed feature by feature")
        self.replace = resolve_replacement(self.replace, tabular)
        if self.blur_sigma is not None and not self.blur_sigma > 0:
            raise UsageError(f"--blur-sigma must be positive, got {self.blur_sigma!r}")
        if self.sanity_layers < 0:
            raise UsageError(f"--sanity-layers must be at least 1, got {self.sanity_layers}")
        if not (-1.0 <= float(self.sanity_threshold) <= 1.0):
            raise UsageError(f"--sanity-threshold is a rank correlation in [-1, 1], got {self.sanity_threshold!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --------------------------------------------------------------------------- units and ordering


def unit_map(shape: Sequence[int], patch: int = 1) -> tuple[torch.Tensor, int]:
    """Which unit each position of one input belongs to, and how many units there are.

    ``shape`` is one input's shape without the batch dimension: ``(C, H, W)`` images give an
    ``(H, W)`` map of patch indices (row-major over a grid of ``ceil(H/p) x ceil(W/p)``
    patches; edge patches may be smaller), ``(F,)`` features give ``arange(F)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        if patch != 1:
            raise UsageError("--patch applies to images, not feature vectors")
        return torch.arange(shape[0]), shape[0]
    if len(shape) != 3:
        raise InputError(f"lrp evaluate takes images (C, H, W) or feature vectors (F,), got an input of shape {shape}")
    _, height, width = shape
    if patch > min(height, width):
        raise UsageError(f"--patch {patch} is larger than the {height}x{width} input")
    columns = -(-width // patch)
    rows = torch.arange(height) // patch
    cols = torch.arange(width) // patch
    return rows[:, None] * columns + cols[None, :], int(-(-height // patch) * columns)


def unit_relevance(relevance: torch.Tensor, units: torch.Tensor, count: int) -> torch.Tensor:
    """(N, ...) relevance -> (N, U): summed over channels and over each unit's positions."""
    relevance = relevance.detach().double()
    flat = relevance.sum(dim=1) if relevance.ndim == 4 else relevance  # images: over channels
    flat = flat.reshape(flat.shape[0], -1)
    index = units.reshape(1, -1).expand(flat.shape[0], -1).to(flat.device)
    return torch.zeros(flat.shape[0], count, dtype=flat.dtype, device=flat.device).scatter_add_(1, index, flat)


def tie_breaker(n: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, U): one random permutation of the units per input, used to break ties in :func:`perturbation_order`."""
    return torch.stack([torch.randperm(count, generator=generator) for _ in range(n)]) if n else torch.zeros(0, count, dtype=torch.long)


def perturbation_order(
    scores: torch.Tensor,
    order: str = "morf",
    generator: torch.Generator | None = None,
    *,
    shuffle: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, U) unit relevance -> (N, U) unit indices in removal order.

    MoRF: most relevant first; LeRF: least relevant first. Units of equal relevance (e.g. zero
    relevance on a blank border) are taken in the order of ``shuffle`` (a :func:`tie_breaker`
    permutation; drawn from ``generator`` when not given), so they are not removed top-left
    first. Without either, ties keep index order.
    """
    if order not in ORDERS:
        raise UsageError(f"unknown order '{order}' (known: {', '.join(ORDERS)})")
    n, count = scores.shape
    if shuffle is None:
        shuffle = tie_breaker(n, count, generator) if generator is not None else torch.arange(count).expand(n, count)
    shuffle = shuffle.to(scores.device)
    ranked = torch.argsort(scores.gather(1, shuffle), dim=1, descending=(order == "morf"), stable=True)
    return shuffle.gather(1, ranked)


def removal_counts(count: int, steps: int, max_fraction: float = 1.0) -> list[int]:
    """Units removed at steps k = 0..L: ``round(k / L * max_fraction * count)`` (halves round up)."""
    return [int(math.floor(k / steps * max_fraction * count + 0.5)) for k in range(steps + 1)]


def removal_mask(order: torch.Tensor, units: torch.Tensor, removed: int) -> torch.Tensor:
    """(N, U) removal order -> bool mask of removed positions, (N, H, W) or (N, F): the first ``removed`` units."""
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    position_rank = rank[:, units.reshape(-1).to(order.device)].reshape(order.shape[0], *units.shape)
    return position_rank < removed


# --------------------------------------------------------------------------- replacement values


def feature_stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-feature mean, minimum and maximum over the rows of an (N, F) table (the CSV reference)."""
    x = x.detach()
    return {"mean": x.mean(dim=0), "low": x.amin(dim=0), "high": x.amax(dim=0)}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (N, C, H, W) images channel by channel with a Gaussian of ``sigma`` pixels (edges replicated)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype).to(x.device)
    channels = x.shape[1]
    out = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return torch.nn.functional.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def replacement(
    x: torch.Tensor,
    kind: str,
    *,
    generator: torch.Generator | None = None,
    blur_sigma: float | None = None,
    reference: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The values removed units are replaced with, shaped like ``x``.

    - ``zero``: 0 in the model's input space (for standardised inputs: the normalisation's mean).
    - ``mean``: images: each image's per-channel mean; tables: the per-feature mean over the
      rows (``reference["mean"]``, else over this batch).
    - ``blur``: images only: the Gaussian-blurred image (``blur_sigma``, default max(1, min(H, W)/16)).
    - ``uniform``: uniform noise in the input's value range: images: each image's per-channel
      minimum..maximum; tables: each feature's minimum..maximum over the rows.
    """
    x = x.detach()
    image = x.ndim == 4
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        if image:
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
        mean = reference["mean"] if reference else x.mean(dim=0)
        return mean.to(x).expand_as(x).clone()
    if kind == "blur":
        if not image:
            raise UsageError("replacement 'blur' needs images")
        sigma = blur_sigma if blur_sigma is not None else max(1.0, min(x.shape[2], x.shape[3]) / 16)
        return gaussian_blur(x, float(sigma))
    if kind == "uniform":
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        if image:
            low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        else:
            stats = reference or feature_stats(x)
            low, high = stats["low"].to(x), stats["high"].to(x)
        return low + noise * (high - low)
    raise UsageError(f"unknown replacement '{kind}' (known: {', '.join(REPLACEMENTS)})", hint=suggest(kind, list(REPLACEMENTS)))


def perturb(x: torch.Tensor, fill: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with the masked positions (all channels of a masked pixel) taken from ``fill``."""
    if x.ndim == 4:
        mask = mask[:, None]
    return torch.where(mask.to(x.device), fill, x)


# --------------------------------------------------------------------------- scores


def confidence(probabilities: torch.Tensor) -> torch.Tensor:
    """Seed 003's confidence per row: (max - second max) / max of the class probabilities."""
    if probabilities.shape[-1] < 2:
        raise UsageError("confidence needs at least two classes")
    top = probabilities.topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]) / top[..., 0]


def aopc(curve: torch.Tensor) -> torch.Tensor:
    """(N, L+1) target scores along a perturbation curve -> (N,) ``1/(L+1) sum_k (f(x^0) - f(x^k))``."""
    curve = torch.as_tensor(curve, dtype=torch.float64)
    return (curve[:, :1] - curve).mean(dim=1)


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based; ties share the mean of their positions) along the last dimension of (N, D)."""
    values = values.detach().double()
    n, d = values.shape
    order = values.argsort(dim=1, stable=True)
    ordered = values.gather(1, order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1
    position = torch.arange(1, d + 1, dtype=torch.float64, device=values.device).expand(n, d)
    totals = torch.zeros(n, d, dtype=torch.float64, device=values.device).scatter_add_(1, group, position)
    sizes = torch.zeros(n, d, dtype=torch.float64, device=values.device).scatter_add_(1, group, torch.ones_like(position))
    average = totals.gather(1, group) / sizes.gather(1, group)
    return torch.empty_like(average).scatter_(1, order, average)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of two (N, ...) tensors (flattened); NaN where one row is constant."""
    a = a.detach().reshape(a.shape[0], -1)
    b = b.detach().reshape(b.shape[0], -1).to(a.device)
    ra, rb = ranks(a), ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    result = (ra * rb).sum(dim=1) / denominator
    return torch.where(denominator > 0, result, torch.full_like(result, float("nan")))


def heatmap(relevance: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) summed over channels; (N, F) unchanged: what a heatmap shows."""
    relevance = relevance.detach().double()
    return relevance.sum(dim=1) if relevance.ndim == 4 else relevance


def relevance_mass_accuracy(relevance: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) share of positive relevance inside the mask (channels summed first, then clamped at 0).

    0 where an input has no positive relevance at all. A random attribution scores about the
    mask's area fraction.
    """
    positive = heatmap(relevance).clamp(min=0)
    masks = masks.to(positive.device).reshape(positive.shape).to(positive.dtype)
    total = positive.reshape(positive.shape[0], -1).sum(dim=1)
    inside = (positive * masks).reshape(positive.shape[0], -1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total))


# --------------------------------------------------------------------------- baselines


def gradient_x_input(explainer: Any, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient of the target logit times the input, by autograd through the captured graph.

    The graph is the one LRP walks (trailing softmax stripped, batch-norm folded), but no LRP
    rule is involved: this is the plain derivative of the model's function.
    """
    graph, _ = explainer.prepare(x)
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        outputs = graph(leaf)
        outputs = outputs.reshape(outputs.shape[0], -1)
        selected = outputs.gather(1, targets.reshape(-1, 1).to(outputs.device)).sum()
        (gradient,) = torch.autograd.grad(selected, leaf)
    return (gradient * x).detach()


def random_relevance(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random relevance in [0, 1) (seeded): the chance level of every metric."""
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float64)


# --------------------------------------------------------------------------- model randomisation


@dataclass
class Layer:
    """A weighted layer found in the captured graph, and the model's tensors that hold its parameters."""

    name: str  # the layer path, e.g. "classifier.4"
    weight_key: str
    bias_key: str | None


def _tensors(model: Any) -> dict[str, torch.Tensor]:
    if isinstance(model, torch.export.ExportedProgram):
        return dict(model.state_dict)
    return dict(model.state_dict(keep_vars=True))


def _find_key(tensors: dict[str, torch.Tensor], value: torch.Tensor | None, preferred: str) -> str | None:
    if value is None or not isinstance(value, torch.Tensor):
        return None

    def same(t: torch.Tensor) -> bool:
        return tuple(t.shape) == tuple(value.shape) and torch.equal(t.detach().to(value.device, value.dtype), value.detach())

    if preferred in tensors and same(tensors[preferred]):
        return preferred
    matches = [key for key, t in tensors.items() if same(t)]
    return matches[0] if len(matches) == 1 else None


def weighted_layers(explainer: Any, x: torch.Tensor) -> list[Layer]:
    """The conv/linear layers of the model in forward order, mapped to the model's parameter names."""
    graph = explainer.captured(x)
    tensors = _tensors(explainer.model)
    found: list[Layer] = []
    for node in graph.nodes:
        if node.kind not in ("conv", "linear"):
            continue
        name = node.module or node.name
        weight_key = _find_key(tensors, node.weight, f"{node.module}.weight")
        if weight_key is None:
            raise ModelError(
                f"cannot randomise layer '{name}': its weight is not a parameter of the model",
                hint="the sanity check randomises the model's own parameters; run without --sanity for this model",
            )
        bias = node.bias if isinstance(node.bias, torch.Tensor) else None
        found.append(Layer(name, weight_key, _find_key(tensors, bias, f"{node.module}.bias")))
    if not found:
        raise ModelError("the model has no conv or linear layer to randomise")
    return found


def randomised_copy(model: Any, layers: Sequence[Layer], seed: int = 0) -> Any:
    """A deep copy of ``model`` whose ``layers`` have random weights (and biases).

    Each weight becomes N(0, std(original weight)) noise (so activations keep their scale;
    Adebayo et al. re-initialise similarly), each bias N(0, std(original bias)). A layer's
    noise depends only on ``seed`` and its parameter name, so a cascade randomises the
    shared layers identically at every level.
    """
    clone = copy.deepcopy(model)
    tensors = _tensors(clone)
    with torch.no_grad():
        for layer in layers:
            generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(layer.weight_key.encode()))
            for key in (layer.weight_key, layer.bias_key):
                if key is None:
                    continue
                tensor = tensors[key]
                scale = float(tensor.detach().double().std()) if tensor.numel() > 1 else float(tensor.detach().abs().max())
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * (scale or 1.0)
                tensor.copy_(noise.to(tensor.dtype))
    return clone


def cascade(model: Any, layers: Sequence[Layer], depth: int, seed: int = 0) -> list[tuple[list[str], Any]]:
    """Models with the top 1, 2, ..., ``depth`` layers randomised (output side first)."""
    top = list(reversed(layers))[: max(1, min(depth, len(layers)))]
    return [([layer.name for layer in top[: level + 1]], randomised_copy(model, top[: level + 1], seed)) for level in range(len(top))]


# --------------------------------------------------------------------------- the driver


@dataclass
class Method:
    """What is evaluated: an LRP composite or a baseline, and everything measured for it."""

    name: str
    kind: str  # "composite" or "baseline"
    explainer: Any = None  # composites: the Explainer
    baseline: str | None = None  # baselines: the canonical baseline name
    curves: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)  # order -> metric -> per-batch (n, L+1)
    mass: list[torch.Tensor] = field(default_factory=list)  # per-batch (n,) relevance mass accuracy
    sanity: list[dict[str, Any]] = field(default_factory=list)  # per level: layers, per-batch spearman lists
    relevance: list[np.ndarray] = field(default_factory=list)  # with keep_relevance


def _cat(parts: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(parts).double().cpu().numpy() if parts else np.zeros((0,))


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return None
    return float(np.nanmean(values, axis=0)) if values.ndim == 1 else None


class Evaluator:
    """Accumulates perturbation curves, localisation and sanity numbers batch by batch.

    ``methods`` maps a display name to a composite (name, YAML path, dict or Composite);
    ``baselines`` lists baseline names (see :data:`BASELINES`). ``reference`` holds the
    per-feature mean/low/high of a whole table (CSV input), see :func:`feature_stats`.
    """

    def __init__(
        self,
        model: Any,
        methods: dict[str, Any],
        baselines: Sequence[str] = ("gradient_x_input", "random"),
        settings: Settings | None = None,
        *,
        tabular: bool = False,
        reference: dict[str, torch.Tensor] | None = None,
        keep_relevance: bool = False,
        device: torch.device | str = "cpu",
    ):
        from .engine import Explainer

        self.settings = (settings or Settings()).check(tabular)
        self.tabular = tabular
        self.reference = reference
        self.keep_relevance = keep_relevance
        self.device = torch.device(device)
        self.model = model
        baselines = [resolve_baseline(name) for name in baselines]
        if len(set(baselines)) != len(baselines):
            raise UsageError("a baseline is given twice")
        if not methods and not baselines:
            raise UsageError("nothing to evaluate: give a composite (-c) or a baseline")
        self.methods: dict[str, Method] = {}
        for name, composite in methods.items():
            self.methods[name] = Method(name, "composite", Explainer(model, composite))
        for name in baselines:
            key = name if name not in self.methods else f"{name} (baseline)"
            self.methods[key] = Method(key, "baseline", baseline=name)
        first = next((m.explainer for m in self.methods.values() if m.explainer is not None), None)
        self.scorer = first if first is not None else Explainer(model, "epsilon")
        self.model = self.scorer.model  # loaded
        # separate streams, so that e.g. the random baseline does not change when composites are added
        seed = int(self.settings.seed)
        self.random_generator = torch.Generator().manual_seed(seed)  # the random baseline
        self.tie_generator = torch.Generator().manual_seed(seed + 1)  # tie breaking, shared by all methods
        self.fill_generator = torch.Generator().manual_seed(seed + 2)  # uniform replacement noise
        self.names: list[str] = []
        self.targets: list[torch.Tensor] = []
        self.inputs: list[np.ndarray] = []
        self.mask_area: list[torch.Tensor] = []
        self.masks: list[np.ndarray] = []
        self.units: torch.Tensor | None = None
        self.unit_count = 0
        self.counts: list[int] = []
        self.classes = 0
        self.sanity_models: list[tuple[list[str], dict[str, Any]]] | None = None
        self.sanity_layers_total = 0
        self.notes: list[str] = []

    # -- one batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scorer.forward(x)
        return out.reshape(out.shape[0], -1).double()

    def add(self, x: torch.Tensor, names: Sequence[str], masks: torch.Tensor | None = None) -> None:
        """Evaluate every method on the batch ``x`` (names for the report; masks (n, H, W) bool)."""
        x = x.detach().to(self.device, torch.float32)
        if x.ndim not in (2, 4):
            raise InputError(f"lrp evaluate takes (N, C, H, W) images or (N, F) rows, got shape {tuple(x.shape)}")
        if self.tabular != (x.ndim == 2):
            raise InputError("the inputs are not what the evaluation was set up for (images vs. CSV rows)")
        units, count = unit_map(x.shape[1:], self.settings.patch)
        if self.units is None:
            self.units, self.unit_count = units, count
            self.counts = removal_counts(count, self.settings.steps, self.settings.max_fraction)
        elif not torch.equal(units, self.units):
            raise InputError(f"inputs differ in shape ({tuple(x.shape[1:])} vs. the first batch's)", hint="pass --size H W to resize images")
        clean = self.forward(x)
        self.classes = clean.shape[1]
        targets = clean.argmax(dim=1)
        fill = replacement(x, self.settings.replace, generator=self.fill_generator, blur_sigma=self.settings.blur_sigma, reference=self.reference)
        shuffle = tie_breaker(x.shape[0], self.unit_count, self.tie_generator)
        if masks is not None:
            masks = masks.to(torch.bool)
            self.mask_area.append(masks.reshape(masks.shape[0], -1).double().mean(dim=1))
            self.masks.append(masks.cpu().numpy())
        if self.keep_relevance:
            self.inputs.append(x.cpu().numpy())
        if self.settings.sanity_layers and self.sanity_models is None:
            self._build_sanity(x)
        for method in self.methods.values():
            relevance = self._relevance(method, x, targets)
            if self.keep_relevance:
                method.relevance.append(relevance.float().cpu().numpy())
            scores = unit_relevance(relevance, self.units, self.unit_count)
            for order in ORDERS:
                ordering = perturbation_order(scores, order, shuffle=shuffle)
                curves = self._curve(x, fill, ordering, clean, targets)
                stored = method.curves.setdefault(order, {})
                for metric, values in curves.items():
                    stored.setdefault(metric, []).append(values)
            if masks is not None:
                method.mass.append(relevance_mass_accuracy(relevance, masks))
            if self.sanity_models is not None and method.baseline != "random":  # random relevance has no model to randomise
                self._sanity(method, x, targets, relevance)
        self.names += list(names)
        self.targets.append(targets.cpu())

    def _relevance(self, method: Method, x: torch.Tensor, targets: torch.Tensor, explainer: Any = None) -> torch.Tensor:
        if method.kind == "composite":
            return (explainer or method.explainer).explain(x, targets, init=self.settings.init).relevance.detach().double()
        if method.baseline == "gradient_x_input":
            return gradient_x_input(explainer or self.scorer, x, targets).double()
        return random_relevance(x.shape, self.random_generator).to(x.device)

    def _curve(self, x, fill, ordering, clean, targets) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        logits = [clean]
        steps = [k for k in range(1, len(self.counts))]
        # steps per forward pass: about 4M input values at a time (n images of 3x224x224: one step)
        chunk = max(1, (1 << 22) // max(1, x[0].numel() * n))
        for start in range(0, len(steps), chunk):
            part = steps[start : start + chunk]
            batch = torch.cat([perturb(x, fill, removal_mask(ordering, self.units, self.counts[k])) for k in part])
            out = self.forward(batch)
            logits += list(out.split(n))
        stacked = torch.stack(logits, dim=1)  # (n, L+1, K)
        index = targets.to(stacked.device).reshape(n, 1, 1).expand(n, stacked.shape[1], 1)
        result = {"logit": stacked.gather(2, index).squeeze(2).cpu()}
        if stacked.shape[2] > 1:
            probabilities = torch.softmax(stacked, dim=2)
            result["probability"] = probabilities.gather(2, index).squeeze(2).cpu()
            result["confidence"] = confidence(probabilities).cpu()
        return result

    # -- sanity check

    def _build_sanity(self, x: torch.Tensor) -> None:
        from .engine import Explainer

        layers = weighted_layers(self.scorer, x)
        self.sanity_layers_total = len(layers)
        depth = self.settings.sanity_layers
        if depth > len(layers):
            self.notes.append(f"--sanity-layers {depth}: the model has {len(layers)} conv/linear layers; randomising all of them")
        self.sanity_models = []
        for names, model in cascade(self.model, layers, depth, self.settings.seed):
            explainers: dict[str, Any] = {}
            for method in self.methods.values():
                if method.kind == "composite":
                    explainers[method.name] = Explainer(model, method.explainer.composite)
                elif method.baseline == "gradient_x_input":
                    explainers[method.name] = Explainer(model, "epsilon")
            self.sanity_models.append((names, explainers))

    def _sanity(self, method: Method, x: torch.Tensor, targets: torch.Tensor, relevance: torch.Tensor) -> None:
        original = heatmap(relevance)
        for level, (names, explainers) in enumerate(self.sanity_models or []):
            if len(method.sanity) <= level:
                method.sanity.append({"layers": names, "spearman": [], "spearman_abs": []})
            randomised = heatmap(self._relevance(method, x, targets, explainers[method.name]))
            method.sanity[level]["spearman"].append(spearman(original, randomised))
            method.sanity[level]["spearman_abs"].append(spearman(original.abs(), randomised.abs()))

    # -- results

    def result(self) -> "Evaluation":
        if not self.names:
            raise InputError("no inputs were evaluated")
        return Evaluation(self)


class Evaluation:
    """The numbers of one ``lrp evaluate`` run, as arrays per input and as means."""

    def __init__(self, evaluator: Evaluator):
        settings = evaluator.settings
        self.settings = settings
        self.names = list(evaluator.names)
        self.targets = torch.cat(evaluator.targets).numpy()
        self.unit_count = evaluator.unit_count
        self.counts = list(evaluator.counts)
        self.fractions = [c / evaluator.unit_count for c in self.counts]
        self.classes = evaluator.classes
        self.tabular = evaluator.tabular
        self.notes = list(evaluator.notes)
        self.mask_area = _cat(evaluator.mask_area) if evaluator.mask_area else None
        self.masks = np.concatenate(evaluator.masks) if evaluator.masks else None
        self.inputs = np.concatenate(evaluator.inputs) if evaluator.inputs else None
        self.sanity_layers_total = evaluator.sanity_layers_total
        self.methods: dict[str, dict[str, Any]] = {}
        for name, method in evaluator.methods.items():
            curves = {order: {metric: _cat(parts) for metric, parts in metrics.items()} for order, metrics in method.curves.items()}
            entry: dict[str, Any] = {"kind": method.kind, "curves": curves}
            entry["aopc"] = {order: aopc(torch.from_numpy(curves[order]["logit"])).numpy() for order in ORDERS}
            if "probability" in curves["morf"]:
                entry["aopc_probability"] = {order: aopc(torch.from_numpy(curves[order]["probability"])).numpy() for order in ORDERS}
            entry["mass"] = _cat(method.mass) if method.mass else None
            entry["sanity"] = [
                {"layers": level["layers"], "spearman": _cat(level["spearman"]), "spearman_abs": _cat(level["spearman_abs"])}
                for level in method.sanity
            ]
            entry["relevance"] = np.concatenate(method.relevance) if method.relevance else None
            if method.kind == "composite":
                entry["composite"] = method.explainer.composite.to_dict()
            self.methods[name] = entry

    def summary(self, name: str) -> dict[str, Any]:
        """Means over inputs for one method (what the table, the JSON and the CSV show)."""
        entry = self.methods[name]
        morf, lerf = _mean(entry["aopc"]["morf"]), _mean(entry["aopc"]["lerf"])
        out: dict[str, Any] = {
            "kind": entry["kind"],
            "aopc_morf": morf,
            "aopc_lerf": lerf,
            "gap": None if morf is None or lerf is None else morf - lerf,
        }
        if "aopc_probability" in entry:
            pm, pl = _mean(entry["aopc_probability"]["morf"]), _mean(entry["aopc_probability"]["lerf"])
            out.update(aopc_probability_morf=pm, aopc_probability_lerf=pl, gap_probability=None if pm is None or pl is None else pm - pl)
            out["confidence_morf_mean"] = float(np.mean(entry["curves"]["morf"]["confidence"]))
        out["relevance_mass_accuracy"] = _mean(entry["mass"]) if entry["mass"] is not None else None
        if entry["sanity"]:
            signed = [_mean(level["spearman"]) for level in entry["sanity"]]
            absolute = [_mean(level["spearman_abs"]) for level in entry["sanity"]]
            strongest = [max((v for v in pair if v is not None), default=None) for pair in zip(signed, absolute)]
            known = [v for v in strongest if v is not None]
            out["sanity_spearman"] = signed
            out["sanity_spearman_abs"] = absolute
            out["sanity_max_spearman"] = max(known) if known else None
            out["sanity_flagged"] = bool(known) and max(known) >= self.settings.sanity_threshold
        return out

    def curve_means(self, name: str, order: str) -> dict[str, list[float]]:
        return {metric: values.mean(axis=0).tolist() for metric, values in self.methods[name]["curves"][order].items()}

    def to_dict(self) -> dict[str, Any]:
        methods: dict[str, Any] = {}
        for name, entry in self.methods.items():
            summary = self.summary(name)
            data: dict[str, Any] = {
                "kind": entry["kind"],
                "aopc": {"morf": summary["aopc_morf"], "lerf": summary["aopc_lerf"], "gap": summary["gap"]},
                "curves": {order: self.curve_means(name, order) for order in ORDERS},
                "per_input": {
                    "aopc_morf": entry["aopc"]["morf"].tolist(),
                    "aopc_lerf": entry["aopc"]["lerf"].tolist(),
                },
            }
            if "aopc_probability" in entry:
                data["aopc_probability"] = {
                    "morf": summary["aopc_probability_morf"],
                    "lerf": summary["aopc_probability_lerf"],
                    "gap": summary["gap_probability"],
                }
                data["confidence_morf_mean"] = summary["confidence_morf_mean"]
            if entry["mass"] is not None:
                data["localisation"] = {"relevance_mass_accuracy": summary["relevance_mass_accuracy"]}
                data["per_input"]["relevance_mass_accuracy"] = entry["mass"].tolist()
            if entry["sanity"]:
                data["sanity"] = {
                    "levels": [
                        {
                            "randomised_layers": level["layers"],
                            "spearman": _mean(level["spearman"]),
                            "spearman_abs": _mean(level["spearman_abs"]),
                        }
                        for level in entry["sanity"]
                    ],
                    "max_spearman": summary["sanity_max_spearman"],
                    "flagged": summary["sanity_flagged"],
                    "verdict": (
                        "does not depend on the model: after randomising the top layer(s) the heatmaps keep their ranking "
                        "(Spearman, signed or of absolute values, at or above the threshold)"
                        if summary["sanity_flagged"]
                        else "depends on the model: randomising the top layers changes the heatmap"
                    ),
                }
            if "composite" in entry:
                data["composite"] = entry["composite"]
            methods[name] = data
        result: dict[str, Any] = {
            "inputs": len(self.names),
            "input_kind": "csv" if self.tabular else "image",
            "units": self.unit_count,
            "steps": self.settings.steps,
            "removed": self.counts,
            "fractions": self.fractions,
            "score": "logit of the target (the prediction on the clean input)",
            "settings": self.settings.to_dict(),
            "methods": methods,
            "names": self.names,
            "targets": self.targets.tolist(),
            "notes": self.notes,
        }
        if self.mask_area is not None:
            result["mask_area"] = float(self.mask_area.mean())
        if any(entry["sanity"] for entry in self.methods.values()):
            result["sanity"] = {"threshold": self.settings.sanity_threshold, "layers_in_model": self.sanity_layers_total}
        return result

    def rows(self) -> list[dict[str, Any]]:
        """Long-format CSV rows: one per method, order and step, with the method's summary repeated."""
        rows: list[dict[str, Any]] = []
        for name in self.methods:
            summary = self.summary(name)
            for order in ORDERS:
                means = self.curve_means(name, order)
                for step, fraction in enumerate(self.fractions):
                    rows.append(
                        {
                            "method": name,
                            "kind": summary["kind"],
                            "order": order,
                            "step": step,
                            "fraction": fraction,
                            "logit": means["logit"][step],
                            "probability": means["probability"][step] if "probability" in means else None,
                            "confidence": means["confidence"][step] if "confidence" in means else None,
                            "aopc": summary[f"aopc_{order}"],
                            "gap": summary["gap"],
                            "relevance_mass_accuracy": summary["relevance_mass_accuracy"],
                            "sanity_max_spearman": summary.get("sanity_max_spearman"),
                            "sanity_flagged": summary.get("sanity_flagged"),
                        }
                    )
        return rows


CSV_COLUMNS = (
    "method",
    "kind",
    "order",
    "step",
    "fraction",
    "logit",
    "probability",
    "confidence",
    "aopc",
    "gap",
    "relevance_mass_accuracy",
    "sanity_max_spearman",
    "sanity_flagged",
)


def evaluate(
    model: Any,
    x: torch.Tensor,
    composites: Iterable[Any] | dict[str, Any] = ("epsilon_plus_flat",),
    baselines: Sequence[str] = ("gradient_x_input", "random"),
    settings: Settings | None = None,
    *,
    masks: torch.Tensor | None = None,
    batch_size: int = 32,
    keep_relevance: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Evaluate composites and baselines on the inputs ``x`` (a tensor; the Python API of ``lrp evaluate``)."""
    from .composite import load_composite

    if isinstance(composites, dict):
        methods = dict(composites)
    else:
        methods = {}
        for item in composites:
            name = load_composite(item).name
            if name in methods:
                raise UsageError(f"composite '{name}' is given twice")
            methods[name] = item
    tabular = x.ndim == 2
    evaluator = Evaluator(
        model,
        methods,
        baselines,
        settings,
        tabular=tabular,
        reference=feature_stats(x) if tabular else None,
        keep_relevance=keep_relevance,
    )
    for start in range(0, x.shape[0], batch_size):
        part = slice(start, start + batch_size)
        evaluator.add(x[part], [str(i) for i in range(start, min(start + batch_size, x.shape[0]))], None if masks is None else masks[part])
        if progress:
            progress(min(batch_size, x.shape[0] - start))
    return evaluator.result()
