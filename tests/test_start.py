"""Where the walk starts (issue 27 item 3): a custom start tensor or function, and the contrastive start.

The independent references are models built by hand: a start tensor ``c`` (relevance c_k * z_k at output k) under
the epsilon rule at the last layer equals explaining a head that outputs ``sum_k c_k z_k`` (its weight
``sum_k c_k w_k``: the epsilon rule gives a_j * sum_k w_jk R_k / z_k = a_j * sum_k c_k w_jk at that layer, and the
head a_j * (sum_k c_k w_jk) * h / h); the contrastive start "t rather than c" equals a head that outputs z_t - z_c
(Gu et al. 2018, "Understanding individual decisions of CNNs via contrastive backpropagation", explain the
difference of two logits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lrpcli
from lrpcli.engine.explainer import Contrast, explain
from lrpcli.errors import UsageError

EPS = {"epsilon": 1e-12}


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, 5),
    ).double().eval()


def _with_head(model: nn.Sequential, coefficients: torch.Tensor) -> nn.Sequential:
    """``model`` whose last linear layer is replaced by one unit computing sum_k c_k z_k."""
    last = model[-1]
    head = nn.Linear(last.in_features, 1).double()
    with torch.no_grad():
        head.weight.copy_(coefficients @ last.weight)
        head.bias.copy_(coefficients @ last.bias)
    return nn.Sequential(*list(model)[:-1], head).eval()


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_contrast_equals_a_head_that_outputs_the_logit_difference(composite):
    model, x = _conv_net(), torch.rand(4, 3, 8, 8, dtype=torch.float64)
    target, against = 1, 3
    coefficients = torch.zeros(5, dtype=torch.float64)
    coefficients[target], coefficients[against] = 1.0, -1.0
    result = explain(model, x, composite, target=target, contrast=against, params=EPS)
    reference = explain(_with_head(model, coefficients), x, composite, target=0, params=EPS)
    assert torch.allclose(result.relevance, reference.relevance, atol=1e-9 * reference.relevance.abs().max(), rtol=0)
    difference = result.outputs[:, target] - result.outputs[:, against]
    assert torch.allclose(result.initial.sum(1), difference)  # where the walk started: the difference itself
    assert result.targets.tolist() == [target] * 4


def test_contrast_per_sample_and_one_hot():
    model, x = _conv_net(), torch.rand(3, 3, 8, 8, dtype=torch.float64)
    result = explain(model, x, "epsilon", target=[0, 1, 2], contrast=[4, 4, 2], init="one-hot", params=EPS)
    expected = torch.zeros(3, 5, dtype=torch.float64)
    expected[0, 0] = expected[1, 1] = 1.0
    expected[0, 4] = expected[1, 4] = -1.0  # the third sample's target is its contrast: an all-zero start
    assert torch.equal(result.initial, expected)
    assert torch.count_nonzero(result.relevance[2]) == 0
    # the walk is linear in its start (every rule divides by the forward's own z): the one-hot contrast is the
    # explanation of the target minus that of the contrast class
    minus = explain(model, x[:2], "epsilon", target=[0, 1], init="one-hot", params=EPS).relevance
    minus -= explain(model, x[:2], "epsilon", target=4, init="one-hot", params=EPS).relevance
    assert torch.allclose(result.relevance[:2], minus, atol=1e-12)


def test_a_start_tensor_equals_a_weighted_head():
    model, x = _conv_net(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    coefficients = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.25], dtype=torch.float64)
    outputs = model(x).detach()
    result = explain(model, x, "epsilon_plus_flat", init=coefficients * outputs, params=EPS)
    reference = explain(_with_head(model, coefficients), x, "epsilon_plus_flat", target=0, params=EPS)
    assert torch.allclose(result.relevance, reference.relevance, atol=1e-9 * reference.relevance.abs().max(), rtol=0)
    assert result.targets.tolist() == (coefficients * outputs).abs().argmax(1).tolist()  # what it reports without target


def test_a_start_function_and_a_one_hot_tensor_equal_the_named_starts():
    model, x = _conv_net(), torch.rand(3, 3, 8, 8, dtype=torch.float64)
    seen = {}

    def start(outputs, targets):
        seen["targets"] = targets
        one_hot = torch.zeros_like(outputs)
        one_hot[:, 2] = outputs[:, 2]
        return one_hot

    by_function = explain(model, x, "epsilon_plus_flat", target=2, init=start)
    by_name = explain(model, x, "epsilon_plus_flat", target=2, init="value")
    assert torch.equal(by_function.relevance, by_name.relevance)
    assert seen["targets"].tolist() == [2, 2, 2]
    one_hot = torch.zeros(3, 5, dtype=torch.float64)
    one_hot[:, 4] = 1.0
    assert torch.equal(explain(model, x, "epsilon", init=one_hot).relevance, explain(model, x, "epsilon", target=4, init="one-hot").relevance)


class _PerPosition(nn.Module):
    """A token-wise model with (batch, positions, classes) outputs, as a language model's logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.mix = nn.Conv1d(4, 8, 3, padding=1)
        self.out = nn.Linear(8, 6)

    def forward(self, x):  # x: (batch, 4, positions)
        return self.out(torch.relu(self.mix(x)).transpose(1, 2))


