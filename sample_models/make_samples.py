"""Train and write lrpcli's sample models from offline data.

    python sample_models/make_samples.py            # both models
    python sample_models/make_samples.py digits     # one of: digits, shapes

Writes, next to this script:

- ``digits_cnn/``: ``lrpcli.architectures.DigitsCNN`` on scikit-learn's bundled 8x8 digits.
- ``shapes_minivgg/``: ``lrpcli.architectures.MiniVGG`` on ``lrpcli.samples.make_shapes``
  (generated 32x32 shapes whose masks are known), plus ``masks/`` for the sample images.

Each folder gets ``model.ts`` (TorchScript, scripted in eval mode), ``model.pt`` (state
dict), ``model.yaml`` / ``model_state_dict.yaml`` (model specs), ``classes.txt`` and
``images/`` (digits_cnn also ``heldout.npz``: its held-out split as uint8 images,
labels and dataset indices, for tests that run without scikit-learn). Seeds are fixed; the numbers may still differ in the last digits across
machines and thread counts. Needs scikit-learn (for the digits) and Pillow.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from lrpcli.sources.architectures import DigitsCNN, MiniVGG  # noqa: E402
from lrpcli.sources.samples import SHAPE_CLASSES, digits_split, load_digits, make_shapes  # noqa: E402

# Bias-free, so LRP-0 relevance sums exactly to the logit (`lrp check-conservation -c lrp_0`
# passes on it); it costs the digits no accuracy.
DIGITS_ARCH_KWARGS = {"num_classes": 10, "bias": False}

# Preprocessing the models were trained with: pixel / 255, then (x - mean) / std.
DIGITS_MEAN, DIGITS_STD = [0.5], [0.5]
SHAPES_MEAN, SHAPES_STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]

# Seeds: training data, held-out evaluation data and the shipped sample images all differ.
# Training sets use seeds 100, 101, ... (one per epoch).
SHAPES_TRAIN_SEED, SHAPES_TEST_SEED, SHAPES_SAMPLE_SEED = 100, 1, 2
SHAPES_WIDTH, SHAPES_EPOCHS, SHAPES_PER_EPOCH = 32, 5, 4000


def yaml_scalar(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def spec_text(title: str, model: str, arch: str | None, arch_kwargs: dict, mode: str, size: int,
              mean: list[float], std: list[float]) -> str:
    """A model spec file (YAML); paths in it are relative to the spec file."""

    def listing(values: list) -> str:
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"

    def line(text: str, comment: str = "") -> str:
        return (text.ljust(max(26, len(text) + 2)) + f"# {comment}" if comment else text) + "\n"

    lines = [f"# {title}\n", "# Paths are relative to this file. Regenerate: python sample_models/make_samples.py\n"]
    lines.append(line(f"model: {model}"))
    if arch:
        lines.append(line(f"arch: {arch}", "MODULE:CALLABLE that builds the network"))
        kwargs = ", ".join(f"{k}: {yaml_scalar(v)}" for k, v in arch_kwargs.items())
        lines.append(line(f"arch_kwargs: {{{kwargs}}}", "keyword arguments for arch"))
    lines.append("input:\n")
    lines.append(line(f"  mode: {mode}", "RGB or L (grayscale)"))
    lines.append(line(f"  size: {listing([size, size])}", "height, width the model takes"))
    lines.append(line(f"  mean: {listing(mean)}", "applied after scaling pixels to [0, 1]"))
    lines.append(line(f"  std: {listing(std)}", "x = (pixel / 255 - mean) / std"))
    lines.append(line("classes: classes.txt", "one class name per line, in output order"))
    return "".join(lines)


def normalise(pixels: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> normalised float tensor (N, C, H, W)."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


@contextlib.contextmanager
def dropout_off(model: nn.Module):
    """Train with dropout disabled, then restore the architecture's rates.

    With MiniVGG's dropout (0.35 after the first conv) training sat at chance on the
    shapes for the whole time budget; fresh data every epoch regularises instead.
    Dropout is the identity at inference, so the shipped model is an ordinary MiniVGG.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    rates = [m.p for m in layers]
    for m in layers:
        m.p = 0.0
    try:
        yield model
    finally:
        for m, p in zip(layers, rates):
            m.p = p


