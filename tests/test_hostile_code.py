"""Handed-over files run no code without consent (issue: hostile inputs, items 1 and 2).

Each hostile file, if the code in it ran, creates a marker folder. The tests check that the
marker stays absent, the exit code is 4 and the message names the flag that gives consent;
and that with the flag the same file does what the user then asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from cli_support import ARCH, lrp, minivgg, write_image
from lrpcli.errors import ModelError
from lrpcli.sources.files import load_model, load_spec, load_spec_model
from lrpcli.sources.safety import pickled_payloads


class _Payload:
    """Unpickling this calls os.mkdir(marker): the stand-in for os.system in a hostile file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _pickle_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    return buffer.getvalue()


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a zip archive, letting ``edit(inner_name, data) -> data | None`` change entries
    (None drops one) and ``edit(None, None)`` return extra {inner_name: data}."""
    with zipfile.ZipFile(src) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        entries = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for name, data in entries:
            changed = edit(name.split("/", 1)[1], data)
            if changed is not None:
                out.writestr(name, changed)
        for inner, data in (edit(None, None) or {}).items():
            out.writestr(f"{root}/{inner}", data)
    return dst


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pt2")
    path = folder / "model.pt2"
    torch.export.save(torch.export.export(minivgg(), (torch.randn(2, 3, 32, 32),)), str(path))
    return path


def _pickled_weight(clean: Path, dst: Path, marker: Path) -> Path:
    """The issue's recipe: one weight marked use_pickle and replaced by a hostile pickle."""

    def edit(inner, data):
        if inner is None:
            return None
        if inner.endswith("model_weights_config.json"):
            config = json.loads(data)
            config["config"]["features.0.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if inner == "data/weights/weight_0":
            return _pickle_bytes(marker)
        return data

    return _rewrite(clean, dst, edit)


def _pickled_sample_inputs(clean: Path, dst: Path, marker: Path) -> Path:
    """Nothing in the configs asks for pickle; the sample inputs fail the safe loader, and torch
    retries them with the full one."""
    return _rewrite(clean, dst, lambda inner, data: None if inner is None else (_pickle_bytes(marker) if inner == "data/sample_inputs/model.pt" else data))


def _opaque_constant(clean: Path, dst: Path, marker: Path) -> Path:
    import pickle

    def edit(inner, data):
        if inner is None:
            return {"data/constants/opaque_obj_0": pickle.dumps(_Payload(marker))}
        if inner.endswith("model_constants_config.json"):
            config = json.loads(data)
            config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
            return json.dumps(config).encode()
        return data

    return _rewrite(clean, dst, edit)


def _legacy_weights(clean: Path, dst: Path, marker: Path) -> Path:
    def edit(inner, data):
        if inner is None:
            return {"data/weights/model.pt": _pickle_bytes(marker)}
        return data

    return _rewrite(clean, dst, edit)


HOSTILE = {
    "pickled weight": _pickled_weight,
    "pickled sample inputs": _pickled_sample_inputs,
    "opaque constant": _opaque_constant,
    "legacy weight file": _legacy_weights,
}


@pytest.mark.parametrize("variant", sorted(HOSTILE))
def test_hostile_pt2_runs_no_code_without_allow_pickle(variant, clean_pt2, tmp_path):
    marker = tmp_path / "code-ran"
    path = HOSTILE[variant](clean_pt2, tmp_path / "evil.pt2", marker)
    with pytest.raises(ModelError) as caught:
        load_model(path)
    assert not marker.exists(), f"{variant}: the file's code ran"
    assert "--allow-pickle" in (caught.value.hint or ""), caught.value
    assert str(path) in caught.value.message


@pytest.mark.parametrize("variant", sorted(HOSTILE))
def test_the_fixture_is_hostile_indeed(variant, clean_pt2, tmp_path):
    """Without lrpcli's checks, torch.export.load runs the payload (so the tests above can fail)."""
    marker = tmp_path / "code-ran"
    path = HOSTILE[variant](clean_pt2, tmp_path / "evil.pt2", marker)
    with contextlib.suppress(Exception):  # the payload is no tensor: loading fails after it ran
        torch.export.load(str(path))
    assert marker.exists()


def test_allow_pickle_is_the_consent(clean_pt2, tmp_path):
    marker = tmp_path / "code-ran"
    path = _pickled_weight(clean_pt2, tmp_path / "evil.pt2", marker)
    with pytest.raises(ModelError):  # the payload is not a tensor: a load error, after consent
        load_model(path, allow_pickle=True)
    assert marker.exists()


def test_clean_pt2_loads_and_asks_for_nothing(clean_pt2):
    assert pickled_payloads(clean_pt2) == []
    program = load_model(clean_pt2)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(program.module()(x), minivgg()(x), atol=1e-6)


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth"])
def test_pt2_named_as_state_dict_with_arch_is_never_export_loaded(name, clean_pt2, tmp_path):
    marker = tmp_path / "code-ran"
    path = _pickled_sample_inputs(clean_pt2, tmp_path / name, marker)
    with pytest.raises(ModelError) as caught:
        load_model(path, arch=ARCH, arch_kwargs={"num_classes": 4, "width": 4})
    assert not marker.exists()
    assert "exported program" in caught.value.message


def test_hostile_pt2_through_a_spec_and_the_cli(clean_pt2, tmp_path):
    marker = tmp_path / "code-ran"
    _pickled_weight(clean_pt2, tmp_path / "evil.pt2", marker)
    (tmp_path / "model.yaml").write_text("model: evil.pt2\ninput: {size: [32, 32]}\n")
    image = write_image(tmp_path / "images" / "a.png", seed=1)
    run = lrp("explain", tmp_path / "model.yaml", image, out=tmp_path / "out")
    assert run.code == 4, run.describe()
    assert not marker.exists()
    assert "--allow-pickle" in run.stderr


# --------------------------------------------------------------------------- spec arch


def _spec(tmp_path: Path, arch: str, kwargs: str = "{}") -> Path:
    torch.save(minivgg().state_dict(), tmp_path / "weights.pt")
    path = tmp_path / "model.yaml"
    path.write_text(f"model: weights.pt\narch: '{arch}'\narch_kwargs: {kwargs}\ninput: {{size: [32, 32]}}\n")
    return path


def test_spec_arch_os_system_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    spec = _spec(tmp_path, "os:mkdir", f"{{path: '{marker}'}}")
    with pytest.raises(ModelError) as caught:
        load_model(spec)
    assert not marker.exists()
    assert "--allow-code" in caught.value.hint


def test_spec_arch_python_file_needs_consent(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "nets.py").write_text(f"import os\nos.mkdir({str(marker)!r})\nfrom lrpcli.architectures import MiniVGG\n")
    spec = _spec(tmp_path, "nets.py:MiniVGG", "{num_classes: 4, width: 4}")
    with pytest.raises(ModelError) as caught:
        load_model(spec)
    assert not marker.exists()
    assert "--allow-code" in caught.value.hint
    # with consent, the file is found next to the spec (not in the current folder) and runs
    model = load_model(spec, allow_code=True)
    assert marker.exists() and isinstance(model, torch.nn.Module)


@pytest.mark.parametrize(
    "arch",
    [
        "lrpcli.sources.files:load_model",  # a trusted package's non-model function
        "lrpcli.architectures:load",  # a function the trusted namespace imports (patched in below)
        "torchvision.models._utils:load_state_dict_from_url",  # private, and torch.hub's
        "lrpcli.architectures:_private",
    ],
)
def test_spec_arch_outside_model_builders_is_refused(arch, tmp_path, monkeypatch):
    import lrpcli.architectures

    monkeypatch.setattr(lrpcli.architectures, "load", torch.load, raising=False)
    with pytest.raises(ModelError) as caught:
        load_spec_model(load_spec(_spec(tmp_path, arch)))
    assert "--allow-code" in caught.value.hint


def test_spec_arch_of_lrpcli_architectures_loads(tmp_path):
    spec = _spec(tmp_path, ARCH, "{num_classes: 4, width: 4}")
    model = load_model(spec)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), minivgg()(x))


def test_cli_arch_option_is_the_users_own_choice(tmp_path):
    """--arch on the command line names code the user chose: no --allow-code needed."""
    (tmp_path / "nets.py").write_text("from lrpcli.architectures import MiniVGG\n")
    spec = _spec(tmp_path, "os:mkdir")
    image = write_image(tmp_path / "images" / "a.png", seed=1)
    refused = lrp("explain", spec, image, out=tmp_path / "a")
    assert refused.code == 4 and "--allow-code" in refused.stderr, refused.describe()
    run = lrp("explain", spec, image, "--arch", f"{tmp_path / 'nets.py'}:MiniVGG", "--arch-kwargs", "{num_classes: 4, width: 4}", out=tmp_path / "b")
    assert run.code == 0, run.describe()
    assert len(run.rows()) == 1
