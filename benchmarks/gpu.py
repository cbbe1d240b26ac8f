"""lrpcli on a GPU: time, peak memory and CUDA-against-CPU relevance, one script (issue 28 item 5).

    python benchmarks/gpu.py          # on a CUDA machine, under 8 minutes: the Llama table of llm_speed.py
                                      # (~100M parameters, 128 + 16 tokens), VGG16, ResNet-50, ViT-B/16 at 224x224
                                      # and a BERT-base-sized encoder (128 tokens) at batch 32, float32 and bfloat16
    python benchmarks/gpu.py --toy    # the same code at tiny sizes on the CPU, in seconds (so it cannot rot:
                                      # tests/test_benchmarks_run.py runs it)

Per model and dtype: the plain gradient (``d logit[target] / d x * x``, parameters frozen, the targets lrpcli
chooses: each sample's argmax; for the Llama, each generated token's logit as in llm_speed.py), lrpcli's
composites (``epsilon_plus_flat`` on the CNNs, ``attnlrp`` and ``cp_lrp`` on the transformers) and LXT 2.1's
efficient AttnLRP where it has a preset (BERT, Llama; in a process of its own, since it patches classes
process-wide). Time: one warm-up call (lrpcli's capture), then the median of ``--reps`` calls, synchronised.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the call; on the CPU
the resident set's high-water mark above what the process held (/proc/self/status VmHWM, reset through
/proc/self/clear_refs), measured in this process. "vs CPU": max |R_device - R_cpu| / max |R_cpu| on the first
two samples, R_cpu from the same weights in float32 on the CPU (for bfloat16 rows: bfloat16's own error).
The models are built here with random weights, without torchvision (it does not import beside torch 2.13):
VGG16 is a local definition, ResNet-50, ViT-B/16 and BERT come from transformers' configs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llm_speed  # noqa: E402  (puts the repository root and tests/ on sys.path too)

NOT_IMPORTABLE = llm_speed.NOT_IMPORTABLE
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
COMPOSITES = {"vgg16": ("epsilon_plus_flat",), "resnet50": ("epsilon_plus_flat",), "vit": ("attnlrp", "cp_lrp"),
              "bert": ("attnlrp", "cp_lrp"), "llama": ("attnlrp",)}
LXT_MODELS = ("bert", "llama")
TITLES = {"vgg16": "VGG16", "resnet50": "ResNet-50", "vit": "ViT-B/16", "bert": "BERT-base", "llama": "Llama ~100M"}
TOY_TITLES = {"vgg16": "VGG16 (toy)", "resnet50": "ResNet (toy)", "vit": "ViT (toy)", "bert": "BERT (toy)", "llama": "Llama (toy)"}


# --------------------------------------------------------------------------- models


class VGG16(torch.nn.Module):
    """torchvision's vgg16 layout (configuration D), ``width`` scaling every channel count (1: the real one)."""

    LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, width: float = 1.0, pool: int = 7, hidden: int = 4096, classes: int = 1000):
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = 3
        for item in self.LAYOUT:
            if item == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                out = max(1, int(item * width))
                layers += [torch.nn.Conv2d(channels, out, 3, padding=1), torch.nn.ReLU()]
                channels = out
        self.features = torch.nn.Sequential(*layers)
        self.avgpool = torch.nn.AdaptiveAvgPool2d(pool)
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(channels * pool * pool, hidden), torch.nn.ReLU(), torch.nn.Dropout(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _Logits(torch.nn.Module):
    """A transformers model fed one float tensor by keyword (``pixel_values``, ``inputs_embeds``): the logits."""

    def __init__(self, model: torch.nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.key: x}, return_dict=False)[0]


def build(name: str, toy: bool, lxt: bool = False) -> tuple[torch.nn.Module, torch.Tensor]:
    """(model, inputs) for the image and encoder models, float32 on the CPU, the same in every process."""
    import transformers

    torch.manual_seed(0)
    batch, image = (2, 32) if toy else (32, 224)
    if name == "vgg16":
        model = VGG16(width=1 / 16, pool=1, hidden=64, classes=10) if toy else VGG16()
        x = torch.randn(batch, 3, image, image)
    elif name == "resnet50":
        config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10) if toy \
            else transformers.ResNetConfig(num_labels=1000)  # the defaults are ResNet-50's
        model = _Logits(transformers.ResNetForImageClassification(config), "pixel_values")
        x = torch.randn(batch, 3, image, image)
    elif name == "vit":
        small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8) if toy else {}
        config = transformers.ViTConfig(num_labels=1000, attn_implementation="eager", **small)  # defaults: ViT-B/16 at 224
        model = _Logits(transformers.ViTForImageClassification(config), "pixel_values")
        x = torch.randn(batch, 3, image, image)
    elif name == "bert":
        if lxt:
            efficient = _import_lxt()
            efficient.monkey_patch(transformers.models.bert.modeling_bert, efficient.models.bert.attnLRP)
        small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if toy else {}
        config = transformers.BertConfig(num_labels=2, attn_implementation="eager", **small)  # defaults: BERT-base
        model = _Logits(transformers.models.bert.modeling_bert.BertForSequenceClassification(config), "inputs_embeds")
        x = torch.randn(batch, 16 if toy else 128, config.hidden_size)
    else:
        raise KeyError(name)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x


