"""A planted or tampered graph-cache entry never runs code and never changes a result (issue 24, item 1).

Each case plants an entry where the next run looks for it (the key the run computes), runs ``lrp explain``
and checks against a run without any cache: the same predictions and relevance, no marker file from a
command, and the reason said once on stderr.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from torch import nn

from lrpcli.sources import cache as graph_cache
from lrpcli.engine import explainer as engine_module

from cli_support import lrp, minivgg, read_csv, refused, save_torchscript, write_image


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A TorchScript model, two images, the clean result (no cache), and one cache entry made by a run."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LRP_CACHE_DIR", str(cache))
    model = save_torchscript(minivgg(), tmp_path / "m.ts")
    for i in range(2):
        write_image(tmp_path / "imgs" / f"a{i}.png", 10 + i)
    clean = lrp("explain", model, tmp_path / "imgs", "-q", "--no-cache", out=tmp_path / "clean")
    assert clean.code == 0, clean.describe()
    first = lrp("explain", model, tmp_path / "imgs", "-q", out=tmp_path / "first")
    assert first.code == 0, first.describe()
    (entry,) = cache.glob("*.json")
    engine_module._CAPTURED.clear()
    return tmp_path, model, cache, entry


def _explain_again(tmp_path, model, name):
    engine_module._CAPTURED.clear()
    graph_cache._said.clear()
    return lrp("explain", model, tmp_path / "imgs", "-q", out=tmp_path / name)


def _same_as_clean(tmp_path, run):
    assert run.code == 0, run.describe()
    clean, got = read_csv(tmp_path / "clean" / "summary.csv"), read_csv(run.out / "summary.csv")
    assert [(r["input"], r["prediction"], r["logit"]) for r in got] == [(r["input"], r["prediction"], r["logit"]) for r in clean]
    for row in clean:
        name = row["relevance"]
        np.testing.assert_allclose(np.load(run.out / name), np.load(tmp_path / "clean" / name), rtol=1e-5, atol=1e-7)


def _edit(entry, change):
    meta = json.loads(entry.read_text())
    change(meta)
    entry.write_text(json.dumps(meta))


def _marker_payload(marker):
    """Targets that run a shell command wherever a cache resolves names to callables by import or attribute."""
    command = f"touch {marker}"
    return [
        {"fn": "os.system"},
        {"fn": "operator.methodcaller"},
        {"fn": "operator.attrgetter"},
        {"fn": "operator.call"},
        {"fn": "lrpcli.sources.files.os.system"},
        {"fn": "lrpcli.architectures.build"},
        {"op": "builtins::eval.default"},
        {"op": "aten::__getattribute__.default"},
    ], command


@pytest.mark.parametrize("index", range(8))
def test_a_planted_target_runs_nothing_and_the_result_is_clean(setup, index):
    tmp_path, model, cache, entry = setup
    marker = tmp_path / "MARKER"
    targets, command = _marker_payload(marker)

    def plant(meta):
        first = meta["nodes"][0]
        first["target"] = targets[index]
        first["args"] = {"tuple": [command, {"ref": meta["input"]}]}

    _edit(entry, plant)
    run = _explain_again(tmp_path, model, "again")
    assert not marker.exists()
    _same_as_clean(tmp_path, run)
    assert run.stderr.count("is not used") == 1 and "outside lrpcli's vocabulary" in run.stderr, run.stderr


def test_an_entry_cannot_set_a_kind(setup):
    """Kinds are derived again, never read: an entry that calls a conv 'elementwise' (so relevance would
    pass straight through it) explains as the capture does; the field is not even written."""
    tmp_path, model, cache, entry = setup
    assert all("kind" not in node for node in json.loads(entry.read_text())["nodes"])
    _edit(entry, lambda meta: [node.update(kind="elementwise", held=[], gates=["x"]) for node in meta["nodes"]])
    _same_as_clean(tmp_path, _explain_again(tmp_path, model, "again"))


def test_an_op_name_that_does_not_fit_its_target_is_a_miss(setup):
    tmp_path, model, cache, entry = setup

    def rename(meta):
        conv = next(node for node in meta["nodes"] if node["op"].startswith("conv"))
        conv["op"] = "conv_transpose2d"  # the rules would read the conv as a transposed one

    _edit(entry, rename)
    run = _explain_again(tmp_path, model, "again")
    _same_as_clean(tmp_path, run)
    assert "names the op 'conv_transpose2d'" in run.stderr


class _ExpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.exp(self.a(x)))


def test_an_unsupported_op_stays_unsupported_whatever_the_entry_says(tmp_path, monkeypatch):
    """The loaded graph passes the same check as a fresh capture: exp has no rule, whatever an entry claims."""
    from lrpcli.errors import UnsupportedOpError

    monkeypatch.setenv("LRP_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model, x = _ExpNet().eval(), torch.rand(2, 4)
    with pytest.raises(UnsupportedOpError, match="exp"):
        _explain_cached(model, x)
    (entry,) = (tmp_path / "cache").glob("*.json")
    _edit(entry, lambda meta: [node.update(kind="elementwise", op="relu" if node["op"] == "exp" else node["op"]) for node in meta["nodes"]])
    with pytest.raises(UnsupportedOpError, match="exp"):  # a miss: captured again
        _explain_cached(model, x)
    _edit(entry, lambda meta: [node.update(op="exp") for node in meta["nodes"] if node["op"] == "relu"])
    calls = []
    monkeypatch.setattr(engine_module, "capture", lambda *a, **k: calls.append(1))
    with pytest.raises(UnsupportedOpError, match="exp"):  # the entry loads, and is refused as a capture is
        _explain_cached(model, x)
    assert calls == []


def _explain_cached(model, x):
    from lrpcli import Explainer

    engine_module._CAPTURED.clear()
    graph_cache._said.clear()
    explainer = Explainer(model, "epsilon")
    explainer.graph_store = graph_cache.DiskCache("exp")
    return explainer.explain(x)


def test_a_tampered_tensor_is_a_miss_and_the_predictions_stay_right(setup):
    """A negated weight would flip every prediction while run.json names the real weights' hash."""
    from safetensors.torch import load_file, save_file

    tmp_path, model, cache, entry = setup
    tensors_path = entry.with_suffix(".safetensors")
    tensors = load_file(str(tensors_path))
    save_file({name: -t if t.is_floating_point() else t for name, t in tensors.items()}, str(tensors_path))
    run = _explain_again(tmp_path, model, "again")
    _same_as_clean(tmp_path, run)
    assert "differs from the model's own output" in run.stderr
    assert run.stderr.count("is not used") == 1  # said once, however many batches


