"""Lightning checkpoints (issue 26, item 3): the weights under ``state_dict`` with the LightningModule's
attribute prefix, ``hyper_parameters`` as the architecture's arguments, read weights-only without Lightning.

The checkpoints are written the way Lightning writes them: the hyper-parameters as an ``AttributeDict`` of
``lightning.fabric.utilities.data`` (a module made up here while saving, gone when lrp reads the file, as on
a machine without Lightning), optimizer states beside the weights."""

from __future__ import annotations

import sys
import types

import numpy as np
import torch

from cli_support import ARCH, lrp, minivgg, reference_relevance, refused, write_image

from lrpcli.data.images import Preprocessing


def _save_checkpoint(path, model, prefix="model.", hparams=None, extra=None):
    module = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = module.__name__, "AttributeDict"
    module.AttributeDict = AttributeDict
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names[:-1]:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[names[-1]] = module
    try:
        state = {prefix + key: value for key, value in model.state_dict().items()}
        state.update(extra or {})
        torch.save(
            {
                "epoch": 3,
                "global_step": 120,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": state,
                "hyper_parameters": AttributeDict(hparams if hparams is not None else {"num_classes": 4, "width": 4, "lr": 0.01}),
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}],
            },
            path,
        )
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return path


def _image(tmp_path):
    return write_image(tmp_path / "imgs" / "a.png", 7)


def test_a_lightning_checkpoint_explains_as_its_network_does(tmp_path):
    """Keys under 'model.', num_classes and width from hyper_parameters (lr is no argument of MiniVGG, left
    out): the relevance equals the Python API's on the network itself."""
    model = minivgg()
    ckpt = _save_checkpoint(tmp_path / "last.ckpt", model, extra={"criterion.weight": torch.ones(4)})
    image = _image(tmp_path)
    run = lrp("explain", ckpt, tmp_path / "imgs", "--arch", ARCH, "--mean", "0", "--std", "1", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    (row,) = run.rows()
    x = Preprocessing(mode="RGB", size=(32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pixels = x.tensor(x.pixels(image))
    expected = reference_relevance(model, pixels, int(row["target"]))
    np.testing.assert_allclose(run.array(row["relevance"]), expected, rtol=1e-5, atol=1e-6)


def test_a_nested_prefix_is_stripped_and_arch_kwargs_win(tmp_path):
    model = minivgg(num_classes=3)
    ckpt = _save_checkpoint(tmp_path / "m.ckpt", model, prefix="net.backbone.", hparams={"num_classes": 4, "width": 4})
    _image(tmp_path)
    # hyper_parameters say 4 classes, the weights have 3: --arch-kwargs overrides the one that is wrong
    run = lrp("explain", ckpt, tmp_path / "imgs", "--arch", ARCH, "--arch-kwargs", "{num_classes: 3}", "--mean", "0", "--std", "1", "-q", out=tmp_path / "o")
    assert run.code == 0, run.describe()
    refused(lrp("explain", ckpt, tmp_path / "imgs", "--arch", ARCH, "--mean", "0", "--std", "1", "-q", out=tmp_path / "o2"), 4, "do not fit")


def test_a_checkpoint_without_arch_asks_for_the_architecture_not_for_pickle(tmp_path):
    ckpt = _save_checkpoint(tmp_path / "last.ckpt", minivgg())
    _image(tmp_path)
    run = lrp("explain", ckpt, tmp_path / "imgs", "-q", out=tmp_path / "o")
    refused(run, 4, "is a checkpoint", "--arch")
    assert "--allow-pickle" not in run.stderr


def test_reading_a_checkpoint_runs_no_code(tmp_path):
    """A checkpoint whose hyper_parameters hold some other class is refused weights-only, nothing unpickled."""
    import lrpcli.sources.lightning as lightning

    class Planted:
        def __reduce__(self):
            return (print, ("unpickled!",))

    ckpt = tmp_path / "bad.ckpt"
    torch.save({"state_dict": minivgg().state_dict(), "hyper_parameters": {"x": Planted()}}, ckpt)
    _image(tmp_path)
    run = lrp("explain", ckpt, tmp_path / "imgs", "--arch", ARCH, "-q", out=tmp_path / "o")
    refused(run, 4, "not a state dict that loads safely")
    assert "unpickled!" not in run.stdout + run.stderr
    assert lightning.fit_keys({"a.b": torch.ones(1)}, {"c"}) == {"a.b": torch.ones(1)}  # no fit: left as it is
