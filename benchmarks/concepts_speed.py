"""Concept Relevance Propagation: K conditions of one input walked as K rows of one batch, against K runs.

    python benchmarks/concepts_speed.py             # writes benchmarks/concepts_results.md
    python benchmarks/concepts_speed.py --k 4,16    # other condition counts

On the shipped shapes MiniVGG (32x32 RGB, layer features.3: 64 channels), one image: "batched" is
runs.concepts.conditional_maps with all K conditions in one batch (the input repeated K times, one channel mask per
row: what `lrp concepts --top K` does), "separate" is K calls of explain(condition={layer: [channel]}). Both give
the same maps (checked, 1e-5). The graph is captured and prepared before timing; each figure is the minimum (and
median) of --repeats interleaved runs, in this process, with glibc's allocator. The machine is shared: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "concepts_results.md"


def main() -> None:
    import torch

    from lrpcli.api import Explainer
    from lrpcli.runs.concepts import channel_relevance, conditional_maps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="1,4,16,64", help="condition counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer", default="features.3")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    explainer = Explainer(str(ROOT / "sample_models" / "shapes_minivgg" / "model.ts"), "epsilon_plus_flat")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    relevance, targets = channel_relevance(explainer, x, args.layer)
    count = relevance.shape[1]
    order = relevance.argsort(dim=1, descending=True)

    rows = []
    for k in (int(v) for v in args.k.split(",")):
        channels = order[:, :k]
        conditional_maps(explainer, x, targets, args.layer, channels, count, batch_size=k)  # warm: the batch of k prepared

        def batched():
            return conditional_maps(explainer, x, targets, args.layer, channels, count, batch_size=k)

        def separate():
            return torch.stack([explainer.explain(x, targets, condition={args.layer: [int(c)]}).relevance[0] for c in channels[0]])[None]

        seconds: dict[str, list[float]] = {"batched": [], "separate": []}
        maps = {}
        for _ in range(args.repeats):  # interleaved, so that a burst of load on the shared machine hits both
            for name, job in (("batched", batched), ("separate", separate)):
                started = time.perf_counter()
                maps[name] = job()
                seconds[name].append(time.perf_counter() - started)
        assert torch.allclose(maps["batched"], maps["separate"], rtol=1e-5, atol=1e-6), "the two ways disagree"
        rows.append((k, min(seconds["batched"]), min(seconds["separate"]), statistics.median(seconds["batched"]), statistics.median(seconds["separate"])))

    lines = [
        "| K conditions | batched (one walk of K rows) s, min / median | K separate walks s, min / median | speed-up (mins) |",
        "|---|---|---|---|",
        *(f"| {k} | {b:.3f} / {bm:.3f} | {s:.3f} / {sm:.3f} | {s / b:.2f}x |" for k, b, s, bm, sm in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        header = (
            "# Concepts: K conditions batched against K separate walks\n\n"
            f"Written by `python benchmarks/concepts_speed.py --k {args.k} --repeats {args.repeats}` on {datetime.date.today()}: "
            f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} cores (shared), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, glibc malloc. shapes MiniVGG, one 32x32 image, layer "
            f"{args.layer} ({count} channels), epsilon_plus_flat; min and median of {args.repeats} interleaved runs; maps of both ways equal to 1e-5.\n\n"
        )
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        OUT.write_text(header + table + f"\n\nLoad average at the end: {load} (other jobs on the 2 cores).\n", encoding="utf-8")


if __name__ == "__main__":
    main()
