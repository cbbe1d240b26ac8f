"""Train and write the deeper shapes sample model (``shapes_vgg/``) from generated data.

    python sample_models/make_deep_samples.py             # writes sample_models/shapes_vgg/
    python sample_models/make_deep_samples.py --out DIR   # somewhere else
    python sample_models/make_deep_samples.py --threads 1 # how the shipped model was made

``lrpcli.architectures.VGG`` with ten 3x3 convolutions in four blocks, each followed by
batch norm, and a three-layer classifier, on 64x64 shapes from ``lrpcli.samples.make_shapes``.
It exists for the evaluation: on the two small image samples gradient x input has the
higher AOPC, while on deeper VGG-style nets the literature (Samek et al. 2017; Kohlbrenner
et al. 2020) finds composite LRP ahead; this model lets both be measured on data whose
evidence is known (tests/test_evaluate_ordering.py, benchmarks/evaluate_table.py).

Batch norm because the same network without it sat at chance (loss ln 4 for three epochs,
with PyTorch's default and with He initialisation); lrpcli folds it into the convolutions
before explaining. Reuses make_samples.py's training loop (auxiliary global-max-pool head,
dropout off, Adam with cosine decay), its save/check code and its spec writer. About 5
minutes on one CPU thread. Seeds are fixed; the numbers may still differ in the last digits
across machines and thread counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from lrpcli.sources.architectures import VGG  # noqa: E402
from lrpcli.sources.samples import SHAPE_CLASSES, make_shapes  # noqa: E402
from make_samples import SHAPES_MEAN, SHAPES_STD, accuracy, dropout_off, normalise, retitle_specs, save_model, save_shape_samples, train  # noqa: E402

SIZE = 64
# Seeds: training 200, 201, ... (one per epoch), held-out accuracy 11, sample images 12.
# The tests and the benchmark use 2024 and up, which no model here saw.
TRAIN_SEED, TEST_SEED, SAMPLE_SEED = 200, 11, 12
EPOCHS, PER_EPOCH, BATCH, LR = 6, 4000, 64, 1e-3
ARCH_KWARGS = {
    "cfg": [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M"],
    "batch_norm": True,
    "num_classes": len(SHAPE_CLASSES),
    "hidden": 256,
    "pool_size": 4,
}


class Trainable(nn.Module):
    """VGG seen the way make_samples.train wants it: ``features`` then ``classifier``.

    VGG puts its avgpool and flatten between the two; this view shares the modules (and so
    trains the model itself) and lets train's auxiliary head read ``features``.
    """

    def __init__(self, model: VGG):
        super().__init__()
        self.model = model
        self.features = model.features
        self.classifier = nn.Sequential(model.avgpool, nn.Flatten(), model.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build(arch_kwargs: dict = ARCH_KWARGS) -> VGG:
    kwargs = dict(arch_kwargs)
    kwargs["cfg"] = tuple(kwargs["cfg"])
    return VGG(**kwargs)


def make_vgg_model(out: Path, epochs: int = EPOCHS, per_epoch: int = PER_EPOCH, arch_kwargs: dict = ARCH_KWARGS,
                   name: str = "shapes_vgg") -> float:
    started = time.perf_counter()
    print(f"{name}: VGG {arch_kwargs} on generated {SIZE}x{SIZE} shapes", flush=True)
    test_images, test_labels, _ = make_shapes(1000, size=SIZE, seed=TEST_SEED)
    x_test, y_test = normalise(test_images, SHAPES_MEAN, SHAPES_STD), torch.from_numpy(test_labels)

    def fresh(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = make_shapes(per_epoch, size=SIZE, seed=TRAIN_SEED + epoch)
        return normalise(images, SHAPES_MEAN, SHAPES_STD), torch.from_numpy(labels)

    torch.manual_seed(0)
    model = build(arch_kwargs)
    with dropout_off(model):
        train(Trainable(model), fresh, epochs=epochs, batch_size=BATCH, lr=LR, aux_classes=len(SHAPE_CLASSES))
    trained = time.perf_counter() - started
    acc = accuracy(model, x_test, y_test)
    print(f"  held-out accuracy: {acc:.4f} ({len(y_test)} images, seed {TEST_SEED}); trained in {trained:.0f} s", flush=True)

    folder = out / name
    save_model(
        model, folder, classes=list(SHAPE_CLASSES), mode="RGB", size=SIZE, mean=SHAPES_MEAN, std=SHAPES_STD,
        arch="lrpcli.architectures:VGG", arch_kwargs=arch_kwargs, example=x_test[:16],
    )
    retitle_specs(folder, "make_deep_samples.py")
    save_shape_samples(folder, size=SIZE, seed=SAMPLE_SEED)
    print(f"  wrote {folder} in {time.perf_counter() - started:.1f} s", flush=True)
    return acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: next to this script)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice; the shipped model: 1)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    make_vgg_model(args.out, epochs=args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
