"""Issue #8: on a deep enough sample model, epsilon_plus_flat beats gradient x input and random on AOPC.

The two small image samples do not show it (benchmarks/evaluate_results.md): on shallow
ReLU networks gradient x input, a first-order Taylor reading of what pixel flipping does,
has the higher AOPC. ``sample_models/shapes_vgg`` (ten 3x3 convolutions with batch norm,
64x64 shapes) is deep enough for the ordering the literature reports (Samek et al. 2017;
Kohlbrenner et al. 2020) in one setting: pixels removed in 10 steps up to 100 %, replaced by
their blurred value. A study of 16 settings on two image seeds (sample_models/README.md,
"shapes_vgg") found it there on both seeds, clearly; it is not a law of every setting (with
zero or uniform replacement it does not hold).

The images come from a seed that neither the model (trained on 200..205, scored on 11,
sample images 12) nor the study (2024, 3031) used. The second test shows that the comparison
can fail: on shapes_minivgg the same setting puts gradient x input ahead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lrpcli.data.images import Preprocessing
from lrpcli.evaluate import Settings, evaluate
from lrpcli.sources.files import load_model, load_spec
from lrpcli.sources.samples import make_shapes

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
SEED = 4049
SETTING = dict(steps=10, patch=1, replace="blur")
METHODS = ("epsilon_plus_flat", "gradient_x_input", "random")


def run(name: str, count: int):
    spec_path = SAMPLES / name / "model.yaml"
    if not spec_path.is_file():
        pytest.skip(f"sample_models/{name} is not built")
    spec = load_spec(spec_path)
    preprocessing = Preprocessing.from_options(**{k: v for k, v in spec.input.items() if k in ("mode", "size", "mean", "std")})
    images, labels, _ = make_shapes(count, size=spec.input["size"][0], seed=SEED)
    x = torch.stack([preprocessing.tensor(image) for image in images])
    model = load_model(spec.model)
    with torch.no_grad():
        assert (model(x).argmax(1).numpy() == labels).mean() >= 0.95  # the model knows these shapes
    return evaluate(model, x, ["epsilon_plus_flat"], ("gradient_x_input", "random"), Settings(**SETTING), batch_size=count)


def aopc(result, method: str, key: str) -> np.ndarray:
    """Per-input MoRF AOPC; key "aopc" (logit) or "aopc_probability"."""
    return result.methods[method][key]["morf"]


def report(result, key: str) -> str:
    return ", ".join(f"{m} {aopc(result, m, key).mean():.3f}" for m in METHODS)


def test_epsilon_plus_flat_beats_gradient_x_input_and_random_on_shapes_vgg():
    result = run("shapes_vgg", 64)
    for key in ("aopc", "aopc_probability"):
        ours = aopc(result, "epsilon_plus_flat", key).mean()
        assert ours > aopc(result, "gradient_x_input", key).mean(), f"{key}: {report(result, key)}"
        assert ours > aopc(result, "random", key).mean(), f"{key}: {report(result, key)}"
    # and not by luck: the paired per-image difference to gradient x input is over two standard errors
    difference = aopc(result, "epsilon_plus_flat", "aopc") - aopc(result, "gradient_x_input", "aopc")
    error = difference.std(ddof=1) / np.sqrt(len(difference))
    assert difference.mean() > 2 * error, f"logit AOPC difference {difference.mean():.3f}, standard error {error:.3f}"


def test_the_comparison_can_fail_shapes_minivgg_puts_gradient_x_input_ahead():
    result = run("shapes_minivgg", 32)
    gradient, ours = aopc(result, "gradient_x_input", "aopc").mean(), aopc(result, "epsilon_plus_flat", "aopc").mean()
    assert gradient > ours, report(result, "aopc")


def test_attnlrp_beats_gradient_x_input_and_random_on_the_sample_vit():
    """digits_vit (lrpcli.architectures.ViT): AttnLRP's logit AOPC is above gradient x input's (by over two
    standard errors, paired per image) and CP-LRP's above random, pixels replaced by zero; in the blur
    setting CP-LRP falls below gradient x input (benchmarks/evaluate_results.md), so only AttnLRP is held to it."""
    spec_path = SAMPLES / "digits_vit" / "model.yaml"
    if not spec_path.is_file():
        pytest.skip("sample_models/digits_vit is not built")
    spec = load_spec(spec_path)
    preprocessing = Preprocessing.from_options(**{k: v for k, v in spec.input.items() if k in ("mode", "size", "mean", "std")})
    held = np.load(SAMPLES / "digits_cnn" / "heldout.npz")  # the ViT's held-out split too
    x = torch.stack([preprocessing.tensor(image[:, :, None]) for image in held["images"][:120]])
    result = evaluate(load_model(spec.model), x, ["attnlrp", "cp_lrp"], ("gradient_x_input", "random"), Settings(steps=10, patch=1, replace="zero"), batch_size=120)
    summary = ", ".join(f"{m} {aopc(result, m, 'aopc').mean():.3f}" for m in ("attnlrp", "cp_lrp", "gradient_x_input", "random"))
    difference = aopc(result, "attnlrp", "aopc") - aopc(result, "gradient_x_input", "aopc")
    error = difference.std(ddof=1) / np.sqrt(len(difference))
    assert difference.mean() > 2 * error, summary
    assert aopc(result, "cp_lrp", "aopc").mean() > aopc(result, "random", "aopc").mean(), summary
