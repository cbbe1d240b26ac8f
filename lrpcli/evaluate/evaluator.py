"""The driver of ``lrp evaluate``: settings, per-method accumulation, results, and the Python API.

:class:`Evaluator` takes batches, computes each method's relevance and perturbation curves
(with the pieces from :mod:`.order`, :mod:`.replace`, :mod:`.metrics`, :mod:`.baselines`
and :mod:`.sanity`) and hands an :class:`Evaluation` back; :func:`evaluate` runs it on a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import InputError, UsageError
from .baselines import gradient_x_input, random_relevance, resolve_baseline
from .metrics import aopc, confidence, heatmap, relevance_mass_accuracy, spearman
from .order import ORDERS, perturbation_order, removal_counts, removal_mask, tie_breaker, unit_map, unit_relevance
from .replace import feature_stats, perturb, replacement, resolve_replacement, resolve_token_replacement
from .sanity import cascade, weighted_layers


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

    def check(self, tabular: bool = False, text: bool = False) -> "Settings":
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise UsageError(f"--steps must be an integer of at least 1, got {self.steps!r}")
        if not (0.0 < float(self.max_fraction) <= 1.0):
            raise UsageError(f"--max-fraction must be in (0, 1], got {self.max_fraction!r}")
        if not isinstance(self.patch, int) or self.patch < 1:
            raise UsageError(f"--patch must be a positive integer, got {self.patch!r}")
        if tabular and self.patch != 1:
            raise UsageError("--patch applies to images; CSV rows are perturbed feature by feature")
        if text and self.patch != 1:
            raise UsageError("--patch applies to images; texts are perturbed token by token")
        if text and self.sanity_layers:
            raise UsageError("--sanity is not available for texts yet")
        self.replace = resolve_token_replacement(self.replace) if text else resolve_replacement(self.replace, tabular)
        if self.blur_sigma is not None and not self.blur_sigma > 0:
            raise UsageError(f"--blur-sigma must be positive, got {self.blur_sigma!r}")
        if self.sanity_layers < 0:
            raise UsageError(f"--sanity-layers must be at least 1, got {self.sanity_layers}")
        if not (-1.0 <= float(self.sanity_threshold) <= 1.0):
            raise UsageError(f"--sanity-threshold is a rank correlation in [-1, 1], got {self.sanity_threshold!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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


def build_methods(model: Any, methods: dict[str, Any], baselines: Sequence[str], float_dtype: torch.dtype | None = None) -> tuple[dict[str, "Method"], Any]:
    """The methods of an evaluation (composites, then baselines) and the Explainer that scores inputs
    (the first composite's, else a plain epsilon one); ``float_dtype`` for models that take token ids."""
    from ..engine.explainer import Explainer

    def explainer(composite: Any) -> Any:
        made = Explainer(model, composite)
        made.float_dtype = float_dtype
        return made

    baselines = [resolve_baseline(name) for name in baselines]
    if len(set(baselines)) != len(baselines):
        raise UsageError("a baseline is given twice")
    if not methods and not baselines:
        raise UsageError("nothing to evaluate: give a composite (-c) or a baseline")
    found: dict[str, Method] = {name: Method(name, "composite", explainer(composite)) for name, composite in methods.items()}
    for name in baselines:
        key = name if name not in found else f"{name} (baseline)"
        found[key] = Method(key, "baseline", baseline=name)
    first = next((m.explainer for m in found.values() if m.explainer is not None), None)
    return found, first if first is not None else explainer("epsilon")


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
        self.settings = (settings or Settings()).check(tabular)
        self.tabular = tabular
        self.reference = reference
        self.keep_relevance = keep_relevance
        self.device = torch.device(device)
        self.model = model
        self.methods, self.scorer = build_methods(model, methods, baselines)
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
            raise InputError(f"inputs differ in shape ({tuple(x.shape[1:])} vs. the first batch's)", hint="pass --size H,W to resize images")
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
        from ..engine.explainer import Explainer

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
        self.input_kind = getattr(evaluator, "input_kind", "csv" if evaluator.tabular else "image")
        #: what one unit is, for tables and plots ("features", "pixels", "4x4 patches", "tokens")
        self.unit_label = getattr(evaluator, "unit_label", None) or (
            "features" if evaluator.tabular else "pixels" if settings.patch == 1 else f"{settings.patch}x{settings.patch} patches"
        )
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
            "input_kind": self.input_kind,
            "units": self.unit_count if self.input_kind != "text" else "the tokens of each text (special tokens and padding excluded)",
            "steps": self.settings.steps,
            "removed": self.counts if self.input_kind != "text" else "each text's share of its tokens: see fractions",
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
    """Evaluate composites and baselines on the inputs ``x`` (a tensor; the Python API of ``lrp evaluate``);
    ``model`` a model object or a path, as for ``lrpcli.explain``."""
    from ..engine.composite_yaml import load_composite
    from ..sources.files import load_model

    model = load_model(model)

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