def test_a_folder_others_can_write_is_not_used(setup):
    tmp_path, model, cache, entry = setup
    tensors_path = entry.with_suffix(".safetensors")
    from safetensors.torch import load_file, save_file

    save_file({n: -t if t.is_floating_point() else t for n, t in load_file(str(tensors_path)).items()}, str(tensors_path))
    before = entry.stat().st_mtime_ns
    cache.chmod(0o777)
    run = _explain_again(tmp_path, model, "again")
    _same_as_clean(tmp_path, run)
    assert "writable by others and is not used" in run.stderr
    assert entry.stat().st_mtime_ns == before  # nothing read from it, nothing written to it


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_folder_of_another_user_is_not_used(setup):
    tmp_path, model, cache, entry = setup
    os.chown(cache, 65534, 65534)
    run = _explain_again(tmp_path, model, "again")
    _same_as_clean(tmp_path, run)
    assert "belongs to another user" in run.stderr


def test_an_entry_file_others_can_write_is_a_miss(setup):
    tmp_path, model, cache, entry = setup
    entry.chmod(0o666)
    run = _explain_again(tmp_path, model, "again")
    _same_as_clean(tmp_path, run)
    assert "not private files of this user" in run.stderr


def test_a_new_cache_folder_is_private(setup):
    tmp_path, model, cache, entry = setup
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_a_cache_that_cannot_be_written_is_a_warning_and_the_run_goes_on(setup, monkeypatch):
    """A full disk (safetensors raises its own error, not an OSError) and a folder that cannot be made."""
    from safetensors import SafetensorError

    tmp_path, model, cache, entry = setup
    for path in cache.iterdir():
        path.unlink()

    def full(*_args, **_kwargs):
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    run = _explain_again(tmp_path, model, "full")
    _same_as_clean(tmp_path, run)
    assert "cannot be written" in run.stderr and "No space left" in run.stderr
    assert not list(cache.iterdir())  # no half entry, no temp file left
    monkeypatch.setenv("LRP_CACHE_DIR", "/proc/lrpcli-cache")  # mkdir fails there, even for root
    run = _explain_again(tmp_path, model, "unmakeable")
    _same_as_clean(tmp_path, run)
    assert "cannot be used" in run.stderr


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: m["nodes"][0].update(module="features\x1b[2J"), "not plain text"),
        (lambda m: m["nodes"][1]["args"]["tuple"].append(10**30), "integer too large"),
        (lambda m: m["nodes"][1].update(args={"tuple": [{"ref": "nowhere"}]}), "defined nowhere"),
        (lambda m: m.update(output="nowhere"), "no node of the graph"),
        (lambda m: m["nodes"][0]["args"]["tuple"].append({"pickle": "gASV"}), "does not write"),
    ],
)
def test_values_outside_what_lrpcli_writes_are_a_miss(setup, change, reason):
    tmp_path, model, cache, entry = setup
    _edit(entry, change)
    run = _explain_again(tmp_path, model, "again")
    _same_as_clean(tmp_path, run)
    assert reason in run.stderr, run.stderr


def test_a_refused_model_is_still_refused_with_a_cache(tmp_path, monkeypatch):
    """Nothing about the cache turns a model error into a success (a sanity check of the fixture's route)."""
    monkeypatch.setenv("LRP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "m.ts").write_bytes(b"not a model")
    write_image(tmp_path / "imgs" / "a.png", 1)
    refused(lrp("explain", tmp_path / "m.ts", tmp_path / "imgs", "-q", out=tmp_path / "o"), 4)
