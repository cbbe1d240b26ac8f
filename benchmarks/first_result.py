"""A first result: one image end to end, cold and with a warm graph cache, against `import torch`.

    python benchmarks/first_result.py            # writes benchmarks/first_result_results.md

Each row is a whole process, timed by wall clock, the median of --reps runs (measured in
turns, so that load on the machine falls on all rows alike): `python -c "import torch"`
(the floor any torch tool pays), `lrp explain SPEC IMAGE` with an empty graph cache (it
captures the model), the same with the cache of an earlier run (it loads the graph), and
`lrp rules` (static text).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "first_result_results.md"
SPEC = ROOT / "sample_models" / "shapes_minivgg" / "model.yaml"


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    image = sorted((ROOT / "sample_models" / "shapes_minivgg" / "images").rglob("*.png"))[0]
    work = Path(tempfile.mkdtemp(prefix="lrp-first-"))
    lrp = [sys.executable, "-m", "lrpcli.cli"]
    warm_cache = work / "warm-cache"
    base = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(lrp + ["explain", str(SPEC), str(image), "-o", str(work / "prime"), "-q"], check=True, env={**base, "LRP_CACHE_DIR": str(warm_cache)})
    rows: dict[str, list[float]] = {"python -c 'import torch'": [], "lrp explain, cold cache": [], "lrp explain, warm cache": [], "lrp rules": []}
    for rep in range(args.reps):
        rows["python -c 'import torch'"].append(timed([sys.executable, "-c", "import torch"], base))
        cold = work / f"cold-{rep}"
        rows["lrp explain, cold cache"].append(timed(lrp + ["explain", str(SPEC), str(image), "-o", str(work / f"c{rep}"), "-q"], {**base, "LRP_CACHE_DIR": str(cold)}))
        rows["lrp explain, warm cache"].append(timed(lrp + ["explain", str(SPEC), str(image), "-o", str(work / f"w{rep}"), "-q"], {**base, "LRP_CACHE_DIR": str(warm_cache)}))
        rows["lrp rules"].append(timed(lrp + ["rules"], base))
    shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(rows["python -c 'import torch'"])
    lines = [
        "# A first result: one image end to end",
        "",
        f"Written by `python benchmarks/first_result.py {' '.join(sys.argv[1:])}` on {datetime.date.today()}: python {platform.python_version()}, "
        f"{os.cpu_count()} cores; `lrp explain {SPEC.relative_to(ROOT)} {image.relative_to(ROOT)}`; medians of {args.reps} runs in turns.",
        "",
        "| command | median s | runs (s) | vs. `import torch` |",
        "|---|---|---|---|",
    ]
    for name, times in rows.items():
        median = statistics.median(times)
        lines.append(f"| {name} | {median:.2f} | {', '.join(f'{t:.2f}' for t in times)} | {median / floor:.2f}x |")
        print(f"{name}: {median:.2f} s ({median / floor:.2f}x)")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
