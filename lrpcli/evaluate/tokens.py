"""Token deletion for text models: the perturbation curve with tokens as units.

Texts differ in length, so each text removes its own share of its tokens at each step
(round(k / L * max_fraction * n_tokens)); padding and special tokens ([CLS], [SEP]) are never
units. A removed token is replaced by the pad or the unknown token (its id changes; the
attention mask does not), or its token embedding is zeroed (``zero``). Gradient x input is
taken at the token embedding (summed over the hidden dim), the way LRP's token relevance is.
With planted words (a task whose label words are known), the share of positive relevance on
them is the localisation score, and their share of the tokens its chance level.

The :class:`TokenEvaluator` fills the same fields as :class:`~.evaluator.Evaluator`, so the
same :class:`~.evaluator.Evaluation` reports on it (table, JSON, CSV, plot).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import InputError, UsageError
from .baselines import random_relevance
from .evaluator import Evaluation, Method, Settings, build_methods
from .metrics import confidence
from .order import ORDERS, perturbation_order, tie_breaker

def run_graph(graph: Any, ids: torch.Tensor, inputs: dict | None, keep: torch.Tensor | None = None, leaves: list | None = None) -> torch.Tensor:
    """The model's outputs through the prepared graph; ``keep`` (N, L) zeroes the token embeddings of removed
    tokens, ``leaves`` collects the token embeddings as autograd leaves (for gradient x input)."""
    values = graph.inputs(ids, inputs)
    for node in graph.nodes:
        value = node.call(values)
        if node.kind == "embedding":  # a lookup of the input ids (lookups of positions are constants)
            if keep is not None:
                value = value * keep.unsqueeze(-1).to(value.dtype)
            if leaves is not None:
                value = value.detach().requires_grad_(True)
                leaves.append(value)
        values[node.name] = value
    out = values[graph.output]
    return out.reshape(out.shape[0], -1)


class TokenEvaluator:
    """Accumulates token-deletion curves and planted-word shares, batch by batch."""

    input_kind = "text"
    unit_label = "tokens"
    tabular = False

    def __init__(
        self,
        model: Any,
        methods: dict[str, Any],
        baselines: Sequence[str] = ("gradient_x_input", "random"),
        settings: Settings | None = None,
        *,
        pad_id: int = 0,
        unk_id: int | None = None,
        mask_name: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.settings = (settings or Settings()).check(text=True)
        if self.settings.replace == "unk" and unk_id is None:
            raise UsageError("--replace unk: the tokenizer has no unknown token", hint="use --replace pad or zero")
        self.pad_id, self.unk_id, self.mask_name = pad_id, unk_id, mask_name
        self.device = torch.device(device)
        self.methods, self.scorer = build_methods(model, methods, baselines, dtype)
        seed = int(self.settings.seed)
        self.random_generator = torch.Generator().manual_seed(seed)
        self.tie_generator = torch.Generator().manual_seed(seed + 1)
        self.names: list[str] = []
        self.targets: list[torch.Tensor] = []
        self.inputs: list = []
        self.mask_area: list[torch.Tensor] = []
        self.masks: list = []
        self.steps = list(range(self.settings.steps + 1))
        self.unit_count = self.settings.steps  # (fractions k / L * max_fraction: see counts)
        self.counts = [k * self.settings.max_fraction for k in self.steps]
        self.classes = 0
        self.sanity_layers_total = 0
        self.notes: list[str] = []

    def _inputs(self, attention: torch.Tensor) -> dict | None:
        return {self.mask_name: attention} if self.mask_name else None

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        graph, _ = self.scorer.prepare(ids, self._inputs(attention))
        with torch.no_grad():
            return run_graph(graph, ids, self._inputs(attention), keep).double()

    def add(self, ids: torch.Tensor, attention: torch.Tensor, units: torch.Tensor, names: Sequence[str], planted: torch.Tensor | None = None) -> None:
        """Evaluate every method on one batch: ``ids``/``attention`` (N, L), ``units`` (N, L) bool: the
        removable tokens; ``planted`` (N, L) bool: the tokens of the planted words, where known."""
        ids, attention, units = ids.to(self.device), attention.to(self.device), units.to(self.device)
        if not bool(units.any(dim=1).all()):
            raise InputError("a text has no tokens to remove (only special tokens)")
        clean = self.forward(ids, attention)
        self.classes = clean.shape[1]
        targets = clean.argmax(dim=1)
        shuffle = tie_breaker(ids.shape[0], ids.shape[1], self.tie_generator).to(self.device)
        lengths = units.sum(dim=1).double()
        if planted is not None:
            planted = planted.to(self.device) & units
            self.mask_area.append(planted.sum(dim=1).double().cpu() / lengths.cpu())
        for method in self.methods.values():
            relevance = self._relevance(method, ids, attention, targets)
            for order in ORDERS:
                blocked = float("-inf") if order == "morf" else float("inf")  # padding and specials: never removed
                scores = torch.where(units, relevance, torch.full_like(relevance, blocked))
                ordering = perturbation_order(scores, order, shuffle=shuffle)
                curves = self._curve(ids, attention, ordering, lengths, clean, targets)
                stored = method.curves.setdefault(order, {})
                for metric, values in curves.items():
                    stored.setdefault(metric, []).append(values)
            if planted is not None:
                positive = torch.where(units, relevance, torch.zeros_like(relevance)).clamp(min=0)
                total = positive.sum(dim=1)
                inside = (positive * planted).sum(dim=1)
                method.mass.append(torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total)).cpu())
        self.names += list(names)
        self.targets.append(targets.cpu())

    def _relevance(self, method: Method, ids, attention, targets) -> torch.Tensor:
        if method.kind == "composite":
            return method.explainer.explain(ids, targets, init=self.settings.init, inputs=self._inputs(attention)).relevance.detach().double()
        if method.baseline == "gradient_x_input":
            graph, _ = self.scorer.prepare(ids, self._inputs(attention))
            with torch.enable_grad():
                leaves: list[torch.Tensor] = []
                out = run_graph(graph, ids, self._inputs(attention), leaves=leaves)
                selected = out.gather(1, targets.reshape(-1, 1)).sum()
                grads = torch.autograd.grad(selected, leaves, allow_unused=True)
            total = torch.zeros(ids.shape, dtype=torch.float64, device=ids.device)
            for leaf, grad in zip(leaves, grads):
                if grad is not None:
                    total += (leaf * grad).sum(dim=-1).detach().double()
            return total
        return random_relevance(ids.shape, self.random_generator).to(ids.device)

    def _curve(self, ids, attention, ordering, lengths, clean, targets) -> dict[str, torch.Tensor]:
        n = ids.shape[0]
        rank = torch.empty_like(ordering)
        rank.scatter_(1, ordering, torch.arange(ordering.shape[1], device=ordering.device).expand_as(ordering))
        logits = [clean]
        for k in self.steps[1:]:
            removed_count = torch.floor(k / self.settings.steps * self.settings.max_fraction * lengths + 0.5)
            removed = rank < removed_count.unsqueeze(1)
            if self.settings.replace == "zero":
                logits.append(self.forward(ids, attention, keep=~removed))
            else:
                fill = self.pad_id if self.settings.replace == "pad" else self.unk_id
                logits.append(self.forward(torch.where(removed, torch.full_like(ids, fill), ids), attention))
        stacked = torch.stack(logits, dim=1)  # (n, L+1, K)
        index = targets.reshape(n, 1, 1).expand(n, stacked.shape[1], 1)
        result = {"logit": stacked.gather(2, index).squeeze(2).cpu()}
        if stacked.shape[2] > 1:
            probabilities = torch.softmax(stacked, dim=2)
            result["probability"] = probabilities.gather(2, index).squeeze(2).cpu()
            result["confidence"] = confidence(probabilities).cpu()
        return result

    def result(self) -> Evaluation:
        if not self.names:
            raise InputError("no texts were evaluated")
        return Evaluation(self)