def train(
    model: nn.Module,
    data: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
    batch_size: int,
    lr: float,
    aux_classes: int = 0,
) -> None:
    """Adam with a cosine learning-rate decay; ``data(epoch)`` gives that epoch's (x, y).

    ``aux_classes`` > 0 adds a temporary auxiliary head (global max-pool of
    ``model.features`` -> linear) whose loss is added to the model's. Without it
    MiniVGG's flatten-linear classifier, which must learn every position separately,
    sits at chance for several epochs on the shapes; the pooled head trains the conv
    features within an epoch and the classifier follows. The head is thrown away.
    """
    x, y = data(0)
    head = None
    parameters = list(model.parameters())
    if aux_classes:
        with torch.no_grad():
            channels = model.features(x[:1]).shape[1]
        head = nn.Linear(channels, aux_classes)
        parameters += list(head.parameters())
    optimiser = torch.optim.Adam(parameters, lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    generator = torch.Generator().manual_seed(0)
    report_every = max(1, epochs // 6)
    model.train()
    for epoch in range(epochs):
        if epoch:
            x, y = data(epoch)
        order = torch.randperm(len(x), generator=generator)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            if head is None:
                logits = model(x[index])
                loss = nn.functional.cross_entropy(logits, y[index])
            else:
                features = model.features(x[index])
                logits = model.classifier(features)
                loss = nn.functional.cross_entropy(logits, y[index])
                aux = nn.functional.cross_entropy(head(features.amax(dim=(2, 3))), y[index])
            optimiser.zero_grad()
            (loss if head is None else loss + aux).backward()
            optimiser.step()
            schedule.step()
            total += len(index)
            correct += int((logits.argmax(1) == y[index]).sum())
            loss_sum += float(loss.detach()) * len(index)
        if (epoch + 1) % report_every == 0 or epoch + 1 == epochs:
            print(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f}, train accuracy {correct / total:.4f}", flush=True)
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    predictions = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((predictions == y).float().mean())


def save_model(
    model: nn.Module,
    folder: Path,
    *,
    classes: list[str],
    mode: str,
    size: int,
    mean: list[float],
    std: list[float],
    arch: str,
    arch_kwargs: dict,
    example: torch.Tensor,
) -> None:
    """Write both model forms, both specs and classes.txt; check the two forms agree."""
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    scripted = torch.jit.script(model)
    scripted.save(str(folder / "model.ts"))
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in classes))

    common = dict(arch_kwargs=arch_kwargs, mode=mode, size=size, mean=mean, std=std)
    (folder / "model.yaml").write_text(
        spec_text(f"{folder.name}: the TorchScript model", "model.ts", None, **common)
    )
    (folder / "model_state_dict.yaml").write_text(
        spec_text(f"{folder.name}: the same model as a state dict and its architecture", "model.pt", arch, **common)
    )

    # The shipped files must reproduce the trained model.
    loaded = torch.jit.load(str(folder / "model.ts"))
    rebuilt = type(model)(**arch_kwargs)
    rebuilt.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    rebuilt.eval()
    with torch.no_grad():
        reference = model(example)
        for other in (loaded(example), rebuilt(example)):
            if not torch.allclose(reference, other, atol=1e-5):
                raise SystemExit(f"{folder}: a saved model form does not reproduce the trained model")


def clear_pngs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()


def make_digits(out: Path) -> float:
    started = time.perf_counter()
    print("digits_cnn: DigitsCNN on scikit-learn's 8x8 digits", flush=True)
    images, labels = load_digits()
    pixels = np.rint(images * 255).astype(np.uint8)  # exactly what the shipped 8-bit PNGs hold
    training, held_out = digits_split(len(pixels))
    x, y = normalise(pixels, DIGITS_MEAN, DIGITS_STD), torch.from_numpy(labels)

    torch.manual_seed(0)
    model = DigitsCNN(**DIGITS_ARCH_KWARGS)
    train(model, lambda epoch: (x[training], y[training]), epochs=30, batch_size=32, lr=3e-3)
    acc = accuracy(model, x[held_out], y[held_out])
    print(f"  held-out accuracy: {acc:.4f} ({len(held_out)} images)", flush=True)

    folder = out / "digits_cnn"
    save_model(
        model, folder, classes=[str(d) for d in range(10)], mode="L", size=8,
        mean=DIGITS_MEAN, std=DIGITS_STD, arch="lrpcli.architectures:DigitsCNN",
        arch_kwargs=DIGITS_ARCH_KWARGS, example=x[held_out[:16]],
    )
    # The held-out split, so tests can measure accuracy without scikit-learn (23 KB).
    np.savez_compressed(folder / "heldout.npz", images=pixels[held_out], labels=labels[held_out], indices=held_out)
    save_digit_samples(folder, pixels, labels, held_out)
    print(f"  wrote {folder} in {time.perf_counter() - started:.1f} s", flush=True)
    return acc


