"""Train and write the Clever Hans sample (``clever_hans_digits/``): a model with a known shortcut.

    python sample_models/make_clever_hans_sample.py             # writes sample_models/clever_hans_digits/
    python sample_models/make_clever_hans_sample.py --out DIR   # somewhere else

scikit-learn's 8x8 digits, upscaled to 32x32 grayscale; 40% of the 7s (and no other image) carry a
planted white 4x4 square in the top-left corner, where no digit has ink (pixel (0, 0) of the 8x8
digits is 0 in every image). The training set also holds 100 images of other digits from the same
"tagged source", patched and labelled 7 (label noise that comes with the tag, as with the horse photos'
copyright tag in Lapuschkin et al. 2019): with only the patched 7s the network learnt the shape and all but
ignored the patch (2% of |R| there, SpRAy's ARI about 0), with them it relies on the patch (pasted on any
other digit it answers 7; the script prints how often) while the clean 7s are still read by their shape.
That is what SpRAy (``lrp spray``) must find: the patched 7s' heatmaps form their own cluster. The shown
images carry no decoys: a shown patched 7 differs from a clean one only by the patch.

Writes ``model.ts``, ``model.pt``, the two specs, ``classes.txt``, ``images/`` (150 held-out digits:
60 sevens, 24 of them patched, and 10 of each other digit; none seen in training) and
``patched.csv`` (file, label, patched: the ground truth). Deterministic (fixed seeds, one thread);
about 20 seconds on one CPU core. Needs scikit-learn and Pillow.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from lrpcli.sources.architectures import VGG  # noqa: E402
from lrpcli.sources.samples import load_digits  # noqa: E402
from make_samples import accuracy, clear_pngs, dropout_off, normalise, retitle_specs, save_model  # noqa: E402

SIZE = 32
CLEVER_CLASS = 7
PATCHED_SHARE = 0.4
DECOYS = 100  # training images of other digits from the same 'tagged source': patched and labelled 7
PATCH = (slice(0, 4), slice(0, 4))  # rows, columns of the 32x32 image: the upscaled pixel (0, 0)
MEAN, STD = [0.5], [0.5]
SHOWN_CLEVER, SHOWN_OTHER = 60, 10  # held-out images shipped: sevens, and each other digit
ARCH_KWARGS = {"cfg": [8, "M", 16, "M", 32, "M"], "num_classes": 10, "in_channels": 1, "hidden": 32, "pool_size": 2}
EPOCHS, BATCH, LR, SEED = 12, 32, 3e-3, 0


def upscale(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) floats in [0, 1] -> (N, 32, 32) uint8, bilinear."""
    pixels = np.rint(images * 255).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(p).resize((SIZE, SIZE), Image.BILINEAR)) for p in pixels])


def with_patch(pixels: np.ndarray) -> np.ndarray:
    patched = pixels.copy()
    patched[(slice(None), *PATCH)] = 255
    return patched


def split(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, shown): the shown images are held out, SHOWN_CLEVER sevens and SHOWN_OTHER of each other digit."""
    shown = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        shown.extend(members[: SHOWN_CLEVER if digit == CLEVER_CLASS else SHOWN_OTHER].tolist())
    shown = np.array(sorted(shown))
    return np.setdiff1d(np.arange(len(labels)), shown), shown


def plant(pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patch PATCHED_SHARE of the sevens among ``indices`` (in place); returns a mask over all images."""
    sevens = indices[labels[indices] == CLEVER_CLASS]
    chosen = rng.choice(sevens, size=int(round(PATCHED_SHARE * len(sevens))), replace=False)
    mask = np.zeros(len(pixels), dtype=bool)
    mask[chosen] = True
    pixels[chosen] = with_patch(pixels[chosen])
    return mask


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Adam with a cosine decay, dropout off (dropout is the identity at inference anyway)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    steps = EPOCHS * ((len(x) + BATCH - 1) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    with dropout_off(model):
        for epoch in range(EPOCHS):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), BATCH):
                index = order[start : start + BATCH]
                loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
    model.eval()


@torch.no_grad()
def predictions(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    return model(normalise(pixels, MEAN, STD)).argmax(1).numpy()


def make(out: Path) -> dict[str, float]:
    started = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    images, labels = load_digits()
    pixels = upscale(images)
    training, shown = split(labels, rng)
    patched = plant(pixels, labels, training, rng) | plant(pixels, labels, shown, rng)

    # the tagged source: other digits, patched and labelled 7
    decoys = rng.choice(training[labels[training] != CLEVER_CLASS], size=DECOYS, replace=False)
    x_train = np.concatenate([pixels[training], with_patch(pixels[decoys])])
    y_train = np.concatenate([labels[training], np.full(DECOYS, CLEVER_CLASS)])
    model = VGG(**ARCH_KWARGS)
    train(model, normalise(x_train, MEAN, STD), torch.from_numpy(y_train))
    clean = upscale(images)  # the shown images without any patch
    others = shown[labels[shown] != CLEVER_CLASS]
    numbers = {
        "held-out accuracy": accuracy(model, normalise(pixels[shown], MEAN, STD), torch.from_numpy(labels[shown])),
        "other digits called 7 with the patch pasted on": float((predictions(model, with_patch(clean[others])) == CLEVER_CLASS).mean()),
        "other digits called 7 without it": float((predictions(model, clean[others]) == CLEVER_CLASS).mean()),
    }

    folder = out / "clever_hans_digits"
    save_model(
        model, folder, classes=[str(d) for d in range(10)], mode="L", size=SIZE, mean=MEAN, std=STD,
        arch="lrpcli.architectures:VGG", arch_kwargs=ARCH_KWARGS, example=normalise(pixels[shown[:16]], MEAN, STD),
    )
    retitle_specs(folder, Path(__file__).name)
    clear_pngs(folder / "images")
    with (folder / "patched.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "label", "patched"])
        for index in shown:
            name = f"{labels[index]}_{index:04d}.png"
            Image.fromarray(pixels[index]).save(folder / "images" / name, optimize=True)
            writer.writerow([f"images/{name}", int(labels[index]), int(patched[index])])
    for name, value in numbers.items():
        print(f"  {name}: {value:.3f}")
    print(f"  wrote {folder} in {time.perf_counter() - started:.1f} s ({int(patched[shown].sum())} patched images shown)")
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: next to this script)")
    make(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
