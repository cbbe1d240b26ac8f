"""lrp spray: time and peak memory against the number of relevance maps of one class.

    python benchmarks/spray_memory.py                    # 1,000, 5,000 and 20,000 maps; prints a Markdown table
    python benchmarks/spray_memory.py --counts 1000,2000

Each count gets a fake image run in a temporary folder: (1, 32, 32) float32 maps of two strategies (relevance
in the centre, or in a corner as well, 1 in 5), one class, summary.csv as `lrp explain` writes it. spray()
runs in a fresh process (imports done first), which reports its peak resident memory (ru_maxrss) beyond what
the imports took, the seconds, the clusters found and their agreement with the planted strategies (adjusted
Rand index). The maps are read one at a time, so memory grows only with what is kept per map: its pooled
8x8 grid, its k neighbours, its eigenvector rows, its name and path (about 0.8 KB a map), not with the maps
(4 KB each here). Results: benchmarks/spray_results.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np, sklearn.cluster, sklearn.neighbors, scipy.sparse.linalg
from sklearn.metrics import adjusted_rand_score
from lrpcli.runs.spray import spray
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
result = spray(sys.argv[1])
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
found = result.classes["a"]
truth = json.load(open(sys.argv[1] + "/truth.json"))
ari = adjusted_rand_score([truth[n] for n in found.inputs], found.labels)
print(json.dumps({"seconds": seconds, "peak_mb": (after - before) / 1024, "clusters": found.sizes(), "ari": ari}))
"""


def fake_run(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (folder / "relevance").mkdir(parents=True)
    truth, rows = {}, []
    yy, xx = np.mgrid[:32, :32]
    centre = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 60.0)
    corner = np.exp(-((yy - 3) ** 2 + (xx - 3) ** 2) / 6.0)
    for i in range(count):
        spurious = int(i % 5 == 0)
        heat = centre + 1.5 * spurious * corner + 0.15 * rng.standard_normal((32, 32))
        name = f"img{i:05d}.png"
        np.save(folder / "relevance" / f"{name}.npy", heat[None].astype(np.float32))
        truth[name] = spurious
        rows.append({"input": name, "prediction": 0, "prediction_label": "a", "target": 0, "target_label": "a", "relevance": f"relevance/{name}.npy"})
    with (folder / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "truth.json").write_text(json.dumps(truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,5000,20000")
    args = parser.parse_args()
    print("| maps | seconds | peak memory beyond imports (MB) | clusters (sizes) | ARI vs planted |")
    print("|---:|---:|---:|---|---:|")
    for count in [int(c) for c in args.counts.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            fake_run(Path(tmp), count)
            line = subprocess.run([sys.executable, "-c", CHILD, tmp, str(ROOT)], capture_output=True, text=True, check=True).stdout
            found = json.loads(line.strip().splitlines()[-1])
            print(f"| {count:,} | {found['seconds']:.1f} | {found['peak_mb']:.0f} | {found['clusters']} | {found['ari']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
