"""lrpcli.evaluate: the pure functions against hand-computed values, and the issue's acceptance checks.

Acceptance (issue #8), measured on the shipped sample models (the full table, for more
settings and all built-in composites: benchmarks/evaluate_results.md):

- digits_cnn (96 held-out digits, single pixels, zero replacement): epsilon_plus_flat's
  AOPC beats the random baseline clearly (about 15.1 vs 10.3 on the logit, 0.72 vs 0.38 on
  the probability). It does NOT beat gradient x input there (19.9 on the logit): on this
  bias-free ReLU network gradient x input equals LRP-0/epsilon, and pixel flipping with a
  zero reference is what its first-order Taylor reading predicts best. Not asserted.
- shapes_minivgg (32 fresh shapes, 4x4 patches, per-image mean replacement, probability
  score): the MoRF-LeRF gap orders epsilon_plus_flat 0.42 > gradient x input 0.27 > random
  0.03 (at most 0.09 over 10 seeds of the random baseline), and epsilon_plus_flat's AOPC
  (0.61) is above every random draw (0.44..0.54). Its AOPC lead over gradient x input on these
  32 images (0.61 vs 0.54) does not hold on 128 images (0.62 vs 0.65), and on the logit AOPC
  the three are not separated on this sample (8.9 / 8.6 / 6.7..8.7 for random): neither is
  asserted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lrpcli.errors import InputError, UsageError
from lrpcli.evaluate import (
    tie_breaker,
    Evaluator,
    Settings,
    aopc,
    cascade,
    confidence,
    evaluate,
    feature_stats,
    gaussian_blur,
    gradient_x_input,
    perturb,
    perturbation_order,
    ranks,
    relevance_mass_accuracy,
    removal_counts,
    removal_mask,
    replacement,
    resolve_baseline,
    resolve_replacement,
    spearman,
    unit_map,
    unit_relevance,
    weighted_layers,
)

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
needs_samples = pytest.mark.skipif(
    not all((SAMPLES / name / "model.ts").is_file() for name in ("digits_cnn", "shapes_minivgg")),
    reason="sample_models/ is not built (python sample_models/make_samples.py)",
)


# --------------------------------------------------------------------------- units and ordering


def test_unit_map_patches_on_a_grid():
    units, count = unit_map((3, 4, 4), patch=2)
    assert count == 4
    assert units.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    # sizes that do not divide: ceil(5/2) x ceil(3/2) = 3 x 2 patches, edge patches smaller
    units, count = unit_map((1, 5, 3), patch=2)
    assert count == 6
    assert units.tolist() == [[0, 0, 1], [0, 0, 1], [2, 2, 3], [2, 2, 3], [4, 4, 5]]
    units, count = unit_map((1, 2, 3), patch=1)
    assert count == 6 and units.tolist() == [[0, 1, 2], [3, 4, 5]]
    units, count = unit_map((7,))
    assert count == 7 and units.tolist() == list(range(7))


def test_unit_map_rejects_bad_shapes():
    with pytest.raises(UsageError, match="patch"):
        unit_map((5,), patch=2)
    with pytest.raises(UsageError, match="larger"):
        unit_map((1, 4, 4), patch=5)
    with pytest.raises(InputError):
        unit_map((2, 3))


def test_unit_relevance_sums_channels_and_patches():
    relevance = torch.arange(2 * 4 * 4, dtype=torch.float64).reshape(1, 2, 4, 4)  # channel 0: 0..15, channel 1: 16..31
    units, count = unit_map((2, 4, 4), patch=2)
    scores = unit_relevance(relevance, units, count)
    # patch 0 holds positions (0,0),(0,1),(1,0),(1,1) = 0+1+4+5 in channel 0 and +16 each in channel 1
    by_hand = [0 + 1 + 4 + 5, 2 + 3 + 6 + 7, 8 + 9 + 12 + 13, 10 + 11 + 14 + 15]
    assert scores.tolist() == [[2 * v + 4 * 16 for v in by_hand]]
    rows = torch.tensor([[1.0, -2.0, 3.0]])
    assert unit_relevance(rows, *unit_map((3,))).tolist() == [[1.0, -2.0, 3.0]]


def test_morf_and_lerf_order():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, -1.0, 4.0]])
    assert perturbation_order(scores, "morf").tolist() == [[0, 2, 1, 3], [1, 3, 0, 2]]
    assert perturbation_order(scores, "lerf").tolist() == [[3, 1, 2, 0], [2, 0, 3, 1]]
    with pytest.raises(UsageError):
        perturbation_order(scores, "middle")


def test_ties_are_broken_at_random_but_reproducibly():
    scores = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]])
    first = perturbation_order(scores, "morf", torch.Generator().manual_seed(1))
    again = perturbation_order(scores, "morf", torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    assert first[0, 0] == 7 and first[0, 1] == 0  # distinct values keep their order
    assert sorted(first[0, 2:].tolist()) == [1, 2, 3, 4, 5, 6]
    orders = {tuple(perturbation_order(scores, "morf", torch.Generator().manual_seed(s))[0, 2:].tolist()) for s in range(8)}
    assert len(orders) > 1  # zero-relevance units are not removed left to right


def test_tie_breaking_permutation_is_explicit_and_shared():
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 2.0]])
    shuffle = torch.tensor([[2, 0, 3, 1], [1, 2, 3, 0]])
    assert perturbation_order(scores, "morf", shuffle=shuffle).tolist() == [[2, 0, 3, 1], [3, 0, 1, 2]]
    assert perturbation_order(scores, "lerf", shuffle=shuffle).tolist() == [[2, 0, 3, 1], [1, 2, 0, 3]]
    drawn = tie_breaker(3, 5, torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 5) and all(sorted(row) == list(range(5)) for row in drawn.tolist())


def test_removal_counts_round_half_up():
    assert removal_counts(10, 4) == [0, 3, 5, 8, 10]  # 2.5 -> 3, 7.5 -> 8
    assert removal_counts(16, 4, max_fraction=0.5) == [0, 2, 4, 6, 8]
    assert removal_counts(3, 1) == [0, 3]


def test_removal_mask_and_perturb():
    order = torch.tensor([[2, 0, 1, 3]])
    units, _ = unit_map((1, 2, 2))
    mask = removal_mask(order, units, 2)
    assert mask.tolist() == [[[True, False], [True, False]]]  # units 2 and 0: positions (1,0) and (0,0)
    assert removal_mask(order, units, 0).sum() == 0 and removal_mask(order, units, 4).all()
    x = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    fill = torch.full_like(x, -1.0)
    perturbed = perturb(x, fill, mask)
    assert perturbed.tolist() == [[[[-1, 1], [-1, 3]], [[-1, 5], [-1, 7]]]]  # both channels of a removed pixel
    rows = torch.tensor([[1.0, 2.0, 3.0]])
    row_mask = removal_mask(torch.tensor([[1, 2, 0]]), unit_map((3,))[0], 1)
    assert perturb(rows, torch.zeros_like(rows), row_mask).tolist() == [[1.0, 0.0, 3.0]]


# --------------------------------------------------------------------------- replacement values


def test_zero_and_mean_replacement():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 8.0]]]])
    assert torch.equal(replacement(x, "zero"), torch.zeros_like(x))
    mean = replacement(x, "mean")
    assert mean[0, 0].unique().tolist() == [4.0] and mean[0, 1].unique().tolist() == [2.0]  # per image and channel
    rows = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    assert replacement(rows, "mean").tolist() == [[2.0, 20.0], [2.0, 20.0]]
    reference = {"mean": torch.tensor([0.5, 5.0])}
    assert replacement(rows, "mean", reference=reference).tolist() == [[0.5, 5.0], [0.5, 5.0]]


def test_uniform_replacement_stays_in_the_input_range():
    x = torch.stack([torch.linspace(-2, 3, 16).reshape(1, 4, 4), torch.linspace(0, 1, 16).reshape(1, 4, 4)])
    noise = replacement(x, "uniform", generator=torch.Generator().manual_seed(0))
    assert noise.shape == x.shape
    assert noise[0].min() >= -2 and noise[0].max() <= 3 and noise[0].std() > 0.5
    assert noise[1].min() >= 0 and noise[1].max() <= 1
    again = replacement(x, "uniform", generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise, again)
    rows = torch.tensor([[0.0, 100.0], [1.0, 200.0], [0.5, 150.0]])
    stats = feature_stats(rows)
    assert stats["low"].tolist() == [0.0, 100.0] and stats["high"].tolist() == [1.0, 200.0] and stats["mean"].tolist() == [0.5, 150.0]
    noisy = replacement(rows, "uniform", generator=torch.Generator().manual_seed(1), reference=stats)
    assert (noisy[:, 0] >= 0).all() and (noisy[:, 0] <= 1).all() and (noisy[:, 1] >= 100).all() and (noisy[:, 1] <= 200).all()


def test_blur_replacement():
    flat = torch.full((1, 3, 9, 9), 2.5)
    torch.testing.assert_close(replacement(flat, "blur", blur_sigma=1.5), flat)  # a constant image stays constant
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1.0
    blurred = gaussian_blur(impulse, 1.0)
    assert abs(float(blurred.sum()) - 1.0) < 1e-6  # mass kept (far from the edges)
    torch.testing.assert_close(blurred[0, 0], blurred[0, 0].T)  # symmetric
    g = np.exp(-np.arange(-3, 4) ** 2 / 2.0)
    g /= g.sum()
    assert abs(float(blurred[0, 0, 7, 7]) - g[3] ** 2) < 1e-6  # separable Gaussian, by hand
    assert abs(float(blurred[0, 0, 7, 8]) - g[3] * g[4]) < 1e-6
    with pytest.raises(UsageError):
        replacement(torch.zeros(2, 3), "blur")


def test_names_are_checked_with_suggestions():
    with pytest.raises(UsageError) as error:
        resolve_replacement("blurr")
    assert "blur" in (error.value.hint or "")
    with pytest.raises(UsageError, match="CSV"):
        resolve_replacement("blur", tabular=True)
    assert resolve_baseline("gradient-x-input") == "gradient_x_input" and resolve_baseline("Random") == "random"
    with pytest.raises(UsageError) as error:
        resolve_baseline("gradient_input_x")
    assert "gradient_x_input" in (error.value.hint or "")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "--steps"),
        ({"max_fraction": 0.0}, "--max-fraction"),
        ({"max_fraction": 1.5}, "--max-fraction"),
        ({"patch": 0}, "--patch"),
        ({"replace": "noise"}, "replacement"),
        ({"blur_sigma": -1.0}, "--blur-sigma"),
        ({"sanity_threshold": 2.0}, "--sanity-threshold"),
    ],
)
def test_settings_are_checked(changes, message):
    with pytest.raises(UsageError, match=message):
        Settings(**changes).check()


def test_image_only_settings_are_refused_for_tables():
    with pytest.raises(UsageError, match="--patch"):
        Settings(patch=2).check(tabular=True)
    with pytest.raises(UsageError, match="blur"):
        Settings(replace="blur").check(tabular=True)


# --------------------------------------------------------------------------- scores


def test_aopc_of_a_known_curve():
    curve = torch.tensor([[10.0, 6.0, 3.0, 1.0, 0.0], [4.0, 4.0, 4.0, 4.0, 4.0]])
    # (0 + 4 + 7 + 9 + 10) / 5 = 6; a flat curve has none
    assert aopc(curve).tolist() == [6.0, 0.0]
    assert aopc(torch.tensor([[1.0, 2.0, 3.0]])).tolist() == [-1.0]  # a rising curve: negative


def test_confidence_formula():
    assert torch.allclose(confidence(torch.tensor([[0.5, 0.3, 0.2]])), torch.tensor([0.4]))  # (0.5 - 0.3) / 0.5
    assert confidence(torch.full((1, 4), 0.25)).tolist() == [0.0]
    assert torch.allclose(confidence(torch.tensor([[0.1, 0.9, 0.0]])), torch.tensor([0.8 / 0.9]))
    with pytest.raises(UsageError):
        confidence(torch.ones(2, 1))


def test_ranks_average_ties():
    assert ranks(torch.tensor([[10.0, 20.0, 20.0, 5.0]])).tolist() == [[2.0, 3.5, 3.5, 1.0]]
    assert ranks(torch.tensor([[3.0, 3.0, 3.0]])).tolist() == [[2.0, 2.0, 2.0]]


def test_spearman_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    # a permutation without ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / 120 = 0.8
    assert torch.allclose(spearman(a, torch.tensor([[2.0, 1.0, 4.0, 3.0, 5.0]])), torch.tensor([0.8], dtype=torch.float64))
    assert torch.allclose(spearman(a, -a), torch.tensor([-1.0], dtype=torch.float64))
    assert torch.allclose(spearman(a, a**3), torch.tensor([1.0], dtype=torch.float64))  # ranks, not values
    # ties: ranks of b = [1, 2, 3.5, 5, 3.5]; Pearson of the ranks = 8 / sqrt(10 * 9.5)
    b = torch.tensor([[5.0, 6.0, 7.0, 8.0, 7.0]])
    assert abs(float(spearman(a, b)) - 8 / np.sqrt(95)) < 1e-12
    assert torch.isnan(spearman(a, torch.ones(1, 5))).all()  # a constant heatmap has no ranking


def test_spearman_matches_numpy_on_random_permutations():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 50))
    b = a + rng.normal(scale=1.0, size=a.shape)
    expected = [np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(spearman(torch.from_numpy(a), torch.from_numpy(b)).numpy(), expected, rtol=1e-12)
    # per row of (N, C, H, W) tensors, flattened
    assert spearman(torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)).shape == (3,)


def test_relevance_mass_accuracy_on_a_toy_mask():
    relevance = torch.tensor([[[[1.0, 2.0], [3.0, -1.0]], [[1.0, 0.0], [-4.0, 0.5]]]])  # channels sum to [[2, 2], [-1, -0.5]]
    mask = torch.tensor([[[True, False], [True, False]]])
    assert relevance_mass_accuracy(relevance, mask).tolist() == [0.5]  # 2 of the positive 2 + 2
    assert relevance_mass_accuracy(relevance, ~mask).tolist() == [0.5]
    assert relevance_mass_accuracy(-relevance.abs(), mask).tolist() == [0.0]  # no positive relevance at all
    assert relevance_mass_accuracy(relevance, torch.ones(1, 2, 2, dtype=torch.bool)).tolist() == [1.0]


# --------------------------------------------------------------------------- the driver, by hand


class Weighted(nn.Module):
    """f_0(x) = 4 x_0 + 3 x_1 + 2 x_2 + x_3; f_1 = -100 (so class 0 is always the prediction)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, -100.0]))

    def forward(self, x):
        return self.fc(x)


