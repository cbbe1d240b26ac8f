"""Every command's help has examples, and the examples work (run against the shipped samples)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lrpcli.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [[], ["explain"], ["inspect"], ["check-conservation"], ["composites"], ["composites", "show"], ["composites", "schema"], ["rules"], ["compare"], ["evaluate"], ["init"], ["report"], ["concepts"]]
LRP = f"{shlex.quote(sys.executable)} -m lrpcli.cli.__main__"


def examples(command: list[str]) -> list[str]:
    text = CliRunner().invoke(main, [*command, "--help"], terminal_width=200).output
    found, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(r"^Examples?:$", stripped):
            inside = True
            continue
        if inside and stripped.startswith(("lrp ", "head ", "cat ")):
            found.append(re.split(r"\s{2,}", stripped)[0])  # drop a trailing description column
        elif inside and not stripped:
            inside = False
    return found


def runnable(example: str) -> bool:
    """Examples that name placeholder files (model.pt, nets.py, photos/) are illustrations only."""
    for token in shlex.split(example.replace("|", " ").replace(">", " ")):
        looks_like_path = "/" in token or re.search(r"\.(ya?ml|ts|pt2?|pth|csv|py|png|jpe?g)$", token)
        if looks_like_path and not token.startswith("-") and "*" not in token and not (ROOT / token).exists():
            if not token.endswith((".xml", ".json")) and token not in ("composite.schema.json", "my_composite.yaml", "my_model.yaml"):
                return False
    return True


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lrp")
def test_help_has_examples(command):
    assert examples(command), f"`lrp {' '.join(command)} --help` shows no example"


@pytest.mark.skipif(not (ROOT / "sample_models" / "shapes_minivgg").is_dir(), reason="sample_models/ is not built")
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lrp")
def test_help_examples_run(command, tmp_path):
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models")
    ran = 0
    for example in examples(command):
        if not runnable(example):
            continue
        shell = re.sub(r"(^|\|\s*)lrp ", lambda m: f"{m.group(1)}{LRP} ", example)
        result = subprocess.run(shell, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, f"{example}\n{result.stderr[-2000:]}"
        ran += 1
    assert ran, f"no example of `lrp {' '.join(command)}` could run"
