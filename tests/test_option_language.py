"""One option language: options that several commands take are defined once and mean the same in each."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli_support import lrp, minivgg, save_torchscript, write_image
from lrpcli.cli import main

#: option -> the commands that must take it (issue #16's table)
SHARED = {
    "--json": ["inspect", "check-conservation", "evaluate"],
    "--on-error": ["explain", "compare", "evaluate", "check-conservation", "concepts"],
    "--device": ["explain", "compare", "evaluate", "check-conservation", "concepts"],
    "--target": ["explain", "compare", "check-conservation", "concepts"],
    "--composite": ["explain", "inspect", "check-conservation", "compare", "evaluate", "concepts"],
}


def _option(command: str, name: str):
    params = [p for p in main.commands[command].params if name in p.opts]
    assert params, f"`lrp {command}` has no {name}"
    return params[0]


@pytest.mark.parametrize("name", list(SHARED))
def test_every_command_that_should_take_a_shared_option_takes_the_same_one(name):
    options = [_option(command, name) for command in SHARED[name]]
    first = options[0]
    for command, option in zip(SHARED[name], options):
        if name == "--json":
            assert not option.is_flag and option.flag_value == "-", f"{command}: --json takes [FILE|-]"
        elif name == "--on-error":
            assert list(option.type.choices) == ["skip", "fail"] and option.default == "skip", command
            assert option.help == first.help, command
        elif name == "--device":
            assert option.default == "auto" and option.help == first.help, command
        elif name == "--target":
            assert "-t" in option.opts and option.help.startswith("Which output to explain: pred (default)"), command
        elif name == "--composite":
            assert "-c" in option.opts, command


@pytest.fixture
def world(tmp_path):
    save_torchscript(minivgg(), tmp_path / "m.ts")
    for i in range(3):
        write_image(tmp_path / "imgs" / f"i{i}.png", 70 + i)
    return tmp_path


def test_json_is_stdout_bare_and_a_file_with_a_name(world):
    for command, extra in (("inspect", ["--input-shape", "3,32,32"]), ("check-conservation", [str(world / "imgs"), "-c", "lrp_0", "-q"])):
        bare = CliRunner().invoke(main, [command, str(world / "m.ts"), *extra, "--json"])
        assert bare.exit_code == 0, bare.output
        json.loads(bare.stdout)
        target = world / f"{command}.json"
        named = CliRunner().invoke(main, [command, str(world / "m.ts"), *extra, "--json", str(target)])
        assert named.exit_code == 0 and json.loads(target.read_text()) == json.loads(bare.stdout)


def test_composite_parameters_after_the_name_work_in_every_command(world):
    report = CliRunner().invoke(main, ["inspect", str(world / "m.ts"), "--input-shape", "3,32,32", "-c", "epsilon:epsilon=0.5", "--json"])
    assert report.exit_code == 0, report.output
    assert any(layer.get("rule_params", {}).get("epsilon") == 0.5 for layer in json.loads(report.stdout)["layers"])
    run = lrp("explain", world / "m.ts", world / "imgs", "-c", "epsilon:epsilon=0.5", "-q", out=world / "out")
    assert run.code == 0, run.stderr
    assert json.loads((world / "out" / "run.json").read_text())["composite"]["params"]["epsilon"] == 0.5


def test_check_conservation_skips_unreadable_inputs_and_takes_target_pred(world):
    (world / "imgs" / "broken.png").write_text("not an image")
    skip = lrp("check-conservation", world / "m.ts", world / "imgs", "-c", "lrp_0", "-t", "pred", "--dtype", "float64", "--json")
    assert skip.code == 5, skip.stderr
    assert "broken.png" in skip.stderr
    assert len(json.loads(skip.stdout)["samples"]) == 3  # the readable ones were checked
    fail = lrp("check-conservation", world / "m.ts", world / "imgs", "-c", "lrp_0", "--on-error", "fail")
    assert fail.code == 5 and "broken.png" in fail.stderr
    evaluated = lrp("evaluate", world / "m.ts", world / "imgs", "--steps", "2", "--baseline", "random", "-c", "epsilon", "-q", out=world / "ev")
    assert evaluated.code == 5 and "broken.png" in evaluated.stderr
    assert len(json.loads((world / "ev" / "evaluation.json").read_text())["names"]) == 3
