"""Composites: YAML and dict parsing, extends/params, rule assignment, errors that teach."""

from __future__ import annotations

import textwrap

import pytest
import torch
import yaml
from torch import nn

from lrpcli import ConfigError, capture, explain, load_composite
from lrpcli.engine.passes.canonizers import canonize
from lrpcli.engine.composite import first_layers
from lrpcli.engine.composite_yaml import builtin_dir, builtin_names

BUILTINS = [
    "lrp_0",
    "epsilon",
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "attnlrp",
    "cp_lrp",
    "mambalrp",
    "excitation_backprop",
    "guided_backprop",
    "deconvnet",
    "beta_smooth",
]


def write(tmp_path, text, name="composite.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def assigned_rules(model, x, composite):
    """path -> (rule, its values, fallback?); the values without the options left at their defaults."""
    comp = load_composite(composite)
    graph = canonize(capture(model, x), comp.canonizers)
    return {graph.node(name).path: (a.rule.name, _set_values(a.rule), a.fallback) for name, a in comp.assign(graph).items()}


def _set_values(rule):
    defaults = {"stabilizer_mode": "sign", "zero_params": ()}  # tests/test_rule_options.py tests these
    return {key: value for key, value in rule.values.items() if key not in defaults or value != defaults[key]}


def test_all_builtins_exist_as_yaml_files_and_load():
    assert builtin_names() == sorted(BUILTINS)
    for name in BUILTINS:
        path = builtin_dir() / f"{name}.yaml"
        raw = yaml.safe_load(path.read_text())
        assert raw["name"] == name
        assert load_composite(name).name == name


@pytest.mark.parametrize("spelling", ["epsilon-plus-flat", "Epsilon_Plus_Flat", "epsilon_plus_flat"])
def test_hyphenated_and_mixed_case_names_are_accepted(spelling):
    assert load_composite(spelling).name == "epsilon_plus_flat"


def test_unknown_builtin_suggests_the_nearest():
    with pytest.raises(ConfigError) as info:
        load_composite("epsilon_plus_flt")
    assert "epsilon_plus_flat" in str(info.value)
    assert info.value.exit_code == 3


def test_epsilon_plus_flat_assigns_flat_first_zplus_conv_epsilon_linear(mini_vgg):
    rules = assigned_rules(mini_vgg, torch.randn(2, 3, 32, 32), "epsilon_plus_flat")
    assert rules["features.0"][0] == "flat"
    assert {rules[p][0] for p in ("features.3", "features.6", "features.9")} == {"zplus"}
    assert rules["classifier.1"][0] == rules["classifier.4"][0] == "epsilon"
    assert rules["classifier.4"][1]["epsilon"] == 1e-6


def test_epsilon_gamma_box_puts_zbox_on_the_first_conv_only(small_resnet):
    rules = assigned_rules(small_resnet, torch.randn(2, 3, 32, 32), "epsilon_gamma_box")
    assert rules["conv1"][0] == "zbox"
    convs = [path for path in rules if path.endswith(("conv1", "conv2")) and path != "conv1"]
    assert convs and all(rules[path][0] == "gamma" for path in convs)
    assert rules["fc"][0] == "epsilon"
    adds = [path for path, rule in rules.items() if path.startswith("layer") and rule[0] == "norm"]
    assert adds, "residual joins should get norm"


class _BackwardsRegistered(nn.Module):
    """Registers the head before the stem: zennit's module order differs from data flow."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.stem = nn.Linear(4, 8)

    def forward(self, x):
        return self.head(torch.relu(self.stem(x)))


def test_first_means_first_in_data_flow_not_registration_order():
    model = _BackwardsRegistered().eval()
    graph = capture(model, torch.randn(2, 4))
    assert [graph.node(name).module for name in first_layers(graph)] == ["stem"]
    rules = assigned_rules(model, torch.randn(2, 4), "epsilon_plus_flat")
    assert rules["stem"][0] == "flat" and rules["head"][0] == "epsilon"


def test_first_layers_include_every_branch_the_input_meets():
    class TwoStems(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(4, 3)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], dim=1))

    graph = capture(TwoStems().eval(), torch.randn(2, 4))
    assert sorted(graph.node(name).module for name in first_layers(graph)) == ["a", "b"]


def test_yaml_file_with_extends_params_and_name_globs(tmp_path, mini_vgg):
    path = write(
        tmp_path,
        """
        extends: epsilon_plus_flat
        params: {epsilon: 0.5}
        rules:
          - match: {name: "classifier.4"}
            rule: epsilon
            epsilon: 0.25
          - match: {name: "features.*", type: conv, first: false}
            rule: gamma
            gamma: 0.1
        """,
    )
    rules = assigned_rules(mini_vgg, torch.randn(2, 3, 32, 32), path)
    assert rules["classifier.4"][:2] == ("epsilon", {"epsilon": 0.25})
    assert rules["classifier.1"][:2] == ("epsilon", {"epsilon": 0.5})  # inherited entry, our param
    assert rules["features.0"][0] == "flat"
    assert rules["features.3"][:2] == ("gamma", {"gamma": 0.1, "stabilizer": 1e-6})


def test_dict_composite_equals_its_yaml_form(tmp_path, mini_vgg):
    spec = {"rules": [{"match": {"type": "conv"}, "rule": "zplus"}, {"match": {"type": "linear"}, "rule": "epsilon"}]}
    path = write(tmp_path, yaml.safe_dump(spec))
    x = torch.randn(2, 3, 32, 32)
    a = explain(mini_vgg, x, spec).relevance
    b = explain(mini_vgg, x, str(path)).relevance
    c = explain(mini_vgg, x, "epsilon_plus").relevance
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_params_override_changes_the_result(mini_vgg):
    x = torch.rand(2, 3, 32, 32)
    default = explain(mini_vgg, x, "epsilon_gamma_box").relevance
    wider = explain(mini_vgg, x, "epsilon_gamma_box", params={"low": -1.0, "high": 2.0}).relevance
    assert not torch.allclose(default, wider)


def test_unmatched_weighted_layers_fall_back_to_epsilon_and_say_so(mini_vgg):
    rules = assigned_rules(mini_vgg, torch.randn(2, 3, 32, 32), {"rules": [{"match": {"type": "conv"}, "rule": "zplus"}]})
    assert rules["classifier.1"][0] == "epsilon" and rules["classifier.1"][2] is True
    assert rules["features.0"][2] is False


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text, line, key, fragment",
    [
        ("rules:\n  - match: {type: conv}\n    rule: epsilom\n", 3, "rule", "did you mean 'epsilon'"),
        ("rules:\n  - match: {type: conv}\n    rule: epsilon\n    epsilonn: 0.1\n", 4, "epsilonn", "did you mean 'epsilon'"),
        ("rules:\n  - match: {typ: conv}\n    rule: epsilon\n", 2, "typ", "did you mean 'type'"),
        ("rules:\n  - match: {type: convv}\n    rule: epsilon\n", 2, "type", "did you mean 'conv'"),
        ("rules:\n  - match: {type: conv}\n    rule: epsilon\n    epsilon: -1\n", 4, "epsilon", ">= 0"),
        ("rules:\n  - match: {type: conv}\n    rule: alpha_beta\n    alpha: 2\n    beta: 2\n", 5, "beta", "alpha - beta must be 1"),
        ("rulez:\n  - match: {type: conv}\n    rule: epsilon\n", 1, "rulez", "did you mean 'rules'"),
        ("params: {epsillon: 0.1}\nrules: []\n", 1, "epsillon", "did you mean 'epsilon'"),
        ("rules:\n  - match: {type: add}\n    rule: gamma\n", 3, "rule", "does not apply to type"),
            ("rules:\n  - match: {type: softmax}\n    rule: uniform\n", 3, "rule", "rules for softmax: constant, gradient, pass, taylor"),
        ("canonizers: [fold_batchnrom]\nrules: []\n", 1, "canonizers", "fold_batchnorm"),
        ("extends: epsilon_plus_flatt\n", 1, "extends", "epsilon_plus_flat"),
        ("rules:\n  - match: {type: conv}\n    rule: zbox\n    low: [0, x]\n", 4, "low", "number"),
        ("rules:\n  - match: {first: yes please}\n    rule: flat\n", 2, "first", "true or false"),
    ],
)
def test_config_errors_name_file_line_key_and_suggestion(tmp_path, text, line, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_composite(str(path))
    error = info.value
    message = str(error)
    assert error.source == str(path) and str(path) in message
    assert error.line == line, message
    assert error.key == key, message
    assert fragment in message
    assert error.exit_code == 3


def test_invalid_yaml_reports_its_line(tmp_path):
    path = write(tmp_path, "rules:\n  - match: {type: conv\n    rule: epsilon\n")
    with pytest.raises(ConfigError) as info:
        load_composite(str(path))
    assert "invalid YAML" in str(info.value) and info.value.line is not None


def test_duplicate_keys_are_errors(tmp_path):
    path = write(tmp_path, "rules:\n  - match: {type: conv}\n    rule: epsilon\n    rule: zplus\n")
    with pytest.raises(ConfigError, match="appears twice") as info:
        load_composite(str(path))
    assert info.value.line == 4


def test_yaml_is_loaded_safely(tmp_path):
    path = write(tmp_path, "rules: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_composite(str(path))


def test_a_name_glob_that_matches_no_layer_is_an_error_with_a_suggestion(tmp_path, mini_vgg):
    path = write(tmp_path, "extends: epsilon\nrules:\n  - match: {name: 'clasifier.*'}\n    rule: epsilon\n")
    with pytest.raises(ConfigError) as info:
        explain(mini_vgg, torch.randn(1, 3, 32, 32), str(path))
    error = info.value
    assert error.line == 3 and error.key == "name"
    assert "matches no layer" in str(error) and "classifier" in str(error)


def test_missing_file_and_extends_loop(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_composite(str(tmp_path / "missing.yaml"))
    write(tmp_path, "extends: b.yaml\nrules: []\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nrules: []\n", "b.yaml")
    with pytest.raises(ConfigError, match="loops"):
        load_composite(str(tmp_path / "a.yaml"))


def test_extends_resolves_relative_to_the_file(tmp_path, mini_vgg):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "extends: epsilon_plus\nparams: {epsilon: 0.1}\n", "sub/base.yaml")
    path = write(tmp_path, "extends: sub/base.yaml\n", "child.yaml")
    assert load_composite(str(path)).params["epsilon"] == 0.1
