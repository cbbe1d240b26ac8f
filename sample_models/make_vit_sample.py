"""Train and write the sample Vision Transformer (``digits_vit/``) on scikit-learn's 8x8 digits.

    python sample_models/make_vit_sample.py             # writes sample_models/digits_vit/
    python sample_models/make_vit_sample.py --out DIR   # somewhere else
    python sample_models/make_vit_sample.py --threads 1 # how the shipped model was made

``lrpcli.architectures.ViT`` (2x2 patches, a class token, two pre-norm blocks of two-head
self-attention, width 32) on the digits split of ``digits_cnn`` (the same held-out 360). It
exists for the transformer rules: ``lrp evaluate`` ranks ``attnlrp`` and ``cp_lrp`` on it
against gradient x input and random (benchmarks/evaluate_table.py, README). A ViT trained
from scratch on the 32x32 shapes stayed near chance (42 % after 16 epochs), on the digits it
reaches 96 % in half a minute on one thread. Reuses make_samples.py's training loop, save and
check code, and its digits sample images. Seeds are fixed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from lrpcli.sources.architectures import ViT  # noqa: E402
from lrpcli.sources.samples import digits_split, load_digits  # noqa: E402
from make_samples import DIGITS_MEAN, DIGITS_STD, accuracy, normalise, retitle_specs, save_digit_samples, save_model, train  # noqa: E402

EPOCHS, BATCH, LR = 40, 32, 2e-3
ARCH_KWARGS = {"num_classes": 10, "image_size": 8, "patch_size": 2, "in_channels": 1, "dim": 32, "depth": 2, "heads": 2}


def make_vit_model(out: Path, epochs: int = EPOCHS, name: str = "digits_vit") -> float:
    started = time.perf_counter()
    print(f"{name}: ViT {ARCH_KWARGS} on scikit-learn's 8x8 digits", flush=True)
    images, labels = load_digits()
    pixels = np.rint(images * 255).astype(np.uint8)  # exactly what the shipped 8-bit PNGs hold
    training, held_out = digits_split(len(pixels))
    x, y = normalise(pixels, DIGITS_MEAN, DIGITS_STD), torch.from_numpy(labels)

    torch.manual_seed(0)
    model = ViT(**ARCH_KWARGS)
    train(model, lambda epoch: (x[training], y[training]), epochs=epochs, batch_size=BATCH, lr=LR)
    acc = accuracy(model, x[held_out], y[held_out])
    print(f"  held-out accuracy: {acc:.4f} ({len(held_out)} images); trained in {time.perf_counter() - started:.0f} s", flush=True)

    folder = out / name
    save_model(
        model, folder, classes=[str(d) for d in range(10)], mode="L", size=8, mean=DIGITS_MEAN, std=DIGITS_STD,
        arch="lrpcli.architectures:ViT", arch_kwargs=ARCH_KWARGS, example=x[held_out[:16]],
    )
    retitle_specs(folder, "make_vit_sample.py", "composite: attnlrp        # the default composite for this model (AttnLRP)\n")
    save_digit_samples(folder, pixels, labels, held_out)  # the same six images digits_cnn shows
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
    make_vit_model(args.out, epochs=args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
