"""`lrp inspect` / inspect_model: the rules it reports are the rules the engine applies."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from lrpcli import explain
from lrpcli.sources.architectures import MLP, MiniVGG, ResNet
from lrpcli.cli import main
from lrpcli.engine.composite_yaml import BUILTINS, builtin_names, json_schema, load_composite
from lrpcli.runs.inspect import inspect_model

from conftest import randomize_batchnorm

MODELS = {
    "mlp": (lambda: MLP(6, (8, 4), 3), (6,)),
    "minivgg": (lambda: MiniVGG(num_classes=4, width=4), (3, 32, 32)),
    "resnet": (lambda: randomize_batchnorm(ResNet((1, 1), (4, 8), num_classes=3)), (3, 32, 32)),
}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("composite", builtin_names())
def test_inspect_reports_the_rules_the_engine_applies(model_name, composite):
    torch.manual_seed(0)
    factory, shape = MODELS[model_name]
    model = factory().eval()
    x = torch.rand(2, *shape)
    report = inspect_model(model, x[:1], composite)
    applied = explain(model, x, composite, layer_relevance=True).layers
    reported = {layer.node: layer.rule for layer in report.layers}
    engine = {name: layer.rule for name, layer in applied.items() if layer.rule not in ("route", "pass") or name in reported}
    assert reported == {name: engine[name] for name in reported}
    assert set(engine) <= set(reported)
    # the shapes are the real output shapes
    for layer in report.layers:
        assert layer.output_shape and layer.output_shape[0] == 1


def test_inspect_warns_about_lines_matching_nothing_fallbacks_and_folding():
    model = randomize_batchnorm(ResNet((1,), (4,), num_classes=2)).eval()
    spec = {"rules": [{"match": {"type": "conv", "first": True}, "rule": "flat"}, {"match": {"type": "batchnorm"}, "rule": "pass"}]}
    report = inspect_model(model, torch.zeros(1, 3, 16, 16), spec)
    text = "\n".join(report.warnings)
    assert "{type: batchnorm} -> pass matches no layer" in text  # folded away
    assert "layer1.0.conv1 (Conv2d) matches no composite line: falls back to epsilon" in text
    assert any("folded batch-norm" in note for note in report.notes)
    by_module = {layer.module: layer for layer in report.layers}
    assert by_module["conv1"].rule == "flat" and by_module["fc"].matched_by == "fallback"
    assert by_module["conv1"].parameters == 3 * 4 * 7 * 7 + 4  # folded: the conv gained a bias
    assert by_module["conv1"].routed_after == ["relu_", "max_pool2d"]


def test_inspect_shows_unsupported_ops_as_warnings_instead_of_failing():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.exp(self.fc(x))

    report = inspect_model(Gate().eval(), torch.zeros(1, 4), "epsilon")
    assert any("no rule for op 'exp'" in w and "a run would stop here" in w for w in report.warnings)


def _save_scripted(tmp_path, model, name="m.ts"):
    path = tmp_path / name
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    return path


def test_cli_inspect_json_and_table(tmp_path):
    torch.manual_seed(0)
    path = _save_scripted(tmp_path, MiniVGG(num_classes=4, width=4))
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(path), "--input-shape", "3,32,32", "-c", "epsilon_gamma_box", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rules = [(layer["module"], layer["rule"]) for layer in data["layers"]]
    assert rules[0] == ("features.0", "zbox") and rules[-1] == ("classifier.4", "epsilon")
    assert data["composite"] == "epsilon_gamma_box" and data["input_shape"] == [3, 32, 32]
    table = runner.invoke(main, ["inspect", str(path), "--input-shape", "3,32,32"])
    assert table.exit_code == 0 and "features.0" in table.stderr and table.stdout == ""


def test_cli_inspect_needs_an_input_shape_without_a_spec(tmp_path):
    path = _save_scripted(tmp_path, MLP(4, (4,), 2))
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2 and "--input-shape" in result.stderr


def test_cli_composites_list_show_and_schema():
    runner = CliRunner()
    listing = runner.invoke(main, ["composites"])
    assert listing.exit_code == 0
    for name in builtin_names():
        assert f"{name}:" in listing.stdout
    assert "{first: true, type: conv} -> zbox" in listing.stdout
    shown = runner.invoke(main, ["composites", "show", "Epsilon-Gamma-Box"])
    assert shown.exit_code == 0
    assert yaml.safe_load(shown.stdout) == yaml.safe_load(BUILTINS.get("epsilon_gamma_box").read_text())
    missing = runner.invoke(main, ["composites", "show", "epsilon_gama_box"])
    assert missing.exit_code == 3 and "epsilon_gamma_box" in missing.stderr
    schema = runner.invoke(main, ["composites", "schema"])
    assert json.loads(schema.stdout) == json_schema()


def test_the_schema_accepts_every_builtin_and_rejects_mistakes():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name in builtin_names():
        document = yaml.safe_load(BUILTINS.get(name).read_text())
        assert not list(validator.iter_errors(document)), name
    for bad in (
        {"rules": [{"match": {"type": "conv"}, "rule": "epsilom"}]},
        {"rules": [{"match": {"typ": "conv"}, "rule": "epsilon"}]},
        {"rules": [{"match": {"type": "conv"}, "rule": "epsilon", "epsilon": -1}]},
        {"params": {"epsillon": 0.1}},
        {"rulez": []},
    ):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(Exception):
            load_composite(bad)


def test_cli_rules_lists_every_rule_with_formula_and_parameters():
    from lrpcli.engine.rules import RULES

    result = CliRunner().invoke(main, ["rules"])
    assert result.exit_code == 0
    for name in RULES.names():
        cls = RULES.get(name)
        assert f"{name} " in result.stdout and cls.formula in result.stdout
        for key in cls.params:
            assert f"{key}=" in result.stdout
