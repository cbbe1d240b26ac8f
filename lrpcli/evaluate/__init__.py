"""Evaluating explanations: pixel flipping / region perturbation, localisation, sanity checks.

Small pure functions on tensors, and one driver (:class:`Evaluator`) that the CLI's
``lrp evaluate`` feeds batch by batch. Nothing here prints; errors are ``LrpError`` kinds.

May import: the engine (explainers to score), sources (a model given as a path), data, render and the
ground. Never runs, report or cli.

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

Layout: :mod:`.order` (units and removal order), :mod:`.replace` (replacement values),
:mod:`.metrics` (scores), :mod:`.baselines` (non-LRP methods), :mod:`.sanity` (model
randomisation), :mod:`.evaluator` (the driver and the Python API) and :mod:`.tokens` (token
deletion for text models, reported by the same Evaluation). Everything public is
re-exported here, so ``from lrpcli.evaluate import X`` works for all of them.
"""

from __future__ import annotations

from .baselines import BASELINES, gradient_x_input, random_relevance, resolve_baseline
from .evaluator import CSV_COLUMNS, Evaluation, Evaluator, Method, Settings, evaluate
from .metrics import aopc, confidence, heatmap, ranks, relevance_mass_accuracy, spearman
from .order import ORDERS, perturbation_order, removal_counts, removal_mask, tie_breaker, unit_map, unit_relevance
from .replace import IMAGE_ONLY_REPLACEMENTS, REPLACEMENTS, TOKEN_REPLACEMENTS, feature_stats, gaussian_blur, perturb, replacement, resolve_replacement
from .sanity import Layer, cascade, randomised_copy, weighted_layers
from .tokens import TokenEvaluator

__all__ = [
    "TOKEN_REPLACEMENTS",
    "TokenEvaluator",
    "BASELINES",
    "CSV_COLUMNS",
    "IMAGE_ONLY_REPLACEMENTS",
    "ORDERS",
    "REPLACEMENTS",
    "Evaluation",
    "Evaluator",
    "Layer",
    "Method",
    "Settings",
    "aopc",
    "cascade",
    "confidence",
    "evaluate",
    "feature_stats",
    "gaussian_blur",
    "gradient_x_input",
    "heatmap",
    "perturb",
    "perturbation_order",
    "random_relevance",
    "randomised_copy",
    "ranks",
    "relevance_mass_accuracy",
    "removal_counts",
    "removal_mask",
    "replacement",
    "resolve_baseline",
    "resolve_replacement",
    "spearman",
    "tie_breaker",
    "unit_map",
    "unit_relevance",
    "weighted_layers",
]
