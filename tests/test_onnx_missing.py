"""An ``.onnx`` MODEL where the onnx extra cannot work (issue 26 item 4): a message that names the fix, never an
internal error. Runs in the default venv (no onnx, no torchvision); the imports are blocked here so that it
means the same in the zoo venv, where tests/test_zoo_onnx.py covers the files that load.
"""

from __future__ import annotations

import sys
import types

import pytest

from cli_support import lrp, refused, write_image, write_spec

ONNX_START = b"\x08\x07\x12\x07pytorch"  # the first bytes of an ONNX protobuf (ir_version, producer_name)


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(ONNX_START)
    write_image(tmp_path / "imgs" / "a.png", 1)
    spec = write_spec(tmp_path / "model.yaml", model="model.onnx", input={"mean": [0.5], "std": [0.25]})
    return tmp_path, model, spec


def commands(tmp_path, model, spec):
    return {
        "explain": ("explain", model, tmp_path / "imgs", "-q", "-o", tmp_path / "o"),
        "spec": ("explain", spec, tmp_path / "imgs", "-q", "-o", tmp_path / "o"),
        "inspect": ("inspect", model),
        "check-conservation": ("check-conservation", model, "--random", "2", "-q"),
    }


@pytest.mark.parametrize("command", ["explain", "spec", "inspect", "check-conservation"])
def test_without_the_extra_the_message_names_it(files, command, monkeypatch):
    tmp_path, model, spec = files
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError, as where it is not installed
    run = lrp(*commands(tmp_path, model, spec)[command])
    refused(run, 4, "is an ONNX model", "pip install 'lrpcli[onnx]'")
    assert "--allow-pickle" not in run.stderr


def test_without_torchvision_the_message_says_onnx2torch_needs_it(files, monkeypatch):
    tmp_path, model, spec = files
    monkeypatch.setitem(sys.modules, "onnx", types.ModuleType("onnx"))
    monkeypatch.setitem(sys.modules, "torchvision", None)
    refused(lrp(*commands(tmp_path, model, spec)["explain"]), 4, "torchvision is missing", "pip install 'lrpcli[onnx]'")


class _TorchvisionForAnotherTorch:
    """A meta-path finder whose torchvision fails to import the way one built for another torch does."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return None


def test_a_torchvision_for_another_torch_is_named_as_the_pairing_problem(files, monkeypatch):
    tmp_path, model, spec = files
    monkeypatch.setitem(sys.modules, "onnx", types.ModuleType("onnx"))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_TorchvisionForAnotherTorch(), *sys.meta_path])
    run = lrp(*commands(tmp_path, model, spec)["explain"])
    refused(run, 4, "does not import beside torch", "operator torchvision::nms does not exist", "torch 2.14.1 pairs with torchvision 0.29.1")
