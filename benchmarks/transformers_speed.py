"""AttnLRP on transformers: time and peak memory against the plain gradient (and LXT where it runs).

    python benchmarks/transformers_speed.py                      # BERT-base b8 T128 and ViT-B/16 b8, writes
                                                                 # benchmarks/transformers_results.md
    python benchmarks/transformers_speed.py --quick              # small configs (a smoke run)
    python benchmarks/transformers_speed.py --only "BERT-base b8"

The issue's target: ``attnlrp`` within 1.5x the plain gradient's time and 1.5x its peak memory.
Models are Hugging Face BERT (12 layers, width 768, 128 tokens) and ViT-B/16 (224x224) with
random weights, explained through ``inputs_embeds`` / ``pixel_values`` (float inputs, so the
gradient and LXT see the same tensor). The plain gradient is ``d logit[target] / d x * x`` with
frozen parameters. Each configuration times its methods round-robin in a process of its own
(one warm-up call each, then ``--reps`` rounds, the median). Peak memory: the high-water mark of
the resident set during one call after a warm-up call, in a fresh process with
``MALLOC_MMAP_THRESHOLD_=131072`` (as benchmarks/speed.py). LXT 2.1's efficient AttnLRP (BERT
only, needs transformers < 5) runs in a process of its own, since it patches classes process-wide.
"""

from __future__ import annotations

import argparse
import datetime
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CONFIGS = {
    "BERT-base b8": dict(model="bert", layers=12, width=768, tokens=128, batch=8),
    "ViT-B/16 b8": dict(model="vit", layers=12, width=768, image=224, patch=16, batch=8),
    "BERT-small b4": dict(model="bert", layers=4, width=256, tokens=64, batch=4),
    "ViT-small b4": dict(model="vit", layers=4, width=256, image=64, patch=8, batch=4),
}
QUICK = ("BERT-small b4", "ViT-small b4")
METHODS = ("gradient", "attnlrp", "lxt")
TARGET = 1.5


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return self.model(**{self.key: x}).logits


def build(name: str, lxt: bool = False) -> tuple[torch.nn.Module, torch.Tensor]:
    import transformers

    spec = CONFIGS[name]
    torch.manual_seed(0)
    common = dict(
        hidden_size=spec["width"], num_hidden_layers=spec["layers"], num_attention_heads=spec["width"] // 64,
        intermediate_size=4 * spec["width"], num_labels=3,
    )
    if spec["model"] == "bert":
        if lxt:
            from lxt_support import _import_lxt  # LXT imports torchvision's ViT module: the test shim stands in

            efficient = _import_lxt()
            efficient.monkey_patch(transformers.models.bert.modeling_bert, efficient.models.bert.attnLRP)
        model = transformers.BertForSequenceClassification(transformers.BertConfig(vocab_size=1000, max_position_embeddings=512, **common))
        x = torch.randn(spec["batch"], spec["tokens"], spec["width"])
        wrapped = _Logits(model, "inputs_embeds")
    else:
        if lxt:
            raise RuntimeError("LXT 2.1 has no preset for Hugging Face ViT")
        config = transformers.ViTConfig(image_size=spec["image"], patch_size=spec["patch"], num_channels=3, **common)
        model = transformers.ViTForImageClassification(config)
        x = torch.randn(spec["batch"], 3, spec["image"], spec["image"])
        wrapped = _Logits(model, "pixel_values")
    wrapped.eval()
    for p in wrapped.parameters():
        p.requires_grad_(False)
    return wrapped, x