def test_perturbation_curves_of_a_linear_model_by_hand():
    """x = 1: relevance (epsilon and gradient x input alike) = the weights; zero replacement.

    MoRF removes features 0, 1, 2, 3: f = 10, 6, 3, 1, 0 -> AOPC (0 + 4 + 7 + 9 + 10) / 5 = 6.
    LeRF removes 3, 2, 1, 0: f = 10, 9, 7, 4, 0 -> AOPC (0 + 1 + 3 + 6 + 10) / 5 = 4. Gap 2.
    """
    x = torch.ones(3, 4)
    result = evaluate(Weighted().eval(), x, ["epsilon"], ["gradient_x_input"], Settings(steps=4))
    for name in ("epsilon", "gradient_x_input"):
        np.testing.assert_allclose(result.methods[name]["curves"]["morf"]["logit"], [[10, 6, 3, 1, 0]] * 3, atol=1e-4)
        np.testing.assert_allclose(result.methods[name]["curves"]["lerf"]["logit"], [[10, 9, 7, 4, 0]] * 3, atol=1e-4)
        summary = result.summary(name)
        assert summary["aopc_morf"] == pytest.approx(6.0, abs=1e-4)
        assert summary["aopc_lerf"] == pytest.approx(4.0, abs=1e-4)
        assert summary["gap"] == pytest.approx(2.0, abs=1e-4)
        np.testing.assert_allclose(result.methods[name]["curves"]["morf"]["probability"], 1.0, atol=1e-6)
    assert result.fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.targets.tolist() == [0, 0, 0]
    data = result.to_dict()
    assert data["methods"]["epsilon"]["aopc"]["morf"] == pytest.approx(6.0, abs=1e-4)
    assert data["methods"]["epsilon"]["curves"]["lerf"]["logit"] == pytest.approx([10, 9, 7, 4, 0], abs=1e-4)
    rows = result.rows()
    assert len(rows) == 2 * 2 * 5 and rows[0]["method"] == "epsilon" and rows[0]["order"] == "morf"


