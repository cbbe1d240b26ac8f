"""How fast is lrpcli? Engine time and peak memory against a plain gradient, zennit and captum,
and the `lrp explain` pipeline against the engine alone.

    python benchmarks/speed.py                 # everything (~20 min on 2 cores), writes benchmarks/results.md
    python benchmarks/speed.py --quick         # MiniVGG only, fewer repetitions (a smoke run)
    python benchmarks/speed.py --only "VGG16 b8" --no-memory --no-pipeline

Needs zennit 0.5.1 and captum 0.9.0 for their columns (``pip install --no-deps zennit==0.5.1
captum==0.9.0 && pip install tqdm``); without them those columns say "n/a".

Method: every configuration (model, batch) times all methods round-robin in one process of its own:
one warm-up call each (lrpcli captures its graph there), then ``--reps`` rounds, and the
median per method. The plain gradient is ``d logit[target] / d x * x`` with the model's
parameters frozen (no weight gradients), the cheapest "explanation" there is. Peak
memory is measured per (configuration, method) in a fresh process: the high-water
mark of the resident set (``VmHWM``) during one call after a warm-up call, minus the
resident set before the first call (so lrpcli's cached modified weights count).
Those processes set ``MALLOC_MMAP_THRESHOLD_=131072`` so glibc hands freed tensors
back to the OS and the resident set follows the live tensors.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # zennit_support: zennit's composites and model twins

from lrpcli import Explainer, __version__  # noqa: E402
from lrpcli.sources.architectures import MiniVGG, resnet18, vgg16, vgg16_bn  # noqa: E402

COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")
BOUNDS = {"low": -3.0, "high": 3.0}  # z^B bounds for inputs ~ N(0, 1); the same for lrpcli and zennit
#: the issue's targets: lrpcli time / plain gradient time, per composite
TARGETS = {"epsilon": 1.25, "epsilon_plus_flat": 1.6, "epsilon_gamma_box": 1.6, "epsilon_alpha2_beta1_flat": 2.0}
PIPELINE_REPS = 3
TARGET_CONFIGS = ("VGG16 b8", "MiniVGG b64")
ZENNIT_SPEEDUP_TARGET = 2.5  # on epsilon_plus_flat
MEMORY_TARGET = 1.3


@dataclass(frozen=True)
class Config:
    model: str
    batch: int
    reps: int

    @property
    def name(self) -> str:
        return f"{self.model} b{self.batch}"


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], int]] = {
    "MiniVGG": (lambda: MiniVGG(num_classes=10), 32),
    "VGG16": (vgg16, 224),
    "VGG16-BN": (vgg16_bn, 224),
    "ResNet-18": (resnet18, 224),
}


def configs(quick: bool, reps: int | None) -> list[Config]:
    small, large = (reps or (5 if quick else 7)), (reps or 3)
    chosen = [Config("MiniVGG", b, small) for b in (1, 16, 64)]
    if not quick:
        chosen += [Config(m, b, large) for m in ("VGG16", "VGG16-BN", "ResNet-18") for b in (1, 8)]
    return chosen


def build(config: Config) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model (seeded; batch-norm statistics randomised so folding matters), a batch and its targets."""
    torch.manual_seed(0)
    make, size = MODELS[config.model]
    model = make().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    x = torch.randn(config.batch, 3, size, size, generator=generator)
    with torch.no_grad():  # (not inference mode: the gradient methods use these targets with autograd)
        targets = model(x).argmax(1)
    return model, x, targets


# --------------------------------------------------------------------------- the methods


def method_names(config: Config) -> list[str]:
    names = ["forward", "gradient"] + [f"lrpcli {c}" for c in COMPOSITES] + [f"zennit {c}" for c in COMPOSITES]
    if config.model not in ("ResNet-18",):  # captum's LRP has no rule for a residual addition
        names.append("captum epsilon")
    return names


