"""AOPC table of the built-in composites and the baselines on the sample models (``lrp evaluate``'s numbers).

    python benchmarks/evaluate_table.py                 # prints the tables, writes benchmarks/evaluate_results.md
    python benchmarks/evaluate_table.py --digits 96 --shapes 32 --out /tmp/results.md
    python benchmarks/evaluate_table.py --models shapes_vgg --out /tmp/vgg.md   # one model only

Data: the digits model's held-out split (sample_models/digits_cnn/heldout.npz) and freshly
generated shapes (lrpcli.sources.samples.make_shapes at the model's input size, seed 2024, a seed
neither shapes model saw; their masks give the localisation column). Several perturbation
settings are run, so that no single setting's ranking is mistaken for the whole story.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrpcli import __version__  # noqa: E402
from lrpcli.engine.composite_yaml import load_composite  # noqa: E402
from lrpcli.data.images import Preprocessing  # noqa: E402
from lrpcli.evaluate import Evaluator, Settings  # noqa: E402
from lrpcli.sources.files import load_model, load_spec  # noqa: E402
from lrpcli.sources.samples import make_shapes  # noqa: E402

COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")
#: the transformer composites for the ViT (epsilon beside them: LRP-epsilon through attention with the CNN defaults)
COMPOSITES_BY_MODEL = {"digits_vit": ("attnlrp", "cp_lrp", "epsilon")}
SETTINGS = {
    "digits_cnn": [dict(patch=1, replace="zero"), dict(patch=1, replace="blur"), dict(patch=2, replace="mean")],
    "shapes_minivgg": [dict(patch=1, replace="zero"), dict(patch=4, replace="mean"), dict(patch=4, replace="blur"), dict(patch=4, replace="uniform")],
    # pixels + blur is the setting tests/test_evaluate_ordering.py holds; the others show where the ordering does not
    "shapes_vgg": [dict(patch=1, replace="zero"), dict(patch=1, replace="blur"), dict(patch=4, replace="blur"), dict(patch=8, replace="mean"), dict(patch=8, replace="uniform")],
    "digits_vit": [dict(patch=1, replace="zero"), dict(patch=1, replace="blur"), dict(patch=2, replace="mean")],
}


def sample(name: str, count: int) -> tuple[torch.Tensor, torch.Tensor | None, Preprocessing, object]:
    spec = load_spec(ROOT / "sample_models" / name / "model.yaml")
    preprocessing = Preprocessing.from_options(**{k: v for k, v in spec.input.items() if k in ("mode", "size", "mean", "std")})
    if name.startswith("digits"):
        held = np.load(ROOT / "sample_models" / "digits_cnn" / "heldout.npz")  # digits_vit: the same split
        pixels, masks = held["images"][:count, :, :, None], None
    else:
        images, _, shape_masks = make_shapes(count, size=spec.input["size"][0], seed=2024)
        pixels, masks = images, torch.from_numpy(shape_masks)
    x = torch.stack([preprocessing.tensor(p) for p in pixels])
    return x, masks, preprocessing, load_model(spec.model)


def run(name: str, count: int, steps: int, batch: int) -> list[dict]:
    x, masks, preprocessing, model = sample(name, count)
    low, high = preprocessing.bounds()
    chosen = COMPOSITES_BY_MODEL.get(name, COMPOSITES)
    composites = {c: load_composite(c).with_params(low=low, high=high) if c == "epsilon_gamma_box" else c for c in chosen}
    rows = []
    for options in SETTINGS[name]:
        settings = Settings(steps=steps, **options)
        started = time.perf_counter()
        evaluator = Evaluator(model, composites, ("gradient_x_input", "random"), settings)
        for start in range(0, x.shape[0], batch):
            part = slice(start, start + batch)
            evaluator.add(x[part], [str(i) for i in range(x.shape[0])][part], None if masks is None else masks[part])
        result = evaluator.result()
        seconds = time.perf_counter() - started
        for method in result.methods:
            summary = result.summary(method)
            rows.append({"sample": name, "inputs": x.shape[0], "seconds": seconds, **options, "method": method, **summary})
        print_rows([r for r in rows if r["patch"] == options["patch"] and r["replace"] == options["replace"]], f"{name}: {describe(options)}, {x.shape[0]} inputs, {steps} steps ({seconds:.1f}s)")
    return rows


def describe(options: dict) -> str:
    unit = "pixels" if options["patch"] == 1 else f"{options['patch']}x{options['patch']} patches"
    return f"{unit}, replace={options['replace']}"


COLUMNS = [
    ("method", "method", "{}"),
    ("aopc_morf", "AOPC logit", "{:.2f}"),
    ("gap", "gap logit", "{:.2f}"),
    ("aopc_probability_morf", "AOPC prob", "{:.3f}"),
    ("gap_probability", "gap prob", "{:.3f}"),
    ("confidence_morf_mean", "confidence (MoRF)", "{:.3f}"),
    ("relevance_mass_accuracy", "mass in mask", "{:.3f}"),
]


def markdown(rows: list[dict]) -> str:
    columns = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = ["| " + " | ".join(c[1] for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lower_is_better = {"confidence_morf_mean"}  # along MoRF: the decision should erode fast
    best = {
        key: (min if key in lower_is_better else max)(r[key] for r in rows if r.get(key) is not None) for key, _, _ in columns[1:]
    }
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            text = "-" if value is None else fmt.format(value)
            cells.append(f"**{text}**" if key in best and value is not None and value == best[key] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_rows(rows: list[dict], title: str) -> None:
    print(f"\n## {title}\n")
    print(markdown(rows))
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", type=int, default=360, help="held-out digits to use (default: all 360)")
    parser.add_argument("--shapes", type=int, default=128, help="generated shapes to use (each shapes model)")
    parser.add_argument("--models", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="which sample models (default: all)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "evaluate_results.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    rows = []
    for name in args.models:
        rows += run(name, args.digits if name.startswith("digits") else args.shapes, args.steps, args.batch)
    total = time.perf_counter() - started
    allocator = "jemalloc (LD_PRELOAD)" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc (default)"
    header = [
        "# `lrp evaluate` on the sample models",
        "",
        f"Generated by `python benchmarks/evaluate_table.py --digits {args.digits} --shapes {args.shapes} --steps {args.steps}"
        f"{'' if args.models == list(SETTINGS) else ' --models ' + ' '.join(args.models)}` "
        f"on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU core(s), torch threads {torch.get_num_threads()}, {allocator}",
        f"- python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, lrpcli {__version__}, {platform.platform()}",
        f"- total time {total:.0f}s",
        "",
        "Target: the class predicted on the clean input. AOPC = mean over the L+1 steps of f(x) - f(x_k), averaged",
        "over inputs (Samek et al. 2017), on the logit and on the softmax probability; gap = AOPC(MoRF) - AOPC(LeRF),",
        "the area between the LeRF and MoRF curves. Higher is better for both. confidence = seed 003's",
        "(p_max - p_2nd) / p_max, averaged along the MoRF curve (lower: the decision erodes faster). mass in mask =",
        "share of the positive relevance inside the shape (shapes only; the mask covers about 9 % of the image,",
        "which is what a random attribution gets). Best value per column in bold (lowest for confidence).",
        "",
        "How to read it: on these ReLU networks `epsilon` and gradient x input give the same relevance (LRP-epsilon",
        "with a tiny epsilon is gradient x input), so their rows coincide. Gradient x input is a first-order Taylor",
        "reading of exactly what pixel flipping does, and it has the highest logit AOPC on the digits in every setting",
        "and on the shapes in three of four. `epsilon_plus_flat` beats the random baseline clearly on the digits; on the shapes it",
        "beats it on the probability AOPC and the gap, while its logit AOPC is not above random with the zero and",
        "uniform replacements (there, removing regions at random lowers the logit about as much). Where",
        "`epsilon_plus_flat` leads is the probability MoRF-LeRF gap on the shapes (zero, mean, uniform replacement): it",
        "also knows which regions do not matter.",
        "",
        "`shapes_vgg` (ten convolutions with batch norm, 64x64 shapes) is deeper. There `epsilon_plus_flat` has a clearly",
        "higher AOPC (logit and probability) than gradient x input and random when pixels are replaced by their blurred",
        "value (the ordering `tests/test_evaluate_ordering.py` holds on fresh images); with 8x8 patches and mean replacement",
        "it leads on the logit AOPC. It is not a law of every setting: with zero replacement gradient x input is level",
        "or ahead, with 4x4 blurred patches the two are level, and with 8x8 patches of uniform noise `epsilon_plus_flat`",
        "is far ahead of gradient x input but only narrowly ahead of random (sample_models/README.md has the study of 16",
        "settings on two image seeds). The full numbers follow; nothing was tuned for them.",
    ]
    sections = []
    for name in args.models:
        for options in SETTINGS[name]:
            chosen = [r for r in rows if r["sample"] == name and r["patch"] == options["patch"] and r["replace"] == options["replace"]]
            sections += ["", f"## {name}: {describe(options)} ({chosen[0]['inputs']} inputs, {chosen[0]['seconds']:.1f}s)", "", markdown(chosen)]
    args.out.write_text("\n".join(header + sections) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