class _AtPosition(nn.Module):
    def __init__(self, model, position):
        super().__init__()
        self.model, self.position = model, position

    def forward(self, x):
        return self.model(x)[:, self.position]


def test_a_start_on_three_dimensional_outputs_equals_explaining_that_position():
    model = _PerPosition().double().eval()
    x = torch.randn(2, 4, 7, dtype=torch.float64)
    outputs = model(x).detach()
    start = torch.zeros_like(outputs)
    start[:, 5, 3] = outputs[:, 5, 3]
    result = explain(model, x, "epsilon", init=start, params=EPS)
    reference = explain(_AtPosition(model, 5).eval(), x, "epsilon", target=3, params=EPS)
    assert torch.allclose(result.relevance, reference.relevance, atol=1e-12)
    assert result.targets.tolist() == [5 * 6 + 3] * 2  # the flat unit


def test_bad_starts_are_usage_errors():
    model, x = _conv_net(), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(UsageError, match=r"init is shaped \(2, 4\)"):
        explain(model, x, "epsilon", init=torch.zeros(2, 4))
    with pytest.raises(UsageError, match="NaN"):
        explain(model, x, "epsilon", init=torch.full((2, 5), float("nan")))
    with pytest.raises(UsageError, match="not a tensor"):
        explain(model, x, "epsilon", init=lambda outputs, targets: 1.0)
    with pytest.raises(UsageError, match="unknown init"):
        explain(model, x, "epsilon", init="values")
    with pytest.raises(UsageError, match="custom init"):
        explain(model, x, "epsilon", init=torch.zeros(2, 5), contrast=1)
    with pytest.raises(UsageError, match="out of range"):
        explain(model, x, "epsilon", contrast=9)


def test_contrast_is_public():
    assert lrpcli.Contrast is Contrast and "Contrast" in dir(lrpcli)


# --------------------------------------------------------------------------- the CLI's --contrast

SHAPES = Path(__file__).resolve().parents[1] / "sample_models" / "shapes_minivgg"
CANCER = Path(__file__).resolve().parents[1] / "sample_models" / "breast_cancer_mlp"