def _import_lxt():
    from lxt_support import _import_lxt as imported

    return imported()


# --------------------------------------------------------------------------- methods and measurements


def gradient(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Gradient x input of each sample's target logit (LXT's relevance too, on a model it patched)."""

    def run() -> torch.Tensor:
        leaf = x.detach().clone().requires_grad_()
        out = model(leaf)
        (grad,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), leaf)
        return grad * leaf

    return run


def lrp(model: torch.nn.Module, x: torch.Tensor, composite: str) -> Callable[[], torch.Tensor]:
    from lrpcli import Explainer

    explainer = Explainer(model, composite)
    return lambda: explainer.explain(x).relevance


def measure(run: Callable[[], Any], device: str, reps: int) -> tuple[float, float, Any]:
    """(median seconds, peak MiB, the result) of ``run`` after a warm-up call."""
    result = run()
    times = []
    for _ in range(reps):
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    if device == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = llm_speed.peak_mib(run)
    return statistics.median(times), peak, result


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cpu_difference(relevance: torch.Tensor, reference: torch.Tensor) -> float:
    """max |R - R_cpu| / max |R_cpu| over the rows both hold."""
    got = relevance[: reference.shape[0]].detach().float().cpu()
    return float((got - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def _on(device: str, dtype: str, model: torch.nn.Module) -> torch.nn.Module:
    """The model to time: the CPU float32 reference itself where that is what is asked for, else a copy (a
    module of its own: lrpcli's captured graph would outlive an in-place ``model.to(dtype)``, see the report)."""
    if device == "cpu" and dtype == "float32":
        return model
    return copy.deepcopy(model).to(device=device, dtype=DTYPES[dtype])


def model_rows(name: str, dtypes: list[str], device: str, toy: bool, reps: int) -> list[dict[str, Any]]:
    """One row per dtype and method for an image/encoder model: gradient and lrpcli's composites."""
    cpu, x = build(name, toy)
    with torch.no_grad():
        targets = cpu(x).argmax(1)
    references = {c: lrp(cpu, x[:2], c)() for c in COMPOSITES[name]}  # CPU float32, first two samples
    references["gradient"] = gradient(cpu, x[:2], targets[:2])().detach()
    rows = []
    for dtype in dtypes:
        model = _on(device, dtype, cpu)
        on_device, targets_there = x.to(device=device, dtype=DTYPES[dtype]), targets.to(device)
        methods = {"gradient": gradient(model, on_device, targets_there), **{c: lrp(model, on_device, c) for c in COMPOSITES[name]}}
        for method, run in methods.items():
            rows.append(_row(name, dtype, method, lambda run=run: measure(run, device, reps), references[method]))
    return rows


def llm_rows(dtypes: list[str], device: str, toy: bool, reps: int) -> list[dict[str, Any]]:
    """llm_speed.py's methods (the gradient and lrpcli's default: one recorded forward, a walk per seed), per explained token."""
    cpu, sequence, positions, tokens = llm_speed.build_llm("toy" if toy else "100M")
    references = {m: llm_speed.make_method(m, cpu, sequence, positions, tokens)().detach() for m in ("gradient", "lrpcli")}
    rows = []
    for dtype in dtypes:
        model = _on(device, dtype, cpu)
        for method in ("gradient", "lrpcli"):
            run = llm_speed.make_method(method, model, sequence.to(device), positions, tokens)
            row = _row("llama", dtype, "attnlrp" if method == "lrpcli" else method, lambda run=run: measure(run, device, reps), references[method])
            if row["seconds"] is not None:
                row["seconds"] /= len(tokens)  # per explained token
            rows.append(row)
    return rows


def _row(name: str, dtype: str, method: str, timed: Callable[[], tuple], reference: torch.Tensor | None) -> dict[str, Any]:
    try:
        seconds, mib, relevance = timed()
    except Exception as error:  # noqa: BLE001 -- a failing method is a result of the benchmark, the run goes on
        return dict(model=name, dtype=dtype, method=method, seconds=None, mib=None, cpu=None, error=f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
    cpu = cpu_difference(relevance, reference) if reference is not None else None
    return dict(model=name, dtype=dtype, method=method, seconds=seconds, mib=mib, cpu=cpu, error=None)


def lxt_probe(name: str, dtypes: list[str], device: str, toy: bool, reps: int) -> list[dict[str, Any]]:
    """Child: LXT's efficient AttnLRP on ``name`` (patched before the model is built), timed like the rest."""
    try:
        _import_lxt()
    except ImportError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(NOT_IMPORTABLE)
    rows = []
    for dtype in dtypes:
        if name == "llama":
            model, sequence, positions, tokens = llm_speed.build_llm("toy" if toy else "100M", lxt=not rows)  # patch once
            model = model.to(device=device, dtype=DTYPES[dtype])
            run = llm_speed.make_method("gradient", model, sequence.to(device), positions, tokens)
            timed = lambda run=run, n=len(tokens): (lambda t: (t[0] / n, *t[1:]))(measure(run, device, reps))
        else:
            model, x = build(name, toy, lxt=not rows)
            with torch.no_grad():
                targets = model(x).argmax(1)
            model = model.to(device=device, dtype=DTYPES[dtype])
            run = gradient(model, x.to(device=device, dtype=DTYPES[dtype]), targets.to(device))
            timed = lambda run=run: measure(run, device, reps)
        rows.append(_row(name, dtype, "lxt", timed, None))
    return rows


def start_lxt(name: str, dtypes: list[str], device: str, toy: bool, reps: int) -> subprocess.Popen:
    args = ["--lxt-probe", name, ",".join(dtypes), device, str(reps)] + (["--toy"] if toy else [])
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_lxt(process: subprocess.Popen, name: str, dtypes: list[str]) -> list[dict[str, Any]]:
    out, err = process.communicate()
    if process.returncode == 0:
        return json.loads(out.strip().splitlines()[-1])
    why = "LXT does not import here" if process.returncode == NOT_IMPORTABLE else (err.strip().splitlines() or [f"exit {process.returncode}"])[-1][:120]
    return [dict(model=name, dtype=dtype, method="lxt", seconds=None, mib=None, cpu=None, error=why) for dtype in dtypes]


def table(rows: list[dict[str, Any]], titles: dict[str, str]) -> list[str]:
    base = {(r["model"], r["dtype"]): r for r in rows if r["method"] == "gradient"}

    def ratio(value, reference):
        return f"{value / reference:.2f}x" if value is not None and reference else "n/a"

    lines = ["| model | dtype | method | ms | time / gradient | peak MiB | memory / gradient | vs CPU float32 |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        g = base.get((r["model"], r["dtype"]), {})
        if r["error"]:
            lines.append(f"| {titles[r['model']]} | {r['dtype']} | {r['method']} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {titles[r['model']]} | {r['dtype']} | {r['method']} | {r['seconds'] * 1000:.1f} | {ratio(r['seconds'], g.get('seconds'))} | "
            f"{r['mib']:.1f} | {ratio(r['mib'], g.get('mib'))} | {'n/a' if r['cpu'] is None else format(r['cpu'], '.1e')} |"
        )
    return lines


def toy_dtypes(name: str, dtypes: list[str]) -> list[str]:
    """The toy run's dtypes: bfloat16 on BERT and the Llama only (each code path once: the CPU is slow, the test short)."""
    return [d for d in dtypes if d == "float32" or name in ("bert", "llama")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true", help="tiny models on the CPU (the test's run)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", action="append", choices=list(TITLES), help="these models only (repeatable)")
    parser.add_argument("--dtype", action="append", choices=list(DTYPES), help="these dtypes only (default both)")
    parser.add_argument("--lxt-probe", nargs=4, metavar=("MODEL", "DTYPE", "DEVICE", "REPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.toy:
        torch.set_num_threads(1)
    if args.lxt_probe:
        name, dtypes, device, reps = args.lxt_probe
        print(json.dumps(lxt_probe(name, dtypes.split(","), device, args.toy, int(reps))))
        return
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu" and not args.toy:
        print("no CUDA device here: run with --toy for the CPU check, or --device cpu to time the full sizes on the CPU",
              file=sys.stderr)
        sys.exit(2)
    dtypes = args.dtype or list(DTYPES)
    names = args.only or list(TITLES)
    titles = TOY_TITLES if args.toy else TITLES
    reps = 1 if args.toy else args.reps
    started = time.perf_counter()
    # the toy run starts LXT's processes beside this one (its numbers are not the point); a real run after
    # its own measurements, so that they do not share the device
    lxt = {n: start_lxt(n, toy_dtypes(n, dtypes), device, True, reps) for n in names if n in LXT_MODELS} if args.toy else {}
    rows: list[dict[str, Any]] = []
    for name in names:
        print(f"{titles[name]} ...", file=sys.stderr, flush=True)
        these = toy_dtypes(name, dtypes) if args.toy else dtypes
        rows += llm_rows(these, device, args.toy, reps) if name == "llama" else model_rows(name, these, device, args.toy, reps)
        if name in LXT_MODELS:
            process = lxt.get(name) or start_lxt(name, these, device, False, reps)
            rows += finish_lxt(process, name, these)
        print(f"  {time.perf_counter() - started:.0f} s so far", file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"lrpcli against the gradient and LXT on {device} ({gpu}), torch {torch.__version__}, "
          f"batch {2 if args.toy else 32} (Llama: ms per explained token); {time.perf_counter() - started:.0f} s in all")
    print("\n".join(table(rows, titles)))


if __name__ == "__main__":
    main()