def test_mean_replacement_of_a_table_uses_the_dataset_mean():
    """Rows [1,1,1,1] and [3,3,3,3]: the feature mean is 2, so removing feature 0 of row 0 *adds* 4 to f."""
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    result = evaluate(Weighted().eval(), x, [], ["gradient_x_input"], Settings(steps=1, replace="mean"))
    # all features replaced by 2 at the last step: f = 20 for both rows
    np.testing.assert_allclose(result.methods["gradient_x_input"]["curves"]["morf"]["logit"], [[10, 20], [30, 20]], atol=1e-4)


def test_random_baseline_does_not_depend_on_the_other_methods():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    alone = evaluate(Weighted().eval(), x, [], ["random"], Settings(steps=2, seed=4))
    together = evaluate(Weighted().eval(), x, ["epsilon"], ["gradient_x_input", "random"], Settings(steps=2, seed=4))
    for order in ("morf", "lerf"):
        np.testing.assert_array_equal(alone.methods["random"]["curves"][order]["logit"], together.methods["random"]["curves"][order]["logit"])
    other_seed = evaluate(Weighted().eval(), x, [], ["random"], Settings(steps=2, seed=5))
    assert not np.array_equal(alone.methods["random"]["curves"]["morf"]["logit"], other_seed.methods["random"]["curves"]["morf"]["logit"])