def save_digit_samples(folder: Path, pixels: np.ndarray, labels: np.ndarray, held_out: np.ndarray) -> None:
    """Six different digits from the held-out split as PNGs in ``folder/images``."""
    clear_pngs(folder / "images")
    shown: set[int] = set()
    for index in held_out:
        if labels[index] in shown:
            continue
        shown.add(int(labels[index]))
        Image.fromarray(pixels[index]).save(folder / "images" / f"digit_{labels[index]}_idx{index}.png")
        if len(shown) == 6:
            break


def retitle_specs(folder: Path, script: str, extra: str = "") -> None:
    """Name ``script`` (not this file) as the generator in a folder's two specs, and append ``extra`` lines."""
    for spec in ("model.yaml", "model_state_dict.yaml"):
        path = folder / spec
        path.write_text(path.read_text().replace("make_samples.py", script) + extra)


def save_shape_samples(folder: Path, size: int, seed: int) -> None:
    """Two sample images of each shape class in ``folder/images`` and their masks in ``folder/masks``."""
    images, labels, masks = make_shapes(64, size=size, seed=seed)
    clear_pngs(folder / "images")
    clear_pngs(folder / "masks")
    for cls, name in enumerate(SHAPE_CLASSES):
        for index in np.flatnonzero(labels == cls)[:2]:
            filename = f"{name}_{index:02d}.png"
            Image.fromarray(images[index]).save(folder / "images" / filename)
            Image.fromarray(masks[index].astype(np.uint8) * 255).save(folder / "masks" / filename)


def make_shapes_model(out: Path) -> float:
    started = time.perf_counter()
    print(f"shapes_minivgg: MiniVGG(width={SHAPES_WIDTH}) on generated 32x32 shapes", flush=True)
    test_images, test_labels, _ = make_shapes(1000, seed=SHAPES_TEST_SEED)
    x_test = normalise(test_images, SHAPES_MEAN, SHAPES_STD)
    y_test = torch.from_numpy(test_labels)

    def fresh(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A new training set every epoch (generating is cheap; it stands in for dropout)."""
        images, labels, _ = make_shapes(SHAPES_PER_EPOCH, seed=SHAPES_TRAIN_SEED + epoch)
        return normalise(images, SHAPES_MEAN, SHAPES_STD), torch.from_numpy(labels)

    torch.manual_seed(0)
    model = MiniVGG(num_classes=len(SHAPE_CLASSES), width=SHAPES_WIDTH)
    with dropout_off(model):
        train(model, fresh, epochs=SHAPES_EPOCHS, batch_size=64, lr=1e-3, aux_classes=len(SHAPE_CLASSES))
    acc = accuracy(model, x_test, y_test)
    print(f"  held-out accuracy: {acc:.4f} ({len(y_test)} images, seed {SHAPES_TEST_SEED})", flush=True)

    folder = out / "shapes_minivgg"
    arch_kwargs = {"num_classes": len(SHAPE_CLASSES)}
    if SHAPES_WIDTH != 32:
        arch_kwargs["width"] = SHAPES_WIDTH
    save_model(
        model, folder, classes=list(SHAPE_CLASSES), mode="RGB", size=32,
        mean=SHAPES_MEAN, std=SHAPES_STD, arch="lrpcli.architectures:MiniVGG",
        arch_kwargs=arch_kwargs, example=x_test[:16],
    )
    save_shape_samples(folder, size=32, seed=SHAPES_SAMPLE_SEED)
    print(f"  wrote {folder} in {time.perf_counter() - started:.1f} s", flush=True)
    return acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", metavar="MODEL", help="digits and/or shapes (default: both)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: next to this script)")
    args = parser.parse_args(argv)
    which = args.which or ["digits", "shapes"]
    unknown = sorted(set(which) - {"digits", "shapes"})
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)} (choose from digits, shapes)")
    started = time.perf_counter()
    results = {}
    if "digits" in which:
        results["digits_cnn"] = make_digits(args.out)
    if "shapes" in which:
        results["shapes_minivgg"] = make_shapes_model(args.out)
    for name, acc in results.items():
        print(f"{name}: held-out accuracy {acc:.4f}")
    print(f"total time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
