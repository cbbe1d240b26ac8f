"""`lrp init`: a spec written from the options that work runs as they did, from any folder."""

from __future__ import annotations

import os

import torch
import yaml

from cli_support import ARCH, ARCH_KWARGS, CLASSES, lrp, minivgg, read_csv, save_torchscript, tiny_gray, write_image


def test_init_writes_a_spec_for_a_one_channel_model_that_runs_like_the_options(tmp_path):
    model = tiny_gray()
    save_torchscript(model, tmp_path / "my.ts")
    for i in range(3):
        write_image(tmp_path / "imgs" / f"g{i}.png", 50 + i, size=(8, 8), mode="L")
    spec = tmp_path / "specs" / "my.yaml"
    run = lrp("init", tmp_path / "my.ts", tmp_path / "imgs", "--mean", "0.5", "--std", "0.5", out=spec)
    assert run.code == 0, run.stderr
    written = yaml.safe_load(spec.read_text())
    assert written["model"] == os.path.join("..", "my.ts")  # relative to the spec
    assert written["input"] == {"mode": "L", "size": [8, 8], "mean": [0.5], "std": [0.5]}
    direct = lrp("explain", tmp_path / "my.ts", tmp_path / "imgs", "--mean", "0.5", "--std", "0.5", "-q", out=tmp_path / "a")
    assert direct.code == 0, direct.stderr
    os.chdir(tmp_path / "imgs")  # paths in the spec do not depend on the current folder
    try:
        from_spec = lrp("explain", spec, tmp_path / "imgs", "-q", out=tmp_path / "b")
    finally:
        os.chdir(tmp_path)
    assert from_spec.code == 0, from_spec.stderr
    rows_a, rows_b = read_csv(tmp_path / "a" / "summary.csv"), read_csv(tmp_path / "b" / "summary.csv")
    assert [(r["input"], r["prediction"], r["logit"]) for r in rows_a] == [(r["input"], r["prediction"], r["logit"]) for r in rows_b]
    again = lrp("init", tmp_path / "my.ts", tmp_path / "imgs", out=spec)
    assert again.code == 2 and "--force" in again.stderr
    assert lrp("init", tmp_path / "my.ts", tmp_path / "imgs", "--force", "--mean", "0.5", "--std", "0.5", out=spec).code == 0


def test_init_keeps_a_state_dict_with_its_architecture_and_classes(tmp_path):
    torch.save(minivgg().state_dict(), tmp_path / "weights.pt")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(2):
        write_image(tmp_path / "imgs" / f"c{i}.png", 60 + i)
    spec = tmp_path / "model.yaml"
    run = lrp(
        "init", tmp_path / "weights.pt", tmp_path / "imgs", "--arch", ARCH, "--arch-kwargs", ARCH_KWARGS,
        "--classes", tmp_path / "classes.txt", "--mean", "0.5", "--std", "0.25", "-c", "epsilon", out=spec,
    )
    assert run.code == 0, run.stderr
    written = yaml.safe_load(spec.read_text())
    assert written["arch"] == ARCH and written["arch_kwargs"] == {"num_classes": 4, "width": 4}
    assert written["classes"] == CLASSES and written["composite"] == "epsilon" and written["input"]["size"] == [32, 32]
    explained = lrp("explain", spec, tmp_path / "imgs", "-q", out=tmp_path / "out")
    assert explained.code == 0, explained.stderr
    assert {r["prediction_label"] for r in read_csv(tmp_path / "out" / "summary.csv")} <= set(CLASSES)


def test_the_next_command_init_prints_runs_as_printed(tmp_path):
    """A Python-file arch needs --allow-code in every command that reads the spec: init says so and prints the
    command with it (issue 26, item 5); a trusted arch gets the plain command. Each printed command is run."""
    import shlex

    torch.save(minivgg().state_dict(), tmp_path / "weights.pt")
    (tmp_path / "nets.py").write_text("from lrpcli.architectures import MiniVGG\n\n\ndef Net():\n    return MiniVGG(num_classes=4, width=4)\n")
    write_image(tmp_path / "imgs" / "a.png", 3)
    for arch, consent in ((f"{tmp_path / 'nets.py'}:Net", True), (ARCH, False)):
        spec = tmp_path / f"spec-{consent}.yaml"
        extra = () if consent else ("--arch-kwargs", ARCH_KWARGS)
        run = lrp("init", tmp_path / "weights.pt", tmp_path / "imgs", "--arch", arch, *extra, "--mean", "0", "--std", "1", out=spec)
        assert run.code == 0, run.describe()
        printed = run.stderr + run.stdout
        command = printed.split("next: ", 1)[1].splitlines()[0]
        assert ("--allow-code" in command) == consent, printed
        if consent:
            assert "Python file" in printed
        args = shlex.split(command)[1:]  # drop "lrp"
        again = lrp(*args, "-q", out=tmp_path / f"out-{consent}")
        assert again.code == 0, again.describe()
