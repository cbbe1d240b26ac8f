"""Parity with zennit-crp (Achtibat et al. 2023's reference implementation of Concept Relevance Propagation, issue
29 item 6): `lrp concepts`' channel relevances and conditional heatmaps against zennit-crp's ``CondAttribution``
on the same small CNN (convolutions, max-pool, average pool, linear layers with biases), composite
EpsilonPlusFlat, float64, to 1e-6 relative.

zennit-crp 0.6.0 declares ``zennit<=0.4.6`` but imports and runs with zennit 0.5.1 and torch 2.13; it is installed
like zennit, with ``--no-deps`` (pip install --no-deps zennit-crp==0.6.0; it also imports tqdm and matplotlib).
Its heatmap is the gradient of the input under zennit's rule hooks with the relevance at the conditioned layer's
output masked to the channel (crp.hooks.MaskHook); its channel relevance is that layer's relevance summed over
space (crp.concepts.ChannelConcept). Measured when written: the two agree exactly (max difference 0.0).
Skips with that install line where zennit-crp is not importable.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

try:
    from . import zennit_support as zs
except ImportError:
    import zennit_support as zs

from cli_support import load_tensor, lrp, read_csv, save_torchscript, write_image

RTOL = 1e-6
SKIP = "zennit-crp is not installed: pip install --no-deps zennit-crp==0.6.0"
COMMON = ["--mode", "RGB", "--mean", "0.5", "--std", "0.25", "-c", "epsilon_plus_flat", "--dtype", "float64", "-q"]


def _crp():
    zs.require_zennit()  # zennit-crp imports zennit, which needs the torchvision shim here
    try:
        from crp.attribution import CondAttribution
        from crp.concepts import ChannelConcept
    except ImportError:
        pytest.skip(SKIP)
    from zennit.composites import EpsilonPlusFlat

    return CondAttribution, ChannelConcept, EpsilonPlusFlat


def _cnn() -> nn.Sequential:
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 4),
    ).eval()
    with torch.no_grad():
        model[-1].weight.mul_(4.0)  # logits of order 1
    return model


def _crp_run(model: nn.Module, x: torch.Tensor, target: int, layer: str, channels: list[int]):
    """zennit-crp on ``x``: the channel relevances at ``layer`` (N, C) and the heatmap of each channel (N, K, *x)."""
    CondAttribution, ChannelConcept, EpsilonPlusFlat = _crp()
    attribution = CondAttribution(model, no_param_grad=True)
    data = x.clone().requires_grad_(True)
    found = attribution(data, [{"y": [target]}], EpsilonPlusFlat(), record_layer=[layer])
    relevance = ChannelConcept().attribute(found.relevances[layer], abs_norm=False).detach()
    maps = []
    for channel in channels:
        data = x.clone().requires_grad_(True)
        attribution(data, [{"y": [target], layer: [channel]}], EpsilonPlusFlat())
        maps.append(data.grad.detach().clone())
    return relevance, torch.stack(maps, 1)


def _close(ours: np.ndarray, theirs: torch.Tensor) -> None:
    theirs = theirs.numpy()
    scale = np.abs(theirs).max()
    assert scale > 0 and np.abs(ours - theirs).max() <= RTOL * scale, np.abs(ours - theirs).max() / scale


@pytest.mark.parametrize("layer", ["0", "3"])
def test_api_concepts_equal_zennit_crp(layer):
    import lrpcli

    model = _cnn().double()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    channels = [0, 2, 4]
    relevance, maps = _crp_run(model, x, 1, layer, channels)
    found = lrpcli.concepts(model, x, layer, target=1, channels=channels, batch_size=4)  # conditions batched
    _close(found.relevance, relevance)
    _close(found.maps, maps)


def test_lrp_concepts_files_equal_zennit_crp(tmp_path):
    """The CLI's concepts.csv and conditional heatmaps (.npy) on images, against zennit-crp on the same pixels
    (preprocessed here with Pillow and numpy)."""
    _crp()
    model = _cnn()
    save_torchscript(model, tmp_path / "m.ts")
    names = [f"i{i}.png" for i in range(3)]
    for i, name in enumerate(names):
        write_image(tmp_path / "imgs" / name, 60 + i, size=(8, 8))
    run = lrp("concepts", tmp_path / "m.ts", tmp_path / "imgs", "--layer", "3", "--channels", "1,3", "--target", "2", *COMMON, out=tmp_path / "out")
    assert run.code == 0, run.describe()
    x = torch.stack([load_tensor(tmp_path / "imgs" / name, mean=[0.5] * 3, std=[0.25] * 3) for name in names]).double()
    relevance, maps = _crp_run(model.double(), x, 2, "3", [1, 3])
    rows = read_csv(tmp_path / "out" / "concepts.csv")
    table = np.array([[float(r["relevance"]) for r in rows if r["input"] == name] for name in names])
    _close(table, relevance)
    arrays = np.stack([np.stack([run.array(f"concepts/{name[:-4]}/3/{c}.npy") for c in (1, 3)]) for name in names])
    _close(arrays, maps)