def make_method(name: str, model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Callable[[], Any] | None:
    """A no-argument callable that runs one method once, or None where it is not available."""
    if name == "forward":

        def forward():
            with torch.inference_mode():
                return model(x)

        return forward
    if name == "gradient":

        def gradient():
            leaf = x.clone().requires_grad_()
            model(leaf).gather(1, targets[:, None]).sum().backward()
            return leaf.grad * leaf

        return gradient
    tool, composite = name.split(" ", 1)
    if tool == "lrpcli":
        explainer = Explainer(model, composite, params=BOUNDS if "box" in composite else None)
        return lambda: explainer.explain(x, targets).relevance
    if tool == "zennit":
        return _zennit_method(model, x, targets, composite)
    if tool == "captum":
        return _captum_method(model, x, targets)
    raise ValueError(name)


def _zennit_method(model, x, targets, composite):
    try:
        import zennit_support as zs

        zs.import_zennit()
        from zennit.attribution import Gradient
    except ModuleNotFoundError:
        return None
    twin, canonizers = zs.zennit_twin(model)
    twin = twin.eval().requires_grad_(False)
    attributor = Gradient(model=twin, composite=zs.zennit_composite(composite, canonizers=canonizers, **BOUNDS))
    attributor.__enter__()  # hooks stay registered for the life of this process
    with torch.inference_mode():
        classes = model(x[:1]).shape[1]
    one_hot = torch.zeros(x.shape[0], classes)
    one_hot[torch.arange(x.shape[0]), targets] = 1.0
    return lambda: attributor(x.clone().requires_grad_(), one_hot)[1]


class _FunctionalFlatten(torch.nn.Module):
    """MiniVGG with its nn.Flatten as a function call: captum's hooks fail on a Flatten module."""

    def __init__(self, model: MiniVGG):
        super().__init__()
        self.features = copy.deepcopy(model.features)
        self.classifier = torch.nn.Sequential(*[copy.deepcopy(m) for m in model.classifier if not isinstance(m, torch.nn.Flatten)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _captum_method(model, x, targets):
    try:
        from captum.attr import LRP
    except ModuleNotFoundError:
        return None
    twin = _FunctionalFlatten(model) if isinstance(model, MiniVGG) else copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False  # captum's hooks cannot follow in-place ReLUs
    lrp = LRP(twin)
    return lambda: lrp.attribute(x.clone().requires_grad_(), target=targets)


# --------------------------------------------------------------------------- timing


def time_config(config: Config, log: Callable[[str], None]) -> dict[str, float | None]:
    model, x, targets = build(config)
    methods: dict[str, Callable | None] = {}
    for name in method_names(config):
        methods[name] = make_method(name, model, x, targets)
    for name, run in list(methods.items()):
        if run is None:
            continue
        try:
            run()  # warm-up (lrpcli captures its graph here)
        except Exception as exc:  # a tool that cannot run this model: say so in the table
            log(f"  {name}: failed ({type(exc).__name__}: {str(exc)[:120]})")
            methods[name] = None
    samples: dict[str, list[float]] = {name: [] for name, run in methods.items() if run is not None}
    for _ in range(config.reps):
        for name in samples:
            start = time.perf_counter()
            methods[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: (statistics.median(samples[name]) if name in samples else None) for name in methods}


def timing_probe(config_name: str, reps: int) -> None:
    """Child process: time one configuration and print the medians as JSON (a fresh process per
    configuration, so models, twins and hooks of one configuration cannot pile up in memory)."""
    model_name, batch = config_name.rsplit(" b", 1)
    times = time_config(Config(model_name, int(batch), reps), lambda message: print(message, file=sys.stderr, flush=True))
    print(json.dumps(times))


def time_in_child(config: Config) -> dict[str, float | None]:
    result = subprocess.run(
        [sys.executable, __file__, "--timing-probe", config.name, str(config.reps)], stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"timing {config.name} failed with exit code {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_probe(config_name: str, method: str) -> None:
    """Child process: print the peak resident memory (MiB) one call of ``method`` adds."""
    model_name, batch = config_name.rsplit(" b", 1)
    config = Config(model_name, int(batch), 1)
    model, x, targets = build(config)
    before = _rss_kib("VmRSS")
    run = make_method(method, model, x, targets)
    if run is None:
        print(json.dumps({"peak_mib": None}))
        return
    run()
    held = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    run()
    print(json.dumps({"peak_mib": (_rss_kib("VmHWM") - held) / 1024, "held_mib": (held - before) / 1024}))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(config_name: str, method: str) -> float | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    result = subprocess.run(
        [sys.executable, __file__, "--memory-probe", config_name, method], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


# --------------------------------------------------------------------------- the pipeline


def pipeline(count: int, log: Callable[[str], None]) -> dict[str, float]:
    """`lrp explain` on ``count`` 32x32 images: engine alone vs the whole pipeline (in-process and CLI)."""
    import numpy as np
    from PIL import Image

    from lrpcli.cli.options import build_composite, load_model_option, spec_preprocessing
    from lrpcli.data.images import ImageDataset, collect_images
    from lrpcli.sources.files import load_spec
    from lrpcli.runs.choices import TargetSpec
    from lrpcli.runs.images import ImageRunOptions, explain_images
    from lrpcli.sources.samples import make_shapes

    spec_path = ROOT / "sample_models" / "shapes_minivgg" / "model.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        images, _, _ = make_shapes(count, size=32, seed=7)
        for index, image in enumerate(images):
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / f"img_{index:05d}.png")
        spec = load_spec(spec_path)
        preprocessing = spec_preprocessing(spec)
        composite = build_composite(None, spec, {}, preprocessing)
        explainer = Explainer(load_model_option(str(spec_path), spec, {}), composite)
        items = collect_images([str(folder)])
        dataset = ImageDataset(items, preprocessing)
        batches = [torch.stack([dataset[i][1] for i in range(s, min(s + 16, count))]) for s in range(0, count, 16)]
        explainer.explain(batches[0])  # capture (both timings below start warm)

        engines, runners = [], []
        for rep in range(PIPELINE_REPS):  # interleaved, so that a slow spell of the machine hits both alike
            start = time.perf_counter()
            for batch in batches:
                explainer.explain(batch)
            engines.append(time.perf_counter() - start)
            options = ImageRunOptions(out=Path(tmp) / f"out{rep}")
            start = time.perf_counter()
            explain_images(explainer, items, preprocessing, options, TargetSpec.parse(None))
            runners.append(time.perf_counter() - start)
            log(f"  pipeline rep {rep + 1}: engine {engines[-1]:.2f}s, explain_images {runners[-1]:.2f}s")
        engine, runner = statistics.median(engines), statistics.median(runners)
        ratios = sorted(r / e for r, e in zip(runners, engines))

        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "lrpcli.cli", "explain", str(spec_path), str(folder), "-o", str(Path(tmp) / "cli"), "-q"],
            check=True,
        )
        cli = time.perf_counter() - start
    log(f"  pipeline: engine {engine:.2f}s, explain_images {runner:.2f}s, CLI {cli:.2f}s")
    return {"images": count, "engine": engine, "runner": runner, "cli": cli, "ratios": ratios}


# --------------------------------------------------------------------------- the report


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "lrpcli": __version__}
    for name in ("zennit", "captum"):
        try:
            from importlib.metadata import version

            found[name] = version(name)
        except Exception:
            found[name] = "not installed"
    return found


def report(times: dict[str, dict], memory: dict[tuple[str, str], float | None], pipe: dict | None) -> str:
    lines = [
        "# lrpcli speed benchmark",
        "",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores ({platform.processor() or platform.platform()}), "
        f"torch threads {torch.get_num_threads()}, device cpu  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()) + "  ",
        "Command: `python benchmarks/speed.py` (one run; all numbers below come from it)",
        "",
        "Times are medians after one warm-up call, all methods of a configuration timed round-robin in one "
        "process (default glibc allocator). *gradient* = d logit/dx * x with frozen parameters. "
        "Ratios: lrpcli / gradient, and zennit / lrpcli (= lrpcli's speed-up). "
        "Inputs 224x224 for VGG16/ResNet-18, 32x32 for MiniVGG; zbox bounds [-3, 3]. "
        "zennit runs its composites of the same names (for `epsilon`: Epsilon on every layer, as lrpcli's) "
        "on a twin with batch-norm merging canonizers (and explicit Sum modules in ResNet blocks); captum's LRP "
        "(epsilon rules) is compared with lrpcli's `epsilon`; it has no rule for residual adds, so no ResNet "
        "column, and it needs MiniVGG's Flatten as a function and ReLUs not in place.",
        "",
        "## Time",
        "",
        "| config | forward | gradient | composite | lrpcli | lrpcli/grad | zennit | zennit/lrpcli | captum |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, result in times.items():
        for index, composite in enumerate(COMPOSITES):
            ours, theirs = result.get(f"lrpcli {composite}"), result.get(f"zennit {composite}")
            captum = result.get("captum epsilon") if composite == "epsilon" else None
            captum_text = _fmt(captum) if composite == "epsilon" and "captum epsilon" in result else ""
            lines.append(
                f"| {config if index == 0 else ''} | {_fmt(result['forward']) if index == 0 else ''} | "
                f"{_fmt(result['gradient']) if index == 0 else ''} | {composite} | {_fmt(ours)} | "
                f"{_ratio(ours, result['gradient'])} | {_fmt(theirs)} | {_ratio(theirs, ours)} | {captum_text} |"
            )
    lines += ["", "## Targets (issue #7)", "", "| config | check | target | measured | verdict |", "|---|---|---|---|---|"]
    for config in TARGET_CONFIGS:
        result = times.get(config)
        if not result:
            continue
        for composite, limit in TARGETS.items():
            lines.append(_verdict(config, f"lrpcli {composite} / gradient", limit, result.get(f"lrpcli {composite}"), result["gradient"]))
        ours, theirs = result.get("lrpcli epsilon_plus_flat"), result.get("zennit epsilon_plus_flat")
        if ours and theirs:
            speedup = theirs / ours
            verdict = "met" if speedup >= ZENNIT_SPEEDUP_TARGET else f"missed by {(ZENNIT_SPEEDUP_TARGET / speedup - 1) * 100:.0f}%"
            lines.append(f"| {config} | zennit / lrpcli, epsilon_plus_flat | >= {ZENNIT_SPEEDUP_TARGET}x | {speedup:.2f}x | {verdict} |")
        for composite in COMPOSITES:
            ours_mem, grad_mem = memory.get((config, f"lrpcli {composite}")), memory.get((config, "gradient"))
            lines.append(_verdict(config, f"peak memory lrpcli {composite} / gradient", MEMORY_TARGET, ours_mem, grad_mem))
    if memory:
        lines += ["", "## Peak memory (MiB added by one call, fresh process each)", ""]
        methods = sorted({method for _, method in memory}, key=lambda m: (not m.startswith("gradient"), m))
        lines += ["| config | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for config in sorted({config for config, _ in memory}):
            cells = [memory.get((config, m)) for m in methods]
            lines.append(f"| {config} | " + " | ".join("n/a" if c is None else f"{c:.0f}" for c in cells) + " |")
    if pipe:
        ratio = pipe["runner"] / pipe["engine"]
        spread = ", ".join(f"{r:.2f}x" for r in pipe.get("ratios", []))
        lines += [
            "",
            f"## Pipeline: `lrp explain` on {pipe['images']} 32x32 images (shapes MiniVGG, batch 16)",
            "",
            "| engine only (same batches, pre-decoded) | explain_images (decode + explain + PNG/NPY + summary) | ratio | target | CLI process (incl. start-up, capture) |",
            "|---|---|---|---|---|",
            f"| {_fmt(pipe['engine'])} | {_fmt(pipe['runner'])} | {ratio:.2f}x | <= 1.15x: "
            f"{'met' if ratio <= 1.15 else f'missed by {(ratio / 1.15 - 1) * 100:.0f}%'} | {_fmt(pipe['cli'])} |",
            "",
            f"Medians of {len(pipe.get('ratios', []))} interleaved repetitions; the ratio of each pair: {spread}.",
        ]
    return "\n".join(lines) + "\n"


def _verdict(config: str, check: str, limit: float, value: float | None, base: float | None) -> str:
    if value is None or not base:
        return f"| {config} | {check} | <= {limit}x | n/a | not measured |"
    ratio = value / base
    verdict = "met" if ratio <= limit else f"missed by {(ratio / limit - 1) * 100:.0f}%"
    return f"| {config} | {check} | <= {limit}x | {ratio:.2f}x | {verdict} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniVGG only, fewer repetitions")
    parser.add_argument("--reps", type=int, help="timed rounds per configuration")
    parser.add_argument("--only", action="append", help='a configuration to run, e.g. "VGG16 b8" (repeatable)')
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--images", type=int, default=2000, help="images for the pipeline benchmark")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.md"))
    parser.add_argument("--memory-probe", nargs=2, metavar=("CONFIG", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--timing-probe", nargs=2, metavar=("CONFIG", "REPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return
    if args.timing_probe:
        timing_probe(args.timing_probe[0], int(args.timing_probe[1]))
        return

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    chosen = [c for c in configs(args.quick, args.reps) if not args.only or c.name in args.only]
    times: dict[str, dict] = {}
    for config in chosen:
        log(f"timing {config.name} ({config.reps} rounds)")
        times[config.name] = time_in_child(config)
        for name, value in times[config.name].items():
            log(f"  {name:<36} {_fmt(value)}")
    memory: dict[tuple[str, str], float | None] = {}
    if not args.no_memory:
        for config in chosen:
            if config.name not in TARGET_CONFIGS:
                continue
            for method in ["gradient"] + [f"lrpcli {c}" for c in COMPOSITES] + ["zennit epsilon_plus_flat"]:
                memory[(config.name, method)] = measure_memory(config.name, method)
                log(f"  memory {config.name} {method}: {memory[(config.name, method)]}")
    pipe = None if args.no_pipeline else pipeline(args.images, log)
    text = report(times, memory, pipe)
    print(text)
    Path(args.out).write_text(text, encoding="utf-8")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