def _cli(*args):
    from click.testing import CliRunner

    from lrpcli.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_contrast_on_images_equals_the_api(tmp_path):
    from lrpcli.api import explain as explain_path
    from lrpcli.sources.files import load_spec
    from lrpcli.data.images import collect_images

    out = tmp_path / "out"
    result = _cli("explain", SHAPES / "model.yaml", SHAPES / "images", "-o", out, "--target", "circle", "--contrast", "square", "-q", "--no-report")
    assert result.exit_code == 0, result.output
    spec = load_spec(SHAPES / "model.yaml")
    classes = spec.classes
    items = collect_images([SHAPES / "images"])[:3]
    from lrpcli.cli.options import spec_preprocessing

    options = {key: None for key in ("size", "resize", "crop", "mode", "mean", "std", "interpolation")}
    preprocessing = spec_preprocessing(spec, options)
    x = torch.stack([preprocessing.tensor(preprocessing.pixels(item.path)) for item in items])
    reference = explain_path(SHAPES / "model.yaml", x, spec.composite or "epsilon_plus_flat", target=classes.index("circle"), contrast=classes.index("square"))
    for item, expected in zip(items, reference.relevance):
        written = np.load(next((out / "relevance").glob(f"{Path(item.name).stem}*.npy")))
        assert np.allclose(written, expected.numpy(), atol=1e-5 * float(expected.abs().max()))


def test_cli_contrast_on_rows_sums_to_the_logit_difference(tmp_path):
    out = tmp_path / "rel.csv"
    result = _cli("explain", CANCER / "model.yaml", CANCER / "sample.csv", "-o", out, "--contrast", "benign", "--target", "malignant", "--no-report", "-q")
    assert result.exit_code == 0, result.output
    plain = tmp_path / "plain.csv"
    assert _cli("explain", CANCER / "model.yaml", CANCER / "sample.csv", "-o", plain, "--target", "malignant", "--no-report", "-q").exit_code == 0
    against = tmp_path / "against.csv"
    assert _cli("explain", CANCER / "model.yaml", CANCER / "sample.csv", "-o", against, "--target", "benign", "--no-report", "-q").exit_code == 0
    import csv

    from lrpcli.sources.files import load_spec

    def relevance(path):
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        columns = load_spec(CANCER / "model.yaml").input["features"] + ["relevance_sum"]
        return np.array([[float(row[c]) for c in columns] for row in rows])

    contrast, target, other = relevance(out), relevance(plain), relevance(against)
    assert contrast.shape == target.shape == (100, 31)
    # the walk is linear in its start (epsilon rule everywhere): "malignant rather than benign" is the
    # explanation of malignant minus that of benign
    assert np.allclose(contrast, target - other, atol=1e-4 * np.abs(target).max())


def test_cli_contrast_errors_name_the_option(tmp_path):
    result = _cli("explain", CANCER / "model.yaml", CANCER / "sample.csv", "-o", tmp_path / "r.csv", "--contrast", "bengin")
    assert result.exit_code == 2 and "--contrast 'bengin'" in result.output and "benign" in result.output
    result = _cli("explain", CANCER / "model.yaml", CANCER / "sample.csv", "-o", tmp_path / "r.csv", "--contrast", "all")
    assert result.exit_code == 2 and "give one class" in result.output


def test_check_conservation_with_contrast_starts_from_the_logit_difference(tmp_path):
    import json

    runs = {}
    for name, extra in (("circle", ("--target", "circle")), ("square", ("--target", "square")), ("contrast", ("--target", "circle", "--contrast", "square"))):
        path = tmp_path / f"{name}.json"
        result = _cli("check-conservation", SHAPES / "model.yaml", SHAPES / "images", "-c", "epsilon", "--json", path, "-q", *extra)
        assert result.exit_code == 0, result.output
        runs[name] = json.loads(path.read_text())
    assert runs["contrast"]["contrast"] == "square"
    circle, square, contrast = (runs[name]["samples"] for name in ("circle", "square", "contrast"))
    assert len(contrast) == 8 and [s["sample"] for s in contrast] == [s["sample"] for s in circle]
    for c, a, b in zip(contrast, circle, square):  # the walk started from z_circle - z_square, and conserves it
        assert abs(c["logit"] - (a["logit"] - b["logit"])) < 1e-4 * max(1.0, abs(a["logit"]))
        assert abs(c["input_relevance"] - (a["input_relevance"] - b["input_relevance"])) < 1e-3 * max(1.0, abs(a["logit"]))
        assert c["passed"]
