"""`lrp check-conservation`: verdicts, per-layer absorption, broken cases, JSON and JUnit output."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from lrpcli import Explainer
from lrpcli.sources.architectures import MLP, ResNet
from lrpcli.cli import main
from lrpcli.runs.conservation import check_conservation, junit_xml
from lrpcli.engine.rules import Norm

from conftest import randomize_batchnorm


def bias_free_convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 5, bias=False),
    ).eval()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-10)])
def test_bias_free_nets_pass_lrp0_at_tight_tolerances(dtype, tolerance):
    for model, shape in ((MLP(8, (16, 8), 3, bias=False).eval(), (8,)), (bias_free_convnet(), (3, 8, 8))):
        x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        report = check_conservation(Explainer(model, "lrp_0"), x, tolerance=tolerance)
        assert report.count == "all"
        assert report.passed, [s.error for s in report.samples]


def test_biases_are_reported_per_layer_and_add_up_to_the_gap():
    torch.manual_seed(0)
    model = MLP(8, (16, 8), 3).eval()
    x = torch.randn(4, 8, dtype=torch.float64)
    report = check_conservation(Explainer(model, "lrp_0"), x)
    assert not report.passed  # LRP-0 counts the whole gap, and biases absorb some
    for sample in report.samples:
        by_layer = sum(layer.bias for layer in sample.layers)
        assert by_layer == pytest.approx(sample.gap, abs=1e-12)
        assert sum(layer.absorbed for layer in sample.layers) == pytest.approx(sample.gap, abs=1e-12)
        assert abs(sample.gap) > 1e-6
        assert sample.worst_layer.startswith("layers.")
    unexplained = check_conservation(Explainer(model, "lrp_0"), x, count="unexplained")
    assert unexplained.passed


def test_epsilon_rules_pass_by_default_because_absorption_is_by_design(small_resnet):
    x = torch.rand(3, 3, 32, 32)
    report = check_conservation(Explainer(small_resnet, "epsilon_gamma_box"), x)
    assert report.count == "unexplained" and report.passed
    assert any(abs(s.explained) > 1e-4 for s in report.samples)


def test_a_residual_join_routed_by_plain_gradient_fails_at_that_layer(monkeypatch):
    model = randomize_batchnorm(ResNet((1,), (4,), num_classes=3)).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)

    def gradient_routing(self, node, values, inputs, z, relevance, ledger=None):
        if node.kind != "add":
            return original(self, node, values, inputs, z, relevance, ledger=ledger)
        return {name: relevance for name in inputs}  # both branches get everything: relevance doubles

    original = Norm.proportional
    monkeypatch.setattr(Norm, "proportional", gradient_routing)
    report = check_conservation(Explainer(model, "epsilon_plus"), x)
    assert not report.passed
    assert all(sample.worst_layer == "layer1.0" for sample in report.failed)
    worst = next(layer for layer in report.failed[0].layers if layer.layer == "layer1.0" and layer.type == "BasicBlock")
    assert worst.other == pytest.approx(-worst.relevance_out, rel=1e-6)  # the whole output relevance was created anew


def test_junit_xml_is_valid_and_names_failing_samples():
    torch.manual_seed(0)
    model = MLP(4, (4,), 2).eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    report = check_conservation(Explainer(model, "lrp_0"), x, ["a.png", "b.png", "c.png"])
    root = ET.fromstring(junit_xml(report))
    assert root.tag == "testsuite" and root.get("tests") == "3"
    failed = [case.get("name") for case in root.iter("testcase") if case.find("failure") is not None]
    assert failed == [s.sample for s in report.failed] and failed
    assert root.get("failures") == str(len(failed))
    assert "most lost at layer" in root.find("testcase/failure").get("message")


@pytest.fixture
def models(tmp_path):
    torch.manual_seed(0)
    paths = {}
    for name, model in (("nobias", MLP(6, (8,), 3, bias=False)), ("bias", MLP(6, (8,), 3))):
        paths[name] = tmp_path / f"{name}.ts"
        torch.jit.save(torch.jit.script(model.eval()), str(paths[name]))
    return paths


def run(*args):
    return CliRunner().invoke(main, ["check-conservation", *map(str, args)])


def test_cli_exit_codes(models, tmp_path):
    ok = run(models["nobias"], "--random", 5, "--input-shape", 6, "-c", "lrp_0")
    assert ok.exit_code == 0, ok.output
    assert "5 of 5 sample(s) conserve" in ok.stderr and ok.stdout == ""
    failing = run(models["bias"], "--random", 3, "--input-shape", 6, "-c", "lrp_0")
    assert failing.exit_code == 6 and "most lost at layer" in failing.stderr
    assert run(models["bias"], "--random", 3, "--input-shape", 6, "-c", "lrp_0", "--count", "unexplained").exit_code == 0
    assert run(models["bias"], "--random", 3, "--input-shape", 6, "-c", "lrp_0", "--absolute", "--tolerance", 10).exit_code == 0
    nothing = run(models["nobias"])
    assert nothing.exit_code == 2 and "--random" in nothing.stderr
    both = run(models["nobias"], "x.png", "--random", 2)
    assert both.exit_code == 2
    bad_composite = run(models["nobias"], "--random", 2, "--input-shape", 6, "-c", "lrp_O")
    assert bad_composite.exit_code == 3 and "lrp_0" in bad_composite.stderr
    bad_file = tmp_path / "c.yaml"
    bad_file.write_text("rules:\n  - match: {type: linear}\n    rule: zplsu\n")
    bad = run(models["nobias"], "--random", 2, "--input-shape", 6, "-c", bad_file)
    assert bad.exit_code == 3 and f"{bad_file}:3" in bad.stderr and "zplus" in bad.stderr


def test_cli_json_and_junit(models, tmp_path):
    junit = tmp_path / "out" / "conservation.xml"
    result = run(models["bias"], "--random", 4, "--input-shape", 6, "-c", "epsilon", "--dtype", "float64", "--json", "--junit", junit)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] and len(data["samples"]) == 4 and data["count"] == "unexplained"
    layer = data["samples"][0]["layers"][0]
    assert set(layer) >= {"layer", "type", "rule", "relevance_in", "relevance_out", "bias", "stabilizer", "other"}
    assert ET.parse(junit).getroot().get("tests") == "4"


def test_cli_on_images(tmp_path):
    torch.manual_seed(0)
    model = bias_free_convnet()
    path = tmp_path / "conv.ts"
    torch.jit.save(torch.jit.script(model), str(path))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = run(path, folder, "-c", "lrp_0", "--dtype", "float64", "--tolerance", 1e-10, "--json")
    assert result.exit_code == 0, result.output
    assert [s["sample"] for s in json.loads(result.stdout)["samples"]] == ["0.png", "1.png", "2.png"]


SAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "sample_models"


@pytest.mark.parametrize("dtype, tolerance", [("float32", "1e-6"), ("float64", "1e-10")])
def test_bias_free_sample_model_passes_lrp0_on_its_csv(dtype, tolerance):
    spec = SAMPLES / "breast_cancer_mlp" / "model.yaml"
    result = run(spec, SAMPLES / "breast_cancer_mlp" / "sample.csv", "-c", "lrp_0", "--dtype", dtype, "--tolerance", tolerance, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["samples"]) == 100 and data["samples"][0]["sample"].startswith("bc")
    random = run(spec, "--random", 16, "-c", "lrp_0", "--dtype", dtype, "--tolerance", tolerance, "-q")
    assert random.exit_code == 0, random.stderr


def test_sample_model_with_biases_reports_bias_per_layer_adding_up_to_the_gap():
    result = run(SAMPLES / "diabetes_mlp" / "model.yaml", SAMPLES / "diabetes_mlp" / "sample.csv", "-c", "lrp_0", "--dtype", "float64", "--json", "-q")
    assert result.exit_code == 6
    for sample in json.loads(result.stdout)["samples"]:
        assert sum(layer["bias"] for layer in sample["layers"]) == pytest.approx(sample["gap"], rel=1e-9, abs=1e-9)
        assert abs(sample["unexplained"]) < 1e-9 * max(1.0, abs(sample["logit"]))


@pytest.mark.parametrize("dtype, tolerance", [("float32", "1e-6"), ("float64", "1e-10")])
def test_bias_free_digits_sample_passes_lrp0_on_its_images(dtype, tolerance):
    spec = SAMPLES / "digits_cnn" / "model.yaml"
    result = run(spec, SAMPLES / "digits_cnn" / "images", "-c", "lrp_0", "--dtype", dtype, "--tolerance", tolerance, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    samples = json.loads(result.stdout)["samples"]
    assert len(samples) >= 5 and all(s["passed"] for s in samples)