def make_method(method: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    if method == "attnlrp":
        from lrpcli import Explainer

        explainer = Explainer(model, "attnlrp")
        return lambda: explainer.explain(x, 0).relevance

    def gradient():  # also LXT's efficient mode: its patched modules change the gradient itself
        leaf = x.clone().requires_grad_()
        out = model(leaf)
        (grad,) = torch.autograd.grad(out[:, 0].sum(), leaf)
        return grad * leaf

    return gradient


def timing_probe(name: str, reps: int) -> None:
    """Child process: median seconds of the gradient and attnlrp, round-robin, as JSON."""
    model, x = build(name)
    methods = {m: make_method(m, model, x) for m in ("gradient", "attnlrp")}
    for run in methods.values():
        run()  # warm-up (lrpcli captures its graph here)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(reps):
        for method, run in methods.items():
            started = time.perf_counter()
            run()
            times[method].append(time.perf_counter() - started)
    print(json.dumps({m: statistics.median(t) for m, t in times.items()}))


def lxt_probe(name: str, reps: int) -> None:
    """Child process: LXT's efficient AttnLRP (a patched model's gradient x input), median seconds."""
    model, x = build(name, lxt=True)
    run = make_method("gradient", model, x)
    run()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    print(json.dumps({"lxt": statistics.median(times)}))


def memory_probe(name: str, method: str) -> None:
    model, x = build(name, lxt=method == "lxt")
    run = make_method("gradient" if method == "lxt" else method, model, x)
    run()
    held = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    run()
    print(json.dumps({"peak_mib": (_rss_kib("VmHWM") - held) / 1024}))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(*args: str, env: dict | None = None) -> dict | None:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env or dict(os.environ))
    if result.returncode != 0:
        print(f"  {' '.join(args)} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def _has_lxt() -> bool:
    probe = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from lxt_support import _import_lxt; _import_lxt()"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", choices=list(CONFIGS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every measuring process (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "transformers_results.md")
    parser.add_argument("--timing-probe", nargs=2, metavar=("CONFIG", "REPS"), help=argparse.SUPPRESS)
    parser.add_argument("--lxt-probe", nargs=2, metavar=("CONFIG", "REPS"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", nargs=2, metavar=("CONFIG", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["LRP_BENCH_THREADS"] = str(args.threads)  # the measuring processes read it
    elif os.environ.get("LRP_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["LRP_BENCH_THREADS"]))
    if args.timing_probe:
        return timing_probe(args.timing_probe[0], int(args.timing_probe[1]))
    if args.lxt_probe:
        return lxt_probe(args.lxt_probe[0], int(args.lxt_probe[1]))
    if args.memory_probe:
        return memory_probe(*args.memory_probe)
    names = args.only or (list(QUICK) if args.quick else [n for n in CONFIGS if n not in QUICK])
    lxt = _has_lxt()
    memory_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # LRP_BENCH_THREADS included
    rows = []
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        times = _child("--timing-probe", name, str(args.reps)) or {}
        if lxt and CONFIGS[name]["model"] == "bert":
            times.update(_child("--lxt-probe", name, str(args.reps)) or {})
        memory = {m: (_child("--memory-probe", name, m, env=memory_env) or {}).get("peak_mib") for m in METHODS if m in times}
        rows.append((name, times, memory))
    lines = [
        "# AttnLRP on transformers: time and memory against the plain gradient",
        "",
        f"Generated by `python benchmarks/transformers_speed.py{' --quick' if args.quick else ''}{f' --threads {args.threads}' if args.threads else ''}` on "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: {platform.machine()}, "
        f"{os.cpu_count()} CPU core(s), torch {torch.__version__} ({torch.get_num_threads()} thread(s)), glibc malloc; "
        f"medians of {args.reps} round-robin rounds; peak memory per call in fresh processes. Target: attnlrp within "
        f"{TARGET}x the gradient's time and peak memory.",
        "",
        "| configuration | gradient | attnlrp | ratio | LXT efficient | peak gradient | peak attnlrp | ratio | peak LXT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, times, memory in rows:
        def fmt(value, unit):
            return "n/a" if value is None else f"{value:.2f} {unit}" if unit == "s" else f"{value:.0f} {unit}"

        def ratio(a, b):
            return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

        g, a, l = times.get("gradient"), times.get("attnlrp"), times.get("lxt")
        mg, ma, ml = memory.get("gradient"), memory.get("attnlrp"), memory.get("lxt")
        lines.append(f"| {name} | {fmt(g, 's')} | {fmt(a, 's')} | {ratio(a, g)} | {fmt(l, 's')} | {fmt(mg, 'MiB')} | {fmt(ma, 'MiB')} | {ratio(ma, mg)} | {fmt(ml, 'MiB')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