def test_gradient_x_input_is_autograd_on_the_model():
    from lrpcli.engine.explainer import Explainer
    from lrpcli.sources.architectures import MiniVGG

    torch.manual_seed(0)
    model = MiniVGG(num_classes=3, width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([2, 0])
    leaf = x.clone().requires_grad_(True)
    model(leaf).gather(1, targets[:, None]).sum().backward()
    torch.testing.assert_close(gradient_x_input(Explainer(model, "epsilon"), x, targets), leaf.grad * x, rtol=1e-4, atol=1e-6)


def test_evaluator_errors():
    with pytest.raises(UsageError, match="nothing to evaluate"):
        Evaluator(Weighted(), {}, [], tabular=True)
    with pytest.raises(UsageError, match="twice"):
        Evaluator(Weighted(), {}, ["random", "Random"], tabular=True)
    evaluator = Evaluator(Weighted(), {}, ["random"], tabular=True)
    with pytest.raises(InputError):
        evaluator.add(torch.ones(1, 3, 2, 2), ["a"])
    with pytest.raises(InputError, match="no inputs"):
        evaluator.result()


# --------------------------------------------------------------------------- model randomisation


def test_cascading_randomisation_changes_only_the_top_layers():
    from lrpcli.sources.architectures import DigitsCNN
    from lrpcli.engine.explainer import Explainer

    torch.manual_seed(0)
    model = DigitsCNN(num_classes=10).eval()
    x = torch.randn(2, 1, 8, 8)
    layers = weighted_layers(Explainer(model, "epsilon"), x)
    assert [layer.name for layer in layers] == ["features.0", "features.2", "classifier.1", "classifier.3"]
    assert [layer.weight_key for layer in layers] == ["features.0.weight", "features.2.weight", "classifier.1.weight", "classifier.3.weight"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    levels = cascade(model, layers, depth=2, seed=0)
    assert [names for names, _ in levels] == [["classifier.3"], ["classifier.3", "classifier.1"]]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the original is untouched
    first, second = (dict(m.state_dict()) for _, m in levels)
    assert not torch.equal(first["classifier.3.weight"], before["classifier.3.weight"])
    assert torch.equal(first["classifier.1.weight"], before["classifier.1.weight"])
    assert not torch.equal(second["classifier.1.weight"], before["classifier.1.weight"])
    assert torch.equal(first["classifier.3.weight"], second["classifier.3.weight"])  # the cascade shares its draws
    assert torch.equal(second["features.2.weight"], before["features.2.weight"])
    std = float(before["classifier.3.weight"].std())
    assert abs(float(first["classifier.3.weight"].std()) - std) < 0.3 * std  # the scale is kept
    again = cascade(model, layers, depth=1, seed=0)[0][1]
    assert torch.equal(dict(again.state_dict())["classifier.3.weight"], first["classifier.3.weight"])


# --------------------------------------------------------------------------- acceptance on the sample models


def _digits(n: int) -> tuple[torch.Tensor, object]:
    from lrpcli.sources.files import load_model

    held = np.load(SAMPLES / "digits_cnn" / "heldout.npz")
    x = (torch.from_numpy(held["images"][:n].astype(np.float32) / 255.0)[:, None] - 0.5) / 0.5  # the spec's mean/std
    return x, load_model(SAMPLES / "digits_cnn" / "model.yaml")


@needs_samples
def test_digits_epsilon_plus_flat_beats_random_clearly():
    x, model = _digits(96)
    result = evaluate(model, x, ["epsilon_plus_flat"], settings=Settings(steps=8), batch_size=96)
    lrp, gxi, rand = (result.summary(name) for name in ("epsilon_plus_flat", "gradient_x_input", "random"))
    # measured: AOPC 15.1 vs 10.3 (logit; random 10.1..10.4 over seeds 0..9), 0.72 vs 0.38 (probability);
    # gap 9.8 vs 0.3 (random -0.1..0.5)
    assert lrp["aopc_morf"] > 1.3 * rand["aopc_morf"], (lrp["aopc_morf"], rand["aopc_morf"])
    assert lrp["aopc_probability_morf"] > rand["aopc_probability_morf"] + 0.2
    assert lrp["gap"] > rand["gap"] + 5
    assert abs(rand["gap"]) < 2  # a random order removes as much first as last
    # gradient x input (19.9) leads epsilon_plus_flat here; the test only records that it is no fluke of chance
    assert gxi["aopc_morf"] > rand["aopc_morf"]


@needs_samples
def test_gradient_x_input_equals_lrp_0_on_the_bias_free_digits_model():
    """A cross-check of the baseline: on a bias-free ReLU/max-pool network LRP-0 *is* gradient x input."""
    from lrpcli.engine.explainer import Explainer

    x, model = _digits(16)
    explainer = Explainer(model, "lrp_0")
    lrp0 = explainer.explain(x).relevance
    targets = explainer.forward(x).argmax(1)
    torch.testing.assert_close(gradient_x_input(explainer, x, targets), lrp0, rtol=1e-4, atol=1e-5)


@needs_samples
def test_shapes_epsilon_plus_flat_leads_the_gap_on_region_perturbation():
    from lrpcli.sources.files import load_model
    from lrpcli.sources.samples import make_shapes

    images, _, _ = make_shapes(32, seed=2024)  # a seed the model never saw
    x = (torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2) - 0.5) / 0.25
    model = load_model(SAMPLES / "shapes_minivgg" / "model.yaml")
    result = evaluate(model, x, ["epsilon_plus_flat"], settings=Settings(steps=4, patch=4, replace="mean"), batch_size=32)
    lrp, gxi, rand = (result.summary(name) for name in ("epsilon_plus_flat", "gradient_x_input", "random"))
    # measured: AOPC (probability) 0.610 / 0.535 / 0.521 (random: 0.44..0.54 over seeds 0..9);
    # gap (probability) 0.422 / 0.269 / 0.034 (random at most 0.086 over seeds 0..9)
    assert lrp["aopc_probability_morf"] > rand["aopc_probability_morf"] + 0.05
    assert lrp["gap_probability"] > gxi["gap_probability"] + 0.1
    assert gxi["gap_probability"] > rand["gap_probability"] + 0.1
    assert lrp["gap_probability"] > rand["gap_probability"] + 0.3
    # not asserted: AOPC epsilon_plus_flat > gradient x input (true on these 32 images, 0.610 vs 0.535, reversed on 128:
    # 0.620 vs 0.646), and the logit AOPC (8.87 / 8.62 / 8.70 here; random 6.7..8.7 over seeds), which separates nothing


@needs_samples
def test_sanity_check_sees_randomised_top_layers():
    x, model = _digits(16)
    flat_everywhere = {"name": "flat_everywhere", "rules": [{"match": {"type": ["conv", "linear"]}, "rule": "flat"}]}
    result = evaluate(
        model,
        x,
        {"epsilon_plus_flat": "epsilon_plus_flat", "flat_everywhere": flat_everywhere},
        ["random"],
        Settings(steps=1, sanity_layers=1),
    )
    lrp = result.summary("epsilon_plus_flat")
    # measured: Spearman 0.41 (signed) / 0.36 (absolute) after randomising classifier.3 (0.33 / 0.32 on 64 digits)
    assert lrp["sanity_spearman"][0] < 0.6 and lrp["sanity_spearman_abs"][0] < 0.6
    assert not lrp["sanity_flagged"]
    # flat on every layer ignores the weights: its heatmap keeps its ranking (up to the sign of the logit)
    flat = result.summary("flat_everywhere")
    assert flat["sanity_spearman_abs"][0] > 0.99 and flat["sanity_flagged"]
    data = result.to_dict()
    assert data["methods"]["epsilon_plus_flat"]["sanity"]["levels"][0]["randomised_layers"] == ["classifier.3"]
    assert data["methods"]["flat_everywhere"]["sanity"]["flagged"] is True
    assert "sanity" not in data["methods"]["random"]
    assert data["sanity"] == {"threshold": 0.9, "layers_in_model": 4}
